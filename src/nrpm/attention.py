"""Robust attention aggregation: NRPM for the value aggregation of (multi-head) attention.

Plain attention returns ``M_0 = A v`` with ``A = softmax(q k^T / sqrt(d) + mask)``: each output row is the
A-weighted *mean* of the value rows ``v_j``. The robust aggregation replaces that mean by K unrolled IRLS steps
of a robust location estimate (a weighted geometric-median-like point), starting from ``M_0``::

    repeat K times:  D_ij = ||M_i - v_j||_2;   W_ij = A_ij * phi(D_ij);   M_i = sum_j W_ij v_j / sum_j W_ij

and returns ``lam * M_0 + (1 - lam) * M_K``. ``phi`` is the estimator's weight on the distance ``D``
(the same family as :mod:`nrpm.functional`): "l1" ``1/(D + eps)``, "mcp" ``max(1/(D + eps) - 1/gamma, eps)``,
"huber" ``min(delta/(D + eps), 1)``, "hm" ``clamp(delta/(gamma - delta) (gamma/(D + eps) - 1), eps, 1)``.
``scale="relative"`` takes gamma and delta in units of each query row's A-weighted mean distance at ``M_0``
(``sum_j A_ij D_0ij + eps``, held constant in the backward), the analogue of the linear layers' relative scale.

Masks: ``attn_mask`` is either boolean, **True = NOT allowed** (the ``nn.MultiheadAttention`` convention, the
opposite of ``F.scaled_dot_product_attention``'s), or a float mask added to the logits before the softmax.
A masked position has ``A_ij = 0`` and so zero weight in every step. A query row whose positions are all masked
(all logits -inf) returns zeros and gets zero gradient, as torch's ``scaled_dot_product_attention`` does.

Memory: O(B H N S) per step, never an (N, S, d) difference tensor: ``D^2 = |M_i|^2 + |v_j|^2 - 2 M_i . v_j``
from one fused matmul-add, clamped at 1e-30 before the square root (so a zero distance passes no gradient).
The gradient is autograd through the unrolled steps (the L1 weights' own step by a hand-written backward, fewer
passes over N x S), so the backward keeps O(K B H N S) activations.
Half-precision inputs are computed in float32 (the distance expansion cancels badly in 16 bits) and the result is
cast back.
"""

from __future__ import annotations

import math

import torch

from .validation import (DEFAULT_DELTA, DEFAULT_GAMMA, DEFAULT_NORM, DEFAULT_SCALE, LamType, check_eps,
                         check_estimator, check_floating, check_K, check_lam)

__all__ = ["robust_attention", "attention_probs", "ATTENTION_BACKWARD_MODES"]

ATTENTION_BACKWARD_MODES = ("exact", "detached", "plain")
# the defaults of nrpm.functional (not imported from there: functional re-exports this module at its end)
_DEFAULT_LAM, _DEFAULT_K, _DEFAULT_EPS = 0.5, 3, 1e-3


def _check_mode(backward_mode: str, detach_weights: bool) -> str:
    if backward_mode not in ATTENTION_BACKWARD_MODES:
        raise ValueError(f"backward_mode must be one of {ATTENTION_BACKWARD_MODES}, got {backward_mode!r}")
    return "detached" if detach_weights and backward_mode == "exact" else backward_mode


def _check_qkv(q, k, v) -> None:
    for t, what in ((q, "q"), (k, "k"), (v, "v")):
        check_floating(t, what)
        if t.dim() < 2:
            raise ValueError(f"{what} must be (..., length, dim), e.g. (B, H, N, d), got shape {tuple(t.shape)}")
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"q and k must have the same last dim d, got q {tuple(q.shape)} and k {tuple(k.shape)}")
    if k.shape[-2] != v.shape[-2]:
        raise ValueError(f"k and v must have the same length S, got k {tuple(k.shape)} and v {tuple(v.shape)}")


def _additive_mask(attn_mask, logits: torch.Tensor) -> torch.Tensor | None:
    """attn_mask as a float tensor to add to the logits (bool True -> -inf), checked to broadcast to them."""
    if attn_mask is None:
        return None
    if not isinstance(attn_mask, torch.Tensor) or not (attn_mask.dtype == torch.bool
                                                       or attn_mask.is_floating_point()):
        raise ValueError("attn_mask must be a bool tensor (True = not allowed) or a float tensor added to the "
                         f"logits, got {type(attn_mask).__name__} {getattr(attn_mask, 'dtype', '')}")
    try:
        shape = torch.broadcast_shapes(attn_mask.shape, logits.shape)
    except RuntimeError:
        shape = None
    if shape != logits.shape:
        raise ValueError(f"attn_mask of shape {tuple(attn_mask.shape)} does not broadcast to the attention "
                         f"logits' shape {tuple(logits.shape)} (..., N, S)")
    if attn_mask.dtype == torch.bool:
        return torch.zeros((), dtype=logits.dtype, device=logits.device).masked_fill(attn_mask, -math.inf)
    return attn_mask.to(logits.dtype)


def attention_probs(q: torch.Tensor, k: torch.Tensor, attn_mask: torch.Tensor | None = None,
                    softmax_scale: float | None = None) -> torch.Tensor:
    """``A = softmax(q k^T * scale + mask)`` (scale 1/sqrt(d) by default); rows with every position masked are 0."""
    scale = 1.0 / math.sqrt(q.shape[-1]) if softmax_scale is None else softmax_scale
    # the scale on q (N x d) rather than on the logits (N x S): one pass fewer over the largest tensor
    logits = torch.matmul(q * scale, k.transpose(-2, -1))
    mask = _additive_mask(attn_mask, logits)
    if mask is None:  # no -inf logits without a mask, so no dead rows to look for (4 passes over N x S saved)
        return torch.softmax(logits, dim=-1)
    logits = logits + mask
    # a fully masked row would be softmax(-inf, ..., -inf) = NaN: give it zero weights instead, as SDPA does
    dead = (logits == -math.inf).all(-1, keepdim=True)
    return torch.softmax(logits.masked_fill(dead, 0.0), dim=-1).masked_fill(dead, 0.0)


# D^2 is clamped at this before the square root: sqrt's gradient is finite there, and clamp_min's is 0 below it,
# so a (numerically) zero distance passes no gradient; D >= 1e-15 is invisible next to eps in phi
_TINY_D2 = 1e-30


def _squared_distances(m: torch.Tensor, v_t: torch.Tensor, v_sq: torch.Tensor) -> torch.Tensor:
    """D_ij^2 = ||m_i - v_j||^2 from one fused matmul-add, |m|^2 + |v|^2 - 2 m v^T (no (N, S, d) tensor); may be
    slightly negative (cancellation).

    ``v_t`` is v^T flattened to (batch, dv, S) and ``v_sq`` |v_j|^2 as (batch, 1, S), both computed once per call
    rather than per step. baddbmm writes the sum of the squares and the product in one pass over N x S.
    """
    flat = m.reshape(-1, *m.shape[-2:])
    d2 = torch.baddbmm(flat.square().sum(-1, keepdim=True) + v_sq, flat, v_t, alpha=-2.0)
    return d2.view(*m.shape[:-1], v_t.shape[-1])


def _distances(d2: torch.Tensor) -> torch.Tensor:
    return d2.clamp_min(_TINY_D2).sqrt()


class _L1Weights(torch.autograd.Function):
    """w = A / (sqrt(max(D^2, tiny)) + eps), the L1 step's weights, with a hand-written backward.

    Why: autograd's chain (clamp, sqrt, add, divide) makes about nine passes over the N x S weights in the backward
    and this one three to six; the forward is the same ops, in place where the intermediate is not saved.
    """

    @staticmethod
    def forward(ctx, a, d2, eps: float):
        dist = d2.clamp_min(_TINY_D2).sqrt_()
        u = (dist + eps).reciprocal_()
        w = a * u
        if ctx.needs_input_grad[1]:
            ctx.save_for_backward(w, u, dist, d2 <= _TINY_D2)
        elif ctx.needs_input_grad[0]:
            ctx.save_for_backward(u)
        return w

    @staticmethod
    def backward(ctx, grad):
        if not ctx.needs_input_grad[1]:
            return grad * ctx.saved_tensors[0], None, None
        w, u, dist, clamped = ctx.saved_tensors
        grad_a = grad * u if ctx.needs_input_grad[0] else None
        # dw/dD = -A u^2 = -w u and dD/dD^2 = 1 / (2 D); 0 where the clamp held (its gradient)
        grad_d2 = (grad * w).mul_(u).div_(dist).mul_(-0.5).masked_fill_(clamped, 0.0)
        return grad_a, grad_d2, None


def _phi(dist: torch.Tensor, eps: float, est, spread) -> torch.Tensor:
    """The estimator's IRLS weight at distance ``dist`` (see the module docstring)."""
    u = (dist + eps).reciprocal_()  # in place on the sum: reciprocal's backward needs only its output
    if est is None:
        return u
    norm, gamma, delta, relative = est
    if relative:
        gamma, delta = gamma * spread, delta * spread
    if norm == "mcp":
        return (u - 1.0 / gamma).clamp_min(eps)
    if norm == "huber":
        return (delta * u).clamp_max(1.0)
    return (delta / (gamma - delta) * (gamma * u - 1.0)).clamp(eps, 1.0)  # hm


def _mix(lam: LamType, m0: torch.Tensor, mk: torch.Tensor) -> torch.Tensor:
    if isinstance(lam, float) and lam == 0.0:
        return mk
    if isinstance(lam, torch.Tensor):
        lam = lam.to(m0.dtype)
    return torch.lerp(m0, mk, 1 - lam)


def _robust_aggregate(a, v, lam, K, eps, est, detach) -> torch.Tensor:
    """lam * A v + (1 - lam) * M_K for probabilities ``a`` (..., N, S) and values ``v`` (..., S, dv)."""
    m0 = torch.matmul(a, v)
    m, spread = m0, None
    flat_v = v.expand(*m0.shape[:-2], *v.shape[-2:]).reshape(-1, *v.shape[-2:])  # (batch, S, dv)
    v_t, v_sq = flat_v.transpose(-2, -1), flat_v.square().sum(-1).unsqueeze(-2)  # once for all K steps
    for _ in range(K):
        d2 = _squared_distances(m, v_t, v_sq)
        if est is None:
            w = _L1Weights.apply(a, d2.detach() if detach else d2, eps)
        else:
            dist = _distances(d2)
            if est[3] and spread is None:  # relative scale: fixed at M_0, no gradient
                spread = (a * dist).sum(-1, keepdim=True).detach() + eps
            w = a * _phi(dist.detach() if detach else dist, eps, est, spread)
        total = w.sum(-1, keepdim=True)
        # fully masked rows have total 0 (and w 0): divide by 1 there so they stay 0 instead of NaN
        m = torch.matmul(w, v) / torch.where(total > 0, total, 1.0)
    return _mix(lam, m0, m)


def _half_to_float(*tensors):
    return [t.float() if t.dtype in (torch.float16, torch.bfloat16) else t for t in tensors]


_IRLS_DEFAULTS = {"K": _DEFAULT_K, "eps": _DEFAULT_EPS, "norm": DEFAULT_NORM, "gamma": DEFAULT_GAMMA,
                  "delta": DEFAULT_DELTA, "scale": DEFAULT_SCALE, "detach_weights": False}


def _irls_options(irls: dict) -> dict:
    """The IRLS options with their defaults; a misspelt one is an error naming the valid ones."""
    unknown = sorted(set(irls) - set(_IRLS_DEFAULTS))
    if unknown:
        raise ValueError(f"unknown robust_attention option {unknown[0]!r}; valid: {sorted(_IRLS_DEFAULTS)}")
    return {**_IRLS_DEFAULTS, **irls}


def robust_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    attn_mask: torch.Tensor | None = None,
    lam: LamType = _DEFAULT_LAM,
    backward_mode: str = "exact",
    softmax_scale: float | None = None,
    **irls,
) -> torch.Tensor:
    """Robust attention ``lam * A v + (1 - lam) * M_K`` (see the module docstring for the exact definition).

    q (..., N, d), k (..., S, d), v (..., S, dv), e.g. (B, H, N, d); returns (..., N, dv). ``attn_mask``: bool
    (True = NOT allowed, as nn.MultiheadAttention) or float (added to the logits), broadcastable to (..., N, S).
    ``lam = 1`` or ``K = 0`` is plain attention (equal to ``F.scaled_dot_product_attention`` with the bool mask
    inverted). ``softmax_scale``: the logits' factor, default 1/sqrt(d). ``backward_mode``: "exact" (autograd
    through every step), "detached" (``phi(D)`` a constant in the backward; A still carries its gradient; also
    ``detach_weights=True``) or "plain" (the value of the robust output, the gradient of plain attention:
    ``plain + (robust - plain).detach()``, lam then gets no gradient). ``irls``: the IRLS options, named as
    :func:`nrpm.functional.robust_linear`'s: ``K`` (3), ``eps`` (1e-3), ``norm`` / ``gamma`` / ``delta`` /
    ``scale`` (the estimator; L1 by default) and ``detach_weights``.
    """
    o = _irls_options(irls)
    K, eps, lam = check_K(o["K"]), check_eps(o["eps"]), check_lam(lam)
    est = check_estimator(o["norm"], o["gamma"], o["delta"], o["scale"])
    mode = _check_mode(backward_mode, o["detach_weights"])
    _check_qkv(q, k, v)
    out_dtype = v.dtype
    q, k, v = _half_to_float(q, k, v)
    a = attention_probs(q, k, attn_mask, softmax_scale)
    if (isinstance(lam, float) and lam == 1.0) or K == 0:
        return torch.matmul(a, v).to(out_dtype)
    if mode != "plain":
        return _robust_aggregate(a, v, lam, K, eps, est, mode == "detached").to(out_dtype)
    plain = torch.matmul(a, v)
    with torch.no_grad():
        robust = _robust_aggregate(a, v, lam, K, eps, est, False)
    return (plain + (robust - plain.detach())).to(out_dtype)
