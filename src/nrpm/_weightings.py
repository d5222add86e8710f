"""The robust weightings of the IRLS (L1 and the official code's MCP, Huber, HM), as the compiled and eager
kernels of :mod:`nrpm._kernels` evaluate them per vote: their parameters, the clamps as thresholds, the weight and
its derivative, and the sign trick of the statistics. Kept apart from the kernels' layouts and backends."""

from __future__ import annotations

from typing import NamedTuple, Union

import torch

__all__ = ["Estimator", "WeightingParams", "estimator_params", "broadcast_params", "per_output_params", "with_relative_params", "clamp_masks",
           "clamped", "weights", "signed_like", "runtime_estimator"]


Number = Union[float, torch.Tensor]  # a Python float, a 0-d tensor, or a per-output tensor (6-d, as z)


class WeightingParams(NamedTuple):
    """The parameters of one clamped weighting, as :func:`estimator_params` computes them."""

    beta: Number
    lo: Number | None
    hi: Number | None
    a_lo: Number | None
    a_hi: Number | None
    beta_e: Number
    lo_e: Number | None
    hi_e: Number | None


class Estimator(NamedTuple):
    """A robust estimator other than L1 (L1 travels as None, the kernels' fast path).

    ``gamma`` / ``delta`` are floats as validated (then the estimator is hashable), or 0-d tensors in a runtime
    estimator (:func:`runtime_estimator`). ``params``: its :class:`WeightingParams` when precomputed outside the
    compiled kernels (see :func:`runtime_estimator`, :func:`with_relative_params`), else None.
    """

    norm: str
    gamma: Number
    delta: Number
    relative: bool
    params: WeightingParams | None = None

    def options(self) -> dict:
        """The keyword arguments that name this estimator: {'norm', 'gamma', 'delta', 'scale'}."""
        return {"norm": self.norm, "gamma": float(self.gamma), "delta": float(self.delta),
                "scale": "relative" if self.relative else "absolute"}


def estimator_params(est: Estimator, scale, eps: float) -> WeightingParams:
    """(beta, lo, hi, a_lo, a_hi, beta_e, lo_e, hi_e) of a weighting ``w = clamp(u + beta, lo, hi)``, u = 1/a,
    a = |r| + eps; the weighting of the official code divided by its factor alpha (below).

    ``est``: an :class:`Estimator`; the weightings of the official code, each of the form
    clamp(alpha u + beta, lo, hi): mcp ``max(u - 1/gamma, eps)``, huber ``min(delta u, 1)``, hm
    ``clamp(delta/(gamma - delta) (gamma u - 1), eps, 1)``. ``relative``: gamma and delta are in units of
    ``scale`` (per output, broadcast against the votes), the mean absolute residual at the LPM start (see
    :func:`irls_scale`). Why divided by alpha: the step z = D sum(w y) / sum(w) does not change when an output's
    weights are all scaled by one positive factor, nor does its gradient (the backward's statistics scale with w
    and cancel), so w / alpha is the same estimator with one multiply fewer per vote in every kernel.

    ``a_lo`` / ``a_hi``: where the clamps start, as thresholds on a (w = lo where a >= a_lo, w = hi where
    a <= a_hi; None: no such clamp). Why thresholds: they are per output, so a vote pays one compare per clamp
    instead of clamping its raw weight (Inductor's NaN-propagating min/max) and comparing it again for the
    derivative; see :func:`weights`. ``beta_e, lo_e, hi_e`` are beta, lo, hi over eps, for the gradient term
    (computed here, not per vote). lo - beta > 0 and hi - beta > 0 hold for every estimator (validation: gamma > 0,
    delta > 0, gamma > delta for hm), so the inequalities keep their direction. Structural constants (huber's
    beta = 0, mcp's lo = eps) stay Python floats, which the kernels skip or fold.
    """
    if est.params is not None:  # precomputed outside the compiled kernels (see runtime_estimator)
        return est.params
    norm, gamma, delta = est.norm, est.gamma, est.delta
    if est.relative:
        gamma, delta = gamma * scale, delta * scale
    if norm == "mcp":  # alpha = 1
        beta = -1.0 / gamma
        return WeightingParams(beta, eps, None, 1.0 / (eps - beta), None, beta / eps, 1.0, None)
    if norm == "huber":  # alpha = delta
        hi = 1.0 / delta
        return WeightingParams(0.0, None, hi, None, delta, 0.0, None, hi / eps)
    if norm == "hm":  # alpha = delta gamma / (gamma - delta)
        beta, hi = -1.0 / gamma, (gamma - delta) / (delta * gamma)
        lo = eps * hi
        return WeightingParams(beta, lo, hi, 1.0 / (lo - beta), delta, beta / eps, hi, hi / eps)  # lo / eps = hi
    raise ValueError(f"unknown estimator {norm!r}")


def _per_output(p) -> bool:
    """A precomputed parameter that varies per output (6-d, as z), not a scalar or a 0-d tensor."""
    return isinstance(p, torch.Tensor) and p.dim() == 6


def broadcast_params(est, fn):
    """est with its precomputed per-output parameters passed through ``fn`` (the broadcast against a kernel's
    votes); other estimators unchanged."""
    if est is None or est.params is None:
        return est
    params = WeightingParams(*(fn(p) if _per_output(p) else p for p in est.params))
    return Estimator(est.norm, est.gamma, est.delta, est.relative, params)


def per_output_params(est) -> list:
    """The precomputed per-output parameter tensors of est (for the compiled kernels' dynamic dimensions)."""
    return [] if est is None or est.params is None else [p for p in est.params if _per_output(p)]


def with_relative_params(est, scale, eps: float):
    """A relative estimator with its per-output parameters computed now, outside the compiled kernels: inside a
    gather (the input gradient) every vote reads other outputs' values, so Inductor recomputed their divisions
    per vote (measured: HM relative's input-gradient kernel 2x the absolute one's)."""
    if est is None or not est.relative or not scale or est.params is not None:
        return est
    return Estimator(est.norm, est.gamma, est.delta, est.relative, estimator_params(est, scale[0], eps))


def clamp_masks(a, params):
    """(a >= a_lo, a <= a_hi): the votes whose weight is clamped at lo / at hi (None where no such clamp)."""
    a_lo, a_hi = params.a_lo, params.a_hi
    return (None if a_lo is None else a >= a_lo), (None if a_hi is None else a <= a_hi)


def clamped(values, masks, params):
    """values where no clamp is active, else the clamps' per-vote replacement (``params``' lo / hi, or the pair
    of tensors given in their place)."""
    at_lo, at_hi = masks
    lo, hi = params
    if at_lo is not None:
        values = torch.where(at_lo, lo, values)
    if at_hi is not None:
        values = torch.where(at_hi, hi, values)
    return values


def weights(abs_r, eps: float, params, with_slope: bool = True):
    """(w, -dw/d|r|) at |r| = abs_r (the slope None unless asked): L1 (params None) is 1/(|r| + eps) and its
    square; the clamped weightings are u + beta between their clamps, where -w' = u^2 as for L1, and have zero
    derivative where a clamp is active."""
    a = abs_r + eps
    u = 1.0 / a
    if params is None:
        return u, (u * u if with_slope else None)
    beta = params.beta
    raw = u if isinstance(beta, float) and beta == 0.0 else u + beta
    masks = clamp_masks(a, params)
    weight = clamped(raw, masks, (params.lo, params.hi))
    if not with_slope:
        return weight, None
    return weight, clamped(u * u, masks, (0.0, 0.0))


# the sign bit of each float width, as the same-width integer (for signed_like)
_SIGN_BIT = {2: (torch.int16, -2**15), 4: (torch.int32, -2**31), 8: (torch.int64, -2**63)}


def signed_like(t, r):
    """sign(r) * t, as t with its sign bit flipped where r's is set (t and r of one float dtype).

    Two bit operations where ``torch.sign(r) * t`` compiles to two compares, two blends and a multiply: in the
    compiled kernels the sign was the most expensive part of a vote's statistics (measured: the forward with
    statistics 2.4x -> 1.5x the inference forward, the input-gradient pass 2.8x -> 1.5x; benchmarks/README.md).
    The one difference is at an exact tie r = +-0, taken as sign +-1 (a one-sided derivative of |r|) instead of
    autograd's 0. A tie needs a vote equal to z/D to the last bit; where all of an output's votes tie (an all-zero
    receptive field, equal votes) the step does not move (delta = 0) and the two conventions agree.
    """
    itype, bit = _SIGN_BIT[t.element_size()]
    return (t.view(itype) ^ (r.view(itype) & bit)).view(t.dtype)


def runtime_estimator(est, like: torch.Tensor, eps: float):
    """(est with gamma and delta as 0-d tensors, its static part for the compiled kernels' key): the kernels are
    compiled once per estimator kind, not once per parameter value (a parameter sweep would recompile each).

    The absolute form also carries its :func:`estimator_params`, computed here once: computed inside a kernel
    from gamma and delta, Inductor inlined their divisions into the loop over the votes (measured: HM's inference
    forward cost 2x L1's). Computed from the 0-d gamma and delta, the parameters that depend on them are 0-d
    tensors and the structural constants (huber's beta = 0, mcp's lo = eps) stay Python
    floats, which the kernels skip."""
    if est is None:
        return None, None
    kind = (est.norm, est.relative)
    if isinstance(est.gamma, torch.Tensor):  # already a runtime estimator
        return est, kind
    gamma, delta = like.new_tensor(est.gamma), like.new_tensor(est.delta)
    runtime = Estimator(est.norm, gamma, delta, est.relative)
    if not est.relative:
        runtime = Estimator(est.norm, gamma, delta, False, estimator_params(runtime, None, eps))
    return runtime, kind
