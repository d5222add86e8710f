"""Training-time adversarial examples and the per-epoch validation attack.

Both run on :mod:`nrpm.attacks`' shared pieces: the one projected-gradient loop (:func:`nrpm.attacks.ascend`)
inside :func:`nrpm.attacks.eval_frozen`, so training attacks and ``nrpm eval`` attacks cannot drift apart.
The random starts are *not* drawn here: the training loop draws them from the run's seeded generator for the
whole global batch (so they do not depend on the number of processes) and passes each rank its share.
"""

from __future__ import annotations

import torch
from torch import nn

from .. import attacks as A
from .config import TrainConfig

__all__ = ["adversarial_examples", "validation_attack"]


def adversarial_examples(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, attack: str, eps: float,
                         steps: int = 1, alpha: float | None = None, noise: torch.Tensor | None = None) -> torch.Tensor:
    """Training-time adversarial examples (Linf), computed on ``model`` in eval mode with frozen parameters.

    "fgsm": ``x + alpha * sign(grad)`` (alpha default eps), from ``x + noise`` when ``noise`` is given;
    "pgd": ``steps`` signed-gradient steps of size alpha (default 2.5 eps / steps), each projected onto the eps
    ball around x and [0, 1], from ``x + noise`` (``noise`` uniform in [-eps, eps], or None for no random start);
    returns the last iterate. ``attack="none"`` returns ``x``.
    """
    if attack == "none" or eps == 0:
        return x
    if attack not in ("fgsm", "pgd"):
        raise ValueError(f"unknown training attack {attack!r}")
    if alpha is None:
        alpha = eps if attack == "fgsm" else 2.5 * eps / steps
    x = x.detach()
    x_start = x.clone() if noise is None else (x + noise.to(x)).clamp(0.0, 1.0)

    def gradient(x_adv, y_adv):
        # summed per-sample CE: the same input gradient as CE(reduction="sum"), independent of the batch size
        return A.loss_and_gradient(model, x_adv, y_adv, A.cross_entropy_per_sample)

    with A.eval_frozen(model):
        return A.ascend(x, y, x_start, gradient=gradient, norm="Linf", eps=eps, alpha=alpha, steps=steps)


def validation_attack(config: TrainConfig) -> A.Attack | None:
    """The per-epoch robust check on the held-out images (None when ``val_attack`` is "none").

    PGD always starts at a seeded random point; it reuses the training step size only when it is the training
    attack with the same budget and steps (otherwise the default 2.5 eps / steps fits it better).
    """
    if config.val_attack == "none":
        return None
    if config.val_attack == "fgsm":
        return A.FGSM(config.val_eps)
    same = config.attack == "pgd" and config.val_eps == config.attack_eps and config.val_steps == config.attack_steps
    alpha = config.attack_alpha if same else None
    return A.PGD(config.val_eps, steps=config.val_steps, alpha=alpha, random_start=True, seed=config.seed)
