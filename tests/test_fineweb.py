"""fineweb.py: text in, GPT-2 token shards out (the shard format train_gpt2.py reads), restartable, and a refused folder left untouched (other bad input: test_errors.py)."""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tiktoken

import fineweb

pytestmark = pytest.mark.xdist_group("fineweb")  # one worker: its module fixtures are computed once

FINEWEB = str(Path(fineweb.__file__))
EOT = 50256
enc = tiktoken.get_encoding("gpt2")


def reference(docs):
    """What the shards must hold: every document as [EOT] + encode_ordinary(text), in order."""
    return np.array([t for doc in docs for t in [EOT] + enc.encode_ordinary(doc)], dtype=np.uint16)


def shards(out):
    """The shard files of a folder by index, checking their names and that each is a 1-D uint16 array."""
    paths = sorted(out.glob("*.npy"), key=lambda p: int(p.stem.rsplit("_", 1)[1]))
    arrays = []
    for index, path in enumerate(paths):
        assert re.fullmatch(rf"\w+_{'val' if index == 0 else 'train'}_{index:06d}\.npy", path.name), path.name
        array = np.load(path)
        assert array.ndim == 1 and array.dtype == np.uint16, path.name
        arrays.append(array)
    return arrays


def folder_bytes(out):
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())}


def write_parquet(path, docs, row_group_size=7):
    """A parquet file with FineWeb-Edu's schema, several row groups."""
    n = len(docs)
    table = pa.table(
        {
            "text": docs,
            "id": [f"<urn:uuid:{i:08d}-0000-0000-0000-000000000000>" for i in range(n)],
            "dump": ["CC-MAIN-2013-20"] * n,
            "url": [f"http://example.com/{i}" for i in range(n)],
            "date": ["2013-05-18T05:48:54Z"] * n,
            "file_path": ["s3://commoncrawl/crawl-data/CC-MAIN-2013-20/segments/0.warc.gz"] * n,
            "language": ["en"] * n,
            "language_score": [0.97] * n,
            "token_count": [len(enc.encode_ordinary(d)) for d in docs],
            "score": [3.1] * n,
            "int_score": [3] * n,
        }
    )
    pq.write_table(table, path, row_group_size=row_group_size)


def write_jsonl(path, docs):
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps({"id": i, "text": doc}) + "\n" for i, doc in enumerate(docs))
        f.write("\n")  # a trailing blank line is not a document


def valid_utf8(docs):
    """The documents a parquet file can hold: no lone surrogates."""
    return [doc for doc in docs if "\ud800" not in doc]


@pytest.fixture(scope="module")
def paragraphs(shared_data):
    text = (shared_data / "tinyshakespeare" / "input.txt").read_text()
    return text.split("\n\n")


@pytest.fixture
def corpus(tmp_path, paragraphs):
    """Documents in .jsonl, .txt (through a glob) and .parquet, given out of alphabetical order,
    with the awkward cases: empty text, \\r\\n, non-ASCII, and the EOT's text, which is ordinary text."""
    tricky = ["", "line one\r\nline two\r\n", "naïve café, 東京 🙂", "not an EOT: <|endoftext|>", "   "]
    jsonl = paragraphs[:60] + tricky + ["a lone surrogate \ud800 from a JSON escape"]
    txt, parquet = paragraphs[60:63] + tricky[1:3], paragraphs[63:150] + tricky
    write_jsonl(tmp_path / "z.jsonl", jsonl)
    (tmp_path / "txt").mkdir()
    for name, doc in zip(["01.txt", "02.txt", "10.txt", "11.txt", "12.txt"], txt, strict=True):
        (tmp_path / "txt" / name).write_bytes(doc.encode())
    write_parquet(tmp_path / "a.parquet", parquet)
    inputs = [tmp_path / "z.jsonl", tmp_path / "txt" / "*.txt", tmp_path / "a.parquet"]
    return inputs, jsonl + txt + parquet


def test_shards_hold_eot_plus_tokens_of_every_document_in_order(run, tmp_path, corpus):
    inputs, docs = corpus
    result = run("fineweb.py", "--input", *inputs, "--out", tmp_path / "out", "--shard_size", 997)
    assert result.returncode == 0, result.stderr
    arrays = shards(tmp_path / "out")
    assert len(arrays) > 5
    assert all(len(a) == 997 for a in arrays[:-1]) and 0 < len(arrays[-1]) <= 997
    np.testing.assert_array_equal(np.concatenate(arrays), reference(docs))
    assert f"{len(docs):,} documents" in result.stdout


def test_one_and_two_processes_write_identical_bytes(run, tmp_path, corpus):
    inputs, _ = corpus
    for n in (1, 2):
        assert (
            run(
                "fineweb.py",
                "--input",
                *inputs,
                "--out",
                tmp_path / f"out{n}",
                "--prefix",
                "p",
                "--shard_size",
                1000,
                "--num_proc",
                n,
            ).returncode
            == 0
        )
    assert folder_bytes(tmp_path / "out1") == folder_bytes(tmp_path / "out2")
    # spawned workers, as on Windows and macOS, start without the main process's encoder and load their own
    script = tmp_path / "spawned.py"
    script.write_text(
        f"import multiprocessing, sys\nsys.path.insert(0, {str(Path(FINEWEB).parent)!r})\nimport fineweb\n"
        "if __name__ == '__main__':\n    multiprocessing.set_start_method('spawn')\n    fineweb.main(sys.argv[1:])\n"
    )
    args = [
        "--input",
        *map(str, inputs),
        "--out",
        str(tmp_path / "spawned"),
        "--prefix",
        "p",
        "--shard_size",
        "1000",
        "--num_proc",
        "2",
    ]
    result = subprocess.run([sys.executable, script, *args], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert folder_bytes(tmp_path / "spawned") == folder_bytes(tmp_path / "out1")


def offline_env():
    """The environment of a machine without network: every download goes through a proxy that refuses at once."""
    refused = {k: "http://127.0.0.1:9" for k in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy")}
    return {**os.environ, **refused, "NO_PROXY": "", "no_proxy": ""}


def scripts_copy(folder):
    """A scratch copy of the repository's scripts (fineweb.py and the modules it imports), and nothing else."""
    folder.mkdir()
    for script in Path(FINEWEB).parent.glob("*.py"):
        shutil.copy(script, folder)
    return folder


def files_under(folder):
    """Every path under folder but Python's bytecode caches, which importing the copied modules may write."""
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if "__pycache__" not in p.parts)


def test_tiny_shakespeare_download_that_fails_leaves_nothing_behind(tmp_path):
    kit = scripts_copy(tmp_path / "kit")  # no tinyshakespeare/input.txt beside the script: it must download it
    before = files_under(tmp_path)
    result = subprocess.run(
        [sys.executable, kit / "fineweb.py", "--dataset", "tinyshakespeare"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=offline_env(),
        timeout=120,
    )
    assert result.returncode == 1 and "cannot download" in result.stderr and "--input" in result.stderr, result.stderr
    assert files_under(tmp_path) == before


def test_tiny_shakespeare_ships_with_the_repository_and_tokenizes_offline(repo, tmp_path, shared_data):
    shipped = repo / "tinyshakespeare" / "input.txt"
    assert shipped.read_bytes() == (shared_data / "tinyshakespeare" / "input.txt").read_bytes()  # char-rnn's text
    kit = scripts_copy(tmp_path / "kit")  # the repository as a user clones it: the scripts and the shipped text
    (kit / "tinyshakespeare").mkdir()
    shutil.copy(shipped, kit / "tinyshakespeare")
    result = subprocess.run(
        [sys.executable, "fineweb.py", "--dataset", "tinyshakespeare", "--shard_size", "32768"],
        capture_output=True,
        text=True,
        cwd=kit,
        env=offline_env(),
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    out = kit / "tinyshakespeare"  # the shards go beside the text, which stays as it was
    assert (out / "input.txt").read_bytes() == shipped.read_bytes()
    assert json.loads((out / "manifest.json").read_text())["config"]["source"] == [str((out / "input.txt").resolve())]
    arrays = shards(out)
    assert len(arrays) == 11 and (out / "tinyshakespeare_val_000000.npy").exists()  # 338k tokens, 32,768 a shard
    np.testing.assert_array_equal(np.concatenate(arrays), reference([shipped.read_bytes().decode("utf-8")]))


def test_tiny_shakespeare_offline_is_one_document_split_into_val_and_train_shards(run, tmp_path, shared_data):
    path = shared_data / "tinyshakespeare" / "input.txt"
    result = run("fineweb.py", "--input", path, "--shard_size", 32768, cwd=tmp_path)  # default --out and --prefix
    assert result.returncode == 0, result.stderr
    out = tmp_path / "tinyshakespeare"
    assert (out / "tinyshakespeare_val_000000.npy").exists() and (out / "tinyshakespeare_train_000001.npy").exists()
    tokens = np.concatenate(shards(out))
    assert len(tokens) == len(enc.encode_ordinary(path.read_text())) + 1
    np.testing.assert_array_equal(tokens, reference([path.read_text()]))


def test_hugging_face_dataset_path_reads_the_same_documents(run, tmp_path, corpus):
    """The FineWeb-Edu code path (load_dataset), here on a local parquet folder, with and without streaming."""
    docs = valid_utf8(corpus[1])
    (tmp_path / "hub").mkdir()
    write_parquet(tmp_path / "hub" / "train-00000.parquet", docs)
    env = {"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    for streaming in ([], ["--streaming"]):
        out = tmp_path / f"out{len(streaming)}"
        result = run(
            "fineweb.py", "--dataset", tmp_path / "hub", "--out", out, "--shard_size", 1000, *streaming, env=env
        )
        assert result.returncode == 0, result.stderr
        np.testing.assert_array_equal(np.concatenate(shards(out)), reference(docs))


@pytest.fixture
def big_corpus(tmp_path, shared_data):
    """~3M tokens in FineWeb-sized documents (~1k tokens): long enough to interrupt a run."""
    text = (shared_data / "tinyshakespeare" / "input.txt").read_text()
    return [text[i : i + 4000] for shift in range(0, 1000, 100) for i in range(shift, len(text), 4000)]


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_run_killed_midway_and_restarted_ends_identical_without_redoing_finished_shards(run, tmp_path, big_corpus, fmt):
    path = tmp_path / f"docs.{fmt}"
    write_jsonl(path, big_corpus) if fmt == "jsonl" else write_parquet(path, big_corpus, row_group_size=100)
    args = ["--input", path, "--prefix", "docs", "--shard_size", 100_003]  # shards end inside documents
    assert run("fineweb.py", *args, "--out", tmp_path / "whole").returncode == 0

    out = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, FINEWEB, *map(str, args), "--out", str(out)],
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    while len(list(out.glob("*.npy"))) < 3 and proc.poll() is None:
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGKILL)  # the run and its tokenizer processes, with no chance to clean up
    assert proc.wait() == -signal.SIGKILL, "the run ended before it could be killed: make the input bigger"
    shards(out)  # every file under a final shard name is complete
    manifest = json.loads((out / "manifest.json").read_text())
    finished = {s["file"]: (out / s["file"]).stat().st_mtime_ns for s in manifest["shards"]}
    assert finished and not manifest["complete"]

    result = run("fineweb.py", *args, "--out", out)
    assert result.returncode == 0, result.stderr
    assert folder_bytes(out) == folder_bytes(tmp_path / "whole")
    assert finished == {name: (out / name).stat().st_mtime_ns for name in finished}
    total = sum(len(a) for a in shards(out))
    done = sum(s["tokens"] for s in manifest["shards"])
    assert f"this run wrote {total - done:,} tokens" in result.stdout  # finished shards' documents were skipped


def writer_of(pipe, proc):
    """The pipe's write end once proc has opened it to read: a run that fails to start fails the test, not hangs it."""
    while True:
        try:
            fd = os.open(pipe, os.O_WRONLY | os.O_NONBLOCK)  # ENXIO while nobody reads
        except OSError:
            assert proc.poll() is None, proc.stderr.read()
            time.sleep(0.01)
            continue
        os.set_blocking(fd, True)
        return open(fd, "w", encoding="utf-8")


def test_ctrl_c_leaves_complete_shards_and_says_how_to_continue(tmp_path, big_corpus):
    # the documents come through a pipe the test holds open: the run cannot finish before the Ctrl-C, however fast
    pipe, out = tmp_path / "docs.jsonl", tmp_path / "out"
    os.mkfifo(pipe)
    cmd = [sys.executable, FINEWEB, "--input", str(pipe), "--out", str(out), "--shard_size", "100000"]
    # SIGINT as a terminal's Ctrl-C finds it: a script's background job (as CI may run) inherits it ignored, and
    # Python then never raises KeyboardInterrupt. One signal call before exec: no lock for another thread to hold
    at_default = lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)
    kwargs = dict(stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    proc = subprocess.Popen(cmd, **kwargs, preexec_fn=at_default)  # noqa: PLW1509
    with writer_of(pipe, proc) as writer:
        writer.writelines(json.dumps({"text": doc}) + "\n" for doc in big_corpus[:1000])  # ~1M tokens: ten shards
        writer.flush()
        while not list(out.glob("*.npy")) and proc.poll() is None:
            time.sleep(0.005)
        proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert "run the same command again" in one_line_error(
        subprocess.CompletedProcess(proc.args, proc.returncode, "", stderr)
    )
    assert shards(out) and not json.loads((out / "manifest.json").read_text())["complete"]


@pytest.mark.parametrize("source", ["corpus", "dataset"])
def test_restart_from_each_finished_shard_continues_exactly(tmp_path, corpus, source, capsys, monkeypatch):
    """Resuming from every point a run can stop at: inside a document, between files, between row groups."""
    inputs, docs = corpus
    if source == "dataset":
        docs = valid_utf8(docs)
        (tmp_path / "hub").mkdir()
        write_parquet(tmp_path / "hub" / "train-00000.parquet", docs)
        monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    args = ["--input", *map(str, inputs)] if source == "corpus" else ["--dataset", str(tmp_path / "hub")]
    args += ["--prefix", "docs", "--shard_size", "500", "--num_proc", "1"]
    fineweb.main(args + ["--out", str(tmp_path / "whole")])
    whole = folder_bytes(tmp_path / "whole")
    manifest = json.loads(whole["manifest.json"])
    assert any(s["end_offset"] for s in manifest["shards"]) and any(
        not s["end_offset"] for s in manifest["shards"][:-1]
    )
    for k in range(1, len(manifest["shards"])):
        out = tmp_path / f"from{k}"
        out.mkdir()
        for s in manifest["shards"][:k]:
            (out / s["file"]).write_bytes(whole[s["file"]])
        (out / "manifest.json").write_text(
            json.dumps({**manifest, "shards": manifest["shards"][:k], "complete": False})
        )
        capsys.readouterr()
        fineweb.main(args + ["--out", str(out)])
        done = sum(s["tokens"] for s in manifest["shards"][:k])
        assert f"this run wrote {len(reference(docs)) - done:,} tokens" in capsys.readouterr().out
        assert folder_bytes(out) == whole, k


def one_line_error(result):
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_folder_of_another_run_is_refused_and_left_untouched(run, tmp_path, corpus):
    inputs, _ = corpus
    out = tmp_path / "out"
    assert run("fineweb.py", "--input", *inputs, "--out", out, "--shard_size", 1000).returncode == 0
    before = folder_bytes(out), {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert "shard_size 1000 there, 999 now" in one_line_error(
        run("fineweb.py", "--input", *inputs, "--out", out, "--shard_size", 999)
    )
    assert "--out" in one_line_error(run("fineweb.py", "--input", inputs[0], "--out", out, "--shard_size", 1000))
    assert before == (folder_bytes(out), {p.name: p.stat().st_mtime_ns for p in out.iterdir()})
    assert "nothing to do" in run("fineweb.py", "--input", *inputs, "--out", out, "--shard_size", 1000).stdout


def test_download_goes_through_a_temporary_name_and_happens_once(tmp_path, shared_data):
    source = shared_data / "tinyshakespeare" / "input.txt"
    path = fineweb.download(source.as_uri(), tmp_path / "cache" / "input.txt")
    assert path.read_bytes() == source.read_bytes() and os.listdir(tmp_path / "cache") == ["input.txt"]
    assert fineweb.download((tmp_path / "gone.txt").as_uri(), path) == path  # cached: the url is not read again


def test_download_from_a_server_that_never_answers_gives_up_and_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(fineweb, "DOWNLOAD_TIMEOUT", 0.5)
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    with socket.create_server(("127.0.0.1", 0)) as server:  # connections complete in its backlog, nothing is ever sent
        url = f"http://127.0.0.1:{server.getsockname()[1]}/input.txt"
        start = time.monotonic()
        with pytest.raises(fineweb.InputError, match="cannot download .*timed out"):
            fineweb.download(url, tmp_path / "tinyshakespeare" / "input.txt")
    assert time.monotonic() - start < 5 and not (tmp_path / "tinyshakespeare").exists()


def test_help_lists_every_flag_with_its_default(run):
    result = run("fineweb.py", "--help")
    assert result.returncode == 0
    for flag in [
        "--input",
        "--dataset",
        "--name",
        "--streaming",
        "--text_column",
        "--out",
        "--prefix",
        "--shard_size",
        "--num_proc",
    ]:
        assert flag in result.stdout
    assert result.stdout.count("(default:") == 9
