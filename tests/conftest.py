import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"

# Attacks, audits, certification and training run inside nrpm.sustained_work, where the 'auto' backend compiles
# problems of every size; the suite's tiny models and many settings would compile dozens of kernels (seconds each),
# so the suite keeps auto's size rule there (set before nrpm is imported; subprocesses inherit it).
# test_fastpath checks sustained_work itself and the compiled kernels at small batches.
os.environ.setdefault("NRPM_SUSTAINED", "0")


def pytest_collection_modifyitems(config, items):
    if os.environ.get("NRPM_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="slow end-to-end run; set NRPM_SLOW=1 to run it")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def single_thread():
    """One intra-op thread for a module of tiny models (``pytestmark = pytest.mark.usefixtures("single_thread")``):
    a second OpenMP thread only adds waiting there, and on a loaded 2-core machine thread contention slowed the
    pyautoattack loops ~50x."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def backend():
    """Switch the NRPM kernels' backend inside a test (``backend("eager")``); always back to the previous one
    (e.g. from NRPM_BACKEND) afterwards."""
    from nrpm import functional as RF

    previous = RF.get_backend()
    yield RF.set_backend
    RF.set_backend(previous)


@pytest.fixture
def shared_dir():
    if not SHARED.is_dir():
        pytest.skip("../shared not present")
    return SHARED
