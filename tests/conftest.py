import os
from pathlib import Path

import pytest

# A shared persistent compilation cache keeps repeated compiles of the same tiny
# models cheap across test files.
os.environ.setdefault("BORTSEARCH_CACHE", str(Path(__file__).resolve().parent.parent / ".cache"))

SHARED_DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"


@pytest.fixture
def shared_data():
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not beside the checkout")
    return SHARED_DATA
