"""--run_name and --wandb: a named run gets its own log dir, and wandb (optional) records it offline."""

import re

import pytest
import torch

SHORT = ["--eval_interval", "2", "--checkpoint_interval", "2"]  # after the tiny run's flags


@pytest.fixture
def train_in(train, tiny, tmp_path_factory):
    """train_in(cwd, *args, block_wandb=False): train_gpt2.py from cwd with the tiny run's flags, then these; wandb
    offline, or (block_wandb) failing to import as if it were not installed: a wandb.py ahead of it on the path."""
    blocker = tmp_path_factory.mktemp("no_wandb")
    (blocker / "wandb.py").write_text("raise ModuleNotFoundError(\"No module named 'wandb'\", name='wandb')\n")

    def train_in(cwd, *args, block_wandb=False):
        env = {"WANDB_MODE": "offline", "WANDB_SILENT": "true", **({"PYTHONPATH": str(blocker)} if block_wandb else {})}
        return train(*tiny, *args, cwd=cwd, env=env, timeout=300)

    return train_in


def test_named_run_logs_to_log_slash_name_and_to_offline_wandb_across_a_resume(train_in, shakespeare_shards, tmp_path):
    pytest.importorskip("wandb")  # optional for users; CI installs it so this runs
    data = ["--data_dir", str(shakespeare_shards), "--run_name", "shakes1", "--wandb"]
    first = train_in(tmp_path, *SHORT, *data, "--max_steps", "4")
    assert first.returncode == 0, first.stderr
    log_dir = tmp_path / "log" / "shakes1"
    assert (log_dir / "log.txt").exists() and (log_dir / "model_00004.pt").exists()

    run_id = torch.load(log_dir / "model_00004.pt", weights_only=True)["wandb_run_id"]
    assert re.fullmatch(r"[a-z0-9]+", run_id)
    (records,) = (log_dir / "wandb").glob(f"offline-run-*-{run_id}/run-{run_id}.wandb")
    data_bytes = records.read_bytes()
    # wandb's offline record file: protobuf, whose strings (metric keys, the run's name) are stored as is
    for key in [b"shakes1", b"train", b"val", b"lr", b"norm", b"tok_per_sec", b"max_lr"]:
        assert key in data_bytes, key

    resumed = train_in(tmp_path, *SHORT, *data, "--max_steps", "6", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert (
        torch.load(log_dir / "model_00006.pt", weights_only=True)["wandb_run_id"] == run_id
    )  # the same wandb run goes on
    assert len(list((log_dir / "wandb").glob(f"offline-run-*-{run_id}"))) == 2


def test_without_wandb_installed_only_the_flag_fails_in_one_line(train_in, snapshot_of, shakespeare_shards, tmp_path):
    args = [*SHORT, "--data_dir", str(shakespeare_shards), "--max_steps", "2"]
    plain = train_in(tmp_path, *args, "--log_dir", "plain", block_wandb=True)
    assert plain.returncode == 0, plain.stderr  # wandb is never imported unless asked for
    assert (tmp_path / "plain" / "model_00002.pt").exists()

    before = snapshot_of(tmp_path)
    asked = train_in(tmp_path, *args, "--log_dir", "tracked", "--wandb", block_wandb=True)
    assert asked.returncode == 1 and "Traceback" not in asked.stderr
    assert asked.stderr.strip().splitlines() == [
        "--wandb needs the wandb package: pip install wandb, or leave out --wandb"
    ]
    assert snapshot_of(tmp_path) == before and not (tmp_path / "tracked").exists()


@pytest.mark.parametrize("name", ["a/b", "..", ""])
def test_run_name_must_be_a_plain_folder_name(train_in, name, tmp_path):
    proc = train_in(tmp_path, "--run_name", name)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert "--run_name" in proc.stderr and list(tmp_path.iterdir()) == []
