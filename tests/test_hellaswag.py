"""hellaswag.py: scores against an independent per-ending loop, batching, ranks, and the download (bad input: test_errors.py)."""

import dataclasses
import functools
import http.server
import itertools
import json
import subprocess
import sys
import threading

import pytest
import torch

import hellaswag
from cli import InputError
from train_gpt2 import GPT, GPTConfig

pytestmark = pytest.mark.xdist_group("hellaswag")  # one worker: its module fixtures are computed once

N = 300  # val examples scored against the reference loop
CPU, FP32 = torch.device("cpu"), torch.autocast("cpu", enabled=False)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The models here are tiny: handing their small matmuls between threads costs more than it saves."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def val_file(shared_data):
    return shared_data / "hellaswag" / "hellaswag_val.jsonl"


@pytest.fixture(scope="module")
def tiny_checkpoint(tiny_hf, tmp_path_factory):
    """Our GPT with the same weights, saved the way train_gpt2.py saves its checkpoints."""
    gpt = GPT.from_pretrained(str(tiny_hf))
    path = tmp_path_factory.mktemp("log") / "model_00001.pt"
    torch.save({"model": gpt.state_dict(), "config": dataclasses.asdict(gpt.config)}, path)
    return path


@pytest.fixture(scope="module")
def reference(tiny_hf, val_file):
    """(acc choice, acc_norm choice, label) of the first N val examples, computed independently of
    hellaswag.py: the HF model on each context + ending on its own, no padding, losses computed here."""
    import tiktoken
    from transformers import GPT2LMHeadModel

    enc = tiktoken.get_encoding("gpt2")
    hf = GPT2LMHeadModel.from_pretrained(tiny_hf).eval()
    rows = []
    with open(val_file) as f:
        for line in itertools.islice(f, N):
            example = json.loads(line)
            ctx = enc.encode(example["ctx"])
            sums, means = [], []
            for ending in example["endings"]:
                end = enc.encode(" " + ending)
                ids = torch.tensor(ctx + end)
                with torch.no_grad():  # the LM head only where it predicts an ending token: most of the cost
                    hidden = hf.transformer(ids[None]).last_hidden_state[0]
                    logprobs = hf.lm_head(hidden[-len(end) - 1 : -1]).log_softmax(-1)  # row t predicts token t + 1
                nll = -logprobs.gather(1, ids[-len(end) :, None])
                sums.append(nll.sum().item())
                means.append(nll.mean().item())
            rows.append((min(range(4), key=sums.__getitem__), min(range(4), key=means.__getitem__), example["label"]))
    assert len({r[0] for r in rows}) == 4 and len({r[1] for r in rows}) == 4  # not a degenerate model
    return rows


def expected_line(rows):
    acc = sum(c == label for c, _, label in rows) / len(rows)
    acc_norm = sum(c == label for _, c, label in rows) / len(rows)
    return f"hellaswag val: n={len(rows)} acc={acc:.4f} acc_norm={acc_norm:.4f}"


# --- scores -------------------------------------------------------------------


@pytest.mark.parametrize(
    "source, n", [("model_type", N), ("checkpoint", 200)]
)  # the loading differs; 200 examples check it
def test_cli_scores_match_a_per_ending_reference_loop_in_float32_by_default(
    run, source, n, tiny_hf, tiny_checkpoint, reference, val_file
):
    model = ["--model_type", str(tiny_hf)] if source == "model_type" else ["--checkpoint", str(tiny_checkpoint)]
    common = [
        "--data_dir",
        str(val_file.parent),
        "--limit",
        str(n),
        "--device",
        "cpu",
    ]  # no --dtype: float32 on any CPU
    proc = run("hellaswag.py", *model, *common)
    assert proc.returncode == 0, proc.stderr
    assert "float32 (--dtype float32)" in proc.stdout  # the default itself, not auto (float32 on some CPUs only)
    assert proc.stdout.splitlines()[-1] == expected_line(reference[:n])


def test_batch_size_does_not_change_any_prediction(tiny_checkpoint, reference, val_file):
    model = GPT.from_checkpoint(tiny_checkpoint).eval()
    examples = hellaswag.load_examples(val_file.parent, "val", limit=24)
    one = hellaswag.predict(model, examples, model.config.block_size, CPU, FP32, batch_size=1)
    many = hellaswag.predict(model, examples, model.config.block_size, CPU, FP32, batch_size=16)
    assert one == many
    assert many == ([r[0] for r in reference[:24]], [r[1] for r in reference[:24]])


def test_slicing_the_lm_head_and_the_loss_does_not_change_any_prediction(
    tiny_checkpoint, reference, val_file, monkeypatch
):
    model = GPT.from_checkpoint(tiny_checkpoint).eval()
    examples = hellaswag.load_examples(val_file.parent, "val", limit=24)
    expected = ([r[0] for r in reference[:24]], [r[1] for r in reference[:24]])
    # the loss over whole LM-head chunks (as on a GPU), slices that do not divide the chunks, one row at a time
    for head_rows, loss_rows in [(256, 256), (100, 7), (1, 1)]:
        monkeypatch.setattr(hellaswag, "LM_HEAD_ROWS", head_rows)
        monkeypatch.setattr(hellaswag, "CPU_LOSS_ROWS", loss_rows)
        assert hellaswag.predict(model, examples, model.config.block_size, CPU, FP32, batch_size=16) == expected


def test_long_contexts_lose_their_oldest_tokens(val_file):
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=40, vocab_size=50257, n_layer=1, n_head=2, n_embd=32)).eval()
    examples = hellaswag.load_examples(val_file.parent, "val", limit=20)
    rows = [(ctx, end) for ctx, endings, _ in examples for end in endings]
    assert (
        sum(len(ctx) + len(end) > 41 for ctx, end in rows) > 20 and max(len(end) for _, end in rows) < 40
    )  # crops only contexts
    choices_norm = []
    for ctx, endings, _ in examples:  # reference: each row on its own, its last 41 tokens, the ending's mean loss
        means = []
        for end in endings:
            ids = torch.tensor((ctx + end)[-41:])
            with torch.no_grad():
                logits, _ = model(ids[None, :-1])
            means.append(torch.nn.functional.cross_entropy(logits[0, -len(end) :], ids[-len(end) :]).item())
        choices_norm.append(min(range(4), key=means.__getitem__))
    for batch_size in (1, 6):
        assert hellaswag.predict(model, examples, 40, CPU, FP32, batch_size)[1] == choices_norm


def test_forwards_pad_to_their_longest_row_and_apply_the_lm_head_at_ending_tokens_only(val_file):
    class Recorder(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model, self.shapes, self.head_rows = model, [], []

        def hidden_states(self, idx):
            self.shapes.append(tuple(idx.shape))
            return self.model.hidden_states(idx)

        def logits(self, hidden):
            self.head_rows.append(hidden.size(0))
            return self.model.logits(hidden)

    torch.manual_seed(0)
    gpt = GPT(GPTConfig(block_size=256, vocab_size=50257, n_layer=1, n_head=2, n_embd=32)).eval()
    examples = hellaswag.load_examples(val_file.parent, "val", limit=11)
    longest = lambda ex: max(len(ex[0]) + len(end) for end in ex[1]) - 1  # a row's last token is only a target
    for rank, world_size in [(0, 1), (0, 2), (1, 2)]:
        mine = sorted(examples[rank::world_size], key=longest, reverse=True)
        batches = [mine[i : i + 4] for i in range(0, len(mine), 4)]
        model = Recorder(gpt)
        choices, _ = hellaswag.predict(model, examples, 256, CPU, FP32, batch_size=4, rank=rank, world_size=world_size)
        assert len(choices) == len(mine)
        assert model.shapes == [(4 * len(b), longest(b[0])) for b in batches]  # longest first, little padding
        head_rows = [sum(len(end) for ex in b for end in ex[1]) for b in batches]  # the ending tokens of each forward
        assert sum(model.head_rows) == sum(head_rows) and max(model.head_rows) <= hellaswag.LM_HEAD_ROWS


def test_two_processes_count_what_one_process_counts(run, repo, tiny_checkpoint, reference, val_file, tmp_path):
    script = tmp_path / "score.py"
    script.write_text(
        f"import sys; sys.path.insert(0, {str(repo)!r})\n"
        "import torch, hellaswag\n"
        "from train_gpt2 import GPT\n"
        "torch.distributed.init_process_group('gloo')\n"
        "rank, world_size = torch.distributed.get_rank(), torch.distributed.get_world_size()\n"
        f"model = GPT.from_checkpoint({str(tiny_checkpoint)!r}).eval()  # the bare model, as training passes it\n"
        f"examples = hellaswag.load_examples({str(val_file.parent)!r}, 'val', limit=21)\n"
        "autocast = torch.autocast('cpu', enabled=False)\n"
        "counts = hellaswag.evaluate(model, examples, 256, torch.device('cpu'), autocast, 4, rank, world_size)\n"
        "if rank == 0:\n"
        "    print('counts', *counts)\n"
        "torch.distributed.destroy_process_group()\n"
    )
    proc = run(script, torchrun=2)
    assert proc.returncode == 0, proc.stderr
    model = GPT.from_checkpoint(tiny_checkpoint).eval()
    examples = hellaswag.load_examples(val_file.parent, "val", limit=21)
    one = hellaswag.evaluate(model, examples, 256, CPU, FP32, batch_size=4)
    rows = reference[:21]
    assert one == (21, sum(c == label for c, _, label in rows), sum(c == label for _, c, label in rows))
    assert [line for line in proc.stdout.splitlines() if line.startswith("counts")] == [
        f"counts {one[0]} {one[1]} {one[2]}"
    ]


# --- data ---------------------------------------------------------------------


@pytest.fixture
def file_server(val_file):
    """A local HTTP server standing in for GitHub: /hellaswag_val.jsonl is the real file, /cut_val.jsonl
    promises the real file's size and sends a tenth of it."""

    class Handler(http.server.SimpleHTTPRequestHandler):
        def do_GET(self):
            if self.path != "/cut_val.jsonl":
                return super().do_GET()
            data = val_file.read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[: len(data) // 10])

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Handler, directory=str(val_file.parent))
    )
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_download_once_via_a_temporary_name(file_server, val_file, tmp_path, monkeypatch):
    monkeypatch.setattr(hellaswag, "URL", file_server + "/hellaswag_{split}.jsonl")
    cache = tmp_path / "cache"
    examples = hellaswag.load_examples(cache, "val", limit=3)
    assert len(examples) == 3 and [p.name for p in cache.iterdir()] == ["hellaswag_val.jsonl"]
    assert (cache / "hellaswag_val.jsonl").read_bytes() == val_file.read_bytes()
    monkeypatch.setattr(hellaswag, "URL", file_server + "/nowhere_{split}.jsonl")  # a second download would fail
    assert hellaswag.load_examples(cache, "val", limit=3) == examples

    monkeypatch.setattr(hellaswag, "URL", file_server + "/cut_{split}.jsonl")
    with pytest.raises(InputError, match="cannot download .*cut_val.jsonl"):
        hellaswag.load_examples(tmp_path / "cut", "val")
    assert not (tmp_path / "cut").exists()  # the partial download is gone, and the folder made for it


# --- the module and its command line ------------------------------------------


def test_help_lists_every_flag_with_its_default(capsys):
    with pytest.raises(SystemExit) as exit_info:
        hellaswag.parse_args(["--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    for flag in [
        "--model_type",
        "--checkpoint",
        "--data_dir",
        "--split",
        "--limit",
        "--batch_size",
        "--device",
        "--dtype",
    ]:
        assert flag in text
    assert text.count("(default:") == 8


def test_import_is_light_and_does_nothing(repo, snapshot_of, tmp_path):
    code = (
        f"import sys; sys.path.insert(0, {str(repo)!r}); import hellaswag\n"
        "print(sorted(m for m in ('transformers', 'tiktoken') if m in sys.modules))"
    )
    cache_before = snapshot_of(hellaswag.DATA_DIR)
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"  # heavy or network modules wait until they are needed
    assert list(tmp_path.iterdir()) == [] and snapshot_of(hellaswag.DATA_DIR) == cache_before
