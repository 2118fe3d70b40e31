"""Long runs on rented GPUs: a signal is a checkpoint that resumes exactly (one process, and torchrun with the signal
at one rank only), a second Ctrl-C ends at once, time-based checkpoints bound what a crash loses, --keep_checkpoints
bounds the disk, a full disk is one line, and a log dir holds one run at a time."""

import os
import re
import resource
import signal
import time
from pathlib import Path

import pytest
import torch

from checkpoint import checkpoint_paths, checkpoint_step

INTERRUPTED = re.compile(r"interrupted by (SIG\w+) at step (\d+): saved (\S+); --resume continues exactly")


def args_of(tiny, shards, *more):
    return [*tiny, "--data_dir", str(shards), "--total_batch_size", "256", "--eval_interval", "4", *map(str, more)]


@pytest.fixture(scope="module")
def uninterrupted(train, tiny, shakespeare_shards, tmp_path_factory):
    log_dir = tmp_path_factory.mktemp("uninterrupted")
    proc = train(*args_of(tiny, shakespeare_shards, "--max_steps", 12), "--log_dir", log_dir)
    assert proc.returncode == 0, proc.stderr
    return log_dir, proc.stdout


def test_the_step_line_tells_the_time_so_far_and_left(uninterrupted):
    steps = [line for line in uninterrupted[1].splitlines() if line.startswith("step ")]
    assert len(steps) == 12 and all(re.search(r" \| mfu n/a \| elapsed \d+:\d\d:\d\d \| eta ", s) for s in steps)
    # no estimate before a second step ends (the first compiles, or warms up), then one that falls to the final
    # evaluation and checkpoint
    assert steps[0].endswith("| eta n/a") and all(re.search(r"\| eta \d+:\d\d:\d\d$", s) for s in steps[1:])
    etas = [sum(int(x) * 60**i for i, x in enumerate(reversed(s.rsplit(" ", 1)[1].split(":")))) for s in steps[1:]]
    assert etas[-1] < etas[0] / 2, etas


def test_ctrl_c_saves_a_checkpoint_to_resume_from(start, lines_until, tiny, shakespeare_shards, tmp_path):
    # SIGTERM's is the same checkpoint; tests/test_gpu.py resumes from it, on each device, and compares
    args = args_of(tiny, shakespeare_shards, "--max_steps", 12, "--log_dir", tmp_path)
    proc = start("train_gpt2.py", *args)
    lines_until(proc, "step 5 |")
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGINT, err
    assert "Traceback" not in out + err
    name, step, path = INTERRUPTED.fullmatch(out.splitlines()[-1]).groups()
    assert name == "SIGINT" and 6 <= int(step) < 12
    assert Path(path) == tmp_path / f"model_{int(step):05d}.pt" and checkpoint_paths(tmp_path) == [Path(path)]


def test_a_second_ctrl_c_ends_at_once(start, lines_until, tiny, shakespeare_shards, tmp_path):
    # 25 micro-steps make a step of a second or more: both Ctrl-Cs land inside step 2, timed by step 1 (step 0 is
    # slower, its first AdamW step sets up), far enough apart that the first one's handler has run
    args = args_of(tiny, shakespeare_shards, "--max_steps", 4, "--log_dir", tmp_path, "--total_batch_size", 25 * 256)
    proc = start("train_gpt2.py", *args)
    step_s = float(re.search(r"dt ([\d.]+)ms", lines_until(proc, "step 1 |")[-1])[1]) / 1000
    assert step_s > 1  # else the Ctrl-Cs below might not land in one step
    time.sleep(step_s / 10)  # into step 2
    proc.send_signal(signal.SIGINT)  # the first only asks for a checkpoint after the step
    time.sleep(step_s / 4)
    assert proc.poll() is None
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=step_s)  # within the step, not after it
    assert proc.returncode == -signal.SIGINT  # ended by the signal itself, as without a handler
    assert checkpoint_paths(tmp_path) == []


def test_a_signal_at_one_torchrun_rank_stops_both_at_the_same_step(
    start, lines_until, train, same_run, tiny, shakespeare_shards, tmp_path
):
    args = args_of(tiny, shakespeare_shards, "--max_steps", 10, "--total_batch_size", 512)
    full, stopped = tmp_path / "full", tmp_path / "stopped"
    assert train(*args, "--log_dir", full, torchrun=2).returncode == 0
    proc = start("train_gpt2.py", *args, "--log_dir", stopped, torchrun=2)
    lines_until(proc, "step 3 |")
    # torchrun's two workers: the signal goes to rank 1 alone, which prints nothing
    workers = [int(pid) for pid in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()]
    rank = {pid: re.search(rb"(?:^|\0)RANK=(\d)", Path(f"/proc/{pid}/environ").read_bytes())[1] for pid in workers}
    os.kill(next(pid for pid in workers if rank[pid] == b"1"), signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode != 0
    lines = [line for line in out.splitlines() if INTERRUPTED.fullmatch(line)]
    assert len(lines) == 1, out + err
    _, step, path = INTERRUPTED.fullmatch(lines[0]).groups()
    assert checkpoint_paths(stopped) == [Path(path)] and 4 <= int(step) < 10

    resumed = train(*args, "--log_dir", stopped, "--resume", torchrun=2)
    assert resumed.returncode == 0, resumed.stderr
    same_run(full, stopped, 10)


def checkpoints_kept(last):
    """What the policy leaves after the checkpoint of step `last` with --checkpoint_interval 3 --keep_checkpoints 2:
    the newest two interval ones, and `last` itself (a time-based or a signal's one lasts until the next is saved)."""
    return [f"model_{step:05d}.pt" for step in sorted({*list(range(3, last + 1, 3))[-2:], last})]


def test_what_signals_crashes_and_resumes_leave_on_disk_with_time_based_and_kept_checkpoints(
    start, lines_until, train, same_run, tiny, shakespeare_shards, uninterrupted, tmp_path
):
    # --checkpoint_minutes 1e-9: one due after every step. Each lasts until the next is on disk; of the interval
    # checkpoints (3, 6, 9, 12) the newest two stay. A resume deletes nothing before it has saved a newer one
    args = args_of(tiny, shakespeare_shards, "--max_steps", 12, "--checkpoint_interval", 3, "--keep_checkpoints", 2)
    args += ["--checkpoint_minutes", "1e-9", "--log_dir", tmp_path, "--resume"]

    def names():
        return [p.name for p in sorted(tmp_path.iterdir()) if p.name.startswith("model_")]  # temporary files too

    def interrupted(proc):
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 128 + signal.SIGTERM, err
        return int(INTERRUPTED.fullmatch(out.splitlines()[-1])[2])

    signalled = start("train_gpt2.py", *args)
    lines_until(signalled, "step 4 |")
    signalled.send_signal(signal.SIGTERM)
    first = interrupted(signalled)
    assert names() == checkpoints_kept(first), first

    # a resume deletes nothing before it has saved: with no checkpoint due, killed after its first step, it leaves what
    # it found (the policy's flags may change on a resume)
    killed = start("train_gpt2.py", *args, "--checkpoint_interval", 0, "--checkpoint_minutes", 0)
    lines_until(killed, f"step {first} |")
    killed.kill()
    killed.communicate()
    assert names() == checkpoints_kept(first)

    # resumed from the signal's checkpoint, signalled again at once: the first step's checkpoint replaces it
    resumed = start("train_gpt2.py", *args)
    lines_until(resumed, "resuming from")
    resumed.send_signal(signal.SIGTERM)
    assert interrupted(resumed) == first + 1 and names() == checkpoints_kept(first + 1)

    # a crash: a checkpoint after every step bounds what it loses to about a step
    crashed = start("train_gpt2.py", *args)
    lines_until(crashed, "step 9 |")
    crashed.kill()
    crashed.communicate()
    newest = checkpoint_step(checkpoint_paths(tmp_path)[-1])
    complete = [name for name in names() if name.endswith(".pt")]  # the kill may land in a write: its .tmp stays
    assert newest >= 9 and complete == checkpoints_kept(newest), names()

    finished = train(*args)
    assert finished.returncode == 0, finished.stderr
    assert f"at step {newest}" in finished.stdout and names() == ["model_00009.pt", "model_00012.pt"]
    same_run(uninterrupted[0], tmp_path, 12)  # the checkpoints' flags change nothing that is computed


def test_a_full_disk_during_a_checkpoint_is_one_line_and_loses_nothing(
    start, train, tiny, shakespeare_shards, tmp_path
):
    args = args_of(tiny, shakespeare_shards, "--checkpoint_interval", 2, "--log_dir", tmp_path)
    assert train(*args, "--max_steps", 4).returncode == 0
    log_before = (tmp_path / "log.txt").read_text()

    def small_disk():  # files of at most 4 MB (a checkpoint of this model is 40 MB): writes past that fail with EFBIG
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # else the kernel ends the process at the first such write
        resource.setrlimit(resource.RLIMIT_FSIZE, (4_000_000, 4_000_000))

    proc = start("train_gpt2.py", *args, "--max_steps", 8, "--resume", preexec_fn=small_disk)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1 and "Traceback" not in err, err
    [line] = err.strip().splitlines()
    assert re.search(
        r"cannot write checkpoint \S+model_00006\.pt \(.+\): it needs about [\d,]+ bytes, [\d,]+ are free", line
    )
    assert sorted(p.name for p in tmp_path.iterdir() if "model" in p.name) == ["model_00002.pt", "model_00004.pt"]
    assert all(torch.load(p, weights_only=True)["step"] == checkpoint_step(p) for p in checkpoint_paths(tmp_path))
    log = (tmp_path / "log.txt").read_text()
    assert log.startswith(log_before) and re.fullmatch(r"(\d+ (train|val|val_bpb) \d+\.\d+\n)+", log)

    resumed = train(*args, "--max_steps", 8, "--resume")  # space again: the run goes on from step 4
    assert resumed.returncode == 0 and "at step 4" in resumed.stdout, resumed.stderr


def test_a_second_run_on_a_log_dir_in_use_is_refused_and_kill_9_leaves_no_stale_lock(
    start, lines_until, train, tiny, shakespeare_shards, tmp_path
):
    args = args_of(tiny, shakespeare_shards, "--log_dir", tmp_path)
    first = start("train_gpt2.py", *args, "--max_steps", 100000, "--eval_interval", 1000, "--checkpoint_interval", 0)
    lines_until(first, "step 2 |")
    second = train(*args, "--max_steps", 4)
    assert second.returncode == 1 and "Traceback" not in second.stderr
    [line] = second.stderr.strip().splitlines()
    assert f"is in use by train_gpt2.py (pid {first.pid} on " in line and second.stdout.count("step ") == 0
    assert first.poll() is None  # the first goes on
    first.kill()
    first.communicate()
    log = (tmp_path / "log.txt").read_text().splitlines()
    steps = [int(entry.split()[0]) for entry in log if " train " in entry]
    assert steps == list(range(len(steps))) and sum(" val " in entry for entry in log) == 1  # one run's lines

    third = train(*args, "--max_steps", 2)  # the lock died with its holder
    assert third.returncode == 0, third.stderr
