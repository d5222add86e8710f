"""Drop-in NRPM layers: ``RobustLinear(nn.Linear)`` and ``RobustConv2d(nn.Conv2d)``.

They keep the parent's ``weight``/``bias`` (so state_dicts stay compatible) and add one mixing coefficient
``lam`` in one of two modes:

* fixed (paradigm 1): a buffer ``lam`` holding a value in [0, 1];
* learnable (paradigms 2 and 3): a parameter ``lam_logit`` with ``lam = sigmoid(lam_logit)``, so an optimiser
  can never push it out of (0, 1).

Defaults: ``K = 3`` IRLS steps and ``eps = 1e-3``, the paper's setting for its MNIST tables. ``lam = 0.5``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from . import functional as RF

__all__ = ["RobustLinear", "RobustConv2d", "RobustMixin"]

# A learnable lam lives in logit space; 0 and 1 exactly would be infinite logits, so clamp when switching.
_LOGIT_CLAMP = 1e-4


class RobustMixin:
    """lam/K/eps handling shared by the robust layers."""

    def _init_robust(self, lam, K, eps, learnable_lam, detach_weights):
        self.K = RF._check_K(K)
        self.eps = RF._check_eps(eps)
        self.detach_weights = bool(detach_weights)
        device = self.weight.device if self.weight.device.type != "meta" else None
        self._set_lam_storage(float(RF._check_lam(float(lam))), learnable_lam, device)

    def _set_lam_storage(self, value: float, learnable: bool, device) -> None:
        for name in ("lam", "lam_logit"):
            if name in self._buffers:
                del self._buffers[name]
            if name in self._parameters:
                del self._parameters[name]
        dtype = torch.float32
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
        return float(self.get_lam().detach())

    def set_lam(self, value: float) -> None:
        """Set lam in [0, 1], keeping the current mode (a learnable lam is clamped to [1e-4, 1 - 1e-4])."""
        value = RF._check_lam(float(value))
        with torch.no_grad():
            if self.learnable_lam:
                v = min(max(value, _LOGIT_CLAMP), 1 - _LOGIT_CLAMP)
                self.lam_logit.fill_(math.log(v / (1 - v)))
            else:
                self._buffers["lam"].fill_(value)

    def set_learnable_lam(self, learnable: bool) -> None:
        """Switch between a fixed buffer (paradigm 1) and a learnable logit (paradigms 2, 3), keeping the value."""
        if learnable != self.learnable_lam:
            self._set_lam_storage(self.lam_value(), learnable, self.weight.device)

    def _lam_for_forward(self):
        # a fixed lam goes in as a Python float, so lam == 1 takes the exact plain path and lam == 0 skips a mix
        return self.get_lam() if self.learnable_lam else self.lam_value()

    def _is_plain(self) -> bool:
        # lam == 1 (fixed) or K == 0 is the original layer: run the parent's forward, bit for bit
        return self.K == 0 or (not self.learnable_lam and self.lam_value() == 1.0)

    def _robust_repr(self) -> str:
        mode = "learnable" if self.learnable_lam else "fixed"
        extra = ", detach_weights=True" if self.detach_weights else ""
        return f"lam={self.lam_value():.4g} ({mode}), K={self.K}, eps={self.eps:g}{extra}"


class RobustLinear(RobustMixin, nn.Linear):
    """``nn.Linear`` whose output is ``lam * LPM + (1 - lam) * NRPM + bias``."""

    def __init__(self, in_features, out_features, bias=True, device=None, dtype=None, *,
                 lam=RF.DEFAULT_LAM, K=RF.DEFAULT_K, eps=RF.DEFAULT_EPS, learnable_lam=False,
                 detach_weights=False):
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self._init_robust(lam, K, eps, learnable_lam, detach_weights)

    @classmethod
    def from_module(cls, module: nn.Linear, **robust_kwargs) -> "RobustLinear":
        """A RobustLinear sharing (not copying) ``module``'s weight and bias tensors."""
        if not isinstance(module, nn.Linear):
            raise ValueError(f"RobustLinear.from_module needs an nn.Linear, got {type(module).__name__}")
        new = cls(module.in_features, module.out_features, bias=module.bias is not None, device="meta",
                  dtype=module.weight.dtype, **robust_kwargs)
        new.weight, new.bias = module.weight, module.bias
        new._set_lam_storage(new.lam_value(), new.learnable_lam, module.weight.device)
        new.train(module.training)
        return new

    def to_plain(self) -> nn.Linear:
        """An ``nn.Linear`` sharing this layer's weight and bias (undoes the reprogramming)."""
        plain = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None, device="meta",
                          dtype=self.weight.dtype)
        plain.weight, plain.bias = self.weight, self.bias
        plain.train(self.training)
        return plain

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._is_plain():
            return super().forward(x)
        return RF.robust_linear(x, self.weight, self.bias, lam=self._lam_for_forward(), K=self.K, eps=self.eps,
                                detach_weights=self.detach_weights)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, {self._robust_repr()}"


_CONV_ARGS = ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups",
              "padding_mode")


class RobustConv2d(RobustMixin, nn.Conv2d):
    """``nn.Conv2d`` whose output is ``lam * LPM + (1 - lam) * NRPM + bias``; all padding modes supported."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1,
                 bias=True, padding_mode="zeros", device=None, dtype=None, *, lam=RF.DEFAULT_LAM,
                 K=RF.DEFAULT_K, eps=RF.DEFAULT_EPS, learnable_lam=False, detach_weights=False):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                         dilation=dilation, groups=groups, bias=bias, padding_mode=padding_mode, device=device,
                         dtype=dtype)
        self._init_robust(lam, K, eps, learnable_lam, detach_weights)

    @classmethod
    def from_module(cls, module: nn.Conv2d, **robust_kwargs) -> "RobustConv2d":
        """A RobustConv2d sharing (not copying) ``module``'s weight and bias tensors."""
        if not isinstance(module, nn.Conv2d):
            raise ValueError(f"RobustConv2d.from_module needs an nn.Conv2d, got {type(module).__name__}")
        args = {name: getattr(module, name) for name in _CONV_ARGS}
        new = cls(**args, bias=module.bias is not None, device="meta", dtype=module.weight.dtype,
                  **robust_kwargs)
        new.weight, new.bias = module.weight, module.bias
        new._set_lam_storage(new.lam_value(), new.learnable_lam, module.weight.device)
        new.train(module.training)
        return new

    def to_plain(self) -> nn.Conv2d:
        """An ``nn.Conv2d`` sharing this layer's weight and bias (undoes the reprogramming)."""
        args = {name: getattr(self, name) for name in _CONV_ARGS}
        plain = nn.Conv2d(**args, bias=self.bias is not None, device="meta", dtype=self.weight.dtype)
        plain.weight, plain.bias = self.weight, self.bias
        plain.train(self.training)
        return plain

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._is_plain():
            return super().forward(x)
        padding = self.padding
        if self.padding_mode != "zeros":
            # as nn.Conv2d._conv_forward: pad explicitly, then convolve without padding
            if x.dim() not in (3, 4):
                raise ValueError(f"input must be 4-D (B, C, H, W) or 3-D (C, H, W), got shape {tuple(x.shape)}")
            x = torch.nn.functional.pad(x, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            padding = 0
        return RF.robust_conv2d(x, self.weight, self.bias, self.stride, padding, self.dilation, self.groups,
                                lam=self._lam_for_forward(), K=self.K, eps=self.eps,
                                detach_weights=self.detach_weights)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, {self._robust_repr()}"
