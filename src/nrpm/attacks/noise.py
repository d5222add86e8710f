"""Random-noise baseline: sign noise that spends the same budget as an attack (no gradient, no queries)."""
from __future__ import annotations

import math

import torch

from ..validation import check_budget, check_count, check_norm
from .base import NORMS, Attack
from .registry import register_attack

__all__ = ["NoiseAttack"]



@register_attack("noise", help="random-noise baseline")
class NoiseAttack(Attack):
    """Random sign noise that spends the same budget as an attack (a baseline); each sample's noise comes from
    its own generator, seeded by ``seed`` and its global index.

    * Linf: ``x + eps * s`` with ``s`` uniform in {-1, +1}^d;
    * L2: ``x + eps * s / sqrt(d)``; L1: ``x + eps * s / d`` (exactly on the sphere);
    * L0: ``eps`` random coordinates set to random values in {0, 1}
      (the random counterpart of :class:`L0TopK`).

    Clipped to [0, 1], which only shrinks the perturbation.
    """

    name = "noise"
    seeded_per_sample = True

    def __init__(self, eps: float, norm: str = "Linf", seed: int = 0):
        self.norm = check_norm(norm, NORMS)
        if norm == "L0":
            eps = check_count(check_budget(eps), "eps (number of coordinates for norm='L0')", 0)
        super().__init__(eps)
        self.seed = int(seed)

    def perturb(self, model, x, y):
        rng = self.sample_rng(x)  # per-sample noise: a sample's result does not depend on its batch
        if self.norm == "L0":
            return self._random_coordinates(x, rng)
        signs = rng.signs(x.shape[1:], like=x)
        dims = x[0].numel()
        scale = {"Linf": 1.0, "L2": 1.0 / math.sqrt(dims), "L1": 1.0 / dims}[self.norm]
        return (x + self.eps * scale * signs).clamp(0.0, 1.0)

    def _random_coordinates(self, x, rng):
        flat_x = x.flatten(1).clone()
        k = min(int(self.eps), flat_x.shape[1])
        scores = rng.rand(flat_x.shape[1:], like=flat_x.float())
        chosen = scores.topk(k, dim=1).indices
        values = rng.randint(2, chosen.shape[1:])
        return flat_x.scatter(1, chosen, values.to(x.dtype)).reshape_as(x)

    def __repr__(self) -> str:
        return f"NoiseAttack(eps={self.eps:g}, norm={self.norm!r}, seed={self.seed})"
