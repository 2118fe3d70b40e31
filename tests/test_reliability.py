"""Kill training in a checkpoint write, an evaluation or a step, damage its newest checkpoint, lose a DDP rank: the
run resumes or ends cleanly, and nothing saved is ever corrupt."""

import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from checkpoint import checkpoint_paths


def assert_checkpoints_load(log_dir):
    for path in checkpoint_paths(log_dir):
        ckpt = torch.load(path, weights_only=True)
        assert ckpt["step"] == int(path.stem.split("_")[1])


def kill_when(proc, moment):
    """SIGKILL the run as soon as moment() holds (asked every millisecond); its stdout."""
    while not moment():
        assert proc.poll() is None, "the run ended before the moment came"
        time.sleep(0.001)
    proc.kill()
    return proc.communicate()[0]


def test_sigkill_in_a_checkpoint_write_an_evaluation_and_a_step_then_resume_equals_the_uninterrupted_run(
    start, train, same_run, tiny, shakespeare_shards, tmp_path
):
    # every 2 steps a checkpoint, every 3 an evaluation: after the step-5 line comes step 6's evaluation, after the
    # step-6 line step 7 alone. Each kill is checked to have landed where it was aimed, from what is on disk
    args = [*tiny, "--data_dir", shakespeare_shards, "--total_batch_size", "256", "--max_steps", "10",
            "--eval_interval", "3", "--checkpoint_interval", "2"]  # fmt: skip
    full, killed = tmp_path / "full", tmp_path / "killed"
    assert train(*args, "--log_dir", full).returncode == 0
    args += ["--log_dir", killed, "--resume"]

    def last_logged():
        lines = (killed / "log.txt").read_text().splitlines(keepends=True) if (killed / "log.txt").exists() else []
        return lines[-1] if lines and lines[-1].endswith("\n") else ""

    # 1: inside the write of step 4's checkpoint, which stays a temporary file
    kill_when(start("train_gpt2.py", *args), lambda: (killed / "model_00004.pt.tmp").exists())
    assert (killed / "model_00004.pt.tmp").exists() and checkpoint_paths(killed) == [killed / "model_00002.pt"]

    # 2: inside step 6's evaluation: step 5 is logged, the evaluation's val loss is not
    out = kill_when(start("train_gpt2.py", *args), lambda: last_logged().startswith("5 train "))
    assert "model_00002.pt at step 2" in out and last_logged().startswith("5 train ")
    assert [p.name for p in checkpoint_paths(killed)] == ["model_00002.pt", "model_00004.pt"]

    # 3: inside step 7, as soon as step 6 is logged (a sleep of part of a step's time once missed it under load)
    out = kill_when(start("train_gpt2.py", *args), lambda: last_logged().startswith("6 train "))
    assert "model_00004.pt at step 4" in out
    assert last_logged().startswith("6 train ") and [p.name for p in checkpoint_paths(killed)][-1] == "model_00006.pt"

    finished = train(*args)
    assert finished.returncode == 0, finished.stderr
    assert "model_00006.pt at step 6" in finished.stdout
    same_run(full, killed, 10, parts=("model", "optimizer", "train_loader"))
    assert not list(killed.glob("*.tmp"))
    assert_checkpoints_load(killed)


def test_resume_falls_back_past_a_damaged_newest_checkpoint(train, same_run, tiny, shakespeare_shards, tmp_path):
    args = [
        *tiny,
        "--data_dir",
        str(shakespeare_shards),
        "--total_batch_size",
        "256",
        "--max_steps",
        "6",
        "--eval_interval",
        "3",
        "--checkpoint_interval",
        "3",
    ]
    full, damaged = tmp_path / "full", tmp_path / "damaged"
    assert train(*args, "--log_dir", str(full)).returncode == 0
    damaged.mkdir()
    for name in ("model_00003.pt", "log.txt"):
        (damaged / name).write_bytes((full / name).read_bytes())
    newest = (full / "model_00006.pt").read_bytes()
    (damaged / "model_00006.pt").write_bytes(newest[: len(newest) // 2])  # e.g. a disk that filled up

    proc = train(*args, "--log_dir", str(damaged), "--resume")
    assert proc.returncode == 0, proc.stderr
    notices = [line for line in proc.stdout.splitlines() if "model_00006.pt" in line]
    assert len(notices) == 1 and "trying an older one" in notices[0]
    assert "resuming from" in proc.stdout and "model_00003.pt at step 3" in proc.stdout
    same_run(full, damaged, 6)


def test_a_dead_ddp_rank_ends_the_job_instead_of_hanging(start, lines_until, tiny, shakespeare_shards, tmp_path):
    args = [*tiny, "--data_dir", shakespeare_shards, "--log_dir", tmp_path, "--batch_size", "2", "--seq_len", "32",
            "--total_batch_size", "128", "--max_steps", "100000", "--eval_interval", "0", "--checkpoint_interval", "3"]  # fmt: skip
    proc = start("train_gpt2.py", *args, torchrun=2)
    lines_until(proc, "step 5 |")
    # the two workers are torchrun's children: kill one of them, rank 0 (the printer) or not
    workers = [int(pid) for pid in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()]
    assert len(workers) == 2
    os.kill(random.Random(1).choice(workers), signal.SIGKILL)
    try:
        _, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("the job still runs 2 minutes after one of its ranks died")
    assert proc.returncode != 0, err
    assert checkpoint_paths(tmp_path)
    assert_checkpoints_load(tmp_path)
