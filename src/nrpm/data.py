"""Datasets (MNIST, CIFAR-10) as in-memory tensors, plus batching and CIFAR augmentation.

Everything is plain torch/numpy: no torchvision. Images come back as float32 in [0, 1] with
shape (N, C, H, W); models carry any normalisation themselves.

Data root resolution (``resolve_data_root``): explicit argument, else ``$NRPM_DATA``, else
``<repo>/../shared/data`` when it exists, else ``./data``. Layouts follow torchvision:
``<root>/MNIST/raw/*-ubyte[.gz]`` and ``<root>/cifar-10-batches-py/``.
"""

from __future__ import annotations

import functools
import gzip
import os
import pickle
import shutil
import tarfile
import tempfile
import urllib.request
import zlib
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "resolve_data_root",
    "load_mnist",
    "load_cifar10",
    "load_dataset",
    "list_datasets",
    "subset",
    "batches",
    "random_crop_flip",
    "clear_cache",
]

_REPO = Path(__file__).resolve().parents[2]

MNIST_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/"
MNIST_FILES = {
    # split -> (images stem, labels stem, expected count)
    True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", 60000),
    False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte", 10000),
}
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_DIR = "cifar-10-batches-py"
CIFAR10_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_TEST_BATCHES = ("test_batch",)
CIFAR10_ROWS_PER_BATCH = 10000

_IDX_IMAGES_MAGIC = 2051
_IDX_LABELS_MAGIC = 2049
_HINT = "pass --data-root, set NRPM_DATA, or use --download"


# --------------------------------------------------------------------------- root


def resolve_data_root(root: str | os.PathLike | None = None) -> Path:
    """Return the data folder: ``root``, else ``$NRPM_DATA``, else ``<repo>/../shared/data``
    if it exists, else ``./data``."""
    if root is not None:
        return Path(root).expanduser()
    env = os.environ.get("NRPM_DATA")
    if env:
        return Path(env).expanduser()
    shared = _REPO.parent / "shared" / "data"
    if shared.is_dir():
        return shared
    return Path("data")


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


def _download_mnist(raw_dir: Path, stems: tuple[str, ...]) -> None:
    for stem in stems:
        if _find_idx_file(raw_dir, stem) is None:
            _download(MNIST_URL + f"{stem}.gz", raw_dir / f"{stem}.gz")


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
    ``download=True`` missing files are fetched first. The returned tensors are fresh copies,
    so callers may modify them in place.
    """
    root = resolve_data_root(root).resolve()
    if download:
        images_stem, labels_stem, _ = MNIST_FILES[train]
        _download_mnist(root / "MNIST" / "raw", (images_stem, labels_stem))
    images, labels = _mnist_cached(root, train)
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


def _download_cifar10(root: Path) -> None:
    """Fetch and unpack the CIFAR-10 archive into ``root`` (only the batch folder)."""
    root.mkdir(parents=True, exist_ok=True)
    archive = root / "cifar-10-python.tar.gz"
    if not archive.is_file():
        _download(CIFAR10_URL, archive)
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        with tarfile.open(archive, "r:gz") as tar:
            members = [
                m
                for m in tar.getmembers()
                if m.name.startswith(CIFAR10_DIR + "/") and ".." not in Path(m.name).parts
            ]
            if hasattr(tarfile, "data_filter"):  # Python >= 3.12: refuse unsafe members
                tar.extractall(tmp, members=members, filter="data")
            else:
                tar.extractall(tmp, members=members)  # names checked above
        target = root / CIFAR10_DIR
        if target.exists():
            shutil.rmtree(target)
        os.replace(Path(tmp) / CIFAR10_DIR, target)
    archive.unlink()


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
    missing. The returned tensors are fresh copies.
    """
    root = resolve_data_root(root).resolve()
    if download and _cifar_missing(root / CIFAR10_DIR, train):
        _download_cifar10(root)
    images, labels = _cifar_cached(root, train)
    return images.float().div_(255.0), labels.clone()


# --------------------------------------------------------------------------- shared helpers


def _check_labels(labels: np.ndarray, path: Path, num_classes: int = 10) -> None:
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"{path}: labels span {labels.min()}..{labels.max()}, expected 0..{num_classes - 1}"
        )


def _download(url: str, dest: Path) -> None:
    """Download ``url`` to ``dest`` atomically (temp file in the same folder, then rename)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as response:
            shutil.copyfileobj(response, out)
        os.replace(tmp_name, dest)
    except Exception as err:
        Path(tmp_name).unlink(missing_ok=True)
        raise RuntimeError(
            f"could not download {url} to {dest}: {err}. Fetch it manually into "
            f"{dest.parent}, or pass --data-root / set NRPM_DATA to a folder that has the data"
        ) from err


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
    key = name.lower().replace("-", "").replace("_", "")
    if key not in _LOADERS:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(list_datasets())}")
    return _LOADERS[key](root=root, train=train, download=download)


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
