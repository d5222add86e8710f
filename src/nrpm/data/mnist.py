"""MNIST in torchvision's layout: ``<root>/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]``.

The IDX reader checks header consistency (magic, payload size); the split reader checks the official counts.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np
import torch

from .common import DOWNLOAD_HINT, check_labels

__all__ = ["MNIST_FILES", "IDX_IMAGES_MAGIC", "IDX_LABELS_MAGIC", "find_idx_file", "read_idx", "mnist_missing",
           "mnist_not_found", "read_mnist"]

MNIST_FILES = {
    # split -> (images stem, labels stem, expected count)
    True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", 60000),
    False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte", 10000),
}
IDX_IMAGES_MAGIC = 2051
IDX_LABELS_MAGIC = 2049


def _raw_dir(root: Path) -> Path:
    return Path(root) / "MNIST" / "raw"


def find_idx_file(raw_dir: Path, stem: str) -> Path | None:
    """The plain or gzip-compressed copy of ``stem`` in ``raw_dir`` (plain wins), or None."""
    for candidate in (raw_dir / stem, raw_dir / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _read_bytes(path: Path) -> bytes:
    """File contents, transparently gunzipped for ``*.gz``; corrupt gzip -> ValueError."""
    if path.suffix != ".gz":
        return path.read_bytes()
    try:
        with gzip.open(path, "rb") as f:
            return f.read()
    except (EOFError, gzip.BadGzipFile, zlib.error) as err:
        raise ValueError(f"{path}: corrupt or truncated gzip file ({err})") from err


def read_idx(path: Path, expected_magic: int) -> np.ndarray:
    """Parse one IDX file (plain or .gz) into a uint8 array shaped by its header.

    Only header consistency is checked here (magic, payload size); expected counts and image
    sizes are the caller's business, so tests can use small files.
    """
    data = _read_bytes(path)
    if len(data) < 8:
        raise ValueError(f"{path}: truncated IDX file ({len(data)} bytes, no header)")
    magic = int.from_bytes(data[0:4], "big")
    if magic != expected_magic:
        raise ValueError(f"{path}: IDX magic {magic}, expected {expected_magic}")
    ndim = magic & 0xFF  # low byte = number of dimensions; 0x08 in byte 3 = unsigned byte
    header_len = 4 + 4 * ndim
    if len(data) < header_len:
        raise ValueError(f"{path}: truncated IDX header")
    dims = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected_len = header_len + int(np.prod(dims))
    if len(data) != expected_len:
        raise ValueError(
            f"{path}: IDX payload is {len(data) - header_len} bytes, header {dims} needs "
            f"{expected_len - header_len} (truncated or corrupt file)"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header_len).reshape(dims)


def mnist_missing(root: Path, train: bool) -> list[str]:
    """The IDX stems of split ``train`` absent under ``root`` (each found plain or .gz)."""
    raw = _raw_dir(root)
    return [s for s in MNIST_FILES[train][:2] if find_idx_file(raw, s) is None]


def mnist_not_found(root: Path, train: bool) -> str:
    needed = ", ".join(f"{s}[.gz]" for s in MNIST_FILES[train][:2])
    return f"MNIST not found under {_raw_dir(root)}: expected {needed}"


def read_mnist(root: Path, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Images uint8 (N, 1, 28, 28) and labels int64 (N,) of one split, with the official counts checked."""
    raw = _raw_dir(root)
    images_stem, labels_stem, count = MNIST_FILES[train]
    images_path, labels_path = find_idx_file(raw, images_stem), find_idx_file(raw, labels_stem)
    if images_path is None or labels_path is None:
        raise FileNotFoundError(f"{mnist_not_found(root, train)}; {DOWNLOAD_HINT}")
    images = read_idx(images_path, IDX_IMAGES_MAGIC)
    labels = read_idx(labels_path, IDX_LABELS_MAGIC)
    if images.shape != (count, 28, 28):
        raise ValueError(f"{images_path}: shape {images.shape}, expected ({count}, 28, 28)")
    if labels.shape != (count,):
        raise ValueError(f"{labels_path}: shape {labels.shape}, expected ({count},)")
    check_labels(labels, labels_path)
    return torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64))
