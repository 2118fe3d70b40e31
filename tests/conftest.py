"""Shared test setup: point tiktoken and the data scripts at the offline copies in ../shared/data."""
import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"

# tiktoken reads this on its first get_encoding call; set it before any test imports the scripts
if (SHARED_DATA / "tiktoken_cache").is_dir():
    os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(SHARED_DATA / "tiktoken_cache"))
sys.path.insert(0, str(REPO))


@pytest.fixture(scope="session")
def shared_data():
    if not SHARED_DATA.is_dir():
        pytest.fail(f"offline data folder {SHARED_DATA} is missing: the tests need ../shared/data beside the checkout")
    return SHARED_DATA


@pytest.fixture(scope="session")
def shakespeare_shards(shared_data, tmp_path_factory):
    """Tiny Shakespeare as token shards in the DESIGN.md format: a 32,768-token val shard, then two
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
