"""Random-noise baseline: sign noise that spends the same budget as an attack (no gradient, no queries)."""
from __future__ import annotations

import math

import torch

from ..validation import check_budget, check_count, check_norm
from .base import NORMS, Attack, make_generator, random_signs
from .registry import register_attack

__all__ = ["NoiseAttack"]



@register_attack("noise", help="random-noise baseline")
class NoiseAttack(Attack):
    """Random sign noise that spends the same budget as an attack (a baseline).

    * Linf: ``x + eps * s`` with ``s`` uniform in {-1, +1}^d;
    * L2: ``x + eps * s / sqrt(d)``; L1: ``x + eps * s / d`` (exactly on the sphere);
    * L0: ``eps`` random coordinates set to random values in {0, 1}
      (the random counterpart of :class:`L0TopK`).

    Clipped to [0, 1], which only shrinks the perturbation.
    """

    name = "noise"

    def __init__(self, eps: float, norm: str = "Linf", seed: int = 0):
        self.norm = check_norm(norm, NORMS)
        if norm == "L0":
            eps = check_count(check_budget(eps), "eps (number of coordinates for norm='L0')", 0)
        super().__init__(eps)
        self.seed = int(seed)

    def perturb(self, model, x, y):
        generator = make_generator(self.seed, x.device)
        if self.norm == "L0":
            return self._random_coordinates(x, generator)
        signs = random_signs(x.shape, generator, x)
        dims = x[0].numel()
        scale = {"Linf": 1.0, "L2": 1.0 / math.sqrt(dims), "L1": 1.0 / dims}[self.norm]
        return (x + self.eps * scale * signs).clamp(0.0, 1.0)

    def _random_coordinates(self, x, generator):
        flat_x = x.flatten(1).clone()
        k = min(int(self.eps), flat_x.shape[1])
        scores = torch.rand(flat_x.shape, generator=generator, device=x.device)
        chosen = scores.topk(k, dim=1).indices
        values = torch.randint(0, 2, chosen.shape, generator=generator, device=x.device)
        return flat_x.scatter(1, chosen, values.to(x.dtype)).reshape_as(x)

    def __repr__(self) -> str:
        return f"NoiseAttack(eps={self.eps:g}, norm={self.norm!r}, seed={self.seed})"
