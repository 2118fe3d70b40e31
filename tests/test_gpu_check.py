"""tools/gpu_check.py, the command a GPU machine runs, tested where it is written: its bundle holds the offline data
within what the device tool sends, its CPU mode takes every step at tiny sizes and reports them (the CUDA tests as
skipped), and a step that fails or runs past its limit is reported while the steps after it still run."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import tiktoken
import torch

OFFLINE = ["tiktoken_cache", "hellaswag/hellaswag_val.jsonl", "tinyshakespeare/input.txt"]


@pytest.fixture(scope="module")
def bundle(run, shared_data, tmp_path_factory):
    folder = tmp_path_factory.mktemp("bundle") / "gpu_check"
    proc = run("tools/gpu_check.py", "bundle", "--data", shared_data, "--to", folder)
    assert proc.returncode == 0, proc.stderr
    return folder


@pytest.fixture
def gpu_check(repo, monkeypatch):
    monkeypatch.syspath_prepend(str(repo / "tools"))
    import gpu_check

    return gpu_check


def files_under(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def test_the_bundle_holds_the_offline_data_and_its_shards_within_64_mib(bundle, shared_data, gpu_check):
    for name in OFFLINE:  # byte for byte: tiktoken deletes a cache file whose hash is wrong
        source, copy = shared_data / name, bundle / name
        assert (files_under(source) if source.is_dir() else source.read_bytes()) == (
            files_under(copy) if copy.is_dir() else copy.read_bytes()
        ), name
    shards = sorted((bundle / "shards").glob("*.npy"), key=lambda p: p.stem[-6:])  # by index: val, then train
    assert "_val_" in shards[0].name and all("_train_" in p.name for p in shards[1:])
    text = (shared_data / "tinyshakespeare" / "input.txt").read_text()
    tokens = np.concatenate([np.load(p) for p in shards])
    assert tokens.tolist() == [50256, *tiktoken.get_encoding("gpt2").encode_ordinary(text)]
    sent = sum(len(b) for b in files_under(bundle).values()) + gpu_check.repository_bytes(bundle)
    assert sent < 64 * 2**20
    assert not bundle.with_name("gpu_check.partial").exists()


def test_cpu_mode_takes_every_step_and_writes_its_report(run, bundle, tmp_path):
    out = tmp_path / "out"
    proc = run("tools/gpu_check.py", "run", out, "--device", "cpu", "--bundle", bundle, timeout=900)
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr
    # what the device tool brings back: at most 8 files, none deeper than the folder
    logs = ["bench_gpt2.log", "bench_modern.log", "tests.log", "train.log"]
    assert sorted(p.name for p in out.iterdir()) == sorted([*logs, "report.json", "report.md"])
    lines = (out / "report.json").read_text().splitlines()
    assert len(lines) == 1
    report = json.loads(lines[0])
    assert {name: step["status"] for name, step in report["steps"].items()} == dict.fromkeys(
        ["tests", "bench_gpt2", "bench_modern", "train"], "ok"
    )
    env = report["environment"]
    assert env["device"] == "cpu" and env["torch"] == torch.__version__ and env["transformers"]

    tests = report["tests"]  # the CUDA cases, each skipped here with its reason
    assert len(tests) >= 10 and all("cuda" in t["name"] and t["outcome"] == "skipped" for t in tests), tests
    assert all("no CUDA GPU here" in t["message"] for t in tests), tests

    results = report["results"]
    train, generate = results["bench_gpt2"]["train"], results["bench_gpt2"]["generate"]
    assert train["ours_tokens_per_s"] > 0 and train["hf_tokens_per_s"] > 0 and train["ours_peak_memory"] is None
    assert generate["same_tokens"] and "compiled_tokens_per_s" not in generate  # compiled on a GPU only (test_gpu.py
    # compiles the decode step on a CPU)
    assert results["bench_gpt2"]["config"]["recipe"] == "gpt2" and results["bench_modern"]["config"]["rope"] is True
    assert results["bench_modern"]["train"]["ours_tokens_per_s"] > 0 and results["bench_gpt2"]["hellaswag"]["n"] > 0
    assert results["train"]["steps"] == 3 and results["train"]["val"] > 0 and results["train"]["hella"] is not None
    assert [g["verdict"] for g in report["goals"].values()] == ["n/a: not a GPU"] * 2

    markdown = (out / "report.md").read_text()
    assert (
        markdown.startswith("# GPU check: ")
        and "| tests | ok |" in markdown
        and "| train step, --recipe modern |" in markdown
    )
    assert proc.stdout.endswith("\n" + markdown)  # printed too: the device tool shows the command's output


def test_a_failed_step_and_one_past_its_limit_are_reported_and_the_next_steps_run(
    bundle, gpu_check, monkeypatch, tmp_path
):
    # the second step leaves a child of its own behind: the whole process group goes at its limit
    leaves_a_child = (
        "import subprocess, sys, time; c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])"
    )
    leaves_a_child += "; print(c.pid, flush=True); time.sleep(60)"
    steps = {
        "tests": [sys.executable, "-c", "import sys; print('the end of the log'); sys.exit(3)"],
        "bench_gpt2": [sys.executable, "-c", leaves_a_child],
        "bench_modern": [sys.executable, "-c", "print('no figures')"],
        "train": [sys.executable, "-c", "print('step 0 | loss 9.0 | dt 1.00ms | tok/sec 512 | mfu n/a')"],
    }
    monkeypatch.setattr(gpu_check, "commands", lambda device, folder, junit: steps)
    monkeypatch.setitem(gpu_check.LIMITS, "bench_gpt2", 3)
    assert gpu_check.run(tmp_path / "out", torch.device("cpu"), bundle, minutes=1) is False
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    statuses = {name: step["status"] for name, step in report["steps"].items()}
    assert statuses == {
        "tests": "failed (exit 3)",
        "bench_gpt2": "timed out after 3 s",
        "bench_modern": "ok",
        "train": "ok",
    }
    child = int((tmp_path / "out" / "bench_gpt2.log").read_text().split()[0])
    stat = Path(f"/proc/{child}/stat")
    assert not stat.exists() or stat.read_text().split()[2] in "ZX"  # killed: gone, or a zombie nobody has reaped
    assert report["results"]["bench_modern"] is None and report["results"]["train"]["tokens_per_s"] == 512
    markdown = (tmp_path / "out" / "report.md").read_text()
    assert "## tests: the end of tests.log" in markdown and "the end of the log" in markdown

    # a run whose --minutes are spent runs no step, and says so
    assert gpu_check.run(tmp_path / "late", torch.device("cpu"), bundle, minutes=0.1) is False
    report = json.loads((tmp_path / "late" / "report.json").read_text())
    assert {step["status"] for step in report["steps"].values()} == {"not run: --minutes spent"}


def test_bad_input_is_one_line(run, bundle, tmp_path):
    (tmp_path / "a_file").write_text("")
    for args, says in [
        (["run", tmp_path / "out", "--device", "cpu", "--bundle", tmp_path / "none"], "no bundle in"),
        (["bundle", "--data", tmp_path, "--to", tmp_path / "b"], f"{tmp_path} lacks tiktoken_cache"),
        (["run", tmp_path / "a_file", "--device", "cpu", "--bundle", bundle], f"{tmp_path / 'a_file'} is a file"),
    ]:
        proc = run("tools/gpu_check.py", *args)
        assert proc.returncode == 1 and proc.stderr.startswith(says) and proc.stderr.count("\n") == 1, proc.stderr
        assert not (tmp_path / "out").exists() and not (tmp_path / "b").exists()
