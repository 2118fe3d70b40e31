"""The README's quick start, run as written but shortened: fineweb.py -> train_gpt2.py -> sample.py, in a copy of the
repository's scripts and its Tiny Shakespeare, with no network."""

import os
import re
import shutil
import subprocess


def quick_start_commands(readme):
    """The commands of the first bash block under the Quick start heading, continuation lines joined."""
    section = readme.split("\n## Quick start", 1)[1]
    block = section.split("```bash\n", 1)[1].split("```", 1)[0]
    return [line.strip() for line in block.replace("\\\n", " ").splitlines() if line.strip()]


def shortened(commands):
    """The same pipeline, only shorter: 4 steps instead of 300, no compile, a smaller val set, fewer new tokens."""
    short = " && ".join(commands)
    for long, brief in [
        ("--max_steps 300", "--max_steps 4"),
        ("--eval_interval 50", "--eval_interval 2"),
        ("--sample_interval 100", "--sample_interval 2"),
        ("--compile", "--no-compile"),
        ("--val_tokens 32000", "--val_tokens 4096"),  # 3 evaluations of 32,000 tokens are most of the time
        ("--max_new_tokens 80", "--max_new_tokens 10"),
    ]:
        assert short.count(long) == 1, f"the quick start no longer has {long}: update this test"
        short = short.replace(long, brief)
    return short


def test_readme_quick_start_runs_from_the_repository_alone(repo, tmp_path):
    commands = quick_start_commands((repo / "README.md").read_text())
    assert [c.split()[1] for c in commands] == ["fineweb.py", "train_gpt2.py", "sample.py"]
    for script in repo.glob("*.py"):  # every module the scripts import, whatever their names
        shutil.copy(script, tmp_path)
    (tmp_path / "tinyshakespeare").mkdir()
    shutil.copy(repo / "tinyshakespeare" / "input.txt", tmp_path / "tinyshakespeare")  # it ships: no download
    refused = {k: "http://127.0.0.1:9" for k in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy")}
    env = {**os.environ, **refused, "NO_PROXY": "", "no_proxy": ""}  # no network (tiktoken's files: its cache dir)
    proc = subprocess.run(
        ["bash", "-c", shortened(commands)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr

    shards = sorted(p.name for p in (tmp_path / "tinyshakespeare").glob("*.npy"))
    assert shards[-1] == "tinyshakespeare_val_000000.npy" and len(shards) == 11  # 338k tokens in 32,768-token shards
    log = (tmp_path / "log" / "shakespeare" / "log.txt").read_text()
    assert re.search(r"^4 val \d+\.\d{4}$", log, re.MULTILINE)
    assert (tmp_path / "log" / "shakespeare" / "model_00004.pt").exists()
    assert proc.stdout.count("ROMEO:") == 2 and "--- sample 2 of 2 ---" in proc.stdout
