"""Functional NRPM: robust (median-like) pattern matching for Linear and Conv2d units.

A unit computes ``z = sum_d a_d x_d``. Each product ``y_d = a_d x_d`` is a *vote* for ``z / D``; the linear
unit (LPM) takes their mean. NRPM replaces it by K unrolled IRLS steps of a robust location estimate, starting
from the LPM value::

    z <- sum_d y_d
    repeat K times:  w_d = 1 / (|y_d - z/D| + eps);   z <- D * sum_d w_d y_d / sum_d w_d

and the layer returns ``lam * z_LPM + (1 - lam) * z_NRPM + bias``.

Implementation notes (why it looks like this):

* Every op reduces to one core on a 2-D problem: ``x`` of shape (N, D) against ``weight`` of shape (O, D), the
  votes of output (n, o) being ``x[n, :] * weight[o, :]``. A convolution becomes that core after ``unfold``
  (N = batch * positions, D = C_in/groups * kh * kw, zero padding included), once per group.
* The full vote tensor (N, O, D) is never built: the core runs over chunks of (N, O) sized from a memory budget
  (:func:`set_memory_budget`), and a custom autograd function keeps only the inputs and the per-step ``z``
  (output-sized). Backward recomputes the votes chunk by chunk and applies the analytic gradient of the unrolled
  IRLS (the true gradient through every step, not a detached approximation, unless ``detach_weights=True``).
* Non-finite inputs: NaN or inf in ``x`` give non-finite values in the outputs that depend on them, as in the plain
  layer (an inf vote makes the robust estimate NaN rather than inf). The loop has a fixed length, so it never hangs.
"""

from __future__ import annotations

import math
import os
from numbers import Real
from typing import Union

import torch
import torch.nn.functional as F

__all__ = [
    "DEFAULT_K",
    "DEFAULT_EPS",
    "DEFAULT_LAM",
    "robust_sum",
    "robust_linear",
    "robust_conv2d",
    "set_memory_budget",
    "get_memory_budget",
]

DEFAULT_K = 3
DEFAULT_EPS = 1e-3
DEFAULT_LAM = 0.5

LamType = Union[float, torch.Tensor]

# Working memory (bytes) one chunk of the IRLS core may use; backward holds about this many vote-sized
# temporaries at once, so the number of vote elements per chunk is the budget divided by this factor.
_TEMPORARIES_PER_VOTE = 8
_memory_budget_bytes = int(float(os.environ.get("NRPM_MEMORY_MB", "256")) * 2**20)


def set_memory_budget(megabytes: float) -> None:
    """Set the working memory (MiB) that one chunk of the robust core may use (default 256, env NRPM_MEMORY_MB)."""
    if not megabytes > 0:
        raise ValueError(f"memory budget must be > 0 MiB, got {megabytes}")
    global _memory_budget_bytes
    _memory_budget_bytes = int(megabytes * 2**20)


def get_memory_budget() -> float:
    """The current working-memory budget of the robust core, in MiB."""
    return _memory_budget_bytes / 2**20


# ----------------------------------------------------------------------------------------------- validation
def _check_K(K) -> int:
    if isinstance(K, bool) or not isinstance(K, int):
        raise ValueError(f"K (number of IRLS steps) must be an int >= 0, got {K!r} of type {type(K).__name__}")
    if K < 0:
        raise ValueError(f"K (number of IRLS steps) must be >= 0, got {K}")
    return K


def _check_eps(eps) -> float:
    if isinstance(eps, bool) or not isinstance(eps, Real) or not math.isfinite(eps) or eps <= 0:
        raise ValueError(f"eps must be a finite number > 0, got {eps!r}")
    return float(eps)


def _check_lam(lam) -> LamType:
    if isinstance(lam, torch.Tensor):
        if lam.numel() != 1 or lam.dim() > 1:
            raise ValueError(f"lam must be a float or a 0-d tensor, got a tensor of shape {tuple(lam.shape)}")
        if not lam.is_floating_point():
            raise ValueError(f"lam tensor must be floating point, got dtype {lam.dtype}")
        return lam.reshape(())
    if isinstance(lam, bool) or not isinstance(lam, Real) or not (0.0 <= lam <= 1.0):
        raise ValueError(f"lam must be a number in [0, 1] (1 = original linear layer), got {lam!r}")
    return float(lam)


def _check_floating(x: torch.Tensor, what: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{what} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise ValueError(f"{what} must have a floating-point dtype, got {x.dtype}")


def _mix(lam: LamType, z_lpm: torch.Tensor, z_nrpm: torch.Tensor) -> torch.Tensor:
    if isinstance(lam, float) and lam == 0.0:
        return z_nrpm
    return lam * z_lpm + (1 - lam) * z_nrpm


# ------------------------------------------------------------------------------------- materialised votes
def robust_sum(
    votes: torch.Tensor,
    dim: int = -1,
    *,
    lam: LamType = DEFAULT_LAM,
    K: int = DEFAULT_K,
    eps: float = DEFAULT_EPS,
    detach_weights: bool = False,
) -> torch.Tensor:
    """Robust sum of already-materialised votes along ``dim`` (plain autograd).

    This is the building block for custom units whose votes are cheap to hold; Linear and Conv2d use the
    memory-bounded :func:`robust_linear` / :func:`robust_conv2d` instead.
    """
    K, eps, lam = _check_K(K), _check_eps(eps), _check_lam(lam)
    _check_floating(votes, "votes")
    D = votes.shape[dim]
    z_lpm = votes.sum(dim)
    z = z_lpm
    for _ in range(K):
        w = 1.0 / ((votes - z.unsqueeze(dim) / D).abs() + eps)
        if detach_weights:
            w = w.detach()
        z = D * (w * votes).sum(dim) / w.sum(dim)
    return _mix(lam, z_lpm, z)


# ------------------------------------------------------------------------------------ memory-bounded core
def _chunk_sizes(N: int, O: int, D: int, element_size: int) -> tuple[int, int]:
    """Rows of x and rows of weight per chunk so that a chunk's temporaries stay within the memory budget."""
    max_votes = max(1, _memory_budget_bytes // (element_size * _TEMPORARIES_PER_VOTE))
    o_chunk = max(1, min(O, max_votes // D))
    n_chunk = max(1, min(N, max_votes // (o_chunk * D)))
    return n_chunk, o_chunk


def _irls_steps(votes: torch.Tensor, z: torch.Tensor, K: int, eps: float) -> list[torch.Tensor]:
    """Run K IRLS steps on a chunk of votes (n, o, D) from z (n, o); return [z_0, ..., z_K]."""
    D = votes.shape[-1]
    zs = [z]
    for _ in range(K):
        w = torch.reciprocal((votes - (z / D).unsqueeze(-1)).abs_().add_(eps))
        z = D * (w * votes).sum(-1) / w.sum(-1)
        zs.append(z)
    return zs


def _irls_vote_grad(votes, zs, grad_out, K, eps, detach_weights):
    """dL/d(vote) for a chunk, given dL/dz_K. Analytic gradient of the unrolled IRLS.

    With r_d = y_d - z_{k-1}/D, w_d = 1/(|r_d| + eps), S = sum w_d and z_k = D sum(w_d y_d)/S:
        dz_k/dy_d     = (D/S) * (w_d - q_d),   q_d = sign(r_d) w_d^2 (y_d - z_k/D)
        dz_k/dz_{k-1} = (1/S) * sum_d q_d
    and z_0 = sum_d y_d passes its gradient to every vote unchanged.
    """
    D = votes.shape[-1]
    coeff = torch.zeros_like(votes)
    g = grad_out
    for k in range(K, 0, -1):
        r = votes - (zs[k - 1] / D).unsqueeze(-1)
        w = torch.reciprocal(r.abs().add_(eps))
        S = w.sum(-1)
        scale = (g * D / S).unsqueeze(-1)
        if detach_weights:
            # weights are constants: only the last step's weighted mean passes gradient, and to y only
            coeff.addcmul_(scale, w)
            return coeff
        q = torch.sign(r).mul_(w).mul_(w).mul_(votes - (zs[k] / D).unsqueeze(-1))
        coeff.addcmul_(scale, w - q)
        g = g * q.sum(-1) / S
    coeff.add_(g.unsqueeze(-1))
    return coeff


class _RobustCore(torch.autograd.Function):
    """z_K of the IRLS for votes x[n, d] * weight[o, d], chunked; saves only inputs and per-step z."""

    @staticmethod
    def forward(ctx, x, weight, K, eps, detach_weights):
        N, D = x.shape
        O = weight.shape[0]
        n_chunk, o_chunk = _chunk_sizes(N, O, D, x.element_size())
        z0_all = x @ weight.t()
        zs_all = x.new_empty((K + 1, N, O))
        zs_all[0] = z0_all
        for n0 in range(0, N, n_chunk):
            xc = x[n0:n0 + n_chunk]
            for o0 in range(0, O, o_chunk):
                wc = weight[o0:o0 + o_chunk]
                votes = xc.unsqueeze(1) * wc.unsqueeze(0)
                zs = _irls_steps(votes, z0_all[n0:n0 + n_chunk, o0:o0 + o_chunk], K, eps)
                for k in range(1, K + 1):
                    zs_all[k, n0:n0 + n_chunk, o0:o0 + o_chunk] = zs[k]
        ctx.save_for_backward(x, weight, zs_all)
        ctx.K, ctx.eps, ctx.detach_weights = K, eps, detach_weights
        ctx.chunks = (n_chunk, o_chunk)
        return zs_all[K].clone()

    @staticmethod
    def backward(ctx, grad_out):
        x, weight, zs_all = ctx.saved_tensors
        n_chunk, o_chunk = ctx.chunks
        need_x, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_x = torch.zeros_like(x) if need_x else None
        grad_w = torch.zeros_like(weight) if need_w else None
        N, O = x.shape[0], weight.shape[0]
        for n0 in range(0, N, n_chunk):
            xc = x[n0:n0 + n_chunk]
            for o0 in range(0, O, o_chunk):
                wc = weight[o0:o0 + o_chunk]
                votes = xc.unsqueeze(1) * wc.unsqueeze(0)
                zs = [z[n0:n0 + n_chunk, o0:o0 + o_chunk] for z in zs_all]
                coeff = _irls_vote_grad(votes, zs, grad_out[n0:n0 + n_chunk, o0:o0 + o_chunk],
                                        ctx.K, ctx.eps, ctx.detach_weights)
                # d vote[n,o,d] / d x[n,d] = weight[o,d];  d vote / d weight[o,d] = x[n,d]
                if need_x:
                    grad_x[n0:n0 + n_chunk] += (coeff * wc.unsqueeze(0)).sum(1)
                if need_w:
                    grad_w[o0:o0 + o_chunk] += (coeff * xc.unsqueeze(1)).sum(0)
        return grad_x, grad_w, None, None, None


def _robust_core(x2d, weight2d, K, eps, detach_weights):
    """z_NRPM for a 2-D problem, computed in float32 at least (half precision loses the small weights)."""
    dtype = x2d.dtype
    if dtype in (torch.float16, torch.bfloat16):
        x2d, weight2d = x2d.float(), weight2d.float()
    z = _RobustCore.apply(x2d.contiguous(), weight2d.contiguous(), K, eps, detach_weights)
    return z.to(dtype)


# ----------------------------------------------------------------------------------------------- linear
def robust_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    lam: LamType = DEFAULT_LAM,
    K: int = DEFAULT_K,
    eps: float = DEFAULT_EPS,
    detach_weights: bool = False,
) -> torch.Tensor:
    """NRPM counterpart of ``F.linear``: ``lam * x W^T + (1 - lam) * NRPM(x, W) + bias``.

    ``x`` has any shape ``(*, in_features)`` that ``F.linear`` accepts. ``lam`` is a float in [0, 1] or a 0-d
    tensor (e.g. a learnable ``sigmoid(logit)``); ``lam = 1`` is exactly ``F.linear`` and ``K = 0`` is LPM.
    """
    K, eps, lam = _check_K(K), _check_eps(eps), _check_lam(lam)
    _check_floating(x, "input")
    _check_floating(weight, "weight")
    if weight.dim() != 2:
        raise ValueError(f"weight must be 2-D (out_features, in_features), got shape {tuple(weight.shape)}")
    if x.dim() == 0 or x.shape[-1] != weight.shape[1]:
        raise ValueError(
            f"input of shape {tuple(x.shape)} does not match in_features={weight.shape[1]}: "
            f"expected (*, {weight.shape[1]})")
    if bias is not None and bias.shape != (weight.shape[0],):
        raise ValueError(f"bias must have shape ({weight.shape[0]},), got {tuple(bias.shape)}")
    z_lpm = F.linear(x, weight)
    if (isinstance(lam, float) and lam == 1.0) or K == 0:
        out = z_lpm
    else:
        x2d = x.reshape(-1, weight.shape[1])
        z_nrpm = _robust_core(x2d, weight, K, eps, detach_weights).reshape(z_lpm.shape)
        out = _mix(lam, z_lpm, z_nrpm)
    return out if bias is None else out + bias


# ----------------------------------------------------------------------------------------------- conv2d
def _pair(v, name):
    if isinstance(v, int) and not isinstance(v, bool):
        return (v, v)
    if isinstance(v, (tuple, list)) and len(v) == 2 and all(isinstance(i, int) for i in v):
        return tuple(v)
    raise ValueError(f"{name} must be an int or a pair of ints, got {v!r}")


def _same_padding(kernel, dilation, stride):
    if stride != (1, 1):
        raise ValueError("padding='same' is not supported for strided convolutions (as in F.conv2d)")
    # PyTorch puts the odd extra pixel of 'same' padding on the right/bottom side
    total = [d * (k - 1) for d, k in zip(dilation, kernel)]
    return (total[1] // 2, total[1] - total[1] // 2, total[0] // 2, total[0] - total[0] // 2)


def robust_conv2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride=1,
    padding=0,
    dilation=1,
    groups: int = 1,
    *,
    lam: LamType = DEFAULT_LAM,
    K: int = DEFAULT_K,
    eps: float = DEFAULT_EPS,
    detach_weights: bool = False,
) -> torch.Tensor:
    """NRPM counterpart of ``F.conv2d`` (zero padding; other padding modes pad first, as ``nn.Conv2d`` does).

    The votes of one output are the ``C_in/groups * kh * kw`` products of its receptive field, zero padding
    included. ``x`` is (B, C_in, H, W) or unbatched (C_in, H, W). The bias is added after the mix.
    """
    K, eps, lam = _check_K(K), _check_eps(eps), _check_lam(lam)
    _check_floating(x, "input")
    _check_floating(weight, "weight")
    if weight.dim() != 4:
        raise ValueError(f"weight must be 4-D (C_out, C_in/groups, kh, kw), got shape {tuple(weight.shape)}")
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1 or weight.shape[0] % groups:
        raise ValueError(f"groups must be a positive int dividing C_out={weight.shape[0]}, got {groups!r}")
    if x.dim() not in (3, 4):
        raise ValueError(f"input must be 4-D (B, C, H, W) or 3-D (C, H, W), got shape {tuple(x.shape)}")
    unbatched = x.dim() == 3
    if unbatched:
        x = x.unsqueeze(0)
    c_in = weight.shape[1] * groups
    if x.shape[1] != c_in:
        raise ValueError(f"input has {x.shape[1]} channels but the convolution expects {c_in} "
                         f"(input shape {tuple(x.shape)})")
    if bias is not None and bias.shape != (weight.shape[0],):
        raise ValueError(f"bias must have shape ({weight.shape[0]},), got {tuple(bias.shape)}")
    stride, dilation = _pair(stride, "stride"), _pair(dilation, "dilation")
    kernel = tuple(weight.shape[2:])
    if isinstance(padding, str):
        if padding == "valid":
            padding = (0, 0)
        elif padding == "same":
            x = F.pad(x, _same_padding(kernel, dilation, stride))
            padding = (0, 0)
        else:
            raise ValueError(f"padding must be an int, a pair, 'valid' or 'same', got {padding!r}")
    padding = _pair(padding, "padding")

    z_lpm = F.conv2d(x, weight, None, stride, padding, dilation, groups)
    if (isinstance(lam, float) and lam == 1.0) or K == 0:
        out = z_lpm
    else:
        out = _mix(lam, z_lpm, _robust_conv_nrpm(x, weight, z_lpm.shape, stride, padding, dilation, groups,
                                                 K, eps, detach_weights))
    if bias is not None:
        out = out + bias.view(1, -1, 1, 1)
    return out.squeeze(0) if unbatched else out


def _robust_conv_nrpm(x, weight, out_shape, stride, padding, dilation, groups, K, eps, detach_weights):
    B, c_out, h_out, w_out = out_shape
    cols = F.unfold(x, weight.shape[2:], dilation=dilation, padding=padding, stride=stride)  # (B, C*kh*kw, L)
    L = cols.shape[-1]
    d_group = cols.shape[1] // groups
    o_group = c_out // groups
    outs = []
    for g in range(groups):
        x2d = cols[:, g * d_group:(g + 1) * d_group].transpose(1, 2).reshape(B * L, d_group)
        w2d = weight[g * o_group:(g + 1) * o_group].reshape(o_group, d_group)
        outs.append(_robust_core(x2d, w2d, K, eps, detach_weights).reshape(B, L, o_group))
    z = outs[0] if groups == 1 else torch.cat(outs, dim=-1)
    return z.transpose(1, 2).reshape(B, c_out, h_out, w_out)
