"""The README's offline quick start, run as written but shortened: fineweb.py -> train_gpt2.py -> sample.py."""
import re
import shutil
import subprocess

from conftest import REPO


def test_readme_offline_quick_start_runs(shared_data, tmp_path):
    readme = (REPO / "README.md").read_text()
    [line] = [l for l in readme.splitlines() if l.startswith("python fineweb.py --input ../shared/data/tinyshakespeare/input.txt")]
    # the same pipeline, in a scratch copy of the scripts, with 4 steps instead of 300 and no compile
    short = line.replace("--max_steps 300", "--max_steps 4").replace("--eval_interval 50", "--eval_interval 2")
    short = short.replace("--sample_interval 100", "--sample_interval 2").replace("--compile", "--no-compile")
    short = short.replace("../shared/data", str(shared_data)).replace("--max_new_tokens 80", "--max_new_tokens 10")
    assert short.count("--max_steps 4") == 1 and "--no-compile" in short
    for script in ("fineweb.py", "train_gpt2.py", "sample.py", "hellaswag.py", "plot.py"):
        shutil.copy(REPO / script, tmp_path)
    proc = subprocess.run(["bash", "-c", short], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr

    shards = sorted(p.name for p in (tmp_path / "tinyshakespeare").glob("*.npy"))
    assert shards[-1] == "tinyshakespeare_val_000000.npy" and len(shards) == 11  # 338k tokens in 32,768-token shards
    log = (tmp_path / "log" / "shakespeare" / "log.txt").read_text()
    assert re.search(r"^4 val \d+\.\d{4}$", log, re.M) and (tmp_path / "log" / "shakespeare" / "model_00004.pt").exists()
    assert proc.stdout.count("ROMEO:") == 2 and "--- sample 2 of 2 ---" in proc.stdout
