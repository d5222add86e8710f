"""Reprogram a trained model in place (PEFT-style): one config, one call, helpers for the added parameters.

    config = ReprogramConfig(lam=0.5, K=3, paradigm=1)
    reprogram(model, config)          # swaps matching nn.Linear / nn.Conv2d for the robust layers
    lam_table(model)                  # {'fc1': 0.5, ...}
    save_reprogramming(model, "lam.pt"); undo_reprogramming(model)

Paradigms: 1 = every parameter frozen, lam fixed (a buffer); 2 = only the per-layer lam logits train;
3 = weights and lam logits train together.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
from dataclasses import asdict, dataclass, field
from typing import Callable, Sequence

import torch
from torch import nn

from . import functional as RF
from .coverage import unreprogrammed_weights, warn_unreprogrammed
from .formats import REPROGRAMMING_FORMAT, read_tagged, write_tagged
from .nn import BACKWARD_MODES, RobustConv2d, RobustLinear, RobustMixin
from .nn_attention import AGGREGATION_NAME, ATTENTION_PARTS, PROJECTION_NAMES, RobustMultiheadAttention
from .targets import canonical_name, matches, module_aliases, normalize_pattern
from .validation import check_eps, check_estimator, check_lam, check_reprogram_K

__all__ = [
    "TARGET_TYPE_NAMES",
    "DEFAULT_TARGET_TYPES",
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
    "print_trainable_parameters",
]

_FORMAT = REPROGRAMMING_FORMAT
_SUPPORTED = {nn.Linear: RobustLinear, nn.Conv2d: RobustConv2d, nn.MultiheadAttention: RobustMultiheadAttention}
_TYPE_NAMES = {"linear": nn.Linear, "conv2d": nn.Conv2d, "conv": nn.Conv2d, "attention": nn.MultiheadAttention,
               "attention_projections": nn.MultiheadAttention, "attention_aggregation": nn.MultiheadAttention}
# the parts of an nn.MultiheadAttention each target type name makes robust (the class itself: all of them)
TARGET_TYPE_NAMES = ("linear", "conv2d", "attention", "attention_projections", "attention_aggregation")
DEFAULT_TARGET_TYPES = ("linear", "conv2d", "attention")  # every module type nrpm reprograms
_ATTENTION_PARTS_BY_NAME = {"attention": ATTENTION_PARTS, "attention_projections": ("projections",),
                            "attention_aggregation": ("aggregation",)}
_SUPPORTED_NAMES = "nn.Linear, nn.Conv2d and nn.MultiheadAttention"


@dataclass
class ReprogramConfig:
    """What to reprogram and how.

    lam: initial/fixed mixing weight in [0, 1] (1 = original model); K: IRLS steps; eps: IRLS smoothing.
    paradigm: 1 (frozen, fixed lam), 2 (only lam learns), 3 (weights and lam learn).
    target_modules: module patterns (see :mod:`nrpm.targets`): a name, also matching as a dotted suffix
    (``"fc2"`` matches ``"head.fc2"``, as in PEFT), a glob (``"layer*.*.conv1"``) or a regular expression
    ``"re:..."`` / ``re.compile(...)`` matched against the whole name; None = every module of target_types.
    target_types: ``"linear"`` / ``"conv2d"`` / ``"attention"`` or the classes nn.Linear / nn.Conv2d /
    nn.MultiheadAttention. ``"attention"`` makes an nn.MultiheadAttention's q/k/v/out projections and its
    aggregation robust (:class:`~nrpm.nn_attention.RobustMultiheadAttention`); ``"attention_projections"`` only
    the projections, ``"attention_aggregation"`` only the aggregation. Weight-bearing modules of other types
    are reported (warning, and ``model.nrpm_unreprogrammed``), see :mod:`nrpm.coverage`.
    skip: patterns never reprogrammed (e.g. the first conv, the classifier).
    A module shared under several names is reprogrammed under all of them (one robust module) or none.
    predicate: optional ``f(name, module) -> bool``, applied after the above (not saved to files).
    lam_per_layer: optional {name: lam} overriding ``lam`` for some layers (names of reprogrammed layers; for an
    attention module its name, for all its parts, or a part's name such as ``"attn.q_proj"`` / ``"attn.aggregation"``).
    backward_mode: "exact", "detached" (IRLS weights constant in the backward; ``detach_weights=True`` is the
    older spelling) or "plain" (BPDA: the plain layer's backward); see :mod:`nrpm.nn`.
    norm, gamma, delta, scale: the robust estimator ("l1" default, "mcp", "huber", "hm"; gamma / delta in vote
    units for scale "absolute" as in the official code, or in units of each output's mean absolute residual for
    "relative"); see :mod:`nrpm.functional`.
    """

    lam: float = RF.DEFAULT_LAM
    K: int = RF.DEFAULT_K
    eps: float = RF.DEFAULT_EPS
    paradigm: int = 1
    target_modules: Sequence[str] | None = None
    target_types: Sequence[str | type] = DEFAULT_TARGET_TYPES
    skip: Sequence[str] = ()
    predicate: Callable[[str, nn.Module], bool] | None = field(default=None, repr=False)
    lam_per_layer: dict[str, float] | None = None
    detach_weights: bool = False
    backward_mode: str = "exact"
    norm: str = RF.DEFAULT_NORM
    gamma: float = RF.DEFAULT_GAMMA
    delta: float = RF.DEFAULT_DELTA
    scale: str = RF.DEFAULT_SCALE

    def __post_init__(self):
        check_reprogram_K(self.K)  # K = 0 would make every lam the plain model
        check_eps(self.eps)
        check_lam(self.lam)
        check_estimator(self.norm, self.gamma, self.delta, self.scale)
        if self.detach_weights and self.backward_mode == "exact":
            self.backward_mode = "detached"  # the older spelling of that gradient mode
        if self.backward_mode not in BACKWARD_MODES:
            raise ValueError(f"backward_mode must be one of {BACKWARD_MODES}, got {self.backward_mode!r}")
        self.detach_weights = self.backward_mode == "detached"
        if self.paradigm not in (1, 2, 3):
            raise ValueError(f"paradigm must be 1, 2 or 3, got {self.paradigm!r}")
        self.target_types = tuple(self.target_types)
        self._types()  # validates names and classes
        if isinstance(self.target_modules, (str, re.Pattern)):
            self.target_modules = [self.target_modules]
        if isinstance(self.skip, (str, re.Pattern)):
            self.skip = [self.skip]
        if self.target_modules is not None:
            self.target_modules = [normalize_pattern(p) for p in self.target_modules]
        self.skip = [normalize_pattern(p) for p in self.skip]
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
                raise ValueError(f"unsupported module type {name}: NRPM supports {_SUPPORTED_NAMES}")
        return tuple(out)

    def _attention_parts(self) -> tuple[str, ...]:
        """The parts of each targeted nn.MultiheadAttention that become robust (in ATTENTION_PARTS order)."""
        wanted = set()
        for t in self.target_types:
            wanted.update(ATTENTION_PARTS if t is nn.MultiheadAttention
                          else _ATTENTION_PARTS_BY_NAME.get(t.lower() if isinstance(t, str) else None, ()))
        return tuple(p for p in ATTENTION_PARTS if p in wanted)

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("predicate")
        d["target_types"] = [t if isinstance(t, str) else {nn.Linear: "linear", nn.Conv2d: "conv2d",
                                                           nn.MultiheadAttention: "attention"}[t]
                             for t in self.target_types]
        d["target_modules"] = list(self.target_modules) if self.target_modules is not None else None
        d["skip"] = list(self.skip)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ReprogramConfig":
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__ and k != "predicate"}
        return cls(**known)


def _check_patterns_hit(model: nn.Module, config: ReprogramConfig, aliases: dict[int, list[str]],
                        modules: dict[int, nn.Module]) -> None:
    """Every target pattern must match some module, and a plain name must not name an unsupported one."""
    for pattern in config.target_modules:
        hits = [(names, modules[key]) for key, names in aliases.items() if matches_any(names, [pattern])]
        if not hits:
            raise ValueError(f"target module {pattern!r} matches no module of {type(model).__name__}")
        plain_name = isinstance(pattern, str) and not pattern.startswith("re:") and not set("*?[") & set(pattern)
        for names, m in hits:
            if plain_name and not isinstance(m, RobustMixin) and type(m) not in _SUPPORTED:
                raise ValueError(f"module {names[0]!r} is a {type(m).__name__}: NRPM supports exactly "
                                 f"{_SUPPORTED_NAMES}")


def matches_any(names: list[str], patterns) -> bool:
    return any(matches(n, patterns) for n in names)


def _select(model: nn.Module, config: ReprogramConfig) -> dict[int, list[str]]:
    """{id(module): all its names} of the modules to reprogram. A module shared under several names is selected
    when any of its names is targeted, and skipped when any of them is skipped, so its aliases never disagree."""
    types = config._types()
    aliases = module_aliases(model)
    modules = {id(m): m for _, m in model.named_modules()}
    if config.target_modules is not None:
        _check_patterns_hit(model, config, aliases, modules)
    selected = {}
    for key, names in aliases.items():
        module = modules[key]
        if isinstance(module, RobustMixin) or type(module) not in types:
            continue  # exact types only: a subclass may change forward in ways NRPM would silently drop
        if config.target_modules is not None and not matches_any(names, config.target_modules):
            continue
        if matches_any(names, config.skip):
            continue
        if config.predicate is not None and not config.predicate(names[0], module):
            continue
        selected[key] = names
    if not selected:
        raise ValueError(f"the reprogramming config matches no {_SUPPORTED_NAMES} module of "
                         f"{type(model).__name__} (target_modules={config.target_modules}, "
                         f"target_types={list(config.target_types)}, skip={list(config.skip)})")
    return selected


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def _config_with(config: ReprogramConfig | None, overrides: dict) -> ReprogramConfig:
    """``config`` with ``overrides`` applied; an unknown option (a typo such as ``lamda``) is an error."""
    valid = [f for f in ReprogramConfig.__dataclass_fields__]
    unknown = sorted(set(overrides) - set(valid))
    if unknown:
        close = difflib.get_close_matches(unknown[0], valid, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"unknown reprogramming option {unknown[0]!r}{hint}; valid options: {', '.join(valid)}")
    if "backward_mode" in overrides and "detach_weights" not in overrides:
        overrides = {**overrides, "detach_weights": overrides["backward_mode"] == "detached"}
    if config is None:
        return ReprogramConfig(**overrides)
    return dataclasses.replace(config, **overrides) if overrides else config


def _part_names(config: ReprogramConfig, module: nn.Module) -> tuple[str, ...]:
    """The robust children an attention module gets (q_proj ... aggregation); none for other modules."""
    if type(module) is not nn.MultiheadAttention:
        return ()
    parts = config._attention_parts()
    return (PROJECTION_NAMES if "projections" in parts else ()) + \
        ((AGGREGATION_NAME,) if "aggregation" in parts else ())


def _check_lam_per_layer(config: ReprogramConfig, selected: dict[int, list[str]], model: nn.Module) -> None:
    names = [n for aliases in selected.values() for n in aliases]
    names += [f"{n}.{part}" for aliases in selected.values()
              for part in _part_names(config, model.get_submodule(aliases[0])) for n in aliases]
    unknown = sorted(set(config.lam_per_layer or {}) - set(names))
    if unknown:
        raise ValueError(f"lam_per_layer names {unknown}, which are not reprogrammed layers; reprogrammed layers: "
                         f"{[aliases[0] for aliases in selected.values()]}")


def _estimator(config: ReprogramConfig) -> dict:
    return {"norm": config.norm, "gamma": config.gamma, "delta": config.delta, "scale": config.scale}


def _lam_for(config: ReprogramConfig, names: list[str], default: float | None = None) -> float:
    per_layer = config.lam_per_layer or {}
    given = {per_layer[n] for n in names if n in per_layer}
    if len(given) > 1:
        raise ValueError(f"lam_per_layer gives the shared module {names} different lam values {sorted(given)}")
    return given.pop() if given else (config.lam if default is None else default)


def _robust_module(config: ReprogramConfig, module: nn.Module, names: list[str], learnable: bool) -> nn.Module:
    """The robust counterpart of ``module`` (registered under ``names``), sharing its tensors."""
    common = dict(K=config.K, eps=config.eps, learnable_lam=learnable, backward_mode=config.backward_mode,
                  **_estimator(config))
    lam = _lam_for(config, names)
    if type(module) is not nn.MultiheadAttention:
        return _SUPPORTED[type(module)].from_module(module, lam=lam, **common)
    # a part's own lam_per_layer entry ("attn.q_proj") wins over the module's ("attn")
    per_part = {part: _lam_for(config, [f"{n}.{part}" for n in names], default=lam)
                for part in _part_names(config, module)}
    return RobustMultiheadAttention.from_module(module, parts=config._attention_parts(), lam=lam,
                                                lam_per_part=per_part, **common)


def reprogram(model: nn.Module, config: ReprogramConfig | None = None, **overrides) -> nn.Module:
    """Swap the matching Linear/Conv2d/MultiheadAttention modules of ``model`` for robust ones, in place; return
    ``model``.

    The robust layers share the original weight and bias tensors. The requires_grad flags are set by the
    paradigm (and restored by :func:`undo_reprogramming`). Weight-bearing modules left plain because of their
    type are reported: an :class:`~nrpm.coverage.UnreprogrammedWeightsWarning` and ``model.nrpm_unreprogrammed``
    ({name: reason}).
    """
    config = _config_with(config, overrides)
    if robust_layers(model):
        raise ValueError("model is already reprogrammed: call undo_reprogramming(model) first, or set_lam()")
    selected = _select(model, config)
    _check_lam_per_layer(config, selected, model)
    original_flags = {n: p.requires_grad for n, p in model.named_parameters()}
    learnable = config.paradigm in (2, 3)
    for names in selected.values():
        module = model.get_submodule(names[0])
        robust = _robust_module(config, module, names, learnable)
        for name in names:  # every alias gets the same robust module, so sharing survives
            _replace(model, name, robust)
    for pname, p in model.named_parameters():
        p.requires_grad_(config.paradigm == 3 or (config.paradigm == 2 and pname.endswith("lam_logit")))
    model.nrpm_config = config
    model._nrpm_original_requires_grad = original_flags
    model.nrpm_unreprogrammed = unreprogrammed_weights(model, config._types(), tuple(_SUPPORTED),
                                                       (RobustMixin, RobustMultiheadAttention))
    warn_unreprogrammed(model.nrpm_unreprogrammed)
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
    """Put plain nn.Linear / nn.Conv2d / nn.MultiheadAttention back (same weight tensors) and restore the
    requires_grad flags."""
    _require_robust(model)
    _undo_attention(model)
    modules = {id(m): m for _, m in model.named_modules()}
    for key, names in module_aliases(model).items():
        if isinstance(modules[key], RobustMixin):
            plain = modules[key].to_plain()
            for name in names:  # one plain module for all aliases: sharing survives the undo
                _replace(model, name, plain)
    flags = getattr(model, "_nrpm_original_requires_grad", {})
    for pname, p in model.named_parameters():
        if pname in flags:
            p.requires_grad_(flags[pname])
    for attr in ("nrpm_config", "_nrpm_original_requires_grad", "nrpm_unreprogrammed"):
        if hasattr(model, attr):
            delattr(model, attr)
    return model


def _undo_attention(model: nn.Module) -> None:
    """Plain attention modules back first: their robust parts are not layers to undo one by one."""
    modules = {id(m): m for _, m in model.named_modules()}
    for key, names in module_aliases(model).items():
        if isinstance(modules[key], RobustMultiheadAttention):
            plain = modules[key].to_plain()
            for name in names:
                _replace(model, name, plain)


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
    write_tagged(path, reprogramming_state(model))


def _read_state(path_or_state) -> dict:
    if not isinstance(path_or_state, dict):
        return read_tagged(path_or_state, _FORMAT, "an nrpm reprogramming state",
                           "give a reprogramming.pt of nrpm reprogram or of nrpm.save_reprogramming")
    if path_or_state.get("format") != _FORMAT:
        raise ValueError(f"not an nrpm reprogramming state (expected format {_FORMAT!r})")
    return path_or_state


def _layers_by_canonical_name(model: nn.Module) -> dict[str, RobustMixin]:
    return {canonical_name(n): m for n, m in robust_layers(model).items()}


def _holds_saved_layer(name: str, module: nn.Module, saved) -> bool:
    """A saved layer's own name, or an attention module whose robust parts (``name.q_proj`` ...) were saved."""
    name = canonical_name(name)
    return name in saved or (type(module) is nn.MultiheadAttention and any(s.startswith(name + ".") for s in saved))


def load_reprogramming(model: nn.Module, path_or_state) -> nn.Module:
    """Apply a saved reprogramming state to ``model`` (a plain one is reprogrammed first); return ``model``.

    Layer names are matched without wrapper prefixes (``module.`` of DataParallel / DDP, ``_orig_mod.`` of
    torch.compile), so a state saved from a wrapped model loads into the bare one and back. Each layer gets its
    saved lam, K, eps, gradient mode and lam mode (fixed or learnable).
    """
    state = _read_state(path_or_state)
    config = ReprogramConfig.from_dict(state["config"])
    saved = {canonical_name(n): v for n, v in state["lam"].items()}
    learnable = {canonical_name(n): v for n, v in state.get("learnable", {}).items()}
    if not robust_layers(model):
        # the saved names are exact: select exactly them (suffix matching could also pick e.g. layer1.0.conv1
        # for a saved stem 'conv1')
        exact = dataclasses.replace(config, target_modules=None, skip=[], lam_per_layer=None,
                                    predicate=lambda name, m: _holds_saved_layer(name, m, saved))
        reprogram(model, exact)
    layers = _layers_by_canonical_name(model)
    if set(layers) != set(saved):
        raise ValueError(f"saved state is for layers {sorted(saved)}, model has robust layers "
                         f"{sorted(layers)}")
    for name, value in saved.items():
        layer = layers[name]
        layer.K, layer.eps, layer.backward_mode = config.K, config.eps, config.backward_mode
        layer.set_estimator(**_estimator(config))
        layer.set_learnable_lam(learnable.get(name, layer.learnable_lam))
        layer.set_lam(value)
    return model


def print_trainable_parameters(model: nn.Module) -> None:
    """Print the trainable and total parameter counts, as PEFT's ``print_trainable_parameters`` does:
    ``trainable params: 4 || all params: 2,912 || trainable%: 0.1374``."""
    trainable = count_trainable_parameters(model)
    total = sum(p.numel() for p in model.parameters())
    share = 100 * trainable / total if total else 0.0
    print(f"trainable params: {trainable:,d} || all params: {total:,d} || trainable%: {share:.4f}")
