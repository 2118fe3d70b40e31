"""--plan and --time_budget (budget.py): a plan that times the run and writes nothing; budgeted runs that end within
their budget plus one step with the schedule annealed, its lr never jumping; a resumed one that keeps its plan."""

import itertools
import re
import signal
import time

import pytest
import torch

from checkpoint import checkpoint_paths, load_checkpoint
from train_gpt2 import TrainConfig, get_lr

pytestmark = pytest.mark.xdist_group("budget")  # one at a time: each budgeted run's pace is the others' load
ONE_CORE = {"OMP_NUM_THREADS": "1"}  # and the suite's other process has the other core: a steadier pace
STEP = re.compile(r"step (\d+) \| loss \S+ \| lr (\S+) \| norm \S+ \| dt (\S+)ms")


def args_of(tiny, shards, log_dir, *more):
    more = ["--eval_interval", "10", "--val_tokens", "2048", *map(str, more)]  # a short evaluation: a second or less
    return [*tiny, "--data_dir", str(shards), "--log_dir", str(log_dir), *more]


def steps_of(stdout):
    """{step: (lr, seconds)} from the step lines."""
    return {int(s): (float(lr), float(ms) / 1000) for s, lr, ms in STEP.findall(stdout)}


@pytest.mark.parametrize("max_steps", [None, 3])  # a budget filled; one capped by --max_steps, fewer steps than timed
def test_plan_times_the_run_prints_what_fits_and_writes_nothing(
    train, tiny, shakespeare_shards, snapshot_of, tmp_path, max_steps
):
    before = snapshot_of(shakespeare_shards, tmp_path)
    more = ["--plan", "--time_budget", "10m", "--gpu_price", "2", "--sample_interval", "5", "--hellaswag_interval", "0"]
    more += ["--max_steps", max_steps] if max_steps else []
    proc = train(*args_of(tiny, shakespeare_shards, tmp_path / "run", *more), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert snapshot_of(shakespeare_shards, tmp_path) == before  # no log dir, lock, log.txt, plot or checkpoint
    report = proc.stdout[proc.stdout.index("\nplan: ") :]
    assert report.startswith("\nplan: cpu, float32, 512 tokens a step\n")
    assert re.search(r"\n  pace +[\d,]+ tok/s over \d+ steps; MFU n/a \(no peak FLOP/s known for cpu\)", report)
    assert re.search(r"\n  jobs +evaluation [\d.]+ s, sample [\d.]+ s, checkpoint [\d.]+ s \(each timed once", report)
    run = re.search(r"\n  the run +([\d,]+) steps \((.*)\), ([\d,]+) tokens\n +(\S+) of training", report)
    steps, fits, tokens = int(run[1].replace(",", "")), run[2], int(run[3].replace(",", ""))
    assert tokens == 512 * steps
    assert re.search(rf"\n  scale +{tokens / 3_327_744:.2g} tokens per parameter \(3.3M parameters\)", report)
    assert re.search(r"\n  disk +1 checkpoint\(s\) of 39.9 MB, beside 0.7 MB of token shards", report)
    if max_steps:
        assert steps == 3 and re.fullmatch(r"--max_steps; --time_budget 0:10:00 fits [\d,]+", fits)
        assert re.search(r"\n  cost +0.00 at 2 an hour", report)
    else:  # what fits fills the budget (less two steps held back)
        assert fits == "what --time_budget 0:10:00 fits" and re.fullmatch(r"0:09:5\d|0:10:00", run[4])
        assert re.search(r"\n  cost +0.3\d at 2 an hour for each of 1 process\(es\)", report)  # 10 minutes, the setup


@pytest.mark.parametrize("schedule", ["cosine", "wsd"])
def test_a_budgeted_run_ends_within_its_budget_with_its_schedule_annealed(
    train, tiny, shakespeare_shards, tmp_path, schedule
):
    budget = 10
    args = args_of(tiny, shakespeare_shards, tmp_path, "--time_budget", f"{budget}s", "--schedule", schedule)
    proc = train(*args, env=ONE_CORE)
    assert proc.returncode == 0, proc.stderr
    final = load_checkpoint(checkpoint_paths(tmp_path)[-1])
    plan, horizon, steps = final["pace"], final["step"], steps_of(proc.stdout)
    assert plan["fixed"] and plan["max_steps"] == horizon and sorted(steps) == list(range(horizon))
    assert plan["spent"] <= budget + max(dt for _, dt in steps.values())  # the budget, plus one step at most
    assert f"trained {horizon} steps, {512 * horizon:,} tokens, val loss " in proc.stdout.splitlines()[-1]
    assert f"{horizon} val " in (tmp_path / "log.txt").read_text()

    # the schedule as planned at the end ends at the last step, and the lr never jumped on the way
    cfg = TrainConfig(max_lr=3e-3, warmup_steps=plan["warmup_steps"], max_steps=horizon, schedule=schedule)
    lrs = [lr for _, (lr, _) in sorted(steps.items())]
    assert lrs[-1] == pytest.approx(get_lr(horizon - 1, cfg), rel=1e-4)
    assert lrs[-1] == min(lrs[5:]) and get_lr(horizon, cfg) == pytest.approx(0.1 * 3e-3 if schedule == "cosine" else 0)
    steepest = max(3e-3 / 5, 3e-3 * (torch.pi / 2 if schedule == "cosine" else 1 / 0.4) / (horizon - 5))
    assert max(abs(b - a) for a, b in itertools.pairwise(lrs)) <= 1.2 * steepest, lrs


def test_a_budgeted_run_resumed_after_sigterm_keeps_its_plan_bitwise(
    start, train, tiny, shakespeare_shards, snapshot_of, tmp_path
):
    # a warmup of one step: a loaded machine's short plan would shorten a longer one, which the plain run keeps
    wsd = ["--schedule", "wsd", "--warmup_steps", "1"]
    args = args_of(tiny, shakespeare_shards, tmp_path / "budget", "--time_budget", "12s", *wsd)
    proc = start("train_gpt2.py", *args, env=ONE_CORE)
    fixed = ""
    while "(fixed)" not in fixed:  # wsd's plan is fixed where the decay starts
        fixed = proc.stdout.readline()
        assert fixed, proc.stderr.read() or "the run ended without fixing its plan"
    horizon = int(re.search(r"\| plan (\d+) steps \(fixed\)", fixed)[1])
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    stopped = load_checkpoint(checkpoint_paths(tmp_path / "budget")[-1])
    assert stopped["pace"]["max_steps"] == horizon and stopped["step"] < horizon
    time.sleep(3)  # between the two processes: no training, so not the budget's
    started = time.perf_counter()
    resumed = train(*args, "--resume", env=ONE_CORE)
    wall = time.perf_counter() - started
    assert resumed.returncode == 0, resumed.stderr
    final = load_checkpoint(checkpoint_paths(tmp_path / "budget")[-1])
    assert final["step"] == final["pace"]["max_steps"] == horizon
    assert 0 < final["pace"]["spent"] - stopped["pace"]["spent"] < wall  # the downtime is not counted

    # with the plan fixed, the run is the plain one of that many steps: wsd reads only the horizon
    plain = args_of(tiny, shakespeare_shards, tmp_path / "plain", "--max_steps", horizon, *wsd)
    proc = train(*plain, env=ONE_CORE)
    assert proc.returncode == 0, proc.stderr
    expected = load_checkpoint(tmp_path / "plain" / f"model_{horizon:05d}.pt")
    assert all(torch.equal(expected["model"][k], v) for k, v in final["model"].items())
    assert (tmp_path / "plain" / "log.txt").read_text() == (tmp_path / "budget" / "log.txt").read_text()
    # a budget cannot be given to a run started without one, on resume: its schedule was not planned
    before = snapshot_of(tmp_path / "plain")
    refused = train(*plain, "--resume", "--time_budget", "1h", "--max_steps", 2 * horizon)
    assert refused.returncode == 1 and refused.stderr.strip().endswith("(or start a new run with one)")
    assert snapshot_of(tmp_path / "plain") == before


def test_torchrun_ranks_follow_rank_0s_plan(train, tiny, shakespeare_shards, tmp_path):
    # each rank times its own steps: were the plans their own, one rank would end while the other waits in its next
    # collective until the timeout
    args = args_of(tiny, shakespeare_shards, tmp_path, "--time_budget", "10s", "--total_batch_size", 1024)
    proc = train(*args, torchrun=2, env=ONE_CORE, timeout=180)
    assert proc.returncode == 0, proc.stderr
    final = load_checkpoint(checkpoint_paths(tmp_path)[-1])
    assert final["step"] == final["pace"]["max_steps"] and final["pace"]["fixed"]
    assert f"trained {final['step']} steps" in proc.stdout


def test_max_steps_caps_a_budget_and_says_so(train, tiny, shakespeare_shards, tmp_path):
    proc = train(*args_of(tiny, shakespeare_shards, tmp_path, "--time_budget", "1h", "--max_steps", 3))
    assert proc.returncode == 0, proc.stderr
    assert re.search(
        r"^--time_budget 1:00:00 fits about \d+ steps: --max_steps ends it sooner$", proc.stdout, re.MULTILINE
    )
    final = load_checkpoint(tmp_path / "model_00003.pt")
    assert final["pace"]["max_steps"] == 3 and sorted(steps_of(proc.stdout)) == [0, 1, 2]
