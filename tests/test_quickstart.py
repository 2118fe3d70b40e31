"""The README's quick start, one command, run as written with a one-minute budget: in a copy of the repository's
scripts and its Tiny Shakespeare, with no shards and no network, it tokenizes, trains within the minute (and a half,
start-up included) with its schedule annealed, and samples."""

import os
import re
import shutil
import subprocess
import sys
import time

import pytest

from checkpoint import load_checkpoint
from train_gpt2 import TrainConfig, get_lr

pytestmark = pytest.mark.xdist_group("quickstart")  # its own: a minute of one worker, beside test_budget.py's group


def quick_start_command(readme):
    """The first bash block under the Quick start heading: one command."""
    section = readme.split("\n## Quick start", 1)[1]
    block = section.split("```bash\n", 1)[1].split("```", 1)[0]
    commands = [line.split("#")[0].strip() for line in block.splitlines() if line.split("#")[0].strip()]
    assert len(commands) == 1, f"the quick start is one command, not {commands}"
    return commands[0].split()


def test_readme_quick_start_runs_from_the_repository_alone_in_its_budget(repo, tmp_path):
    command = quick_start_command((repo / "README.md").read_text())
    assert command == ["python", "quickstart.py"]
    for script in repo.glob("*.py"):  # every module the scripts import, whatever their names
        shutil.copy(script, tmp_path)
    (tmp_path / "tinyshakespeare").mkdir()
    shutil.copy(repo / "tinyshakespeare" / "input.txt", tmp_path / "tinyshakespeare")  # it ships: no download
    refused = {k: "http://127.0.0.1:9" for k in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy")}
    env = {**os.environ, **refused, "NO_PROXY": "", "no_proxy": "", "OMP_NUM_THREADS": "1"}  # tiktoken: its cache
    # a minute, not five; eager: compiling takes minutes on some CPUs; a quarter of the evaluation: some steps in it
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, *command[1:], "--time_budget", "1m", "--no-compile", "--val_tokens", "8192"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    wall = time.perf_counter() - started
    assert proc.returncode == 0, proc.stderr
    assert wall < 90, f"{wall:.0f} s for a one-minute budget, start-up included"

    shards = sorted(p.name for p in (tmp_path / "tinyshakespeare").glob("*.npy"))
    assert shards[-1] == "tinyshakespeare_val_000000.npy" and len(shards) == 11  # 338k tokens in 32,768-token shards
    (log_dir,) = (tmp_path / "log").iterdir()  # log/shakespeare-<when it started>
    lines = proc.stdout.splitlines()
    ends = [
        re.fullmatch(r"trained (\d+) steps, [\d,]+ tokens, val loss [\d.]+, in \S+ of the 0:01:00 budget", s)
        for s in lines
    ]
    (end,) = filter(None, ends)
    steps = int(end[1])
    assert (log_dir / f"model_{steps:05d}.pt").exists() and f"{steps} val " in (log_dir / "log.txt").read_text()
    # annealed: the lr falls from its peak to the planned cosine's last value at the last step (however few fit)
    lrs = [float(line.split(" | ")[2].split()[1]) for line in lines if line.startswith("step ")]
    plan = load_checkpoint(log_dir / f"model_{steps:05d}.pt")["pace"]
    cfg = TrainConfig(max_lr=1e-3, warmup_steps=plan["warmup_steps"], max_steps=steps)
    assert len(lrs) == steps and max(lrs) == 1e-3 and lrs[-1] == min(lrs[lrs.index(1e-3) :])
    assert lrs[-1] == pytest.approx(get_lr(steps - 1, cfg), rel=1e-4)
    assert proc.stdout.count("ROMEO:") == 2 and "--- sample 2 of 2 ---" in proc.stdout
