"""A model spec with its weights: what ``eval``, ``audit``, ``certify`` and ``train`` all start from.

The weights are named by ``checkpoint``: 'pretrained' (the paper's released file, registry models only), a path
(a state_dict, see :func:`load_checkpoint`; a paradigm-3 ``model.pt`` of nrpm's brings its reprogramming along in
:attr:`LoadedModel.raw`), or None / 'none' (the factory's own, for registry models a fresh initialisation).

Errors speak of the arguments (``checkpoint=PATH``), not of command-line flags: the CLI names its flags itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torch import nn

from ..formats import CHECKPOINT_FORMAT, MODEL_FORMAT, REPROGRAMMING_FORMAT, format_of, read_torch_file
from .checkpoints import load_checkpoint, model_from_checkpoint
from .external import describe_model, is_registry_name, parse_model_spec, resolve_model_spec

__all__ = ["LoadedModel", "load_model"]


@dataclass
class LoadedModel:
    """A model with its weights, before reprogramming: where they came from, and what the spec resolved to."""

    model: nn.Module
    checkpoint_info: dict
    raw: object  # a checkpoint file's contents (a paradigm-3 model.pt keeps its reprogramming there), else None
    model_info: dict


def load_model(spec: str, checkpoint: str | None, model_args: dict | None = None) -> LoadedModel:
    """The model ``spec`` names (built with ``model_args``) with the weights ``checkpoint`` names (see the module
    docstring). A run's other files given as weights (a training checkpoint, a reprogramming state, another
    model's model.pt) are refused with the file to give instead."""
    model_args = dict(model_args or {})
    parse_model_spec(spec)  # a misspelt name fails here, with close matches, whatever the checkpoint
    if checkpoint == "pretrained":
        return _pretrained(spec, model_args)
    model, model_info = resolve_model_spec(spec, model_args)
    if checkpoint in (None, "none"):
        return LoadedModel(model, {}, None, model_info)
    path = Path(checkpoint).expanduser()
    raw = read_torch_file(path, "checkpoint")
    _refuse_other_nrpm_files(raw, path, spec)
    # from what was read, not from the file again: a large checkpoint is read once
    return LoadedModel(model, load_checkpoint(model, raw, source=str(path)), raw, model_info)


def _pretrained(spec: str, model_args: dict) -> LoadedModel:
    """The paper's released weights: registry models only, at their registered architecture."""
    if not is_registry_name(spec):
        raise ValueError(f"checkpoint=pretrained exists only for registry models; model={spec} takes its weights "
                         f"from its factory (checkpoint=none) or from your file (checkpoint=PATH)")
    if model_args:
        raise ValueError(f"model_args={model_args} changes {spec}, and its released checkpoint fits only the "
                         f"registered architecture: give checkpoint=PATH or none, or drop model_args")
    model, info = model_from_checkpoint(spec, "pretrained")
    return LoadedModel(model, info, None, describe_model(parse_model_spec(spec), model, {}))


def _refuse_other_nrpm_files(raw, path: Path, name: str) -> None:
    """A run's other files given as weights: say which file to give instead."""
    fmt = format_of(raw)
    if fmt == MODEL_FORMAT and raw.get("model") not in (None, name):
        raise ValueError(f"{path} holds a trained {raw['model']!r}, not {name!r}: pass model={raw['model']}")
    if fmt == CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is a training checkpoint (for nrpm train/reprogram --resume): evaluate the run's "
                         f"model.pt, or its reprogramming.pt as reprogramming=FILE")
    if fmt == REPROGRAMMING_FORMAT:
        raise ValueError(f"{path} is a reprogramming state, not weights: pass it as reprogramming={path}, with "
                         f"checkpoint naming the weights it was trained on")
