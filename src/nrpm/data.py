"""Datasets (MNIST, CIFAR-10) as in-memory tensors, plus batching and CIFAR augmentation.

Everything is plain torch/numpy: no torchvision. Images come back as float32 in [0, 1] with
shape (N, C, H, W); models carry any normalisation themselves.

Data root resolution (``resolve_data_root``) follows :mod:`nrpm.paths`: explicit argument
(``--data-root``), else ``$NRPM_DATA``, else the cache ``$NRPM_HOME/data`` or the shared mirror
beside a source checkout when it holds the dataset, else the cache (where ``download=True`` /
``--download`` writes, see :mod:`nrpm.download`). Layouts follow torchvision:
``<root>/MNIST/raw/*-ubyte[.gz]`` and ``<root>/cifar-10-batches-py/``.
"""

from __future__ import annotations

import functools
import gzip
import os
import pickle
import zlib
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from . import paths

__all__ = [
    "resolve_data_root",
    "load_mnist",
    "load_cifar10",
    "load_dataset",
    "list_datasets",
    "dataset_key",
    "missing_files",
    "subset",
    "batches",
    "random_crop_flip",
    "clear_cache",
]

MNIST_FILES = {
    # split -> (images stem, labels stem, expected count)
    True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", 60000),
    False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte", 10000),
}
CIFAR10_DIR = "cifar-10-batches-py"
CIFAR10_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_TEST_BATCHES = ("test_batch",)
CIFAR10_ROWS_PER_BATCH = 10000

_IDX_IMAGES_MAGIC = 2051
_IDX_LABELS_MAGIC = 2049
_HINT = "pass --data-root, set NRPM_DATA, or use --download"


# --------------------------------------------------------------------------- root


def resolve_data_root(
    root: str | os.PathLike | None = None, dataset: str | None = None, *, train: bool | None = None
) -> Path:
    """The data folder by the order of :mod:`nrpm.paths`: ``root``, else ``$NRPM_DATA``, else
    the cache ``$NRPM_HOME/data`` or the shared mirror (source checkouts only) when it holds the
    data, else the cache path.

    "Holds the data" means: every file of ``dataset`` ('mnist' / 'cifar10'; of the ``train``
    split only, if given), or, with ``dataset=None``, every file of at least one dataset.
    """
    if dataset is None:
        keys = sorted(_LOADERS)
    else:
        keys = [dataset_key(dataset)]

    def holds(folder: Path) -> bool:
        return any(not missing_files(key, folder, train) for key in keys)

    return paths.resolve("data", root, holds)


def dataset_key(name: str) -> str:
    """'mnist' or 'cifar10' for any accepted spelling ('CIFAR-10', 'cifar_10', ...)."""
    key = name.lower().replace("-", "").replace("_", "")
    if key not in _LOADERS:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(list_datasets())}")
    return key


def _splits(train: bool | None) -> tuple[bool, ...]:
    return (True, False) if train is None else (train,)


def missing_files(name: str, root: str | os.PathLike, train: bool | None = None) -> list[str]:
    """The files of dataset ``name`` absent under ``root`` (MNIST: IDX stems, found plain or
    .gz; CIFAR-10: batch names), for the ``train`` split or both (None)."""
    key, root = dataset_key(name), Path(root)
    missing = []
    for split in _splits(train):
        if key == "mnist":
            raw = root / "MNIST" / "raw"
            missing += [s for s in MNIST_FILES[split][:2] if _find_idx_file(raw, s) is None]
        else:
            missing += _cifar_missing(root / CIFAR10_DIR, split)
    return missing


def _dataset_root(key: str, root, train: bool, download: bool) -> Path:
    """The absolute root holding split ``train`` of ``key``; downloads it first if asked."""
    if download:
        from .download import ensure_dataset  # here, not at the top: download imports data

        return ensure_dataset(key, root, train=train).resolve()
    folder = resolve_data_root(root, key, train=train)
    if missing_files(key, folder, train):
        raise FileNotFoundError(_missing_message(key, folder, train, root))
    return folder.resolve()


def _missing_message(key: str, folder: Path, train: bool, root) -> str:
    if key == "mnist":
        stems = MNIST_FILES[train][:2]
        needed = ", ".join(f"{s}[.gz]" for s in stems)
        head = f"MNIST not found under {folder / 'MNIST' / 'raw'}: expected {needed}"
    else:
        missing = _cifar_missing(folder / CIFAR10_DIR, train)
        head = (f"CIFAR-10 not found under {folder / CIFAR10_DIR}: missing {', '.join(missing)} "
                f"(expected {', '.join(_cifar_batch_names(train))})")
    return f"{head}; {paths.looked_in('data', root)}; {_HINT}"


# --------------------------------------------------------------------------- MNIST (IDX)


def _find_idx_file(raw_dir: Path, stem: str) -> Path | None:
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


def _read_idx(path: Path, expected_magic: int) -> np.ndarray:
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


def _mnist_missing_message(raw_dir: Path, stems: tuple[str, ...]) -> str:
    needed = ", ".join(f"{s}[.gz]" for s in stems)
    return f"MNIST not found under {raw_dir}: expected {needed}; {_HINT}"


def _read_mnist_split(raw_dir: Path, train: bool) -> tuple[np.ndarray, np.ndarray]:
    """Images (N,28,28) and labels (N,) of one split, with counts checked."""
    images_stem, labels_stem, count = MNIST_FILES[train]
    images_path = _find_idx_file(raw_dir, images_stem)
    labels_path = _find_idx_file(raw_dir, labels_stem)
    if images_path is None or labels_path is None:
        raise FileNotFoundError(_mnist_missing_message(raw_dir, (images_stem, labels_stem)))
    images = _read_idx(images_path, _IDX_IMAGES_MAGIC)
    labels = _read_idx(labels_path, _IDX_LABELS_MAGIC)
    if images.shape != (count, 28, 28):
        raise ValueError(f"{images_path}: shape {images.shape}, expected ({count}, 28, 28)")
    if labels.shape != (count,):
        raise ValueError(f"{labels_path}: shape {labels.shape}, expected ({count},)")
    _check_labels(labels, labels_path)
    return images, labels


@functools.lru_cache(maxsize=4)
def _mnist_cached(root: Path, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    # Cached as uint8 (cheap); every public call converts to a fresh float tensor.
    images, labels = _read_mnist_split(root / "MNIST" / "raw", train)
    return torch.from_numpy(images.copy()), torch.from_numpy(labels.astype(np.int64))


def load_mnist(
    root: str | os.PathLike | None = None, train: bool = False, download: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Load MNIST as ``(x, y)``: x float32 (N,1,28,28) in [0,1], y int64 (N,).

    Reads ``<root>/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]``. With
    ``download=True`` missing files are fetched first (see :func:`nrpm.download.ensure_dataset`).
    The returned tensors are fresh copies, so callers may modify them in place.
    """
    images, labels = _mnist_cached(_dataset_root("mnist", root, train, download), train)
    return images.unsqueeze(1).float().div_(255.0), labels.clone()


# --------------------------------------------------------------------------- CIFAR-10


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR python pickle -> (data uint8 (N,3072), labels int64 (N,)).

    Checks internal consistency only (3072 columns, one label per row, labels 0..9).
    """
    if not path.is_file():
        raise FileNotFoundError(f"CIFAR-10 batch not found: {path}")
    try:
        with open(path, "rb") as f:
            # latin1 turns the Python-2 str keys into str, and leaves the ndarray bytes intact
            batch = pickle.load(f, encoding="latin1")
    except (pickle.UnpicklingError, EOFError, ValueError) as err:
        raise ValueError(f"{path}: corrupt or truncated CIFAR batch ({err})") from err
    if isinstance(batch, dict):  # pickles re-saved from Python 3 may carry bytes keys
        batch = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in batch.items()}
    if not isinstance(batch, dict) or "data" not in batch or "labels" not in batch:
        raise ValueError(f"{path}: not a CIFAR batch (expected a dict with 'data' and 'labels')")
    data = np.asarray(batch["data"], dtype=np.uint8)
    labels = np.asarray(batch["labels"], dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise ValueError(f"{path}: data shape {data.shape}, expected (N, 3072)")
    if labels.shape != (data.shape[0],):
        raise ValueError(f"{path}: {labels.shape[0]} labels for {data.shape[0]} images")
    _check_labels(labels, path)
    return data, labels


def _cifar_batch_names(train: bool) -> tuple[str, ...]:
    return CIFAR10_TRAIN_BATCHES if train else CIFAR10_TEST_BATCHES


def _cifar_missing(folder: Path, train: bool) -> list[str]:
    return [name for name in _cifar_batch_names(train) if not (folder / name).is_file()]


def _read_cifar_split(folder: Path, train: bool) -> tuple[np.ndarray, np.ndarray]:
    names = _cifar_batch_names(train)
    missing = _cifar_missing(folder, train)
    if missing:
        raise FileNotFoundError(
            f"CIFAR-10 not found under {folder}: missing {', '.join(missing)} "
            f"(expected {', '.join(names)}); {_HINT}"
        )
    parts = [_read_cifar_batch(folder / name) for name in names]
    for name, (data, _) in zip(names, parts):
        if data.shape[0] != CIFAR10_ROWS_PER_BATCH:
            raise ValueError(
                f"{folder / name}: {data.shape[0]} rows, expected {CIFAR10_ROWS_PER_BATCH}"
            )
    data = np.concatenate([d for d, _ in parts])
    labels = np.concatenate([lab for _, lab in parts])
    return data, labels


@functools.lru_cache(maxsize=4)
def _cifar_cached(root: Path, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    data, labels = _read_cifar_split(root / CIFAR10_DIR, train)
    # rows are R plane, G plane, B plane, each 32x32 row-major -> (N, 3, 32, 32)
    return torch.from_numpy(data.reshape(-1, 3, 32, 32)), torch.from_numpy(labels)


def load_cifar10(
    root: str | os.PathLike | None = None, train: bool = False, download: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Load CIFAR-10 as ``(x, y)``: x float32 (N,3,32,32) in [0,1], y int64 (N,).

    Reads ``<root>/cifar-10-batches-py/{data_batch_1..5 | test_batch}``; each batch must hold
    10000 rows of 3072 bytes. With ``download=True`` the archive is fetched when batches are
    missing (see :func:`nrpm.download.ensure_dataset`). The returned tensors are fresh copies.
    """
    images, labels = _cifar_cached(_dataset_root("cifar10", root, train, download), train)
    return images.float().div_(255.0), labels.clone()


# --------------------------------------------------------------------------- shared helpers


def _check_labels(labels: np.ndarray, path: Path, num_classes: int = 10) -> None:
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"{path}: labels span {labels.min()}..{labels.max()}, expected 0..{num_classes - 1}"
        )


def clear_cache() -> None:
    """Forget the in-memory copies of loaded datasets (e.g. after files changed on disk)."""
    _mnist_cached.cache_clear()
    _cifar_cached.cache_clear()


_LOADERS = {"mnist": load_mnist, "cifar10": load_cifar10}


def list_datasets() -> list[str]:
    """Names accepted by ``load_dataset``."""
    return sorted(_LOADERS)


def load_dataset(
    name: str,
    root: str | os.PathLike | None = None,
    train: bool = False,
    download: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Load ``'mnist'`` or ``'cifar10'`` (case-insensitive; 'cifar-10' also accepted)."""
    return _LOADERS[dataset_key(name)](root=root, train=train, download=download)


def subset(x: torch.Tensor, y: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` samples (the paper evaluates on the first 1000 test images).

    Returns views of ``x`` and ``y``; raises ValueError if ``n`` exceeds the dataset size.
    """
    if len(x) != len(y):
        raise ValueError(f"x has {len(x)} samples but y has {len(y)}")
    if n < 0 or n > len(x):
        raise ValueError(f"cannot take {n} samples from a dataset of {len(x)}")
    return x[:n], y[:n]


def batches(
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int,
    shuffle: bool = False,
    generator: torch.Generator | None = None,
    drop_last: bool = False,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(x_batch, y_batch)`` pairs, in order or shuffled with ``generator``."""
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if len(x) != len(y):
        raise ValueError(f"x has {len(x)} samples but y has {len(y)}")
    n = len(x)
    order = torch.randperm(n, generator=generator) if shuffle else None
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        if order is None:
            yield x[start : start + batch_size], y[start : start + batch_size]
        else:
            idx = order[start : start + batch_size].to(x.device)
            yield x[idx], y[idx.to(y.device)]


def random_crop_flip(
    x: torch.Tensor, padding: int = 4, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Standard CIFAR augmentation on a batch: random crop after zero padding + random h-flip.

    Each image gets its own offsets and flip. Done as a single gather (no Python loop) and
    deterministic for a given ``generator`` (whose device is used for the random draws).
    """
    if x.dim() != 4:
        raise ValueError(f"expected a batch (N, C, H, W), got shape {tuple(x.shape)}")
    n, c, h, w = x.shape
    rng_device = generator.device if generator is not None else torch.device("cpu")
    top = torch.randint(0, 2 * padding + 1, (n,), generator=generator, device=rng_device)
    left = torch.randint(0, 2 * padding + 1, (n,), generator=generator, device=rng_device)
    flip = torch.rand(n, generator=generator, device=rng_device) < 0.5
    top, left, flip = top.to(x.device), left.to(x.device), flip.to(x.device)

    padded = F.pad(x, (padding, padding, padding, padding))
    rows = top[:, None] + torch.arange(h, device=x.device)  # (N, H)
    cols_fwd = torch.arange(w, device=x.device)
    # A flipped crop reads the same window right to left.
    cols = left[:, None] + torch.where(flip[:, None], cols_fwd.flip(0), cols_fwd)  # (N, W)
    batch_idx = torch.arange(n, device=x.device)[:, None, None, None]
    chan_idx = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[batch_idx, chan_idx, rows[:, None, :, None], cols[:, None, None, :]]
