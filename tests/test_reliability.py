"""Kill training anywhere, damage its newest checkpoint, lose a DDP rank: the run resumes or ends cleanly,
and nothing saved is ever corrupt."""

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from checkpoint import checkpoint_paths


def assert_checkpoints_load(log_dir):
    for path in checkpoint_paths(log_dir):
        ckpt = torch.load(path, weights_only=True)
        assert ckpt["step"] == int(path.stem.split("_")[1])


def final_weights(log_dir, step):
    return torch.load(Path(log_dir) / f"model_{step:05d}.pt", weights_only=True)["model"]


def test_sigkill_at_random_moments_then_resume_equals_the_uninterrupted_run(
    repo, train, tiny, shakespeare_shards, tmp_path
):
    # checkpoints and evaluations are frequent so that kills land in steps, evals and checkpoint writes alike
    args = [
        *tiny,
        "--data_dir",
        str(shakespeare_shards),
        "--total_batch_size",
        "256",
        "--max_steps",
        "10",
        "--eval_interval",
        "3",
        "--checkpoint_interval",
        "2",
    ]
    full, killed = tmp_path / "full", tmp_path / "killed"
    assert train(*args, "--log_dir", str(full)).returncode == 0

    rng = random.Random(0)
    cmd = [sys.executable, str(repo / "train_gpt2.py"), *args, "--log_dir", str(killed), "--resume"]
    for _ in range(3):
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        # wait for the first step line so the kill lands inside training, then a random while longer
        for line in proc.stdout:
            if line.startswith("step "):
                break
        time.sleep(rng.uniform(0.0, 1.5))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert_checkpoints_load(killed)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr

    assert (killed / "log.txt").read_text() == (full / "log.txt").read_text()
    a, b = final_weights(full, 10), final_weights(killed, 10)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert_checkpoints_load(killed)


def test_resume_falls_back_past_a_damaged_newest_checkpoint(train, log_of, tiny, shakespeare_shards, tmp_path):
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
    assert log_of(damaged) == log_of(full)
    a, b = final_weights(full, 6), final_weights(damaged, 6)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_dead_ddp_rank_ends_the_job_instead_of_hanging(repo, tiny, shakespeare_shards, tmp_path):
    args = [*tiny, "--data_dir", str(shakespeare_shards), "--log_dir", str(tmp_path), "--batch_size", "2", "--seq_len", "32",
            "--total_batch_size", "128", "--max_steps", "100000", "--eval_interval", "0", "--checkpoint_interval", "3"]  # fmt: skip
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    proc = subprocess.Popen(
        [*launcher, str(repo / "train_gpt2.py"), *args], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    for line in proc.stdout:
        if line.startswith("step 5 |"):
            break
    # the two workers are torchrun's children; kill the one that is not rank 0's printer at random
    workers = [int(pid) for pid in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()]
    assert len(workers) == 2
    os.kill(random.Random(1).choice(workers), signal.SIGKILL)
    start = time.monotonic()
    proc.stdout.close()
    assert proc.wait(timeout=120) != 0
    assert time.monotonic() - start < 120
    assert checkpoint_paths(tmp_path)
    assert_checkpoints_load(tmp_path)
