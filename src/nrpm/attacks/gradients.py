"""Gradient sources: where an iterative attack takes its ascent direction from.

A gradient source is called as ``source(model, x, y, loss_fn) -> (grad, losses, fooled)`` (the input gradient
of the summed per-sample losses, the losses and which samples are misclassified) and names the extra models it
runs in ``models()``, so the attack can freeze them with the attacked one. :class:`~nrpm.attacks.pgd.PGD` takes
one as ``gradient=``; the default is the attacked model's own exact gradient. The others are the adaptive
approximations an audit needs against a defence whose gradient may be uninformative (Athalye et al. 2018,
Tramer et al. 2020):

* :class:`ModelGradient`: the attacked model's true gradient (the default);
* :class:`TransferGradient`: the gradient of another (e.g. the plain, lam = 1) model: a transfer attack;
* :class:`BackwardModeGradient`: the attacked model's forward, with every robust layer's ``backward_mode`` set to
  ``"plain"`` (BPDA: the plain linear layer's backward) or ``"detached"`` (IRLS weights as constants);
* :class:`SmoothedGradient`: the gradient of the same model with a smoother IRLS estimator (``eps`` scaled up,
  fewer steps): NRPM's weights ``1 / (|r| + eps)`` are sharp for a small ``eps`` and can shatter the gradient.
"""
from __future__ import annotations

import contextlib

import torch

from ..nn import BACKWARD_MODES, backward_override, irls_override
from ..validation import check_K, check_positive
from .base import LossFn, loss_and_fooled, loss_and_gradient

__all__ = ["GradientSource", "ModelGradient", "TransferGradient", "BackwardModeGradient", "SmoothedGradient"]


class GradientSource:
    """Base class of gradient sources (see the module docstring)."""

    #: whether the returned losses / fooled flags are those of the attacked model (a best-so-far iterate can be
    #: chosen from them); False for a transfer source, which never queries the target
    queries_target = True

    def __call__(self, model, x: torch.Tensor, y: torch.Tensor, loss_fn: LossFn):
        """(input gradient, per-sample losses, fooled) at ``x``."""
        with self.context(model):
            return loss_and_gradient(self.differentiated(model), x, y, loss_fn)

    def evaluate(self, model, x: torch.Tensor, y: torch.Tensor, loss_fn: LossFn):
        """(per-sample losses, fooled) at ``x`` without a gradient, seen the way ``__call__`` sees them."""
        with self.context(model):
            return loss_and_fooled(self.differentiated(model), x, y, loss_fn)

    def differentiated(self, model):
        """The model whose input gradient is taken (default: the attacked one)."""
        return model

    def context(self, model):
        """A context manager in which the gradient is taken (default: none)."""
        return contextlib.nullcontext()

    def models(self) -> tuple:
        return ()

    def describe(self) -> str:
        return type(self).__name__


class ModelGradient(GradientSource):
    """The attacked model's own input gradient."""

    def describe(self) -> str:
        return "exact"


class TransferGradient(GradientSource):
    """The input gradient of ``source`` (e.g. the plain model) instead of the attacked model's."""

    queries_target = False

    def __init__(self, source: torch.nn.Module):
        self.source = source

    def differentiated(self, model):
        return self.source

    def models(self) -> tuple:
        return (self.source,)

    def describe(self) -> str:
        return f"transfer from {type(self.source).__name__}"


class BackwardModeGradient(GradientSource):
    """The attacked model's forward, with every robust layer's backward replaced for the gradient:
    ``"plain"`` is BPDA (the plain linear layer's backward), ``"detached"`` treats the IRLS weights as constants."""

    def __init__(self, mode: str):
        if mode not in BACKWARD_MODES:
            raise ValueError(f"backward mode must be one of {BACKWARD_MODES}, got {mode!r}")
        self.mode = mode

    def context(self, model):
        return backward_override(model, self.mode)

    def describe(self) -> str:
        return f"backward_mode={self.mode}"


class SmoothedGradient(GradientSource):
    """The input gradient of the attacked model with every robust layer's IRLS ``eps`` multiplied by
    ``eps_scale`` and at most ``K`` IRLS steps (:func:`nrpm.nn.irls_override`), e.g. ``SmoothedGradient(100)``
    or ``SmoothedGradient(K=1)``.

    The losses and fooled flags it returns are those of the smoothed forward, which is another model than the
    attacked one (``queries_target = False``), so PGD with this source keeps its last iterate (``keep="last"``):
    a best-so-far choice made on the smoothed model would freeze a sample at the first point that fools the
    smoothed model, which need not fool the true one, while the last iterate has been pushed furthest into the
    wrong class. The caller judges that iterate on the true model (the audit always does).
    """

    queries_target = False

    def __init__(self, eps_scale: float = 1.0, K: int | None = None):
        self.eps_scale = check_positive(eps_scale, "eps_scale")
        self.K = None if K is None else check_K(K)

    def context(self, model):
        return irls_override(model, eps_scale=self.eps_scale, K=self.K)

    def describe(self) -> str:
        steps = "" if self.K is None else f", K<={self.K}"
        return f"smoothed IRLS (eps x{self.eps_scale:g}{steps})"
