"""The datasets known by name (MNIST, CIFAR-10, CIFAR-100, SVHN): how each is read, where their root is and which
files are missing (:mod:`.datasets` loads them, :mod:`.download` fetches MNIST and CIFAR-10).

Data root resolution (:func:`resolve_data_root`) follows :mod:`nrpm.paths`: explicit argument (``--data-root``),
else ``$NRPM_DATA``, else the cache ``$NRPM_HOME/data`` or the shared mirror beside a source checkout when it holds
the dataset, else the cache (where ``download=True`` / ``--download`` writes, MNIST and CIFAR-10 only).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from .. import paths
from .cifar import (cifar10_missing, cifar10_not_found, cifar100_missing, cifar100_not_found, read_cifar10,
                    read_cifar100)
from .mnist import mnist_missing, mnist_not_found, read_mnist
from .svhn import read_svhn, svhn_missing, svhn_not_found

__all__ = ["NamedDataset", "DATASETS", "DOWNLOADABLE", "resolve_data_root", "dataset_key", "list_datasets",
           "missing_files"]


@dataclass(frozen=True)
class NamedDataset:
    """How to find and read one dataset under a data root (each function takes the root and the split)."""

    key: str
    title: str
    num_classes: int
    missing: Callable[[Path, bool], list[str]]  # the files of the split absent under the root
    not_found: Callable[[Path, bool], str]  # "X not found under ...: expected ..."
    read: Callable[[Path, bool], tuple[torch.Tensor, torch.Tensor]]  # uint8 (N, C, H, W), int64 (N,)
    downloadable: bool = False  # nrpm.data.download can fetch it


DATASETS = {d.key: d for d in (
    NamedDataset("mnist", "MNIST", 10, mnist_missing, mnist_not_found, read_mnist, downloadable=True),
    NamedDataset("cifar10", "CIFAR-10", 10, cifar10_missing, cifar10_not_found, read_cifar10, downloadable=True),
    NamedDataset("cifar100", "CIFAR-100", 100, cifar100_missing, cifar100_not_found, read_cifar100),
    NamedDataset("svhn", "SVHN", 10, svhn_missing, svhn_not_found, read_svhn),
)}
DOWNLOADABLE = tuple(k for k, d in DATASETS.items() if d.downloadable)


def list_datasets() -> list[str]:
    """Names accepted by :func:`load_dataset`."""
    return sorted(DATASETS)


def dataset_key(name: str) -> str:
    """'mnist', 'cifar10', 'cifar100' or 'svhn' for any accepted spelling ('CIFAR-10', 'cifar_100', ...)."""
    key = str(name).lower().replace("-", "").replace("_", "")
    if key not in DATASETS:
        # the downloadable ones first: they are the ones that work without files on disk
        others = [k for k in list_datasets() if k not in DOWNLOADABLE]
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(sorted(DOWNLOADABLE))} (also by --download), "
                         f"{', '.join(others)}; or imagefolder:PATH, tensors:FILE")
    return key


def _splits(train: bool | None) -> tuple[bool, ...]:
    return (True, False) if train is None else (train,)


def missing_files(name: str, root: str | os.PathLike, train: bool | None = None) -> list[str]:
    """The files of dataset ``name`` absent under ``root`` (MNIST: IDX stems, found plain or .gz; CIFAR-10: batch
    names; CIFAR-100: 'train' / 'test'; SVHN: the .mat names), for the ``train`` split or both (None)."""
    dataset, root = DATASETS[dataset_key(name)], Path(root)
    return [f for split in _splits(train) for f in dataset.missing(root, split)]


def resolve_data_root(
    root: str | os.PathLike | None = None, dataset: str | None = None, *, train: bool | None = None
) -> Path:
    """The data folder by the order of :mod:`nrpm.paths`: ``root``, else ``$NRPM_DATA``, else the cache
    ``$NRPM_HOME/data`` or the shared mirror (source checkouts only) when it holds the data, else the cache path.

    "Holds the data" means: every file of ``dataset`` (of the ``train`` split only, if given), or, with
    ``dataset=None``, every file of at least one dataset.
    """
    keys = sorted(DATASETS) if dataset is None else [dataset_key(dataset)]

    def holds(folder: Path) -> bool:
        return any(not missing_files(key, folder, train) for key in keys)

    return paths.resolve("data", root, holds)
