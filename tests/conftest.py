"""Shared test setup: the offline copies in ../shared/data, the scripts run as a user runs them, and the tiny
training run most tests start from. Test files take these as fixtures; none imports another."""

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"

# tiktoken reads this on its first get_encoding call; set it before any test imports the scripts
if (SHARED_DATA / "tiktoken_cache").is_dir():
    os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(SHARED_DATA / "tiktoken_cache"))
sys.path.insert(0, str(REPO))

# a 2-layer, 64-dim model on Tiny Shakespeare: 20 steps take a few seconds on 2 CPU cores
TINY = [
    "--model", "micro", "--batch_size", "4", "--seq_len", "64", "--total_batch_size", "512",
    "--max_lr", "3e-3", "--warmup_steps", "5", "--val_tokens", "4096", "--sample_interval", "0", "--hellaswag_interval", "0",
    "--dtype", "float32", "--device", "cpu",
]  # fmt: skip


def run_script(script, *args, torchrun=0, cwd=None, env=None, timeout=600):
    """One of the repository's scripts (or a script at a path) in a subprocess, as a user runs it; under torchrun with
    that many processes."""
    launcher = (
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={torchrun}"]
        if torchrun
        else [sys.executable]
    )
    return subprocess.run(
        [*launcher, str(REPO / script), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env={**os.environ, **(env or {})},
    )


def read_log(log_dir):
    """log.txt as {(step, kind): value}."""
    entries = {}
    for line in (Path(log_dir) / "log.txt").read_text().splitlines():
        step, kind, value = line.split()[:3]
        entries[int(step), kind] = float(value)
    return entries


def snapshot(*folders):
    """Each file's sha256 and each folder under these: anything created, changed or removed shows."""
    return {
        p: hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "folder"
        for f in folders
        for p in sorted(Path(f).rglob("*"))
    }


@pytest.fixture(scope="session")
def repo():
    return REPO


@pytest.fixture(scope="session")
def tiny():
    """The flags of the tiny training run."""
    return list(TINY)


@pytest.fixture(scope="session")
def run():
    """run(script, *args, torchrun=0, cwd=None, env=None): the script's CompletedProcess (text stdout and stderr)."""
    return run_script


@pytest.fixture(scope="session")
def train():
    """train(*args, torchrun=0, ...): train_gpt2.py with these flags."""
    return lambda *args, **kwargs: run_script("train_gpt2.py", *args, **kwargs)


@pytest.fixture(scope="session")
def log_of():
    """log_of(log_dir): its log.txt as {(step, kind): value}."""
    return read_log


@pytest.fixture(scope="session")
def snapshot_of():
    """snapshot_of(*folders): what is in them, to compare before and after."""
    return snapshot


@pytest.fixture(scope="session")
def shared_data():
    if not SHARED_DATA.is_dir():
        pytest.fail(f"offline data folder {SHARED_DATA} is missing: the tests need ../shared/data beside the checkout")
    return SHARED_DATA


@pytest.fixture(scope="session")
def shakespeare_shards(shared_data, tmp_path_factory):
    """Tiny Shakespeare as token shards in the format fineweb.py writes: a 32,768-token val shard, then two
    train shards of unequal size (so batches cross a shard boundary). Tokenized here, independently
    of fineweb.py: [EOT] + encode_ordinary(text), uint16."""
    import numpy as np
    import tiktoken

    enc = tiktoken.get_encoding("gpt2")
    text = (shared_data / "tinyshakespeare" / "input.txt").read_text()
    tokens = np.array([enc.eot_token] + enc.encode_ordinary(text), dtype=np.uint16)
    out = tmp_path_factory.mktemp("shakespeare")
    np.save(out / "shakespeare_val_000000.npy", tokens[:32768])
    np.save(out / "shakespeare_train_000001.npy", tokens[32768:100003])
    np.save(out / "shakespeare_train_000002.npy", tokens[100003:])
    return out
