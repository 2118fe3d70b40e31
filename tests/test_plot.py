"""plot.png: drawn at every evaluation when matplotlib is installed; without it training still succeeds."""

import subprocess
import sys

import pytest

SHORT = ["--max_steps", "4", "--eval_interval", "2"]  # after the tiny run's flags


def test_training_draws_plot_png(train, tiny, shakespeare_shards, tmp_path):
    image = pytest.importorskip("matplotlib.image")  # optional dependency; CI installs it
    proc = train(*tiny, *SHORT, "--data_dir", str(shakespeare_shards), "--log_dir", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    pixels = image.imread(tmp_path / "plot.png")
    assert pixels.shape[0] > 300 and pixels.shape[1] > 500
    assert not list(tmp_path.glob("*.tmp*"))


def test_training_without_matplotlib_says_so_once_and_succeeds(repo, tiny, shakespeare_shards, tmp_path):
    # a None entry in sys.modules makes `import matplotlib` fail as if it were not installed
    code = (
        "import sys, runpy; sys.modules['matplotlib'] = None; "
        f"sys.argv = ['train_gpt2.py', *{tiny + SHORT!r}, '--data_dir', {str(shakespeare_shards)!r}, '--log_dir', {str(tmp_path)!r}]; "
        f"runpy.run_path({str(repo / 'train_gpt2.py')!r}, run_name='__main__')"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("matplotlib is not installed") == 1
    assert (tmp_path / "model_00004.pt").exists() and not (tmp_path / "plot.png").exists()


def test_plot_command_draws_any_log_dir(run, tmp_path):
    pytest.importorskip("matplotlib")
    lines = [f"{s} train {10 - s / 100:.6f}" for s in range(500)] + [
        f"{s} val {10 - s / 100:.4f}\n{s} hella {0.25 + s / 1e4:.4f}" for s in range(0, 500, 100)
    ]
    (tmp_path / "log.txt").write_text("\n".join(lines) + "\n")
    proc = run("plot.py", tmp_path)
    assert proc.returncode == 0, proc.stderr
    from matplotlib.image import imread

    assert imread(tmp_path / "plot.png").shape[1] > 1000  # two panels: loss and HellaSwag
