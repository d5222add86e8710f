"""Randomized smoothing (Cohen, Rosenfeld, Kolter, ICML 2019): PREDICT and CERTIFY of the smoothed classifier.

The smoothed classifier g(x) = argmax_c P(f(x + e) = c), e ~ N(0, sigma^2 I), is estimated by Monte Carlo from the
base classifier f (a model's argmax). CERTIFY returns a class with an L2 radius within which g provably does
not change, with probability at least 1 - alpha over the noise; PREDICT returns g(x) or abstains.

As in Cohen et al., the noise is added to inputs in [0, 1] and the noisy inputs are *not* clipped to [0, 1]:
the guarantee is about g as defined on all of R^d, and clipping would change the noise distribution. Noise is
drawn from the ``torch.Generator`` passed in (never torch's global RNG), so that results are reproducible and do
not depend on what else consumed random numbers.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from scipy import stats
from torch import nn

from ..attacks import eval_frozen

__all__ = ["ABSTAIN", "Certificate", "lower_confidence_bound", "sample_counts", "predict", "certify",
           "check_sigma", "check_count", "check_alpha", "DEFAULT_BATCH_SIZE"]

ABSTAIN = -1  # the prediction of a smoothed classifier that cannot decide at the requested confidence
DEFAULT_BATCH_SIZE = 1000


class Certificate(NamedTuple):
    """CERTIFY's answer: ``prediction`` (ABSTAIN = -1) and its certified L2 ``radius`` (0.0 when abstaining),
    the lower confidence bound ``pA_lower`` on the top class's probability and that class's count ``counts_top``
    among the n estimation samples."""

    prediction: int
    radius: float
    pA_lower: float
    counts_top: int


# ------------------------------------------------------------------------------------------ argument checks
def check_sigma(sigma) -> float:
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not math.isfinite(sigma) or sigma <= 0:
        raise ValueError(f"sigma (the noise level) must be a finite number > 0, got {sigma!r}")
    return float(sigma)


def check_count(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} (a number of noise samples or a batch size) must be an integer >= 1, "
                         f"got {value!r}")
    return value


def check_alpha(alpha) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 < alpha < 1:
        raise ValueError(f"alpha (the failure probability) must lie strictly between 0 and 1, got {alpha!r}")
    return float(alpha)


# ------------------------------------------------------------------------------------------ statistics
def lower_confidence_bound(k: int, n: int, alpha: float) -> float:
    """One-sided Clopper-Pearson lower bound at level 1 - alpha on p, from k successes in n Bernoulli(p) trials.

    It is the lower end of the two-sided exact interval at level 1 - 2 alpha, which is what Cohen et al.'s code
    computes (``proportion_confint(k, n, alpha=2 * alpha, method="beta")[0]``).
    """
    check_count(n, "n")
    check_alpha(alpha)
    if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= n:
        raise ValueError(f"k must be an integer in [0, n={n}], got {k!r}")
    if k == 0:
        return 0.0  # beta.ppf(alpha, 0, ...) is undefined (NaN); the bound is 0
    return float(stats.beta.ppf(alpha, k, n - k + 1))


def _binomial_p_value(k: int, n: int) -> float:
    """Two-sided p-value of k successes in n trials under p = 1/2 (Cohen et al.'s ``binom_test``)."""
    return float(stats.binomtest(k, n, p=0.5).pvalue)


# ------------------------------------------------------------------------------------------ sampling
def sample_counts(model: nn.Module, x: torch.Tensor, sigma: float, num: int, batch_size: int,
                  generator: torch.Generator) -> torch.Tensor:
    """Class counts (int64, on the CPU) of ``model``'s argmax over ``num`` copies of ``x + N(0, sigma^2 I)``.

    ``x`` is one input without its batch dimension, on the model's device; the noise is drawn on the generator's
    device in batches of ``batch_size`` copies and moved to ``x``'s. The caller sets eval mode and no_grad.
    """
    counts = None
    remaining = num
    while remaining > 0:
        size = min(batch_size, remaining)
        noise = torch.randn((size, *x.shape), generator=generator, device=generator.device, dtype=x.dtype)
        logits = model(x.unsqueeze(0) + sigma * noise.to(x.device))
        batch_counts = torch.bincount(logits.argmax(dim=1), minlength=logits.shape[1])
        counts = batch_counts if counts is None else counts + batch_counts
        remaining -= size
    return counts.cpu()


def _prepared(model: nn.Module, x: torch.Tensor, generator: torch.Generator | None):
    """``x`` on the model's device and a generator: a fresh one seeded 0 when none is given, never the global
    RNG."""
    if not isinstance(x, torch.Tensor) or x.dim() < 1:
        raise ValueError("x must be one input tensor without its batch dimension, e.g. of shape (1, 28, 28)")
    parameter = next(iter(model.parameters()), None)
    device = parameter.device if parameter is not None else x.device
    return x.to(device), generator if generator is not None else torch.Generator().manual_seed(0)


# ------------------------------------------------------------------------------------------ PREDICT and CERTIFY
def predict(model: nn.Module, x: torch.Tensor, sigma: float, n: int, alpha: float,
            batch_size: int = DEFAULT_BATCH_SIZE, generator: torch.Generator | None = None) -> int:
    """Cohen et al.'s PREDICT: the smoothed classifier's class at ``x``, or ABSTAIN (-1).

    The top class of ``n`` noisy samples is returned when a two-sided binomial test of the top two counts
    rejects "they are equally likely" at level ``alpha``; then the answer differs from g(x) with probability at
    most alpha.
    """
    sigma, n, alpha = check_sigma(sigma), check_count(n, "n"), check_alpha(alpha)
    check_count(batch_size, "batch_size")
    x, generator = _prepared(model, x, generator)
    with eval_frozen(model), torch.no_grad():
        counts = sample_counts(model, x, sigma, n, batch_size, generator)
    # stable sort: ties go to the lower class index, as argmax does
    order = torch.sort(counts, descending=True, stable=True).indices.tolist()
    top = int(counts[order[0]])
    runner_up = int(counts[order[1]]) if len(order) > 1 else 0  # a one-class model has no runner-up
    return order[0] if _binomial_p_value(top, top + runner_up) <= alpha else ABSTAIN


def certify(model: nn.Module, x: torch.Tensor, sigma: float, n0: int, n: int, alpha: float,
            batch_size: int = DEFAULT_BATCH_SIZE, generator: torch.Generator | None = None) -> Certificate:
    """Cohen et al.'s CERTIFY: guess the top class from ``n0`` noisy samples, bound its probability from ``n``
    fresh ones, and certify radius ``sigma * Phi^-1(pA_lower)``; ABSTAIN (radius 0) when pA_lower < 1/2.

    Separate selection samples keep the class choice independent of the estimate (otherwise the bound would be
    optimistic). With probability at least 1 - alpha, a non-abstaining answer is g(x) and g is constant on the
    L2 ball of that radius around ``x``.
    """
    sigma, alpha = check_sigma(sigma), check_alpha(alpha)
    n0, n, batch_size = check_count(n0, "n0"), check_count(n, "n"), check_count(batch_size, "batch_size")
    x, generator = _prepared(model, x, generator)
    with eval_frozen(model), torch.no_grad():
        selection = sample_counts(model, x, sigma, n0, batch_size, generator)
        top = int(selection.argmax())  # the first maximum: ties go to the lower class index
        estimation = sample_counts(model, x, sigma, n, batch_size, generator)
    counts_top = int(estimation[top]) if top < len(estimation) else 0
    pA_lower = lower_confidence_bound(counts_top, n, alpha)
    if pA_lower < 0.5:
        return Certificate(ABSTAIN, 0.0, pA_lower, counts_top)
    return Certificate(top, float(sigma * stats.norm.ppf(pA_lower)), pA_lower, counts_top)
