"""The README's quick start, run as written but shortened and offline: fineweb.py -> train_gpt2.py -> sample.py."""
import re
import shutil
import subprocess


def quick_start_commands(readme):
    """The commands of the first bash block under the Quick start heading, continuation lines joined."""
    section = readme.split("\n## Quick start", 1)[1]
    block = section.split("```bash\n", 1)[1].split("```", 1)[0]
    return [line.strip() for line in block.replace("\\\n", " ").splitlines() if line.strip()]


def test_readme_quick_start_runs(repo, shared_data, tmp_path):
    commands = quick_start_commands((repo / "README.md").read_text())
    assert [c.split()[1] for c in commands] == ["fineweb.py", "train_gpt2.py", "sample.py"]
    # the same pipeline, in a scratch copy of the scripts, with 4 steps instead of 300, no compile, a smaller val set, and the
    # local copy of Tiny Shakespeare that the README's offline note names instead of its download
    short = " && ".join(commands).replace("--dataset tinyshakespeare", f"--input {shared_data}/tinyshakespeare/input.txt --out tinyshakespeare")
    short = short.replace("--max_steps 300", "--max_steps 4").replace("--eval_interval 50", "--eval_interval 2")
    short = short.replace("--sample_interval 100", "--sample_interval 2").replace("--compile", "--no-compile").replace("--max_new_tokens 80", "--max_new_tokens 10")
    short = short.replace("--val_tokens 32000", "--val_tokens 4096")  # 3 evaluations of 32,000 tokens are most of the time
    assert short.count("--max_steps 4") == 1 and "--no-compile" in short and "--input" in short and "--val_tokens 4096" in short
    for script in ("cli.py", "fineweb.py", "train_gpt2.py", "sample.py", "hellaswag.py", "plot.py"):
        shutil.copy(repo / script, tmp_path)
    proc = subprocess.run(["bash", "-c", short], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr

    shards = sorted(p.name for p in (tmp_path / "tinyshakespeare").glob("*.npy"))
    assert shards[-1] == "tinyshakespeare_val_000000.npy" and len(shards) == 11  # 338k tokens in 32,768-token shards
    log = (tmp_path / "log" / "shakespeare" / "log.txt").read_text()
    assert re.search(r"^4 val \d+\.\d{4}$", log, re.M) and (tmp_path / "log" / "shakespeare" / "model_00004.pt").exists()
    assert proc.stdout.count("ROMEO:") == 2 and "--- sample 2 of 2 ---" in proc.stdout
