import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


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


@pytest.fixture
def shared_dir():
    if not SHARED.is_dir():
        pytest.skip("../shared not present")
    return SHARED
