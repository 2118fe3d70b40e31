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
