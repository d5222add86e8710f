"""What produced a result: library versions and the machine, recorded in every results file."""

from __future__ import annotations

import platform

import torch

__all__ = ["versions"]


def versions(**extra) -> dict:
    """nrpm, torch, numpy, pyautoattack and Python versions, the machine and torch's thread count, plus ``extra``."""
    import numpy

    from . import __version__

    try:
        from importlib.metadata import version
        paa = version("pyautoattack")
    except Exception:  # noqa: BLE001 - the version is informative only
        paa = None
    return {"nrpm": __version__, "torch": torch.__version__, "numpy": numpy.__version__, "pyautoattack": paa,
            "python": platform.python_version(), "machine": platform.machine(),
            "threads": torch.get_num_threads(), **extra}
