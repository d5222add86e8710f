"""Single-step gradient attacks: FGSM (Linf), the paper's L2 / L1 steps and its L0 top-k attack.

Written by hand rather than taken from an attack library: we need exact control of determinism and budgets, and
the paper's L1 and L0 attacks are specific variants that libraries do not provide.
"""
from __future__ import annotations

from typing import Optional

import torch

from ..validation import check_budget, check_count
from .base import GradientAttack, LossFn, loss_and_gradient, normalise
from .registry import register_attack

__all__ = ["FGSM", "FGML2", "FGML1", "L0TopK"]


@register_attack("fgsm", help="Linf, the paper's MNIST attack")
class FGSM(GradientAttack):
    """Fast gradient sign method (Linf): ``x + eps * sign(grad)``, clipped to [0, 1]."""

    name = "fgsm"
    norm = "Linf"

    def perturb(self, model, x, y):
        grad, _, _ = loss_and_gradient(model, x, y, self.loss_fn)
        return (x + self.eps * grad.sign()).clamp(0.0, 1.0)


@register_attack("fgm_l2", help="L2 fast gradient, the paper's")
class FGML2(GradientAttack):
    """Single L2 gradient step: ``x + eps * g / ||g||_2``, clipped to [0, 1].

    Clipping only moves coordinates back towards ``x``, so the result stays in the L2 ball. A sample with an
    all-zero gradient is left unchanged.
    """

    name = "fgm_l2"
    norm = "L2"

    def perturb(self, model, x, y):
        grad, _, _ = loss_and_gradient(model, x, y, self.loss_fn)
        return (x + self.eps * normalise(grad, self.norm)).clamp(0.0, 1.0)


@register_attack("fgm_l1", help="L1 fast gradient, the paper's")
class FGML1(FGML2):
    """The paper's single-step L1 attack: ``x + eps * g / ||g||_1``, clipped to [0, 1].

    Note this is *not* the steepest-ascent step under an L1 budget (which would put the whole budget on the
    coordinate with the largest ``|g|``); it is the gradient normalised to L1 norm ``eps``, as in Robustness
    Reprogramming (ICLR 2025). ``||delta||_1 == eps`` before clipping, and clipping to [0, 1] only shrinks the
    perturbation, so the result stays inside the L1 ball. (The step of :class:`FGML2` in the L1 norm.)
    """

    name = "fgm_l1"
    norm = "L1"


@register_attack("l0", help="top-k coordinates, budget = k")
class L0TopK(GradientAttack):
    """The paper's L0 attack: perturb the ``k`` coordinates with the largest ``|grad|``.

    Each selected coordinate is set to 1 if its gradient is positive and to 0 if negative (the extreme value in
    the ascent direction); a selected coordinate with exactly zero gradient is left unchanged. Coordinates are
    counted per scalar input entry: for a C x H x W image every channel value of every pixel is one coordinate,
    so ``k`` is a budget on changed entries, not on pixels. The budget is ``k`` (an integer >= 0); ``eps`` is an
    alias of ``k``.
    """

    name = "l0"
    norm = "L0"

    def __init__(self, k: int, loss_fn: Optional[LossFn] = None):
        k = check_count(check_budget(k, "k"), "k", 0)
        super().__init__(k, loss_fn)
        self.k = k

    def perturb(self, model, x, y):
        grad, _, _ = loss_and_gradient(model, x, y, self.loss_fn)
        flat_grad = grad.flatten(1)
        k = min(self.k, flat_grad.shape[1])
        chosen = flat_grad.abs().topk(k, dim=1).indices
        chosen_grad = flat_grad.gather(1, chosen)
        flat_x = x.flatten(1).clone()
        extreme = (chosen_grad > 0).to(x.dtype)  # 1 where the loss rises with the value
        new_values = torch.where(chosen_grad != 0, extreme, flat_x.gather(1, chosen))
        return flat_x.scatter(1, chosen, new_values).reshape_as(x)

    def __repr__(self) -> str:
        return f"L0TopK(k={self.k})"
