"""Loading the named datasets (MNIST, CIFAR-10, CIFAR-100, SVHN) as float tensors in [0, 1], (N, C, H, W), cached in
memory as uint8; with ``download=True`` the missing files of MNIST and CIFAR-10 are fetched first
(:mod:`nrpm.data.download`). Where the files are looked for: :mod:`.named`.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import torch

from .. import paths
from .common import DOWNLOAD_HINT, LOCAL_HINT
from .download import ensure_dataset
from .named import DATASETS, DOWNLOADABLE, dataset_key, resolve_data_root

__all__ = ["load_dataset", "load_mnist", "load_cifar10", "load_cifar100", "load_svhn", "clear_cache"]


def _dataset_root(key: str, root, train: bool, download: bool) -> Path:
    """The absolute root holding split ``train`` of ``key``; downloads it first if asked."""
    dataset = DATASETS[key]
    if download and not dataset.downloadable:
        raise ValueError(f"nrpm cannot download {dataset.title} (only {', '.join(DOWNLOADABLE)}): put its files "
                         f"under a data root yourself; {dataset.not_found(paths.cache_dir('data'), train)}")
    if download:
        return ensure_dataset(key, root, train=train).resolve()
    folder = resolve_data_root(root, key, train=train)
    if dataset.missing(folder, train):
        hint = DOWNLOAD_HINT if dataset.downloadable else LOCAL_HINT
        raise FileNotFoundError(f"{dataset.not_found(folder, train)}; {paths.looked_in('data', root)}; {hint}")
    return folder.resolve()


@functools.lru_cache(maxsize=8)
def _cached(key: str, root: Path, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    # Cached as uint8 (cheap); every public call converts to a fresh float tensor.
    return DATASETS[key].read(root, train)


def clear_cache() -> None:
    """Forget the in-memory copies of loaded datasets (e.g. after files changed on disk)."""
    _cached.cache_clear()


def load_dataset(
    name: str, root: str | os.PathLike | None = None, train: bool = False, download: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Load a named dataset as ``(x, y)``: x float32 (N, C, H, W) in [0, 1], y int64 (N,); fresh copies, so
    callers may modify them in place. ``name``: see :func:`list_datasets` (case-insensitive, 'cifar-10' too)."""
    key = dataset_key(name)
    images, labels = _cached(key, _dataset_root(key, root, train, download), train)
    return images.float().div_(255.0), labels.clone()


def load_mnist(
    root: str | os.PathLike | None = None, train: bool = False, download: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """MNIST: x (N, 1, 28, 28) from ``<root>/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]``.

    With ``download=True`` missing files are fetched first (see :func:`nrpm.data.download.ensure_dataset`).
    """
    return load_dataset("mnist", root, train, download)


def load_cifar10(
    root: str | os.PathLike | None = None, train: bool = False, download: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """CIFAR-10: x (N, 3, 32, 32) from ``<root>/cifar-10-batches-py/{data_batch_1..5 | test_batch}``; each batch must
    hold 10000 rows of 3072 bytes. With ``download=True`` the archive is fetched when batches are missing."""
    return load_dataset("cifar10", root, train, download)


def load_cifar100(root: str | os.PathLike | None = None, train: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """CIFAR-100 (fine labels 0..99): x (N, 3, 32, 32) from ``<root>/cifar-100-python/{train | test}``."""
    return load_dataset("cifar100", root, train)


def load_svhn(root: str | os.PathLike | None = None, train: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """SVHN (digit 0 as label 0): x (N, 3, 32, 32) from ``<root>/{train,test}_32x32.mat`` (needs scipy)."""
    return load_dataset("svhn", root, train)
