"""Downloading the datasets and the paper's released checkpoints: checked, atomic, cached.

Only the standard library is used (urllib, hashlib, tarfile): fetching a handful of files needs
nothing more, and a ``requests`` dependency would be one more package to install on offline
clusters for no gain.

Where files go: ``$NRPM_HOME/data`` and ``$NRPM_HOME/pretrained`` (``NRPM_HOME`` defaults to
``~/.cache/nrpm``) unless an explicit folder is given; see :mod:`nrpm.paths` for the lookup
order that later finds them.

Where files come from (override for mirrors and tests). Each source is a *base URL*, a folder to
which the file name is appended; the environment variable wins over the :data:`BASE_URLS` entry:

* ``NRPM_MNIST_URL``      (default ``https://ossci-datasets.s3.amazonaws.com/mnist/``), files
  ``{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz``;
* ``NRPM_CIFAR10_URL``    (default ``https://www.cs.toronto.edu/~kriz/``), file
  ``cifar-10-python.tar.gz``;
* ``NRPM_PRETRAINED_URL`` (default: each checkpoint's URL in the model registry, the official
  repository), files as named in the registry.

Every file is checked against a known hash (:data:`MNIST_MD5`, :data:`CIFAR10_MD5`, the
registry's sha256). Failures raise one-line errors naming the URL and a fix:
``FileNotFoundError`` when a file cannot be fetched (no network, HTTP 404, ...), ``ValueError``
when what arrived is wrong (bad hash, truncated, unsafe archive). The CLI turns both into exit
status 2.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from . import data as D
from . import paths
from ._io import fsync_folder
from .models.checkpoints import resolve_pretrained_dir
from .models.registry import PretrainedFile, list_models, model_entry

__all__ = ["BASE_URLS", "URL_ENV_VARS", "MNIST_MD5", "CIFAR10_ARCHIVE", "CIFAR10_MD5", "fetch",
           "base_url", "download_dataset", "download_pretrained", "ensure_dataset",
           "ensure_pretrained"]

# None for "pretrained" means: use each registry entry's own URL.
BASE_URLS: dict[str, str | None] = {
    "mnist": "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "cifar10": "https://www.cs.toronto.edu/~kriz/",
    "pretrained": None,
}
URL_ENV_VARS = {"mnist": "NRPM_MNIST_URL", "cifar10": "NRPM_CIFAR10_URL",
                "pretrained": "NRPM_PRETRAINED_URL"}

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

DEFAULT_TIMEOUT = 60.0  # seconds without data before giving up (per socket operation)
_CHUNK = 1 << 20
_USER_AGENT = "nrpm-downloader"
# Errors meaning "the file could not be fetched" (as opposed to "it arrived broken").
_NETWORK_ERRORS = (urllib.error.URLError, http.client.HTTPException, ConnectionError,
                   TimeoutError)


# --------------------------------------------------------------------------- one file


def fetch(url: str, dest: str | os.PathLike, *, sha256: str | None = None,
          md5: str | None = None, timeout: float = DEFAULT_TIMEOUT,
          hint: str | None = None) -> Path:
    """Download ``url`` to ``dest`` and return ``dest``.

    The bytes go to a temporary file in ``dest``'s folder, are hashed on the way, checked
    against ``sha256`` / ``md5`` when given, fsynced, and only then renamed onto ``dest``
    (atomic), so ``dest`` is either absent or complete and never a partial file. ``hint`` is
    appended to error messages (what the user can do instead).

    Raises FileNotFoundError if the file cannot be fetched (network error, HTTP error such as
    404) and ValueError if it arrives truncated or with the wrong hash; no file is left behind.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fix = hint or f"check the URL, or fetch the file by hand into {dest.parent}"
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out:
            digests = _download_into(url, out, timeout, fix)
            out.flush()
            os.fsync(out.fileno())  # data on disk before the rename makes it visible
        _verify(url, {"sha256": sha256, "md5": md5}, digests, fix)
        os.replace(tmp_name, dest)
        fsync_folder(dest.parent)
    except BaseException:  # includes Ctrl-C: never leave the .part file behind
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return dest


def _download_into(url: str, out, timeout: float, fix: str) -> dict[str, str]:
    """Stream ``url`` into the open file ``out``; return its hex digests."""
    hashers = {"sha256": hashlib.sha256(), "md5": hashlib.md5()}
    received = 0
    print(f"nrpm: downloading {url}", file=sys.stderr, flush=True)
    request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            expected_len = _content_length(response)
            while chunk := response.read(_CHUNK):
                out.write(chunk)
                received += len(chunk)
                for hasher in hashers.values():
                    hasher.update(chunk)
    except urllib.error.HTTPError as err:  # before URLError: it is a subclass
        raise FileNotFoundError(f"could not download {url}: HTTP {err.code} {err.reason}; {fix}") from None
    except http.client.IncompleteRead as err:  # the connection dropped mid-file
        raise _truncated(url, received + len(err.partial), expected_len, fix) from None
    except _NETWORK_ERRORS as err:
        reason = getattr(err, "reason", None) or err
        raise FileNotFoundError(f"could not download {url}: {reason}; {fix}") from None
    if expected_len is not None and received != expected_len:
        raise _truncated(url, received, expected_len, fix)
    return {name: hasher.hexdigest() for name, hasher in hashers.items()}


def _truncated(url: str, received: int, expected_len: int | None, fix: str) -> ValueError:
    return ValueError(f"download of {url} is truncated: got {received} of {expected_len} bytes; "
                      f"retry, or {fix}")


def _content_length(response) -> int | None:
    value = response.headers.get("Content-Length") if hasattr(response, "headers") else None
    return int(value) if value and value.isdigit() else None


def _verify(url: str, expected: dict[str, str | None], got: dict[str, str], fix: str) -> None:
    for algorithm, want in expected.items():
        if want is not None and want.lower() != got[algorithm]:
            raise ValueError(f"download of {url} failed its {algorithm} check: expected {want.lower()}, "
                             f"got {got[algorithm]} (file not kept); retry, or {fix}")


def base_url(source: str) -> str | None:
    """The base URL for ``source`` ('mnist', 'cifar10', 'pretrained'), ending in '/':
    ``$NRPM_<SOURCE>_URL``, else ``BASE_URLS[source]`` (None: registry URLs, pretrained only)."""
    url = os.environ.get(URL_ENV_VARS[source]) or BASE_URLS[source]
    if url is None:
        return None
    return url if url.endswith("/") else url + "/"


# --------------------------------------------------------------------------- datasets


def _data_hint(name: str, folder: Path) -> str:
    return (f"fetch it by hand into {folder}, pass --data-root / set NRPM_DATA to a folder holding "
            f"{name}, or set {URL_ENV_VARS[name]} to a reachable mirror")


def _download_mnist(root: Path, train: bool | None) -> None:
    raw = root / "MNIST" / "raw"
    for stem in D.missing_files("mnist", root, train):
        file = f"{stem}.gz"
        fetch(base_url("mnist") + file, raw / file, md5=MNIST_MD5[file], hint=_data_hint("mnist", raw))


def _download_cifar10(root: Path) -> None:
    """Fetch the archive into ``root``, unpack only its batch folder, then delete the archive."""
    root.mkdir(parents=True, exist_ok=True)
    archive = fetch(base_url("cifar10") + CIFAR10_ARCHIVE, root / CIFAR10_ARCHIVE, md5=CIFAR10_MD5,
                    hint=_data_hint("cifar10", root))
    try:
        _extract_folder(archive, D.CIFAR10_DIR, root)
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
    if not D.missing_files(key, folder, train):
        return folder
    if key == "mnist":
        _download_mnist(folder, train)
    else:
        _download_cifar10(folder)
    return folder


def _refuse_user_data(name: str) -> None:
    """imagefolder: / tensors: specs are a user's own files, read where they are: nothing to fetch."""
    if str(name).partition(":")[0] in ("imagefolder", "tensors"):
        raise ValueError(f"nrpm downloads only {' and '.join(D.DOWNLOADABLE)}, not {name!r}: imagefolder: and "
                         f"tensors: data are your own files, read from where they are; there is nothing to download")


def _downloadable_key(name: str) -> str:
    """The dataset key of ``name`` when nrpm knows where to fetch it; otherwise a ValueError naming what it can
    fetch (without this check CIFAR-100 or SVHN fell through to the CIFAR-10 download, which never holds them)."""
    _refuse_user_data(name)
    key = D.dataset_key(name)
    if key not in D.DOWNLOADABLE:
        raise ValueError(f"nrpm downloads only {' and '.join(D.DOWNLOADABLE)}, not {name!r}: put its files under a "
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
    key = D.dataset_key(name)  # a CIFAR-100 / SVHN root already holding the files is fine; fetching is refused
    folder = D.resolve_data_root(root, dataset=key, train=train)
    if D.missing_files(key, folder, train):
        download_dataset(key, folder, train=train)
    return folder


# --------------------------------------------------------------------------- checkpoints


def _released(name: str) -> PretrainedFile:
    released = model_entry(name).pretrained
    if released is None:
        raise ValueError(f"no released checkpoint for model {name!r} "
                         f"(available: {', '.join(list_models(pretrained=True))})")
    return released


def pretrained_url(name: str) -> str:
    """Where the released checkpoint of ``name`` is fetched from (``NRPM_PRETRAINED_URL`` or
    ``BASE_URLS['pretrained']`` + file name, else the registry's URL)."""
    released = _released(name)
    base = base_url("pretrained")
    return base + released.file if base else released.url


def download_pretrained(name: str, folder: str | os.PathLike | None = None) -> Path:
    """Fetch the released checkpoint of model ``name`` ('mlp3', 'lenet', 'resnet18_narrow') into
    ``folder`` (default: the cache ``$NRPM_HOME/pretrained``), checking the registry's sha256, and
    return the file's path. An existing file is kept as it is."""
    released = _released(name)
    folder = Path(folder).expanduser() if folder is not None else paths.cache_dir("pretrained")
    dest = folder / released.file
    if dest.is_file():
        return dest
    hint = (f"place {released.file} in {folder} by hand, pass the checkpoint path, set NRPM_PRETRAINED "
            f"to a folder holding it, or set NRPM_PRETRAINED_URL to a reachable mirror")
    return fetch(pretrained_url(name), dest, sha256=released.sha256, hint=hint)


def ensure_pretrained(name: str, path: str | os.PathLike | None = None) -> Path:
    """The path of model ``name``'s released checkpoint, downloading it if missing.

    ``path`` None: the file is looked up by the order of :mod:`nrpm.paths` (``$NRPM_PRETRAINED``,
    else the cache or shared mirror holding it, else the cache ``$NRPM_HOME/pretrained``) and
    downloaded into that folder if absent. ``path`` a folder: the file inside it, downloaded there
    if absent. ``path`` a file: returned as is; if it does not exist it is downloaded only when its
    name is the released file's name (otherwise FileNotFoundError: a custom checkpoint cannot be
    downloaded). Pass the result as ``path=`` to :func:`nrpm.models.load_pretrained`.

    Raises ValueError for a model without a released checkpoint or a bad download,
    FileNotFoundError when the file cannot be found or fetched.
    """
    released = _released(name)
    if path is None:
        return download_pretrained(name, resolve_pretrained_dir(name=name))
    path = Path(path).expanduser()
    if path.is_dir():
        return download_pretrained(name, path)
    if path.is_file():
        return path
    if path.name == released.file:
        return download_pretrained(name, path.parent)
    raise FileNotFoundError(f"checkpoint {path} not found; only the released {released.file} can be "
                            f"downloaded: give its folder, drop the path, or fix the path")
