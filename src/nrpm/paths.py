"""Where nrpm looks for datasets and checkpoints: the one lookup order, shared by data and models.

For ``kind`` = ``"data"`` (datasets) or ``"pretrained"`` (the paper's released checkpoints):

1. an explicit location (``--data-root DIR`` / a checkpoint path or folder), used as given;
2. else the environment variable (``NRPM_DATA`` / ``NRPM_PRETRAINED``), used as given;
3. else the cache ``$NRPM_HOME/data`` / ``$NRPM_HOME/pretrained`` (``NRPM_HOME`` defaults to
   ``~/.cache/nrpm``) when it holds the files asked for;
4. else the ``shared/data`` / ``shared/pretrained`` mirror beside a *source checkout*
   (``<checkout>/../shared``; only when nrpm runs from ``<checkout>/src/nrpm`` next to a
   ``pyproject.toml``, never from site-packages) when it holds the files;
5. else the cache path, which is where ``--download`` writes.

Explicit and environment locations are never second-guessed: if they lack the files, the caller
reports that (naming them) rather than silently reading something else.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

__all__ = ["KINDS", "ENV_VARS", "nrpm_home", "cache_dir", "source_checkout", "shared_mirror",
           "candidates", "resolve", "looked_in"]

KINDS = ("data", "pretrained")
ENV_VARS = {"data": "NRPM_DATA", "pretrained": "NRPM_PRETRAINED"}
DEFAULT_HOME = "~/.cache/nrpm"

_PACKAGE_DIR = Path(__file__).resolve().parent


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; expected one of {', '.join(KINDS)}")


def nrpm_home() -> Path:
    """``$NRPM_HOME``, else ``~/.cache/nrpm`` (read at each call, so tests can change it)."""
    return Path(os.environ.get("NRPM_HOME") or DEFAULT_HOME).expanduser()


def cache_dir(kind: str) -> Path:
    """``$NRPM_HOME/<kind>``: where downloads of ``kind`` go when no location is given."""
    _check_kind(kind)
    return nrpm_home() / kind


def source_checkout(package_dir: Path | None = None) -> Path | None:
    """The repository root when nrpm runs from a source tree (``<root>/src/nrpm`` with
    ``<root>/pyproject.toml``), else None. ``package_dir`` defaults to this package's folder.

    A plain ``pip install .`` puts the package in site-packages, where ``parents[n]`` points at
    unrelated folders; requiring the src layout plus pyproject.toml rules that out.
    """
    src = (package_dir or _PACKAGE_DIR).parent
    root = src.parent
    if src.name == "src" and (root / "pyproject.toml").is_file():
        return root
    return None


def shared_mirror(kind: str) -> Path | None:
    """``<checkout>/../shared/<kind>`` beside a source checkout, else None."""
    _check_kind(kind)
    checkout = source_checkout()
    return None if checkout is None else checkout.parent / "shared" / kind


def _given(kind: str, explicit: str | os.PathLike | None) -> tuple[str, Path] | None:
    """The explicit location, else the environment variable's, labelled; None if neither."""
    if explicit is not None:
        return ("given", Path(explicit).expanduser())
    env_var = ENV_VARS[kind]
    env = os.environ.get(env_var)
    return (f"${env_var}", Path(env).expanduser()) if env else None


def _searched(kind: str) -> list[tuple[str, Path]]:
    """The cache, then (in a source checkout) the shared mirror, labelled."""
    places = [(f"cache $NRPM_HOME/{kind}", cache_dir(kind))]
    mirror = shared_mirror(kind)
    if mirror is not None:
        places.append(("shared mirror", mirror))
    return places


def candidates(kind: str, explicit: str | os.PathLike | None = None) -> list[tuple[str, Path]]:
    """The places consulted for ``kind``, in order, each labelled for messages.

    Just one when ``explicit`` or the environment variable is set (they are used as given);
    otherwise the cache and, in a source checkout, the shared mirror.
    """
    _check_kind(kind)
    given = _given(kind, explicit)
    return [given] if given else _searched(kind)


def resolve(kind: str, explicit: str | os.PathLike | None = None,
            holds: Callable[[Path], bool] | None = None) -> Path:
    """The folder to use for ``kind`` by the lookup order above.

    ``holds(folder)`` says whether a folder has the files the caller needs (default: it is a
    directory); it only decides between the cache and the shared mirror.
    """
    _check_kind(kind)
    given = _given(kind, explicit)
    if given is not None:
        return given[1]
    holds = holds or Path.is_dir
    for _, folder in _searched(kind):
        if holds(folder):
            return folder
    return cache_dir(kind)


def looked_in(kind: str, explicit: str | os.PathLike | None = None) -> str:
    """'looked in: <label> <path>, ...' for not-found messages."""
    return "looked in: " + ", ".join(f"{label} {path}" for label, path in candidates(kind, explicit))
