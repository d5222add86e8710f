"""SPSA (Uesato et al., 2018, "Adversarial Risk and the Dangers of Evaluating Against Weak Attacks"): a
gradient-free attack that estimates the gradient of the margin loss from random finite differences, so masked
or shattered input gradients do not stop it."""
from __future__ import annotations

import torch

from ..validation import check_count, check_norm, check_positive
from .base import Attack, logits_2d, margin_loss_per_sample, project
from .registry import register_attack

__all__ = ["SPSA"]

# Adam's moment decay rates and denominator guard (Kingma & Ba's defaults, as in Uesato et al.'s SPSA)
_ADAM_BETAS, _ADAM_EPS = (0.9, 0.999), 1e-8


@register_attack("spsa")
class SPSA(Attack):
    """Gradient-free SPSA on the margin loss ``max_{j != y} z_j - z_y``, with Adam on the perturbation.

    Each of the ``steps`` steps estimates the gradient from ``samples`` queries: ``samples / 2`` antithetic pairs
    ``x' +- delta * v`` with ``v`` uniform in {-1, +1}^d, ``g = mean((L(x' + delta v) - L(x' - delta v)) /
    (2 delta) * v)``; probes are clipped to [0, 1] so the model only sees valid inputs. The perturbation then
    takes one Adam step of size ``lr`` up the estimate (as in the paper, not a signed step) and is projected
    onto the ``norm`` ball of radius ``eps`` and [0, 1]. The attack starts at ``x``; a sample stops (and keeps
    its point) as soon as it is misclassified, so each sample costs at most ``steps * (samples + 1)`` queries.
    Batched over samples (a step's probes go through the model ``query_batch`` rows at a time); each sample's
    random directions come from its own generator, seeded by ``seed`` and its global index.
    """

    name = "spsa"
    seeded_per_sample = True

    def __init__(self, eps: float, norm: str = "Linf", steps: int = 100, samples: int = 128, delta: float = 0.01,
                 lr: float = 0.01, seed: int = 0, query_batch: int = 8192):
        super().__init__(eps)
        self.norm = check_norm(norm, ("Linf", "L2"))
        self.steps = check_count(steps, "steps", 1)
        self.samples = check_count(samples, "samples", 2)
        if self.samples % 2:
            raise ValueError(f"samples must be even (antithetic pairs), got {samples}")
        self.delta = check_positive(delta, "delta")
        self.lr = check_positive(lr, "lr")
        self.seed = int(seed)
        self.query_batch = check_count(query_batch, "query_batch", 1)

    def perturb(self, model, x, y):
        rng = self.sample_rng(x)  # per-sample directions: a sample's result does not depend on its batch
        x_adv = x.clone()
        first_moment, second_moment = torch.zeros_like(x), torch.zeros_like(x)
        active = ~self._fooled(model, x, y)
        for step in range(1, self.steps + 1):
            index = active.nonzero().squeeze(1)
            if len(index) == 0:
                break
            grad = self._gradient_estimate(model, x_adv[index], y[index], rng.take(index))
            ascent = _adam_direction(grad, first_moment, second_moment, index, step)
            x_adv[index] = project(x_adv[index] + self.lr * ascent, x[index], self.norm, self.eps)
            active[index[self._fooled(model, x_adv[index], y[index])]] = False
        return x_adv

    @torch.no_grad()
    def _gradient_estimate(self, model, x, y, rng) -> torch.Tensor:
        pairs = self.samples // 2
        directions = rng.signs((pairs, *x.shape[1:]), like=x)
        centre = x[:, None]
        probes = torch.cat([centre + self.delta * directions, centre - self.delta * directions], dim=1)
        losses = self._losses(model, probes.clamp(0.0, 1.0).flatten(0, 1), y.repeat_interleave(2 * pairs))
        losses = losses.reshape(len(x), 2 * pairs)
        slopes = (losses[:, :pairs] - losses[:, pairs:]) / (2 * self.delta)
        return (slopes.reshape(*slopes.shape, *([1] * (x.dim() - 1))) * directions).mean(dim=1)

    def _losses(self, model, probes, labels) -> torch.Tensor:
        """Margin losses of many probes, ``query_batch`` rows per forward pass (bounded memory)."""
        chunks = [margin_loss_per_sample(logits_2d(model, probes[i:i + self.query_batch]),
                                         labels[i:i + self.query_batch])
                  for i in range(0, len(probes), self.query_batch)]
        return torch.cat(chunks)

    @torch.no_grad()
    def _fooled(self, model, x, y) -> torch.Tensor:
        return logits_2d(model, x).argmax(1) != y

    def __repr__(self) -> str:
        return (f"SPSA(eps={self.eps:g}, norm={self.norm!r}, steps={self.steps}, samples={self.samples}, "
                f"delta={self.delta:g}, lr={self.lr:g}, seed={self.seed})")


def _adam_direction(grad, first_moment, second_moment, index, step: int) -> torch.Tensor:
    """Adam's bias-corrected update direction for the samples ``index``, updating their moments in place.
    Adam is elementwise, so one optimiser state for the whole batch keeps the samples independent."""
    beta1, beta2 = _ADAM_BETAS
    m = beta1 * first_moment[index] + (1 - beta1) * grad
    v = beta2 * second_moment[index] + (1 - beta2) * grad.square()
    first_moment[index], second_moment[index] = m, v
    m_hat, v_hat = m / (1 - beta1 ** step), v / (1 - beta2 ** step)
    return m_hat / (v_hat.sqrt() + _ADAM_EPS)
