"""CIFAR-10 and CIFAR-100 as the python pickles of torchvision's layout.

* CIFAR-10: ``<root>/cifar-10-batches-py/{data_batch_1..5 | test_batch}``, each 10000 rows (checked);
* CIFAR-100: ``<root>/cifar-100-python/{train | test}``, labels under ``fine_labels`` (the 100 classes). Only
  consistency is checked (3072 columns, one label per row, labels 0..99), not the official 50000 / 10000 rows,
  so that a subset saved in the same format loads too.

A row is the R plane, then G, then B, each 32x32 row-major, hence the reshape to (N, 3, 32, 32).
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch

from .common import check_labels

__all__ = ["CIFAR10_DIR", "CIFAR10_TRAIN_BATCHES", "CIFAR10_TEST_BATCHES", "CIFAR10_ROWS_PER_BATCH", "CIFAR100_DIR",
           "read_cifar_batch", "cifar10_missing", "cifar10_not_found", "read_cifar10", "cifar100_missing",
           "cifar100_not_found", "read_cifar100"]

CIFAR10_DIR = "cifar-10-batches-py"
CIFAR10_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_TEST_BATCHES = ("test_batch",)
CIFAR10_ROWS_PER_BATCH = 10000
CIFAR100_DIR = "cifar-100-python"


def read_cifar_batch(path: Path, label_key: str = "labels", num_classes: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR python pickle -> (data uint8 (N, 3072), labels int64 (N,)).

    Checks internal consistency only (3072 columns, one label per row, labels 0..num_classes-1).
    """
    if not path.is_file():
        raise FileNotFoundError(f"CIFAR batch not found: {path}")
    try:
        with open(path, "rb") as f:
            # latin1 turns the Python-2 str keys into str, and leaves the ndarray bytes intact
            batch = pickle.load(f, encoding="latin1")
    except (pickle.UnpicklingError, EOFError, ValueError) as err:
        raise ValueError(f"{path}: corrupt or truncated CIFAR batch ({err})") from err
    if isinstance(batch, dict):  # pickles re-saved from Python 3 may carry bytes keys
        batch = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in batch.items()}
    if not isinstance(batch, dict) or "data" not in batch or label_key not in batch:
        raise ValueError(f"{path}: not a CIFAR batch (expected a dict with 'data' and {label_key!r})")
    data = np.asarray(batch["data"], dtype=np.uint8)
    labels = np.asarray(batch[label_key], dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise ValueError(f"{path}: data shape {data.shape}, expected (N, 3072)")
    if labels.shape != (data.shape[0],):
        raise ValueError(f"{path}: {labels.shape[0]} labels for {data.shape[0]} images")
    check_labels(labels, path, num_classes)
    return data, labels


def _as_images(data: np.ndarray, labels: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.from_numpy(data.reshape(-1, 3, 32, 32)), torch.from_numpy(labels)


# --------------------------------------------------------------------------- CIFAR-10
def _cifar10_batch_names(train: bool) -> tuple[str, ...]:
    return CIFAR10_TRAIN_BATCHES if train else CIFAR10_TEST_BATCHES


def cifar10_missing(root: Path, train: bool) -> list[str]:
    folder = Path(root) / CIFAR10_DIR
    return [name for name in _cifar10_batch_names(train) if not (folder / name).is_file()]


def cifar10_not_found(root: Path, train: bool) -> str:
    return (f"CIFAR-10 not found under {Path(root) / CIFAR10_DIR}: missing {', '.join(cifar10_missing(root, train))} "
            f"(expected {', '.join(_cifar10_batch_names(train))})")


def read_cifar10(root: Path, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Images uint8 (N, 3, 32, 32) and labels int64 of one split; every batch must hold 10000 rows."""
    folder = Path(root) / CIFAR10_DIR
    names = _cifar10_batch_names(train)
    parts = [read_cifar_batch(folder / name) for name in names]
    for name, (data, _) in zip(names, parts):
        if data.shape[0] != CIFAR10_ROWS_PER_BATCH:
            raise ValueError(f"{folder / name}: {data.shape[0]} rows, expected {CIFAR10_ROWS_PER_BATCH}")
    return _as_images(np.concatenate([d for d, _ in parts]), np.concatenate([lab for _, lab in parts]))


# --------------------------------------------------------------------------- CIFAR-100
def _cifar100_file(train: bool) -> str:
    return "train" if train else "test"


def cifar100_missing(root: Path, train: bool) -> list[str]:
    name = _cifar100_file(train)
    return [] if (Path(root) / CIFAR100_DIR / name).is_file() else [name]


def cifar100_not_found(root: Path, train: bool) -> str:
    return (f"CIFAR-100 not found under {Path(root) / CIFAR100_DIR}: expected the python pickle "
            f"{_cifar100_file(train)!r} (torchvision.datasets.CIFAR100(root, download=True) writes this layout)")


def read_cifar100(root: Path, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Images uint8 (N, 3, 32, 32) and fine labels (0..99) of one split."""
    path = Path(root) / CIFAR100_DIR / _cifar100_file(train)
    return _as_images(*read_cifar_batch(path, label_key="fine_labels", num_classes=100))
