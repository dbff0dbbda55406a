from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
REALDATA = REPO.parent / "shared" / "realdata"

os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def realdata() -> Path:
    """The real samples in ../shared/realdata (skip the test when they are absent)."""
    if not REALDATA.is_dir():
        pytest.skip(f"real data samples not found at {REALDATA}")
    return REALDATA


@pytest.fixture
def one_thread():
    """One torch intra-op thread for the test, as the CLI subprocesses get (OMP_NUM_THREADS=1): the same kernels,
    the same numbers. Modules that train or compare weights use it (`pytestmark = usefixtures("one_thread")`)."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
