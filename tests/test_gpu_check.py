"""benchmarks/gpu_check.sh is kept ready for a lent GPU: on a machine without CUDA it starts and skips cleanly."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU machine the script runs for real")
def test_gpu_check_skips_cleanly_without_cuda():
    proc = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh")], capture_output=True, text=True,
                          env={**os.environ, "PYTHON": sys.executable}, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "no CUDA device visible" in proc.stdout and "skipped" in proc.stdout
