"""Reprogram a trained model in place (PEFT-style): one config, one call, helpers for the added parameters.

    config = ReprogramConfig(lam=0.5, K=3, paradigm=1)
    reprogram(model, config)          # swaps matching nn.Linear / nn.Conv2d for the robust layers
    lam_table(model)                  # {'fc1': 0.5, ...}
    save_reprogramming(model, "lam.pt"); undo_reprogramming(model)

Paradigms: 1 = every parameter frozen, lam fixed (a buffer); 2 = only the per-layer lam logits train;
3 = weights and lam logits train together.
"""

from __future__ import annotations

import fnmatch
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import torch
from torch import nn

from . import functional as RF
from ._io import atomic_write
from .nn import BACKWARD_MODES, RobustConv2d, RobustLinear, RobustMixin
from .validation import check_eps, check_K, check_lam

__all__ = [
    "ReprogramConfig",
    "reprogram",
    "undo_reprogramming",
    "robust_layers",
    "lam_table",
    "set_lam",
    "lam_parameters",
    "count_trainable_parameters",
    "save_reprogramming",
    "load_reprogramming",
    "atomic_torch_save",
]

_FORMAT = "nrpm-reprogramming/1"
_SUPPORTED = {nn.Linear: RobustLinear, nn.Conv2d: RobustConv2d}
_TYPE_NAMES = {"linear": nn.Linear, "conv2d": nn.Conv2d, "conv": nn.Conv2d}


@dataclass
class ReprogramConfig:
    """What to reprogram and how.

    lam: initial/fixed mixing weight in [0, 1] (1 = original model); K: IRLS steps; eps: IRLS smoothing.
    paradigm: 1 (frozen, fixed lam), 2 (only lam learns), 3 (weights and lam learn).
    target_modules: module names or glob patterns (``"layer*.conv*"``); None = every module of target_types.
    target_types: ``"linear"`` / ``"conv2d"`` or the classes nn.Linear / nn.Conv2d.
    skip: names or glob patterns never reprogrammed (e.g. the first conv, the classifier).
    predicate: optional ``f(name, module) -> bool``, applied after the above (not saved to files).
    lam_per_layer: optional {name: lam} overriding ``lam`` for some layers.
    """

    lam: float = RF.DEFAULT_LAM
    K: int = RF.DEFAULT_K
    eps: float = RF.DEFAULT_EPS
    paradigm: int = 1
    target_modules: Sequence[str] | None = None
    target_types: Sequence[str | type] = ("linear", "conv2d")
    skip: Sequence[str] = ()
    predicate: Callable[[str, nn.Module], bool] | None = field(default=None, repr=False)
    lam_per_layer: dict[str, float] | None = None
    detach_weights: bool = False
    backward_mode: str = "exact"

    def __post_init__(self):
        check_K(self.K)
        check_eps(self.eps)
        check_lam(self.lam)
        if self.detach_weights and self.backward_mode == "exact":
            self.backward_mode = "detached"  # the older spelling of that gradient mode
        if self.backward_mode not in BACKWARD_MODES:
            raise ValueError(f"backward_mode must be one of {BACKWARD_MODES}, got {self.backward_mode!r}")
        self.detach_weights = self.backward_mode == "detached"
        if self.paradigm not in (1, 2, 3):
            raise ValueError(f"paradigm must be 1, 2 or 3, got {self.paradigm!r}")
        self.target_types = tuple(self.target_types)
        self._types()  # validates names and classes
        if isinstance(self.target_modules, str):
            self.target_modules = [self.target_modules]
        if isinstance(self.skip, str):
            self.skip = [self.skip]
        for name, value in (self.lam_per_layer or {}).items():
            check_lam(value)

    def _types(self) -> tuple[type, ...]:
        out = []
        for t in self.target_types:
            if isinstance(t, str):
                if t.lower() not in _TYPE_NAMES:
                    raise ValueError(f"unsupported module type {t!r}: NRPM supports {sorted(_TYPE_NAMES)}")
                out.append(_TYPE_NAMES[t.lower()])
            elif isinstance(t, type) and t in _SUPPORTED:
                out.append(t)
            else:
                name = getattr(t, "__name__", repr(t))
                raise ValueError(f"unsupported module type {name}: NRPM supports nn.Linear and nn.Conv2d")
        return tuple(out)

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("predicate")
        d["target_types"] = [t if isinstance(t, str) else {nn.Linear: "linear", nn.Conv2d: "conv2d"}[t]
                             for t in self.target_types]
        d["target_modules"] = list(self.target_modules) if self.target_modules is not None else None
        d["skip"] = list(self.skip)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ReprogramConfig":
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__ and k != "predicate"}
        return cls(**known)


def _matches(name: str, patterns: Iterable[str]) -> bool:
    return any(name == p or fnmatch.fnmatchcase(name, p) for p in patterns)


def _select(model: nn.Module, config: ReprogramConfig) -> list[str]:
    types = config._types()
    modules = dict(model.named_modules())
    if config.target_modules is not None:
        for pattern in config.target_modules:
            hits = [n for n in modules if n and _matches(n, [pattern])]
            if not hits:
                raise ValueError(f"target module {pattern!r} matches no module of {type(model).__name__}")
            for n in hits:
                m = modules[n]
                if pattern == n and not isinstance(m, RobustMixin) and type(m) not in _SUPPORTED:
                    raise ValueError(f"module {n!r} is a {type(m).__name__}: NRPM supports exactly nn.Linear "
                                     f"and nn.Conv2d")
    selected = []
    for name, module in modules.items():
        if not name or isinstance(module, RobustMixin) or type(module) not in types:
            continue  # exact types only: a subclass may change forward in ways NRPM would silently drop
        if config.target_modules is not None and not _matches(name, config.target_modules):
            continue
        if _matches(name, config.skip):
            continue
        if config.predicate is not None and not config.predicate(name, module):
            continue
        selected.append(name)
    if not selected:
        raise ValueError(f"the reprogramming config matches no nn.Linear/nn.Conv2d module of "
                         f"{type(model).__name__} (target_modules={config.target_modules}, "
                         f"target_types={list(config.target_types)}, skip={list(config.skip)})")
    return selected


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def reprogram(model: nn.Module, config: ReprogramConfig | None = None, **overrides) -> nn.Module:
    """Swap the matching Linear/Conv2d modules of ``model`` for robust ones, in place; return ``model``.

    The robust layers share the original weight and bias tensors. The requires_grad flags are set by the
    paradigm (and restored by :func:`undo_reprogramming`).
    """
    if config is None:
        config = ReprogramConfig(**overrides)
    elif overrides:
        config = ReprogramConfig.from_dict({**config.to_dict(), **overrides})
    if robust_layers(model):
        raise ValueError("model is already reprogrammed: call undo_reprogramming(model) first, or set_lam()")
    names = _select(model, config)
    original_flags = {n: p.requires_grad for n, p in model.named_parameters()}
    learnable = config.paradigm in (2, 3)
    for name in names:
        module = model.get_submodule(name)
        lam = (config.lam_per_layer or {}).get(name, config.lam)
        robust = _SUPPORTED[type(module)].from_module(module, lam=lam, K=config.K, eps=config.eps,
                                                      learnable_lam=learnable,
                                                      backward_mode=config.backward_mode)
        _replace(model, name, robust)
    for pname, p in model.named_parameters():
        p.requires_grad_(config.paradigm == 3 or (config.paradigm == 2 and pname.endswith("lam_logit")))
    model.nrpm_config = config
    model._nrpm_original_requires_grad = original_flags
    return model


def robust_layers(model: nn.Module) -> dict[str, RobustMixin]:
    """{name: layer} of every robust layer in ``model``, in module order."""
    return {n: m for n, m in model.named_modules() if isinstance(m, RobustMixin)}


def _require_robust(model: nn.Module) -> dict[str, RobustMixin]:
    layers = robust_layers(model)
    if not layers:
        raise ValueError(f"{type(model).__name__} has no robust layers: call nrpm.reprogram(model, config) first")
    return layers


def lam_table(model: nn.Module) -> dict[str, float]:
    """{name: lam} for every robust layer."""
    return {n: m.lam_value() for n, m in _require_robust(model).items()}


def set_lam(model: nn.Module, lam: float | dict[str, float]) -> None:
    """Set lam for all robust layers (a float) or per layer (a dict name -> lam; unknown names raise)."""
    layers = _require_robust(model)
    if isinstance(lam, dict):
        unknown = sorted(set(lam) - set(layers))
        if unknown:
            raise ValueError(f"no robust layer named {unknown}; robust layers are {list(layers)}")
        for name, value in lam.items():
            layers[name].set_lam(value)
    else:
        for layer in layers.values():
            layer.set_lam(lam)


def lam_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The learnable lam logits (paradigms 2 and 3), e.g. to give them their own optimiser group."""
    return [m.lam_logit for m in _require_robust(model).values() if m.learnable_lam]


def count_trainable_parameters(model: nn.Module) -> int:
    """Number of scalar parameters with requires_grad=True."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def undo_reprogramming(model: nn.Module) -> nn.Module:
    """Put plain nn.Linear / nn.Conv2d back (same weight tensors) and restore the requires_grad flags."""
    for name, layer in _require_robust(model).items():
        _replace(model, name, layer.to_plain())
    flags = getattr(model, "_nrpm_original_requires_grad", {})
    for pname, p in model.named_parameters():
        if pname in flags:
            p.requires_grad_(flags[pname])
    for attr in ("nrpm_config", "_nrpm_original_requires_grad"):
        if hasattr(model, attr):
            delattr(model, attr)
    return model


def atomic_torch_save(obj, path: str | os.PathLike) -> None:
    """torch.save to a temp file in the same folder, then rename: a crash never leaves a half-written file."""
    atomic_write(path, lambda f: torch.save(obj, f), binary=True)


def reprogramming_state(model: nn.Module) -> dict:
    """The small reprogramming state: config and per-layer lam (no weights)."""
    layers = _require_robust(model)
    config = getattr(model, "nrpm_config", None)
    cfg = config.to_dict() if config is not None else {}
    cfg["target_modules"] = list(layers)  # exact names, so a predicate-based selection reloads the same
    cfg["skip"] = []
    return {"format": _FORMAT, "config": cfg, "lam": {n: m.lam_value() for n, m in layers.items()},
            "learnable": {n: m.learnable_lam for n, m in layers.items()}}


def save_reprogramming(model: nn.Module, path: str | os.PathLike) -> None:
    """Save only the reprogramming state (config + per-layer lam), atomically; a few hundred bytes."""
    atomic_torch_save(reprogramming_state(model), path)


def load_reprogramming(model: nn.Module, path_or_state) -> nn.Module:
    """Apply a saved reprogramming state to ``model`` (a plain one is reprogrammed first); return ``model``."""
    state = path_or_state
    if not isinstance(state, dict):
        path = Path(path_or_state)
        if not path.is_file():
            raise FileNotFoundError(f"reprogramming state not found: {path}")
        state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or state.get("format") != _FORMAT:
        raise ValueError(f"not an nrpm reprogramming state (expected format {_FORMAT!r})")
    config = ReprogramConfig.from_dict(state["config"])
    layers = robust_layers(model)
    if not layers:
        reprogram(model, config)
        layers = robust_layers(model)
    if set(layers) != set(state["lam"]):
        raise ValueError(f"saved state is for layers {sorted(state['lam'])}, model has robust layers "
                         f"{sorted(layers)}")
    for name, value in state["lam"].items():
        layer = layers[name]
        layer.K, layer.eps, layer.backward_mode = config.K, config.eps, config.backward_mode
        layer.set_lam(value)
    return model
