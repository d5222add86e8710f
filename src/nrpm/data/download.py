"""Downloading the datasets nrpm knows where to fetch (MNIST, CIFAR-10): checked, atomic, cached.

Files go to a data root, by default ``$NRPM_HOME/data`` (``NRPM_HOME`` defaults to ``~/.cache/nrpm``), in
torchvision's layout; see :mod:`nrpm.paths` for the lookup order that later finds them.

Where files come from (override for mirrors and tests): each source is a *base URL*, a folder to which the file
name is appended; the environment variable wins over the :data:`BASE_URLS` entry:

* ``NRPM_MNIST_URL``   (default ``https://ossci-datasets.s3.amazonaws.com/mnist/``), files
  ``{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz``;
* ``NRPM_CIFAR10_URL`` (default ``https://www.cs.toronto.edu/~kriz/``), file ``cifar-10-python.tar.gz``.

Every file is checked against a known hash (:data:`MNIST_MD5`, :data:`CIFAR10_MD5`); an archive member that
would land outside its folder makes the whole archive be refused.
"""

from __future__ import annotations

import os
import shutil
import tarfile
import tempfile
from pathlib import Path

from .. import paths
from ..fetch import base_url, fetch
from .cifar import CIFAR10_DIR
from .named import DOWNLOADABLE, dataset_key, missing_files, resolve_data_root

__all__ = ["BASE_URLS", "URL_ENV_VARS", "MNIST_MD5", "CIFAR10_ARCHIVE", "CIFAR10_MD5", "download_dataset",
           "ensure_dataset", "dataset_url"]

BASE_URLS = {"mnist": "https://ossci-datasets.s3.amazonaws.com/mnist/", "cifar10": "https://www.cs.toronto.edu/~kriz/"}
URL_ENV_VARS = {"mnist": "NRPM_MNIST_URL", "cifar10": "NRPM_CIFAR10_URL"}

# md5, not sha256: the dataset authors and torchvision publish only md5 for these files, and a
# hash we computed ourselves would vouch for nothing. md5 is fine against corruption here.
MNIST_MD5 = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}
CIFAR10_ARCHIVE = "cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"


def dataset_url(name: str) -> str:
    """The base URL of dataset ``name`` ('mnist', 'cifar10'): ``$NRPM_<NAME>_URL``, else :data:`BASE_URLS`."""
    return base_url(URL_ENV_VARS[name], BASE_URLS[name])


def _data_hint(name: str, folder: Path) -> str:
    return (f"fetch it by hand into {folder}, pass --data-root / set NRPM_DATA to a folder holding "
            f"{name}, or set {URL_ENV_VARS[name]} to a reachable mirror")


def _download_mnist(root: Path, train: bool | None) -> None:
    raw = root / "MNIST" / "raw"
    for stem in missing_files("mnist", root, train):
        file = f"{stem}.gz"
        fetch(dataset_url("mnist") + file, raw / file, md5=MNIST_MD5[file], hint=_data_hint("mnist", raw))


def _download_cifar10(root: Path) -> None:
    """Fetch the archive into ``root``, unpack only its batch folder, then delete the archive."""
    root.mkdir(parents=True, exist_ok=True)
    archive = fetch(dataset_url("cifar10") + CIFAR10_ARCHIVE, root / CIFAR10_ARCHIVE, md5=CIFAR10_MD5,
                    hint=_data_hint("cifar10", root))
    try:
        _extract_folder(archive, CIFAR10_DIR, root)
    finally:
        archive.unlink(missing_ok=True)


def _extract_folder(archive: Path, folder: str, root: Path) -> None:
    """Unpack ``folder/`` of ``archive`` into ``root``, replacing an existing copy atomically.

    Members that would land outside the folder (absolute names, '..', links, devices) make the
    whole archive be refused: a tar from the network must not write elsewhere on disk.
    """
    with tempfile.TemporaryDirectory(dir=root, prefix=".extract-") as tmp:
        with tarfile.open(archive, "r:gz") as tar:
            members = _safe_members(tar, folder, archive)
            if hasattr(tarfile, "data_filter"):  # Python >= 3.11.4: the stdlib's own checks too
                tar.extractall(tmp, members=members, filter="data")
            else:
                tar.extractall(tmp, members=members)  # names checked in _safe_members
        target = root / folder
        if target.exists():
            shutil.rmtree(target)
        os.replace(Path(tmp) / folder, target)


def _safe_members(tar: tarfile.TarFile, folder: str, archive: Path) -> list[tarfile.TarInfo]:
    """The members under ``folder/``; ValueError for any member that could escape it."""
    members = []
    for member in tar.getmembers():
        parts = Path(member.name).parts
        escapes = member.name.startswith(("/", "\\")) or ".." in parts
        if escapes or not (member.isfile() or member.isdir()):
            raise ValueError(f"refusing to extract {archive}: member {member.name!r} is "
                             f"{'outside the target folder' if escapes else 'a link or special file'}")
        if parts and parts[0] == folder:
            members.append(member)
    if not members:
        raise ValueError(f"{archive} holds no {folder}/ folder; is it the right archive?")
    return members


def download_dataset(name: str, root: str | os.PathLike | None = None, *,
                     train: bool | None = None) -> Path:
    """Fetch what is missing of dataset ``name`` ('mnist' or 'cifar10') into ``root`` and return
    ``root`` (default: the cache ``$NRPM_HOME/data``).

    Files already present are kept. ``train`` limits MNIST to one split (None: both); CIFAR-10
    always comes as one archive with both. The layout is torchvision's:
    ``<root>/MNIST/raw/*-ubyte.gz`` and ``<root>/cifar-10-batches-py/``. Any other dataset (CIFAR-100,
    SVHN, imagefolder:, tensors:) raises ValueError naming what can be downloaded.
    """
    key = _downloadable_key(name)
    folder = Path(root).expanduser() if root is not None else paths.cache_dir("data")
    if not missing_files(key, folder, train):
        return folder
    if key == "mnist":
        _download_mnist(folder, train)
    else:
        _download_cifar10(folder)
    return folder


def _refuse_user_data(name: str) -> None:
    """imagefolder: / tensors: specs are a user's own files, read where they are: nothing to fetch."""
    if str(name).partition(":")[0] in ("imagefolder", "tensors"):
        raise ValueError(f"nrpm downloads only {' and '.join(DOWNLOADABLE)}, not {name!r}: imagefolder: and "
                         f"tensors: data are your own files, read from where they are; there is nothing to download")


def _downloadable_key(name: str) -> str:
    """The dataset key of ``name`` when nrpm knows where to fetch it; otherwise a ValueError naming what it can
    fetch (without this check CIFAR-100 or SVHN fell through to the CIFAR-10 download, which never holds them)."""
    _refuse_user_data(name)
    key = dataset_key(name)
    if key not in DOWNLOADABLE:
        raise ValueError(f"nrpm downloads only {' and '.join(DOWNLOADABLE)}, not {name!r}: put its files under a "
                         f"data root yourself (torchvision's layout), or use --data imagefolder:PATH / tensors:FILE")
    return key


def ensure_dataset(name: str, root: str | os.PathLike | None = None, *,
                   train: bool | None = None) -> Path:
    """A data root holding dataset ``name`` ('mnist' / 'cifar10'), downloading it if missing.

    The root is found by the lookup order of :mod:`nrpm.paths`: ``root`` (``--data-root``), else
    ``$NRPM_DATA``, else the cache or the shared mirror when they hold the dataset, else the cache
    ``$NRPM_HOME/data``. If that root lacks files they are downloaded into it (see
    :func:`download_dataset`). ``train`` narrows the check to one split (None: both). Pass the
    result as ``root=`` to :func:`nrpm.data.load_dataset`.

    Raises ValueError for an unknown name or a bad download, FileNotFoundError when the files
    cannot be fetched; messages are one line with the URL and what to do.
    """
    _refuse_user_data(name)
    key = dataset_key(name)  # a CIFAR-100 / SVHN root already holding the files is fine; fetching is refused
    folder = resolve_data_root(root, dataset=key, train=train)
    if missing_files(key, folder, train):
        download_dataset(key, folder, train=train)
    return folder
