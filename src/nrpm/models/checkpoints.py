"""Loading state_dicts into registry models, and the authors' released checkpoints.

Released checkpoints are found by the order of :mod:`nrpm.paths`: an explicit path, else
``$NRPM_PRETRAINED``, else the cache ``$NRPM_HOME/pretrained`` or the shared mirror beside a
source checkout when it holds the file, else the cache (where :mod:`nrpm.models.hub` writes).
"""

from __future__ import annotations

import hashlib

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import paths
from ..formats import read_torch_file
from .registry import create_model, list_models, model_entry

__all__ = ["load_checkpoint", "load_pretrained", "model_from_checkpoint", "resolve_pretrained_dir"]

# Parameter slots of the original reprogramming code (lambda / beta of its robust_sum). They
# are not trained weights of the plain model, so they are dropped (and reported).
_REPROGRAMMING_SLOTS = (".robust_sum.lmbd", ".robust_sum.beta")
_WRAPPER_KEYS = ("net", "state_dict", "model")
_MAX_LISTED = 12


def _released_files(name: str | None) -> list[str]:
    names = [name] if name is not None else list_models(pretrained=True)
    return [model_entry(n).pretrained.file for n in names if model_entry(n).pretrained is not None]


def resolve_pretrained_dir(folder: str | os.PathLike | None = None, name: str | None = None) -> Path:
    """The folder of the released checkpoints by the order of :mod:`nrpm.paths`: ``folder``, else
    ``$NRPM_PRETRAINED``, else the cache ``$NRPM_HOME/pretrained`` or the shared mirror (source
    checkouts only, never site-packages) when it holds model ``name``'s file (``name`` None: any
    released file), else the cache path."""
    files = _released_files(name)

    def holds(candidate: Path) -> bool:
        return any((candidate / file).is_file() for file in files)

    return paths.resolve("pretrained", folder, holds)


def _read_checkpoint(path: Path) -> Any:
    # the released files are plain tensors/numbers: formats' weights-only read, with its one-line errors
    return read_torch_file(path, "checkpoint", "re-download or re-save it as a state_dict")


def _split_checkpoint(obj: Any, source: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(state_dict, metadata) from a plain state_dict or {'net'|'state_dict'|'model': sd, ...}."""
    if not isinstance(obj, Mapping):
        raise ValueError(f"checkpoint {source} is a {type(obj).__name__}, expected a state_dict mapping: save it "
                         f"with torch.save(model.state_dict(), PATH)")
    for key in _WRAPPER_KEYS:
        if isinstance(obj.get(key), Mapping):
            meta = {k: v for k, v in obj.items() if k != key and not isinstance(v, Mapping)}
            return dict(obj[key]), meta
    if not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(
            f"checkpoint {source} is neither a state_dict nor a dict with one of the keys "
            f"{list(_WRAPPER_KEYS)}; top-level keys: {list(obj)[:_MAX_LISTED]}"
        )
    return dict(obj), {}


def _strip_prefix(state_dict: dict[str, torch.Tensor], prefix: str = "module.") -> dict:
    """Drop a DataParallel ``module.`` prefix."""
    return {(k[len(prefix) :] if k.startswith(prefix) else k): v for k, v in state_dict.items()}


def _listed(keys: list[str]) -> str:
    shown = ", ".join(keys[:_MAX_LISTED])
    more = len(keys) - _MAX_LISTED
    return shown + (f", ... and {more} more" if more > 0 else "")


def _mismatch_report(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> str | None:
    """Human-readable differences between ``state_dict`` and ``model``, or None if it fits."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    shapes = [
        f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(expected[k].shape)}"
        for k, v in state_dict.items()
        if k in expected and v.shape != expected[k].shape
    ]
    problems = []
    if missing:
        problems.append(f"missing keys ({len(missing)}): {_listed(missing)}")
    if unexpected:
        problems.append(f"unexpected keys ({len(unexpected)}): {_listed(unexpected)}")
    if shapes:
        problems.append(f"shape mismatches ({len(shapes)}): {_listed(shapes)}")
    return "; ".join(problems) or None


def load_checkpoint(
    model: nn.Module,
    path_or_state_dict: str | os.PathLike | Mapping[str, Any],
    map_location="cpu",
    *,
    source: str | None = None,
) -> dict[str, Any]:
    """Load weights into ``model`` (strictly) and return an info dict.

    Accepts a file path or an already loaded object: a plain state_dict, or a dict holding it
    under 'net', 'state_dict' or 'model' (other top-level numbers such as 'acc'/'epoch' are
    copied into the info). A 'module.' prefix is stripped, and the original code's
    '...robust_sum.lmbd' / '...robust_sum.beta' slots are ignored unless the model has them.

    ``source`` names an already loaded object's file in errors and in the info.

    Returns ``{'source', 'ignored_keys', **metadata}``. Raises FileNotFoundError for a missing
    file and ValueError listing missing / unexpected keys and shape mismatches.
    """
    if isinstance(path_or_state_dict, Mapping):
        source, raw = source or "<state_dict>", path_or_state_dict
    else:
        path = Path(path_or_state_dict).expanduser()
        source, raw = str(path), _read_checkpoint(path)
    state_dict, meta = _split_checkpoint(raw, source)
    state_dict = _strip_prefix(state_dict)

    model_keys = set(model.state_dict())
    ignored = [k for k in state_dict if k.endswith(_REPROGRAMMING_SLOTS) and k not in model_keys]
    state_dict = {k: v for k, v in state_dict.items() if k not in ignored}

    problems = _mismatch_report(model, state_dict)
    if problems:
        raise ValueError(
            f"checkpoint {source} does not fit {type(model).__name__}: {problems}"
        )
    model.load_state_dict(state_dict, strict=True)
    return {"source": source, "ignored_keys": ignored, **meta}


def load_pretrained(
    name: str, path: str | os.PathLike | None = None, map_location="cpu"
) -> tuple[nn.Module, dict[str, Any]]:
    """Build model ``name`` and load the authors' released checkpoint; returns (model, info).

    ``name`` is one of 'mlp3', 'lenet', 'resnet18_narrow'. The file defaults to
    ``<pretrained dir>/<file>`` (see ``resolve_pretrained_dir``; FileNotFoundError listing the
    places looked in if it is absent; :func:`nrpm.models.hub.ensure_pretrained` fetches it). The
    model is put in eval mode and on ``map_location``. ``info`` has 'source', 'ignored_keys'
    and, for the .t7, the stored 'acc', 'adv_acc' and 'epoch'. An unreadable file raises
    ValueError.
    """
    entry = model_entry(name)
    if entry.pretrained is None:
        known = ", ".join(list_models(pretrained=True))
        raise ValueError(f"no released checkpoint for {name!r}; available: {known}")
    if path is None:
        path = _find_released(name, entry.pretrained.file)
    model = create_model(name)
    info = load_checkpoint(model, path, map_location=map_location)
    if isinstance(map_location, (str, torch.device)):
        model.to(map_location)
    return model.eval(), info


# checkpoints shipped with nrpm (registry entries made with bundled_file)
BUNDLED_DIR = Path(__file__).resolve().parent / "released"


def bundled_path(released) -> Path:
    """The shipped file of a bundled release, checked against its sha256 (a damaged install fails by name)."""
    path = BUNDLED_DIR / released.file
    if not path.is_file():
        raise FileNotFoundError(f"the bundled checkpoint {path} is missing: reinstall nrpm")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != released.sha256:
        raise ValueError(f"the bundled checkpoint {path} has sha256 {digest}, not the registry's {released.sha256}: "
                         f"reinstall nrpm")
    return path


def _find_released(name: str, file: str) -> Path:
    released = model_entry(name).pretrained
    if released is not None and released.bundled:
        return bundled_path(released)
    path = resolve_pretrained_dir(name=name) / file
    if not path.is_file():
        raise FileNotFoundError(
            f"released checkpoint {file} of {name!r} not found; {paths.looked_in('pretrained')}; "
            "pass a checkpoint path, set NRPM_PRETRAINED to a folder holding it, or use --download")
    return path


def model_from_checkpoint(name: str, checkpoint: str | os.PathLike | None = "pretrained") -> tuple[nn.Module, dict]:
    """Model ``name`` with the weights ``checkpoint`` names: 'pretrained' (the authors' released file), a path,
    or None / 'none' (fresh initialisation). The one reading of a checkpoint spec shared by eval, train and
    audit, so they accept the same values and fail the same way."""
    if checkpoint == "pretrained":
        if model_entry(name).pretrained is None:  # unknown names fail here with close matches
            raise ValueError(f"no released checkpoint for model {name!r} (available: "
                             f"{list_models(pretrained=True)}); pass a checkpoint path or 'none'")
        return load_pretrained(name)
    model = create_model(name)
    if checkpoint is None or checkpoint == "none":
        return model, {}
    return model, load_checkpoint(model, checkpoint)
