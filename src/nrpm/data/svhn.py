"""SVHN (cropped digits) as the .mat files of torchvision's layout: ``<root>/{train,test}_32x32.mat``.

Each holds ``X`` uint8 (32, 32, 3, N), i.e. (H, W, C, N), and ``y`` (N, 1) with labels 1..10 where 10 stands for
the digit 0; it is mapped to 0, as torchvision does. Reading needs scipy (``scipy.io.loadmat``), imported only
here so that nrpm works without it for every other dataset.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .common import check_labels, require

__all__ = ["SVHN_FILES", "svhn_missing", "svhn_not_found", "read_svhn"]

SVHN_FILES = {True: "train_32x32.mat", False: "test_32x32.mat"}


def svhn_missing(root: Path, train: bool) -> list[str]:
    name = SVHN_FILES[train]
    return [] if (Path(root) / name).is_file() else [name]


def svhn_not_found(root: Path, train: bool) -> str:
    return (f"SVHN not found under {root}: expected {SVHN_FILES[train]} "
            f"(torchvision.datasets.SVHN(root, split=..., download=True) writes this layout)")


def _load_mat(path: Path) -> dict:
    io = require("scipy.io", "scipy", "reading SVHN's .mat files")
    try:
        return io.loadmat(path)
    # loadmat reports a foreign or truncated file as ValueError, TypeError, OSError or NotImplementedError (v7.3)
    except Exception as err:  # noqa: BLE001
        raise ValueError(f"{path}: not a readable SVHN .mat file ({type(err).__name__}: {err})") from None


def read_svhn(root: Path, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Images uint8 (N, 3, 32, 32) and labels int64 0..9 of one split."""
    path = Path(root) / SVHN_FILES[train]
    mat = _load_mat(path)
    if "X" not in mat or "y" not in mat:
        raise ValueError(f"{path}: expected the variables 'X' (32, 32, 3, N) and 'y' (N, 1), "
                         f"found {sorted(k for k in mat if not k.startswith('__'))}")
    images, labels = np.asarray(mat["X"]), np.asarray(mat["y"]).reshape(-1).astype(np.int64)
    if images.ndim != 4 or images.shape[:3] != (32, 32, 3):
        raise ValueError(f"{path}: X has shape {images.shape}, expected (32, 32, 3, N)")
    if images.dtype != np.uint8:
        raise ValueError(f"{path}: X is {images.dtype}, expected uint8 pixels 0..255")
    if len(labels) != images.shape[3]:
        raise ValueError(f"{path}: {len(labels)} labels in y for {images.shape[3]} images in X")
    labels[labels == 10] = 0  # SVHN writes the digit 0 as label 10
    check_labels(labels, path)
    # (H, W, C, N) -> (N, C, H, W)
    return torch.from_numpy(np.ascontiguousarray(images.transpose(3, 2, 0, 1))), torch.from_numpy(labels)
