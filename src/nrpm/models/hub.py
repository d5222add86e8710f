"""Downloading the paper's released checkpoints, beside the registry that names them (as timm keeps ``_hub.py``).

Files go to ``$NRPM_HOME/pretrained`` (``NRPM_HOME`` defaults to ``~/.cache/nrpm``) unless a folder is given; see
:mod:`nrpm.paths` for the lookup order that later finds them. They come from each registry entry's URL (the
official repository), or from ``$NRPM_PRETRAINED_URL`` + the file name (a mirror, or a test server), and are
checked against the registry's sha256.
"""

from __future__ import annotations

import os
from pathlib import Path

from .. import paths
from ..fetch import base_url, fetch
from .checkpoints import bundled_path, resolve_pretrained_dir
from .registry import PretrainedFile, list_models, model_entry

__all__ = ["URL_ENV_VAR", "pretrained_url", "download_pretrained", "ensure_pretrained"]

URL_ENV_VAR = "NRPM_PRETRAINED_URL"


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
    base = base_url(URL_ENV_VAR, None)
    return base + released.file if base else released.url


def download_pretrained(name: str, folder: str | os.PathLike | None = None) -> Path:
    """Fetch the released checkpoint of model ``name`` ('mlp3', 'lenet', 'resnet18_narrow') into
    ``folder`` (default: the cache ``$NRPM_HOME/pretrained``), checking the registry's sha256, and
    return the file's path. An existing file is kept as it is."""
    released = _released(name)
    if released.bundled:
        return bundled_path(released)  # shipped with nrpm: nothing to fetch
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
    if released.bundled and path is None:
        return bundled_path(released)  # shipped with nrpm: nothing to fetch
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
