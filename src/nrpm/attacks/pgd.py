"""Projected gradient descent: the one iterative core behind ``nrpm eval``'s PGD, training's adversarial
examples and the audit's transfer / BPDA / detached-IRLS attacks.

:func:`ascend` is the loop (signed or normalised gradient steps, each projected onto the budget and [0, 1]);
its loss (``loss_fn``) and its gradient (a :class:`~nrpm.attacks.gradients.GradientSource`) are pluggable.
:class:`PGD` (Linf) and :class:`PGDL2` wrap it as attacks with random starts, restarts and a per-sample
best-so-far iterate; ``keep="last"`` returns the final iterate instead (the transfer protocol, and Madry et al.'s
training attack).
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import torch

from ..validation import check_budget, check_count
from .base import GradientAttack, LossFn, normalise, per_sample, project
from .registry import register_attack
from .gradients import GradientSource, ModelGradient
from .randomness import SampleRNG

__all__ = ["ascend", "ascend_until_fooled", "step_direction", "PGD", "PGDL2"]


def step_direction(grad: torch.Tensor, norm: str) -> torch.Tensor:
    """The steepest-ascent direction of one step: sign(grad) for Linf, grad / ||grad||_2 for L2."""
    if norm == "Linf":
        return grad.sign()
    if norm == "L2":
        return normalise(grad, "L2")
    raise ValueError(f"projected gradient steps support norm 'Linf' or 'L2', got {norm!r}")


def ascend(x: torch.Tensor, y: torch.Tensor, x_start: torch.Tensor, *,
           gradient: Callable[[torch.Tensor, torch.Tensor], tuple], norm: str, eps: float, alpha: float,
           steps: int, on_iterate: Optional[Callable[[torch.Tensor, torch.Tensor, torch.Tensor], None]] = None
           ) -> torch.Tensor:
    """``steps`` projected ascent steps from ``x_start`` within the ``norm`` ball of radius ``eps`` around ``x``.

    ``gradient(x_adv, y) -> (grad, losses, fooled)``; ``on_iterate(x_adv, losses, fooled)`` sees every iterate
    before its step (to keep a best-so-far point). Returns the last iterate (detached).
    """
    x_adv = x_start
    for _ in range(steps):
        grad, losses, fooled = gradient(x_adv, y)
        if on_iterate is not None:
            on_iterate(x_adv, losses, fooled)
        x_adv = project(x_adv + alpha * step_direction(grad, norm), x, norm, eps)
    return x_adv.detach()


def ascend_until_fooled(x: torch.Tensor, y: torch.Tensor, x_start: torch.Tensor, *,
                        gradient: Callable[[torch.Tensor, torch.Tensor], tuple], norm: str, eps: float,
                        alpha: float, steps: int,
                        on_iterate: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], None]
                        ) -> torch.Tensor:
    """:func:`ascend` with per-sample early stopping: a row leaves the batch at its first misclassified iterate.

    ``on_iterate(rows, x_adv, losses, fooled)`` sees the iterate of the rows still attacked (``rows``: their
    positions in ``x``). A best-so-far record keeps a row's first misclassified point and ignores everything
    after it, so stepping the row further is wasted work; and since every row's trajectory depends only on its
    own input, gradient and random start (losses are summed per sample, the generators are per sample), the
    other rows' iterates do not change when it leaves. A stopped row's entry of the result is that first
    misclassified point; ``gradient`` must judge ``fooled`` on the attacked model (``queries_target``).
    """
    result, rows = x_start.detach().clone(), torch.arange(len(x), device=x.device)
    x_adv, x_rows, y_rows = result.clone(), x, y      # the rows still attacked (all of them until one is fooled)
    for _ in range(steps):
        grad, losses, fooled = gradient(x_adv, y_rows)
        on_iterate(rows, x_adv, losses, fooled)
        if fooled.any():  # shrink only when a row leaves: no copying while every row is still attacked
            result[rows[fooled]] = x_adv[fooled]
            keep = ~fooled
            rows, x_adv, x_rows, y_rows, grad = rows[keep], x_adv[keep], x_rows[keep], y_rows[keep], grad[keep]
            if len(rows) == 0:
                return result
        x_adv = project(x_adv + alpha * step_direction(grad, norm), x_rows, norm, eps)
    result[rows] = x_adv
    return result


class _BestSoFar:
    """Per-sample record of the strongest point found across steps and restarts.

    A sample keeps the *first* misclassified point found for it; until then it keeps the point with the highest
    loss. Starting from ``x`` itself means the result is never worse than no attack.
    """

    def __init__(self, x: torch.Tensor):
        self.x_adv = x.clone()
        self.loss = torch.full((len(x),), -math.inf, device=x.device, dtype=torch.float32)
        self.found = torch.zeros(len(x), dtype=torch.bool, device=x.device)

    def update(self, index: torch.Tensor, candidate, losses, fooled) -> None:
        still_open = ~self.found[index]
        better = still_open & (fooled | (losses.float() > self.loss[index]))
        target = index[better]
        self.x_adv[target] = candidate[better]
        self.loss[target] = losses[better].float()
        self.found[target] = fooled[better]


class _ProjectedGradientAttack(GradientAttack):
    """Projected gradient ascent with random restarts (shared by PGD and PGDL2).

    ``keep="best"`` (default) returns, per sample, the first iterate (over all steps and restarts) that the model
    misclassifies, or else the iterate with the highest loss. Later restarts only attack samples not yet fooled;
    since the first restart uses the same random start regardless of ``restarts``, more restarts are never
    weaker. ``keep="last"`` returns the final iterate of one run (the usual transfer protocol: with a
    :class:`~nrpm.attacks.gradients.TransferGradient` the attacked model is never queried).

    ``gradient``: where the step direction comes from (default: the attacked model's exact gradient).
    """

    seeded_per_sample = True

    def __init__(self, eps: float, steps: int = 40, alpha: Optional[float] = None,
                 random_start: bool = True, restarts: int = 1, seed: int = 0,
                 loss_fn: Optional[LossFn] = None, gradient: Optional[GradientSource] = None,
                 keep: str = "best"):
        super().__init__(eps, loss_fn)
        self.steps = check_count(steps, "steps", 1)
        self.restarts = check_count(restarts, "restarts", 1)
        self.alpha = 2.5 * self.eps / self.steps if alpha is None else check_budget(alpha, "alpha")
        self.random_start = bool(random_start)
        self.seed = int(seed)
        self.gradient = gradient if gradient is not None else ModelGradient()
        if keep not in ("best", "last"):
            raise ValueError(f"keep must be 'best' or 'last', got {keep!r}")
        if keep == "best" and not self.gradient.queries_target:
            raise ValueError(f"{self.gradient.describe()} never queries the attacked model: use keep='last'")
        if keep == "last" and self.restarts > 1:
            raise ValueError("keep='last' returns one run's final iterate: restarts must be 1")
        self.keep = keep

    def extra_models(self) -> tuple:
        return self.gradient.models()

    def perturb(self, model, x, y):
        # one generator per sample (seeded by its global index), kept across restarts: a sample's starts do not
        # depend on its batch, and restart r continues the stream of restart r - 1
        rng = self.sample_rng(x)
        if self.keep == "last":
            return self._run(model, x, y, rng)
        best = _BestSoFar(x)
        for _ in range(self.restarts):
            index = (~best.found).nonzero().squeeze(1)
            if len(index) == 0:
                break
            x_adv = self._run_until_fooled(model, x[index], y[index], rng.take(index),
                                           lambda rows, xa, losses, fooled, _i=index:
                                           best.update(_i[rows], xa, losses, fooled))
            losses, fooled = self.gradient.evaluate(model, x_adv, y[index], self.loss_fn)
            best.update(index, x_adv, losses, fooled)
        return best.x_adv

    def _run(self, model, x, y, rng: SampleRNG) -> torch.Tensor:
        """One run's last iterate (``keep='last'``: the target's verdict comes only after it, so no row stops)."""
        return ascend(x, y, self._start(x, rng), gradient=self._gradient(model), norm=self.norm, eps=self.eps,
                      alpha=self.alpha, steps=self.steps)

    def _run_until_fooled(self, model, x, y, rng: SampleRNG, on_iterate) -> torch.Tensor:
        """One run, each row stopped at its first misclassified iterate (all ``keep='best'`` keeps of it)."""
        return ascend_until_fooled(x, y, self._start(x, rng), gradient=self._gradient(model), norm=self.norm,
                                   eps=self.eps, alpha=self.alpha, steps=self.steps, on_iterate=on_iterate)

    def _start(self, x, rng: SampleRNG) -> torch.Tensor:
        return self.start(x, rng) if self.random_start else x.clone()

    def _gradient(self, model):
        return lambda xa, ya: self.gradient(model, xa, ya, self.loss_fn)

    def start(self, x, rng: SampleRNG) -> torch.Tensor:
        """A random starting point in the budget around ``x``, row i drawn from ``rng``'s i-th generator."""
        raise NotImplementedError

    def __repr__(self) -> str:
        extra = "" if isinstance(self.gradient, ModelGradient) else f", gradient={self.gradient.describe()!r}"
        extra += "" if self.keep == "best" else ", keep='last'"
        return (f"{type(self).__name__}(eps={self.eps:g}, steps={self.steps}, alpha={self.alpha:g}, "
                f"random_start={self.random_start}, restarts={self.restarts}, seed={self.seed}{extra})")


@register_attack("pgd", help="Linf PGD")
class PGD(_ProjectedGradientAttack):
    """Linf projected gradient descent (Madry et al.); default ``alpha = 2.5 * eps / steps``.

    Random start: uniform in the Linf ball.
    """

    name = "pgd"
    norm = "Linf"

    def start(self, x, rng):
        noise = rng.rand(x.shape[1:], like=x)
        return (x + self.eps * (2 * noise - 1)).clamp(0.0, 1.0)


@register_attack("pgd_l2", help="L2 PGD")
class PGDL2(_ProjectedGradientAttack):
    """L2 projected gradient descent with per-sample normalised gradient steps.

    Random start: a Gaussian direction scaled to a radius drawn uniformly in ``[0, eps]``. After every step the
    perturbation is projected onto the L2 ball and the input onto [0, 1].
    """

    name = "pgd_l2"
    norm = "L2"

    def start(self, x, rng):
        direction = rng.randn(x.shape[1:], like=x)
        radius = self.eps * rng.rand((), like=x)
        delta = normalise(direction, "L2") * per_sample(radius, x)
        return project(x + delta, x, "L2", self.eps)
