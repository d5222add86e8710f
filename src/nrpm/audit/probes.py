"""What checks 1 and 2 measure on the model itself: :func:`probe_forward` (repeat forward passes, lam = 1 against
the plain base model) and :func:`probe_gradients` (input gradients of the margin and cross-entropy losses).

The measurements go into the :class:`~nrpm.audit.checks.Evidence` the checks grade, so every check reads the
same one object, and a check can be tested on made-up numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..attacks.base import logits_2d
from .adaptive import lam_one

__all__ = ["ForwardProbe", "GradientProbe", "probe_forward", "probe_gradients"]


@dataclass(frozen=True)
class ForwardProbe:
    """Check 1's measurements on the first ``samples`` inputs: two forward passes (max |difference|, changed
    predictions, the logits' scale 1 + max |logit|), and lam = 1 against the base model (``lam1_*``, with robust
    layers) or the model against its base (``base_diff``, without)."""

    samples: int
    repeat_diff: float
    repeat_flips: int
    scale: float
    lam1_diff: float | None = None
    lam1_scale: float | None = None
    lam1_flips: int | None = None
    base_diff: float | None = None


@dataclass(frozen=True)
class GradientProbe:
    """Check 2's measurements: per sample, whether the margin / cross-entropy input gradient is finite and
    non-zero; how many margin gradients are not finite; the finite ones' L1 norms. ``error``: no gradient at all."""

    ok_margin: torch.Tensor
    ok_ce: torch.Tensor
    nonfinite: int
    norms: torch.Tensor
    error: str | None = None


def probe_forward(model, base, layers, x, batch_size, device) -> ForwardProbe:
    """Check 1's measurements (``base``: the plain model, or None; ``layers``: the model's robust layers)."""
    xb = x[:batch_size].to(device)
    with torch.no_grad():
        first, second = logits_2d(model, xb), logits_2d(model, xb)
        common = dict(samples=len(xb), repeat_diff=(first - second).abs().max().item(),
                      repeat_flips=int((first.argmax(1) != second.argmax(1)).sum()),
                      scale=1.0 + first.abs().max().item())
        if base is not None and layers:
            with lam_one(model):
                at_one = logits_2d(model, xb)
            ref = logits_2d(base, xb)
            return ForwardProbe(**common, lam1_diff=(at_one - ref).abs().max().item(),
                                lam1_scale=1.0 + ref.abs().max().item(),
                                lam1_flips=int((at_one.argmax(1) != ref.argmax(1)).sum()))
        if base is not None:
            return ForwardProbe(**common, base_diff=(first - logits_2d(base, xb)).abs().max().item())
    return ForwardProbe(**common)


def probe_gradients(model, x, y, batch_size, device) -> GradientProbe:
    """Check 2's measurements over all samples."""
    ok_margin, ok_ce, nonfinite, norms = [], [], 0, []
    for i in range(0, len(x), batch_size):
        xb = x[i:i + batch_size].to(device).requires_grad_(True)
        yb = y[i:i + batch_size].to(device)
        gradients = _loss_gradients(model, xb, yb)
        if gradients is None:
            empty = torch.zeros(0, dtype=torch.bool)
            return GradientProbe(empty, empty, 0, torch.zeros(0),
                                 "the model output does not depend differentiably on the input")
        for g, sink in zip(gradients, (ok_ce, ok_margin)):
            flat = (torch.zeros_like(xb) if g is None else g).detach().flatten(1)
            finite = torch.isfinite(flat).all(1)
            sink.append((finite & (flat.abs().sum(1) > 0)).cpu())
            if sink is ok_margin:
                nonfinite += int((~finite).sum())
                norms.append(flat.abs().sum(1)[finite].cpu())
    return GradientProbe(torch.cat(ok_margin), torch.cat(ok_ce), nonfinite,
                         torch.cat(norms) if norms else torch.zeros(0))


def _loss_gradients(model, xb, yb):
    """(cross-entropy gradient, margin-loss gradient) w.r.t. ``xb``; None if the output does not depend on it."""
    with torch.enable_grad():
        logits = logits_2d(model, xb)
        if not logits.requires_grad:
            return None
        ce = F.cross_entropy(logits, yb, reduction="sum")
        true = logits.gather(1, yb[:, None]).squeeze(1)
        other = logits.masked_fill(F.one_hot(yb, logits.shape[1]).bool(), -math.inf).amax(1)
        margin = (other - true).sum()
        g_ce, = torch.autograd.grad(ce, xb, retain_graph=True, allow_unused=True)
        g_m, = torch.autograd.grad(margin, xb, allow_unused=True)
    return g_ce, g_m
