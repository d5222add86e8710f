"""Drop-in NRPM layers: ``RobustLinear(nn.Linear)`` and ``RobustConv2d(nn.Conv2d)``.

They keep the parent's ``weight``/``bias`` (so state_dicts stay compatible) and add one mixing coefficient
``lam`` in one of two modes:

* fixed (paradigm 1): a buffer ``lam`` holding a value in [0, 1];
* learnable (paradigms 2 and 3): a parameter ``lam_logit`` with ``lam = sigmoid(lam_logit)``, so an optimiser
  can never push it out of (0, 1).

Defaults: ``K = 3`` IRLS steps and ``eps = 1e-3``, the paper's setting for its MNIST tables. ``lam = 0.5``.

Gradient modes (``backward_mode``), for adaptive attacks and experiments; the forward value never changes:

* ``"exact"`` (default): the true gradient through every unrolled IRLS step;
* ``"detached"``: the IRLS weights ``w_d`` are treated as constants in the backward pass;
* ``"plain"``: the plain linear layer's backward (BPDA, Athalye et al. 2018): ``plain + (robust - plain).detach()``.

:func:`lam_override` and :func:`backward_override` set lam / the gradient mode of every robust layer of a model
for the duration of a ``with`` block and restore each layer's state exactly afterwards; code outside this module
uses them (and the public methods) instead of touching a layer's storage.
"""

from __future__ import annotations

import contextlib
import math
from typing import Iterator

import torch
from torch import nn

from . import functional as RF
from .validation import check_eps, check_estimator, check_K, check_lam

__all__ = ["RobustLinear", "RobustConv2d", "RobustMixin", "BACKWARD_MODES", "lam_override", "backward_override",
           "irls_override"]

BACKWARD_MODES = ("exact", "detached", "plain")

# A learnable lam lives in logit space; 0 and 1 exactly would be infinite logits, so clamp when switching.
_LOGIT_CLAMP = 1e-4


class RobustMixin:
    """lam/K/eps handling shared by the robust layers.

    The layer's IRLS settings live in plain attributes (``K``, ``eps``, ``norm``, ``gamma``, ``delta``, ``scale``,
    ``backward_mode``) that code such as :func:`irls_override` changes in place; :meth:`irls_settings` reads them
    into one :class:`~nrpm.functional.IRLSSettings` per forward."""

    def _init_robust(self, lam, learnable_lam, backward_mode, settings: RF.IRLSSettings | None, options: dict):
        """``options``: the constructor's IRLS keyword arguments (K, eps, detach_weights, norm, gamma, delta,
        scale), which ``settings`` replaces when given."""
        resolved = RF.resolve_settings(settings, **options)
        self.K, self.eps = resolved.K, resolved.eps
        if settings is None:  # the estimator's options as given (an L1 layer keeps its gamma, delta and scale)
            self.set_estimator(**{name: options[name] for name in ("norm", "gamma", "delta", "scale")})
        else:
            self.set_estimator(**({} if resolved.estimator is None else resolved.estimator.options()))
        self.backward_mode = "detached" if resolved.detach_weights and backward_mode == "exact" else backward_mode
        device = self.weight.device if self.weight.device.type != "meta" else None
        self._set_lam_storage(float(check_lam(float(lam))), learnable_lam, device)

    def irls_settings(self, detach_weights: bool | None = None) -> RF.IRLSSettings:
        """This layer's IRLS settings (detach_weights: as its backward_mode says, unless given)."""
        detach = self.detach_weights if detach_weights is None else detach_weights
        estimator = None if self.norm == "l1" else RF.Estimator(self.norm, self.gamma, self.delta,
                                                                self.scale == "relative")
        return RF.IRLSSettings(self.K, self.eps, detach, estimator)

    def set_estimator(self, norm: str = RF.DEFAULT_NORM, gamma: float = RF.DEFAULT_GAMMA,
                      delta: float = RF.DEFAULT_DELTA, scale: str = RF.DEFAULT_SCALE) -> None:
        """Choose the robust estimator (see :data:`nrpm.functional.ESTIMATORS`); validated here, not per call."""
        check_estimator(norm, gamma, delta, scale)
        self.norm, self.gamma, self.delta, self.scale = norm, float(gamma), float(delta), scale

    def estimator(self) -> dict:
        """{'norm', 'gamma', 'delta', 'scale'} of this layer."""
        return {"norm": self.norm, "gamma": self.gamma, "delta": self.delta, "scale": self.scale}

    @property
    def backward_mode(self) -> str:
        """'exact', 'detached' (IRLS weights constant in the backward) or 'plain' (the plain layer's backward)."""
        return self._backward_mode

    @backward_mode.setter
    def backward_mode(self, mode: str) -> None:
        if mode not in BACKWARD_MODES:
            raise ValueError(f"backward_mode must be one of {BACKWARD_MODES}, got {mode!r}")
        self._backward_mode = mode

    @property
    def detach_weights(self) -> bool:
        """``backward_mode == 'detached'`` (the older name of that mode)."""
        return self._backward_mode == "detached"

    @detach_weights.setter
    def detach_weights(self, value: bool) -> None:
        self.backward_mode = "detached" if value else "exact"

    def _set_lam_storage(self, value: float, learnable: bool, device) -> None:
        for name in ("lam", "lam_logit"):
            if name in self._buffers:
                del self._buffers[name]
            if name in self._parameters:
                del self._parameters[name]
        dtype = torch.float32
        # a Python copy of a fixed lam: the forward branches on it (lam == 1 is the plain layer) without reading
        # the tensor, so torch.compile(fullgraph=True) and torch.export trace the layer with no data-dependent guard
        self._fixed_lam = None if learnable else float(value)
        if learnable:
            v = min(max(value, _LOGIT_CLAMP), 1 - _LOGIT_CLAMP)
            self.lam_logit = nn.Parameter(torch.tensor(math.log(v / (1 - v)), dtype=dtype, device=device))
        else:
            # not persistent: a paradigm-1 model's state_dict keeps exactly the original keys (lam is saved
            # separately by save_reprogramming); a learnable lam_logit is part of the state_dict.
            self.register_buffer("lam", torch.tensor(value, dtype=dtype, device=device), persistent=False)

    @property
    def learnable_lam(self) -> bool:
        return "lam_logit" in self._parameters

    def get_lam(self) -> torch.Tensor:
        """lam as a 0-d tensor (differentiable in learnable mode)."""
        if self.learnable_lam:
            return torch.sigmoid(self.lam_logit)
        return self._buffers["lam"]

    def lam_value(self) -> float:
        if self._fixed_lam is not None:
            return self._fixed_lam
        return float(self.get_lam().detach())

    def set_lam(self, value: float) -> None:
        """Set lam in [0, 1], keeping the current mode (a learnable lam is clamped to [1e-4, 1 - 1e-4])."""
        value = check_lam(float(value))
        with torch.no_grad():
            if self.learnable_lam:
                v = min(max(value, _LOGIT_CLAMP), 1 - _LOGIT_CLAMP)
                self.lam_logit.fill_(math.log(v / (1 - v)))
            else:
                self._buffers["lam"].fill_(value)
                self._fixed_lam = value

    def set_learnable_lam(self, learnable: bool) -> None:
        """Switch between a fixed buffer (paradigm 1) and a learnable logit (paradigms 2, 3), keeping the value."""
        if learnable != self.learnable_lam:
            self._set_lam_storage(self.lam_value(), learnable, self.weight.device)

    def _lam_for_forward(self):
        # a fixed lam goes in as a Python float, so lam == 1 takes the exact plain path and lam == 0 skips a mix
        return self.get_lam() if self.learnable_lam else self.lam_value()

    def is_plain(self) -> bool:
        """True when this layer computes exactly the original layer: lam == 1 (fixed) or K == 0."""
        return self.K == 0 or (not self.learnable_lam and self.lam_value() == 1.0)

    def _lam_storage(self) -> torch.Tensor:
        return self.lam_logit if self.learnable_lam else self._buffers["lam"]

    @classmethod
    def from_module(cls, module: nn.Module, **robust_kwargs):
        """A robust layer sharing (not copying) ``module``'s weight and bias tensors."""
        if not isinstance(module, cls._plain_type):
            raise ValueError(f"{cls.__name__}.from_module needs an nn.{cls._plain_type.__name__}, "
                             f"got {type(module).__name__}")
        new = cls(**cls._constructor_args(module), bias=module.bias is not None, device="meta",
                  dtype=module.weight.dtype, **robust_kwargs)
        new.weight, new.bias = module.weight, module.bias
        new._set_lam_storage(new.lam_value(), new.learnable_lam, module.weight.device)
        new.train(module.training)
        return new

    def to_plain(self) -> nn.Module:
        """The plain layer sharing this layer's weight and bias (undoes the reprogramming)."""
        plain = self._plain_type(**self._constructor_args(self), bias=self.bias is not None, device="meta",
                                 dtype=self.weight.dtype)
        plain.weight, plain.bias = self.weight, self.bias
        plain.train(self.training)
        return plain

    def _forward_with_mode(self, x: torch.Tensor, plain_forward, robust_forward) -> torch.Tensor:
        if self.is_plain():
            return plain_forward(x)  # the parent's forward, bit for bit
        if self._backward_mode != "plain":
            return robust_forward(x, self._backward_mode == "detached")
        plain = plain_forward(x)
        with torch.no_grad():
            robust = robust_forward(x, False)
        return plain + (robust - plain.detach())  # robust value, the plain layer's gradient (BPDA)

    def _robust_repr(self) -> str:
        mode = "learnable" if self.learnable_lam else "fixed"
        extra = f", backward_mode={self._backward_mode!r}" if self._backward_mode != "exact" else ""
        if self.norm != "l1":
            extra += f", norm={self.norm!r}, gamma={self.gamma:g}, delta={self.delta:g}, scale={self.scale!r}"
        return f"lam={self.lam_value():.4g} ({mode}), K={self.K}, eps={self.eps:g}{extra}"


class RobustLinear(RobustMixin, nn.Linear):
    """``nn.Linear`` whose output is ``lam * LPM + (1 - lam) * NRPM + bias``."""

    def __init__(self, in_features, out_features, bias=True, device=None, dtype=None, *,
                 lam=RF.DEFAULT_LAM, K=RF.DEFAULT_K, eps=RF.DEFAULT_EPS, learnable_lam=False,
                 detach_weights=False, backward_mode="exact", norm=RF.DEFAULT_NORM, gamma=RF.DEFAULT_GAMMA,
                 delta=RF.DEFAULT_DELTA, scale=RF.DEFAULT_SCALE, settings: RF.IRLSSettings | None = None):
        """``settings``: an :class:`~nrpm.functional.IRLSSettings` in place of K, eps, detach_weights, norm,
        gamma, delta and scale."""
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self._init_robust(lam, learnable_lam, backward_mode, settings,
                          dict(K=K, eps=eps, detach_weights=detach_weights, norm=norm, gamma=gamma, delta=delta,
                               scale=scale))

    _plain_type = nn.Linear

    @staticmethod
    def _constructor_args(module) -> dict:
        return {"in_features": module.in_features, "out_features": module.out_features}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._forward_with_mode(x, super().forward, self._robust_forward)

    def _robust_forward(self, x: torch.Tensor, detach_weights: bool) -> torch.Tensor:
        return RF.robust_linear(x, self.weight, self.bias, lam=self._lam_for_forward(),
                                settings=self.irls_settings(detach_weights))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, {self._robust_repr()}"


_CONV_ARGS = ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups",
              "padding_mode")


class RobustConv2d(RobustMixin, nn.Conv2d):
    """``nn.Conv2d`` whose output is ``lam * LPM + (1 - lam) * NRPM + bias``; all padding modes supported."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1,
                 bias=True, padding_mode="zeros", device=None, dtype=None, *, lam=RF.DEFAULT_LAM,
                 K=RF.DEFAULT_K, eps=RF.DEFAULT_EPS, learnable_lam=False, detach_weights=False,
                 backward_mode="exact", norm=RF.DEFAULT_NORM, gamma=RF.DEFAULT_GAMMA, delta=RF.DEFAULT_DELTA,
                 scale=RF.DEFAULT_SCALE, settings: RF.IRLSSettings | None = None):
        """``settings``: an :class:`~nrpm.functional.IRLSSettings` in place of K, eps, detach_weights, norm,
        gamma, delta and scale."""
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                         dilation=dilation, groups=groups, bias=bias, padding_mode=padding_mode, device=device,
                         dtype=dtype)
        self._init_robust(lam, learnable_lam, backward_mode, settings,
                          dict(K=K, eps=eps, detach_weights=detach_weights, norm=norm, gamma=gamma, delta=delta,
                               scale=scale))

    _plain_type = nn.Conv2d

    @staticmethod
    def _constructor_args(module) -> dict:
        return {name: getattr(module, name) for name in _CONV_ARGS}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._forward_with_mode(x, super().forward, self._robust_forward)

    def _robust_forward(self, x: torch.Tensor, detach_weights: bool) -> torch.Tensor:
        padding = self.padding
        if self.padding_mode != "zeros":
            # as nn.Conv2d._conv_forward: pad explicitly, then convolve without padding
            if x.dim() not in (3, 4):
                raise ValueError(f"input must be 4-D (B, C, H, W) or 3-D (C, H, W), got shape {tuple(x.shape)}")
            x = torch.nn.functional.pad(x, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            padding = 0
        return RF.robust_conv2d(x, self.weight, self.bias, self.stride, padding, self.dilation, self.groups,
                                lam=self._lam_for_forward(), settings=self.irls_settings(detach_weights))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, {self._robust_repr()}"


def _robust_modules(model: nn.Module) -> dict[str, RobustMixin]:
    return {n: m for n, m in model.named_modules() if isinstance(m, RobustMixin)}


@contextlib.contextmanager
def lam_override(model: nn.Module, value: float | dict[str, float]) -> Iterator[nn.Module]:
    """Every robust layer of ``model`` at lam = ``value`` (a float, or {layer name: lam}) inside the block.

    The value is exact, also for a learnable lam (whose logit becomes +-inf at 1 / 0, with no clamping), so
    ``lam_override(model, 1.0)`` is the original model. Each layer's lam storage is restored bit for bit on exit.
    """
    layers = _robust_modules(model)
    if isinstance(value, dict):
        unknown = sorted(set(value) - set(layers))
        if unknown:
            raise ValueError(f"no robust layer named {unknown}; robust layers are {list(layers)}")
        targets = {name: check_lam(float(v)) for name, v in value.items()}
    else:
        value = check_lam(float(value))
        targets = {name: value for name in layers}
    saved = [(layer._lam_storage(), layer._lam_storage().detach().clone(), layer._fixed_lam)
             for layer in layers.values()]
    try:
        with torch.no_grad():
            for name, v in targets.items():
                layer = layers[name]
                if layer.learnable_lam:
                    logit = math.inf if v == 1.0 else -math.inf if v == 0.0 else math.log(v / (1 - v))
                    layer.lam_logit.fill_(logit)
                else:
                    layer._buffers["lam"].fill_(v)
                    layer._fixed_lam = v
        yield model
    finally:
        with torch.no_grad():
            for (tensor, old, fixed), layer in zip(saved, layers.values()):
                tensor.copy_(old)
                layer._fixed_lam = fixed  # the exact Python value (float32 storage would round 0.8)


@contextlib.contextmanager
def backward_override(model: nn.Module, mode: str) -> Iterator[nn.Module]:
    """Every robust layer of ``model`` with ``backward_mode = mode`` inside the block; restored on exit."""
    if mode not in BACKWARD_MODES:
        raise ValueError(f"backward_mode must be one of {BACKWARD_MODES}, got {mode!r}")
    layers = list(_robust_modules(model).values())
    saved = [layer.backward_mode for layer in layers]
    try:
        for layer in layers:
            layer.backward_mode = mode
        yield model
    finally:
        for layer, old in zip(layers, saved):
            layer.backward_mode = old


@contextlib.contextmanager
def irls_override(model: nn.Module, *, eps_scale: float = 1.0, K: int | None = None) -> Iterator[nn.Module]:
    """Every robust layer of ``model`` with its IRLS ``eps`` multiplied by ``eps_scale`` and, if given, ``K``
    steps at most, inside the block; restored on exit. A smoother estimator than the model's own, e.g. for an
    adaptive attack that takes its gradient there (weights 1/(|r| + eps) are sharp for a small eps)."""
    scale = check_eps(eps_scale)
    if K is not None:
        K = check_K(K)
    layers = list(_robust_modules(model).values())
    saved = [(layer.eps, layer.K) for layer in layers]
    try:
        for layer in layers:
            layer.eps = layer.eps * scale
            if K is not None:
                layer.K = min(layer.K, K)
        yield model
    finally:
        for layer, (eps, steps) in zip(layers, saved):
            layer.eps, layer.K = eps, steps
