"""Carlini-Wagner attacks: :class:`CWLinf` (Linf PGD on the C&W margin loss, what robustness tables call "C&W")
and :class:`CWL2` (the original L2 attack of Carlini & Wagner, 2017: Adam in tanh space with a binary search over
the trade-off constant ``c``).

The margin loss ``max_{j != y} z_j - z_y`` (:func:`~nrpm.attacks.base.margin_loss_per_sample`) does not saturate
on confident samples the way cross-entropy does, so it is the usual second loss next to PGD's cross-entropy.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from ..validation import check_count, check_nonneg, check_positive
from .base import Attack, logits_2d, lp_norm, margin_loss_per_sample, per_sample
from .gradients import GradientSource
from .pgd import PGD
from .registry import register_attack

__all__ = ["CWLinf", "CWL2"]


@register_attack("cw", help="PGD on the C&W margin")
class CWLinf(PGD):
    """Linf PGD on the Carlini-Wagner margin loss; the options are :class:`~nrpm.attacks.pgd.PGD`'s."""

    name = "cw"

    def __init__(self, eps: float, steps: int = 40, alpha: Optional[float] = None, random_start: bool = True,
                 restarts: int = 1, seed: int = 0, gradient: Optional[GradientSource] = None, keep: str = "best"):
        super().__init__(eps, steps=steps, alpha=alpha, random_start=random_start, restarts=restarts, seed=seed,
                         loss_fn=margin_loss_per_sample, gradient=gradient, keep=keep)


# tanh-space change of variables: x = (tanh(w) + 1) / 2 stays in [0, 1] for any w; inputs at exactly 0 or 1
# would need an infinite w, so they are pulled in by this relative margin first (a change of ~1e-6)
_TANH_MARGIN = 1e-6


def _to_tanh_space(x: torch.Tensor) -> torch.Tensor:
    return torch.atanh((2 * x - 1) * (1 - _TANH_MARGIN))


def _from_tanh_space(w: torch.Tensor) -> torch.Tensor:
    return (torch.tanh(w) + 1) / 2


@register_attack("cw-l2")
class CWL2(Attack):
    """The Carlini-Wagner L2 attack (Carlini & Wagner, 2017), untargeted.

    Minimises ``||x' - x||_2^2 + c * max(z_y - max_{j != y} z_j, -kappa)`` over ``x' = (tanh(w) + 1) / 2`` with
    Adam (``lr``) for ``steps`` steps, for ``binary_steps`` values of ``c`` per sample: starting at ``c_init``,
    ``c`` is bisected down after a success and multiplied by 10 (or bisected up) after a failure. Returns per
    sample the misclassified point of smallest L2 distance found over all steps; the attack is minimal-norm, so
    the budget only decides what counts: a sample whose best adversarial lies outside the L2 ball of radius
    ``eps`` is returned as ``x`` itself (projecting it onto the ball would give a point the attack never checked).
    Deterministic (no randomness).
    """

    name = "cw-l2"
    norm = "L2"

    def __init__(self, eps: float, steps: int = 100, binary_steps: int = 5, lr: float = 0.01,
                 c_init: float = 1.0, kappa: float = 0.0):
        super().__init__(eps)
        self.steps = check_count(steps, "steps", 1)
        self.binary_steps = check_count(binary_steps, "binary_steps", 1)
        self.lr = check_positive(lr, "lr")
        self.c_init = check_positive(c_init, "c_init")
        self.kappa = check_nonneg(kappa, "kappa")

    def perturb(self, model, x, y):
        best = _SmallestAdversarial(x)
        c = torch.full((len(x),), self.c_init, device=x.device, dtype=x.dtype)
        lower, upper = torch.zeros_like(c), torch.full_like(c, math.inf)
        for _ in range(self.binary_steps):
            succeeded = self._optimise(model, x, y, c, best)
            lower, upper, c = _next_constant(succeeded, c, lower, upper)
        return best.within(self.eps)

    def _optimise(self, model, x, y, c, best: "_SmallestAdversarial") -> torch.Tensor:
        """One Adam run at constant ``c``; records adversarials in ``best``; returns which samples succeeded."""
        w = _to_tanh_space(x).detach().requires_grad_(True)
        optimiser = torch.optim.Adam([w], lr=self.lr)
        succeeded = torch.zeros(len(x), dtype=torch.bool, device=x.device)
        for _ in range(self.steps):
            with torch.enable_grad():
                x_adv = _from_tanh_space(w)
                logits = logits_2d(model, x_adv)
                distance = (x_adv - x).flatten(1).pow(2).sum(1)
                hinge = (-margin_loss_per_sample(logits, y)).clamp_min(-self.kappa)
                optimiser.zero_grad()
                (distance + c * hinge).sum().backward()
            fooled = logits.detach().argmax(1) != y
            best.update(x_adv.detach(), fooled)
            succeeded |= fooled
            optimiser.step()
        return succeeded

    def __repr__(self) -> str:
        return (f"CWL2(eps={self.eps:g}, steps={self.steps}, binary_steps={self.binary_steps}, lr={self.lr:g}, "
                f"c_init={self.c_init:g}, kappa={self.kappa:g})")


def _next_constant(succeeded, c, lower, upper):
    """C&W's binary search on ``c``: a success lowers the upper bound, a failure raises the lower one (x10 until
    an upper bound is known)."""
    upper = torch.where(succeeded, torch.minimum(upper, c), upper)
    lower = torch.where(succeeded, lower, torch.maximum(lower, c))
    bisect = (lower + upper) / 2
    c = torch.where(torch.isinf(upper), c * 10, bisect)
    return lower, upper, c


class _SmallestAdversarial:
    """Per sample, the misclassified point of smallest L2 distance to ``x`` seen so far (``x`` itself if none)."""

    def __init__(self, x: torch.Tensor):
        self.x = x
        self.x_adv = x.clone()
        self.distance = torch.full((len(x),), math.inf, device=x.device, dtype=x.dtype)

    def update(self, candidate: torch.Tensor, fooled: torch.Tensor) -> None:
        distance = lp_norm(candidate - self.x, "L2")
        better = fooled & (distance < self.distance)
        self.x_adv[better] = candidate[better]
        self.distance[better] = distance[better]

    def within(self, eps: float) -> torch.Tensor:
        """The recorded points inside the L2 ball of radius ``eps``; ``x`` for the others."""
        inside = self.distance <= eps
        return torch.where(per_sample(inside, self.x), self.x_adv, self.x)
