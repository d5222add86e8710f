"""DeepFool (Moosavi-Dezfooli et al., 2016), L2: repeatedly step to the nearest decision boundary of the model
linearised at the current point, until the sample is misclassified."""
from __future__ import annotations

import torch

from ..validation import check_count, check_nonneg
from .base import Attack, logits_2d, lp_norm, per_sample
from .registry import register_attack

__all__ = ["DeepFool"]

# added to the distance to the linearised boundary, so a step lands just past it (the reference code's 1e-4)
_STEP_SLACK = 1e-4


@register_attack("deepfool")
class DeepFool(Attack):
    """L2 DeepFool: at most ``steps`` linearised steps, over the ``candidates`` classes with the largest clean
    logits (the true class included; the reference code's ``num_classes=10``), with the accumulated step scaled
    by ``1 + overshoot`` and the input kept in [0, 1].

    Like the reference code it returns the first misclassified point (a minimal-norm attack); the budget only
    decides what counts: a sample whose DeepFool point lies outside the L2 ball of radius ``eps`` (or that was
    not fooled within ``steps``) is returned as ``x`` itself, never projected onto the ball. Deterministic.
    """

    name = "deepfool"
    norm = "L2"

    def __init__(self, eps: float, steps: int = 50, overshoot: float = 0.02, candidates: int = 10):
        super().__init__(eps)
        self.steps = check_count(steps, "steps", 1)
        self.overshoot = check_nonneg(overshoot, "overshoot")
        self.candidates = check_count(candidates, "candidates", 2)

    def perturb(self, model, x, y):
        classes = self._candidate_classes(model, x, y)
        total_step = torch.zeros_like(x)
        x_adv = x.clone()
        active = torch.ones(len(x), dtype=torch.bool, device=x.device)
        for _ in range(self.steps):
            index = active.nonzero().squeeze(1)
            step, fooled = _boundary_step(model, x_adv[index], y[index], classes[index])
            active[index[fooled]] = False
            going = index[~fooled]
            if len(going) == 0:
                break
            total_step[going] += step[~fooled]
            x_adv[going] = (x[going] + (1 + self.overshoot) * total_step[going]).clamp(0.0, 1.0)
        return self._within_budget(model, x, y, x_adv)

    def _candidate_classes(self, model, x, y) -> torch.Tensor:
        """(N, k) the true class first, then the k - 1 other classes with the largest clean logits."""
        with torch.no_grad():
            logits = logits_2d(model, x)
        k = min(self.candidates, logits.shape[1])
        ranked = logits.scatter(1, y[:, None], torch.inf).topk(k, dim=1).indices
        return ranked

    def _within_budget(self, model, x, y, x_adv) -> torch.Tensor:
        with torch.no_grad():
            fooled = logits_2d(model, x_adv).argmax(1) != y
        keep = fooled & (lp_norm(x_adv - x, "L2") <= self.eps)
        return torch.where(per_sample(keep, x), x_adv, x)

    def __repr__(self) -> str:
        return (f"DeepFool(eps={self.eps:g}, steps={self.steps}, overshoot={self.overshoot:g}, "
                f"candidates={self.candidates})")


def _boundary_step(model, x, y, classes):
    """The L2 step to the nearest linearised boundary between the true class (``classes[:, 0]``) and another
    candidate, and which samples are already misclassified (their step is irrelevant)."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = logits_2d(model, x)
        chosen = logits.gather(1, classes)
        grads = [torch.autograd.grad(chosen[:, j].sum(), x, retain_graph=j + 1 < classes.shape[1])[0]
                 for j in range(classes.shape[1])]
    fooled = logits.detach().argmax(1) != y
    chosen = chosen.detach()
    w = torch.stack([g - grads[0] for g in grads[1:]], dim=1).flatten(2)      # (N, k - 1, d)
    f = chosen[:, 1:] - chosen[:, :1]                                         # (N, k - 1), negative
    w_norm = w.norm(dim=2).clamp_min(torch.finfo(w.dtype).tiny)
    nearest = (f.abs() / w_norm).argmin(dim=1)
    pick = torch.arange(len(x), device=x.device)
    size = (f[pick, nearest].abs() + _STEP_SLACK) / w_norm[pick, nearest] ** 2
    step = (size[:, None] * w[pick, nearest]).reshape_as(x)
    # a flat model (all w = 0) gives 0 * inf: no step rather than NaN inputs
    return torch.where(torch.isfinite(step), step, torch.zeros_like(step)), fooled
