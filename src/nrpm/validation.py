"""Shared input checks (like kornia's ``kornia.core.check``): one place that says what a valid value is.

Every public entry point of nrpm (functional ops, layers, reprogramming, attacks, training) validates its
arguments with these helpers, so the same bad value gets the same clear ``ValueError`` wherever it enters.
Each returns the value normalised (an ``int``, a ``float``, a 0-d tensor) so callers can write
``K = check_K(K)``.
"""

from __future__ import annotations

import math
from numbers import Real
from typing import Union

import torch

__all__ = ["check_estimator", "ESTIMATORS", "SCALES", "DEFAULT_NORM", "DEFAULT_GAMMA", "DEFAULT_DELTA",
           "DEFAULT_SCALE", "check_K", "check_eps", "check_lam", "check_floating", "check_count", "check_nonneg",
           "check_positive", "check_budget", "check_norm", "check_batch", "LamType", "check_reprogram_K",
           "check_linf_budgets", "check_no_budget_option", "BUDGET_OPTIONS"]

LamType = Union[float, torch.Tensor]

#: the robust estimators (IRLS weightings) of the official code; "l1" is the paper's
ESTIMATORS = ("l1", "mcp", "huber", "hm")
#: "absolute": gamma / delta in vote units (as the official code); "relative": in units of a per-output scale
SCALES = ("absolute", "relative")
DEFAULT_NORM, DEFAULT_GAMMA, DEFAULT_DELTA, DEFAULT_SCALE = "l1", 4.0, 3.0, "absolute"


def check_estimator(norm, gamma, delta, scale):
    """The estimator as the kernels' static key: None for L1 (which ignores gamma and delta), else
    ``(norm, gamma, delta, relative)``. gamma > 0 and delta > 0 (HM: gamma > delta)."""
    if norm not in ESTIMATORS:
        raise ValueError(f"unknown estimator norm={norm!r}; choose one of {', '.join(ESTIMATORS)}")
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {', '.join(SCALES)}, got {scale!r}")
    gamma, delta = check_positive(gamma, "gamma"), check_positive(delta, "delta")
    if norm == "hm" and not gamma > delta:
        raise ValueError(f"the HM estimator needs gamma > delta, got gamma={gamma:g}, delta={delta:g}")
    if norm == "l1":
        return None
    return (norm, gamma, delta, scale == "relative")


def check_K(K) -> int:
    """K, the number of IRLS steps: an int >= 0."""
    if isinstance(K, bool) or not isinstance(K, int):
        raise ValueError(f"K (number of IRLS steps) must be an int >= 0, got {K!r} of type {type(K).__name__}")
    if K < 0:
        raise ValueError(f"K (number of IRLS steps) must be >= 0, got {K}")
    return K


def check_reprogram_K(K, flag: str = "K") -> int:
    """K of a reprogramming: an int >= 1. (The functional ops take K = 0 as the plain layer, but as a
    reprogramming setting it silently turns every lam row into the plain model, so it is refused.)"""
    K = check_K(K)
    if K < 1:
        raise ValueError(f"{flag} {K}: K = 0 IRLS steps makes every robust layer the plain layer, so every lam "
                         f"gives the plain model; use {flag} 1 or more")
    return K


def check_eps(eps) -> float:
    """The IRLS smoothing eps: a finite number > 0."""
    if isinstance(eps, bool) or not isinstance(eps, Real) or not math.isfinite(eps) or eps <= 0:
        raise ValueError(f"eps must be a finite number > 0, got {eps!r}")
    return float(eps)


def check_lam(lam) -> LamType:
    """lam: a number in [0, 1] or a 0-d floating-point tensor (e.g. a learnable ``sigmoid(logit)``)."""
    if isinstance(lam, torch.Tensor):
        if lam.numel() != 1 or lam.dim() > 1:
            raise ValueError(f"lam must be a float or a 0-d tensor, got a tensor of shape {tuple(lam.shape)}")
        if not lam.is_floating_point():
            raise ValueError(f"lam tensor must be floating point, got dtype {lam.dtype}")
        return lam.reshape(())
    if isinstance(lam, bool) or not isinstance(lam, Real) or not (0.0 <= lam <= 1.0):
        raise ValueError(f"lam must be a number in [0, 1] (1 = original linear layer), got {lam!r}")
    return float(lam)


def check_floating(x, what: str) -> None:
    """``x`` is a floating-point tensor."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{what} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise ValueError(f"{what} must have a floating-point dtype, got {x.dtype}")


def check_count(value, what: str, minimum: int) -> int:
    """An integer option such as ``steps`` (integral floats such as 3.0 are accepted), at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, Real) or value != int(value) or int(value) < minimum:
        raise ValueError(f"{what} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _finite_real(value, what: str, condition: str) -> float:
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
        raise ValueError(f"{what} must be a finite number {condition}, got {value!r}")
    return float(value)


def check_nonneg(value, what: str) -> float:
    """A finite number >= 0."""
    value = _finite_real(value, what, ">= 0")
    if value < 0:
        raise ValueError(f"{what} must be a finite number >= 0, got {value!r}")
    return value


def check_positive(value, what: str) -> float:
    """A finite number > 0."""
    value = _finite_real(value, what, "> 0")
    if value <= 0:
        raise ValueError(f"{what} must be a finite number > 0, got {value!r}")
    return value


def check_budget(eps, what: str = "eps") -> float:
    """An attack budget: a finite real number >= 0 (NaN and inf are refused)."""
    return check_nonneg(eps, what)


def check_norm(norm: str, allowed) -> str:
    """``norm`` is one of ``allowed`` (e.g. 'Linf', 'L2')."""
    if norm not in allowed:
        raise ValueError(f"norm must be one of {tuple(allowed)}, got {norm!r}")
    return norm


def check_batch(x, y) -> None:
    """A batch an attack or an accuracy can use: float ``x`` (N, ...) in [0, 1] without NaN, integer labels (N,)."""
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise ValueError("x and y must be torch.Tensors")
    if not x.is_floating_point():
        raise ValueError(f"x must be a floating-point tensor with values in [0, 1], got dtype {x.dtype}")
    if x.dim() < 2:
        raise ValueError(f"x must be batched (N, ...), got shape {tuple(x.shape)}")
    if y.dim() != 1 or y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise ValueError(f"y must be a 1-D tensor of integer class labels, got shape {tuple(y.shape)} "
                         f"and dtype {y.dtype}")
    if len(x) != len(y):
        raise ValueError(f"x and y batch sizes differ: {len(x)} inputs vs {len(y)} labels")
    if x.device != y.device:
        raise ValueError(f"x and y must be on the same device, got {x.device} and {y.device}")
    if x.numel() == 0:
        return
    if torch.isnan(x).any():
        raise ValueError("x contains NaN; inputs must lie in [0, 1]")
    low, high = x.min().item(), x.max().item()
    if low < 0.0 or high > 1.0:
        raise ValueError(f"x must lie in [0, 1], but its values range over [{low:.6g}, {high:.6g}]")


def check_linf_budgets(budgets, unit: float = 1.0, flag: str = "--budgets") -> None:
    """Linf budgets (in [0, 1] input units, as given divided by ``unit``) lie below 1, the whole image range.

    A budget of 1 or more lets the attack reach any image, so it is almost always a budget meant in pixel levels
    given without ``--budget-unit 255`` (``--budgets 8`` ran Linf 8 on [0, 1] images)."""
    for value in budgets:
        if value >= 1:
            raise ValueError(f"{flag} {value * unit:g} is an Linf budget of {value:g} in [0, 1] input units, the "
                             f"whole image range or more; for budgets in pixel levels (8 = 8/255) add "
                             f"--budget-unit 255")


#: names an attack's budget takes in its constructor; never an --attack-arg option
BUDGET_OPTIONS = ("eps", "k", "severity")


def check_no_budget_option(options: dict, flag: str = "--attack-arg", budgets_flag: str = "--budgets") -> None:
    """Attack options (KEY=VALUE) name no budget: budgets come from ``budgets_flag`` (``--attack-arg eps=0.3``
    used to end in a TypeError about a duplicate argument)."""
    for key in options:
        if key in BUDGET_OPTIONS:
            raise ValueError(f"{flag} {key}={options[key]}: the attack's budget is not an option; budgets come "
                             f"from {budgets_flag} (in --budget-unit)")
