"""What the dataset readers share: label checks, the optional-dependency import, and the not-found hint."""

from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np

__all__ = ["MissingDependency", "require", "check_labels", "DOWNLOAD_HINT", "LOCAL_HINT"]

DOWNLOAD_HINT = "pass --data-root, set NRPM_DATA, or use --download"
LOCAL_HINT = "pass --data-root or set NRPM_DATA"


class MissingDependency(ImportError, ValueError):
    """An optional package a data format needs is not installed.

    An ImportError for library callers, and a ValueError so that the CLI reports it as one line with exit 2
    (``nrpm.cli.main`` maps ValueError, not ImportError, to a usage error).
    """


def require(module: str, package: str, purpose: str):
    """``import module``, or :class:`MissingDependency` saying which package to install for ``purpose``."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingDependency(f"{purpose} needs {package}, which is not installed: pip install {package}") from None


def check_labels(labels: np.ndarray, path: Path | str, num_classes: int = 10) -> None:
    """Labels in 0 .. num_classes - 1, else ValueError naming the file and the range found."""
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"{path}: labels span {labels.min()}..{labels.max()}, expected 0..{num_classes - 1}"
        )
