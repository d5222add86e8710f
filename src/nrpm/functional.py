"""Functional NRPM: robust (median-like) pattern matching for Linear and Conv2d units.

A unit computes ``z = sum_d a_d x_d``. Each product ``y_d = a_d x_d`` is a *vote* for ``z / D``; the linear
unit (LPM) takes their mean. NRPM replaces it by K unrolled IRLS steps of a robust location estimate, starting
from the LPM value::

    z <- sum_d y_d
    repeat K times:  w_d = 1 / (|y_d - z/D| + eps);   z <- D * sum_d w_d y_d / sum_d w_d

and the layer returns ``lam * z_LPM + (1 - lam) * z_NRPM + bias``.

Implementation notes (why it looks like this):

* Every op reduces to one core: blocks of 16 outputs that share their weights (16 rows of a linear layer's input,
  16 images of a batch at one output position, or 16 output positions of one image), each output's votes being
  its receptive field times the weights (zero padding included). Linear layers put rows in the blocks;
  convolutions run directly on the zero-padded image with the batch in the blocks (receptive fields are strided
  views: no unfold) when the batch is large and the compiled kernels run, and on ``unfold``'s columns otherwise.
  The layout and why it is fast are described in :mod:`nrpm._kernels`. The core starts from z_LPM, the plain
  layer's output, so z_0 costs nothing extra and its share of the gradient goes through the plain layer's backward.
* The vote tensor is never built for the whole layer: a custom autograd function keeps only its inputs and
  output-sized per-step statistics (z_k, sum w, and the sum that gives dz_k/dz_{k-1}); its backward applies the
  analytic gradient of the unrolled IRLS (the true gradient through every step, not a detached approximation,
  unless ``detach_weights=True``) and recomputes the votes. The kernels run compiled (``torch.compile``: fused
  C++/OpenMP on CPU, Triton on CUDA; votes built inside the fused reductions, never stored) for large problems,
  and as eager PyTorch over chunks sized from a memory budget (:func:`set_memory_budget`) for small ones, when
  compilation is unavailable or fails, or when forced (:func:`set_backend`, env ``NRPM_BACKEND=auto|compiled|
  eager``). Both run the same kernel functions; results agree to float rounding.
* Estimators (``norm``): the official code's weightings of the same IRLS, each ``w = clamp(alpha/(|r| + eps) +
  beta, lo, hi)`` so one kernel serves all: "l1" ``1/(|r| + eps)`` (the paper's, the default), "mcp"
  ``max(1/(|r| + eps) - 1/gamma, eps)``, "huber" ``min(delta/(|r| + eps), 1)``, "hm" ``clamp(delta/(gamma - delta)
  (gamma/(|r| + eps) - 1), eps, 1)`` (official defaults gamma = 4, delta = 3; its LeNet script 2 and 1). Every
  estimator is mixed with lam the same way (the official code mixes only L1; lam = 0 is its pure estimator). In
  the clamped regions a weight's derivative is zero, and the analytic backward is exact through every step.
  ``scale="absolute"`` takes gamma and delta in vote units, as the official code does; but votes are small
  (``|a_d x_d|`` ~ 1e-2 on MNIST), so there MCP with gamma = 4 behaves like L1 and Huber like the plain layer.
  ``scale="relative"`` takes them in units of each output's mean absolute residual at the LPM start (plus eps),
  computed in one extra fused pass. Why that scale: a median absolute residual would need a selection over the D
  votes of every output, which a fused reduction cannot do without materialising the votes; the mean absolute
  residual costs one reduction, and one vote moves it by at most |r_d| / D. The scale is held constant in the
  backward pass (no gradient flows through it), so the relative forms' gradient is the estimator's at a fixed
  scale; gradcheck therefore covers the absolute forms, and the tests check the relative ones against autograd
  with a detached scale.
* Non-finite inputs: NaN or inf in ``x`` give non-finite values in the outputs that depend on them, as in the plain
  layer (an inf vote makes the robust estimate NaN rather than inf). The loop has a fixed length, so it never hangs.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from . import _kernels
from ._kernels import get_backend, set_backend
from ._weightings import Estimator
from .validation import (DEFAULT_DELTA, DEFAULT_GAMMA, DEFAULT_NORM, DEFAULT_SCALE, ESTIMATORS, SCALES, LamType,
                         check_eps, check_estimator, check_floating, check_K, check_lam)

__all__ = [
    "DEFAULT_K",
    "DEFAULT_EPS",
    "DEFAULT_LAM",
    "ESTIMATORS",
    "SCALES",
    "robust_sum",
    "robust_linear",
    "robust_conv2d",
    "set_memory_budget",
    "get_memory_budget",
    "set_backend",
    "get_backend",
]

DEFAULT_K = 3
DEFAULT_EPS = 1e-3
DEFAULT_LAM = 0.5

# Working memory (bytes) one chunk of the eager IRLS kernels may use (they materialise a chunk's votes); the
# compiled kernels never materialise votes and need no chunks.
_memory_budget_bytes = int(float(os.environ.get("NRPM_MEMORY_MB", "256")) * 2**20)


def set_memory_budget(megabytes: float) -> None:
    """Set the working memory (MiB) one chunk of the eager robust core may use (default 256, env NRPM_MEMORY_MB)."""
    if not megabytes > 0:
        raise ValueError(f"memory budget must be > 0 MiB, got {megabytes}")
    global _memory_budget_bytes
    _memory_budget_bytes = int(megabytes * 2**20)


def get_memory_budget() -> float:
    """The current working-memory budget of the robust core, in MiB."""
    return _memory_budget_bytes / 2**20


def _mix(lam: LamType, z_lpm: torch.Tensor, z_nrpm: torch.Tensor) -> torch.Tensor:
    """lam * z_lpm + (1 - lam) * z_nrpm in one pass (lerp), reading z_nrpm in whatever layout it comes in."""
    if isinstance(lam, float) and lam == 0.0:
        return z_nrpm.contiguous()
    if isinstance(lam, torch.Tensor):
        lam = lam.to(z_lpm.dtype)
    return torch.lerp(z_lpm, z_nrpm, 1 - lam)


# ------------------------------------------------------------------------------------- materialised votes
def robust_sum(
    votes: torch.Tensor,
    dim: int = -1,
    *,
    lam: LamType = DEFAULT_LAM, K: int = DEFAULT_K, eps: float = DEFAULT_EPS, detach_weights: bool = False,
    norm: str = DEFAULT_NORM, gamma: float = DEFAULT_GAMMA, delta: float = DEFAULT_DELTA, scale: str = DEFAULT_SCALE,
) -> torch.Tensor:
    """Robust sum of already-materialised votes along ``dim`` (plain autograd).

    This is the building block for custom units whose votes are cheap to hold; Linear and Conv2d use the
    memory-bounded :func:`robust_linear` / :func:`robust_conv2d` instead. ``norm``, ``gamma``, ``delta``,
    ``scale``: the estimator (see :data:`ESTIMATORS`).
    """
    K, eps, lam = check_K(K), check_eps(eps), check_lam(lam)
    est = _estimator(norm, gamma, delta, scale)
    check_floating(votes, "votes")
    D = votes.shape[dim]
    z_lpm = votes.sum(dim)
    z = z_lpm
    params = None
    if est is not None:
        spread = (votes - z_lpm.unsqueeze(dim) / D).abs().mean(dim, keepdim=True).detach() + eps
        params = _kernels.estimator_params(est, spread, eps)
    for _ in range(K):
        w = _kernels.weights((votes - z.unsqueeze(dim) / D).abs(), eps, params, False)[0]
        if detach_weights:
            w = w.detach()
        z = D * (w * votes).sum(dim) / w.sum(dim)
    return _mix(lam, z_lpm, z)


# ------------------------------------------------------------------------------------ memory-bounded core
class _RobustCore(torch.autograd.Function):
    """z_K of the IRLS in the layout of :mod:`nrpm._kernels`; saves its inputs and per-step statistics only.

    ``z0`` (the plain layer's output, z_LPM) is an input rather than recomputed: the gradient that the unrolled
    IRLS passes to z_0 is returned to it, so the plain layer's own backward (BLAS / mkldnn) carries that share.
    """

    @staticmethod
    def forward(ctx, x, weight, z0, geom, K, eps, detach_weights, est, crop):
        zs, ss, qs, scale = _kernels.run_forward(x, weight, z0, geom, K, eps, True, not detach_weights,
                                                 _memory_budget_bytes, est)
        ctx.save_for_backward(x, weight, z0, *scale, *zs, *ss, *qs)
        ctx.geom, ctx.K, ctx.eps, ctx.detach_weights, ctx.est, ctx.crop = geom, K, eps, detach_weights, est, crop
        ctx.n_scale = len(scale)
        return zs[-1]

    @staticmethod
    def backward(ctx, grad_out):
        K, detach = ctx.K, ctx.detach_weights
        x, weight, z0, *rest = ctx.saved_tensors
        scale, rest = rest[:ctx.n_scale], rest[ctx.n_scale:]
        zs, ss, qs = [z0] + rest[:K], rest[K:2 * K], rest[2 * K:]
        stats, grad_z0 = _kernels.step_statistics(zs, ss, qs, scale, grad_out, weight[0, 0].numel(), detach)
        need_x, need_w, need_z0 = ctx.needs_input_grad[:3]
        grad_x = grad_w = None
        if need_x or need_w:
            grad_x, grad_w = _kernels.run_backward(x, weight, stats, ctx.geom, ctx.eps, detach, need_x, need_w,
                                                   _memory_budget_bytes, ctx.est, ctx.crop)
        grad_z0 = grad_z0 if need_z0 else None
        return grad_x, grad_w, grad_z0, None, None, None, None, None, None


def _run_core(x, weight, z0, geom, K, eps, detach_weights, est, crop=(0, 0)):
    """z_NRPM in the kernels' layout: x (N, G, Cg, Hp, Wp, LANES), weight (G, Og, Cg, kh, kw), z0 = z_LPM.

    ``crop = (ch, cw)``: x's outer ch rows and cw columns on each side are zero padding that the caller made and
    whose gradient it discards; the backward does not compute it (returns 0 there)."""
    try:
        return _core_once(x, weight, z0, geom, K, eps, detach_weights, est, crop)
    except _kernels.CompileFailed:  # the compiled kernels are now disabled (with a warning): this reruns eagerly
        return _core_once(x, weight, z0, geom, K, eps, detach_weights, est, crop)


def _core_once(x, weight, z0, geom, K, eps, detach_weights, est, crop):
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad or z0.requires_grad):
        return _RobustCore.apply(x, weight, z0, geom, K, eps, detach_weights, est, crop)
    # inference: no per-step statistics to keep
    return _kernels.run_forward(x, weight, z0, geom, K, eps, False, False, _memory_budget_bytes, est)[0][-1]


def _is_half(t: torch.Tensor) -> bool:
    return t.dtype in (torch.float16, torch.bfloat16)


def _float32_at_least(*tensors):
    # half precision loses the small IRLS weights: compute in float32
    return [t.float() if _is_half(t) else t for t in tensors]


def _lanes_last(t: torch.Tensor) -> torch.Tensor:
    """(N, C) -> (N / LANES, C, LANES), rows zero-padded to a multiple of LANES."""
    pad = -t.shape[0] % _kernels.LANES
    if pad:
        t = F.pad(t, (0, 0, 0, pad))
    return t.view(-1, _kernels.LANES, t.shape[1]).transpose(1, 2).contiguous()


def _linear_nrpm(x2d, weight, z_lpm2d, K, eps, detach_weights, est):
    """Rows in the lanes: a 1x1 "convolution" on a 1x1 plane, (N/16, 1, D, 1, 1, 16) against (1, O, D, 1, 1)."""
    (N, D), O = x2d.shape, weight.shape[0]
    if _is_half(z_lpm2d):  # the IRLS starts from z_LPM: take it in float32, not rounded to half precision
        x2d, weight = _float32_at_least(x2d, weight)
        z_lpm2d = F.linear(x2d, weight)
    xb = _lanes_last(x2d).view(-1, 1, D, 1, 1, _kernels.LANES)
    z0b = _lanes_last(z_lpm2d).view(-1, 1, 1, 1, O, _kernels.LANES)
    z = _run_core(xb, weight.view(1, O, D, 1, 1), z0b, _kernels.ONE_BY_ONE, K, eps, detach_weights, est)
    return z.view(-1, O, _kernels.LANES).transpose(1, 2).reshape(-1, O)[:N]


# ----------------------------------------------------------------------------------------------- linear
def _estimator(norm, gamma, delta, scale) -> Estimator | None:
    """The estimator validated, as the kernels take it (None: L1)."""
    key = check_estimator(norm, gamma, delta, scale)
    return None if key is None else Estimator(*key)


def _check_irls(K, eps, lam, norm, gamma, delta, scale):
    """(K, eps, lam, estimator) validated, as the kernels take them."""
    return check_K(K), check_eps(eps), check_lam(lam), _estimator(norm, gamma, delta, scale)


def _check_operands(x, weight, weight_dims: int, weight_layout: str) -> None:
    check_floating(x, "input")
    check_floating(weight, "weight")
    if weight.dim() != weight_dims:
        raise ValueError(f"weight must be {weight_dims}-D {weight_layout}, got shape {tuple(weight.shape)}")


def robust_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    lam: LamType = DEFAULT_LAM, K: int = DEFAULT_K, eps: float = DEFAULT_EPS, detach_weights: bool = False,
    norm: str = DEFAULT_NORM, gamma: float = DEFAULT_GAMMA, delta: float = DEFAULT_DELTA, scale: str = DEFAULT_SCALE,
) -> torch.Tensor:
    """NRPM counterpart of ``F.linear``: ``lam * x W^T + (1 - lam) * NRPM(x, W) + bias``.

    ``x`` has any shape ``(*, in_features)`` that ``F.linear`` accepts. ``lam`` is a float in [0, 1] or a 0-d
    tensor (e.g. a learnable ``sigmoid(logit)``); ``lam = 1`` is exactly ``F.linear`` and ``K = 0`` is LPM.
    ``norm`` / ``gamma`` / ``delta`` / ``scale``: the robust estimator (:data:`ESTIMATORS`; default L1).
    """
    K, eps, lam, est = _check_irls(K, eps, lam, norm, gamma, delta, scale)
    _check_operands(x, weight, 2, "(out_features, in_features)")
    if x.dim() == 0 or x.shape[-1] != weight.shape[1]:
        raise ValueError(
            f"input of shape {tuple(x.shape)} does not match in_features={weight.shape[1]}: "
            f"expected (*, {weight.shape[1]})")
    if bias is not None and bias.shape != (weight.shape[0],):
        raise ValueError(f"bias must have shape ({weight.shape[0]},), got {tuple(bias.shape)}")
    z_lpm = F.linear(x, weight)
    if (isinstance(lam, float) and lam == 1.0) or K == 0 or z_lpm.numel() == 0:  # empty batch: empty output
        out = z_lpm
    else:
        z_nrpm = _linear_nrpm(x.reshape(-1, weight.shape[1]), weight, z_lpm.reshape(-1, weight.shape[0]), K, eps,
                              detach_weights, est)
        out = _mix(lam, z_lpm, z_nrpm.to(z_lpm.dtype).reshape(z_lpm.shape))
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
    lam: LamType = DEFAULT_LAM, K: int = DEFAULT_K, eps: float = DEFAULT_EPS, detach_weights: bool = False,
    norm: str = DEFAULT_NORM, gamma: float = DEFAULT_GAMMA, delta: float = DEFAULT_DELTA, scale: str = DEFAULT_SCALE,
) -> torch.Tensor:
    """NRPM counterpart of ``F.conv2d`` (zero padding; other padding modes pad first, as ``nn.Conv2d`` does).

    The votes of one output are the ``C_in/groups * kh * kw`` products of its receptive field, zero padding
    included. ``x`` is (B, C_in, H, W) or unbatched (C_in, H, W). The bias is added after the mix.
    ``norm`` / ``gamma`` / ``delta`` / ``scale``: the robust estimator (:data:`ESTIMATORS`; default L1).
    """
    K, eps, lam, est = _check_irls(K, eps, lam, norm, gamma, delta, scale)
    _check_operands(x, weight, 4, "(C_out, C_in/groups, kh, kw)")
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
    if (isinstance(lam, float) and lam == 1.0) or K == 0 or z_lpm.numel() == 0:  # empty batch: empty output
        out = z_lpm
    else:
        out = _robust_conv_mixed(x, weight, z_lpm, lam, stride, padding, dilation, groups, K, eps, detach_weights, est)
    if bias is not None:
        out = out + bias.view(1, -1, 1, 1)
    return out.squeeze(0) if unbatched else out


def _robust_conv_mixed(x, weight, z_lpm, lam, stride, padding, dilation, groups, K, eps, detach_weights, est):
    """lam * z_LPM + (1 - lam) * z_NRPM of a convolution (no bias)."""
    dtype = z_lpm.dtype
    z_lpm32 = z_lpm
    if _is_half(z_lpm):  # the IRLS starts from z_LPM: take it in float32, not rounded to half precision
        x, weight = _float32_at_least(x, weight)
        z_lpm32 = F.conv2d(x, weight, None, stride, padding, dilation, groups)
    B = x.shape[0]
    vote_steps = z_lpm.numel() * weight[0].numel() * K
    # Directly on the image, batch in the lanes, when the compiled kernels run (the eager ones would materialise
    # whole images' votes per chunk), padding the batch to a multiple of 16 wastes little, and the stride is 1 or
    # no input gradient is needed (the gathered input gradient needs stride 1); otherwise on unfold's columns.
    needs_grad = torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)
    if ((stride == (1, 1) or not needs_grad) and (B % _kernels.LANES == 0 or B >= 4 * _kernels.LANES)
            and _kernels.will_compile(x.device, vote_steps)):
        return _conv_direct(x, weight, z_lpm, z_lpm32, lam, stride, padding, dilation, groups, K, eps,
                            detach_weights, est)
    z = _conv_unfolded(x, weight, z_lpm32, stride, padding, dilation, groups, K, eps, detach_weights, est)
    return _mix(lam, z_lpm, z.to(dtype))


def _image_to_lanes(x, groups, ph, pw):
    """(B, C, H, W) -> zero-padded (ceil(B/16), G, Cg, H + 2ph, W + 2pw, 16): one fill and one strided copy."""
    B, C, H, W = x.shape
    L = _kernels.LANES
    xb = x.new_zeros(-(-B // L), groups, C // groups, H + 2 * ph, W + 2 * pw, L)
    inner = xb.permute(0, 5, 1, 2, 3, 4)[..., ph:ph + H, pw:pw + W]  # (Bb, 16, G, Cg, H, W) view into xb
    full = B // L
    if full:
        inner[:full].copy_(x[:full * L].view(full, L, groups, C // groups, H, W))
    if B % L:
        inner[full, :B % L].copy_(x[full * L:].view(B % L, groups, C // groups, H, W))
    return xb


def _conv_direct(x, weight, z_lpm, z_lpm32, lam, stride, padding, dilation, groups, K, eps, detach_weights, est):
    """Batch in the lanes: the zero-padded image (B/16, G, Cg, Hp, Wp, 16); receptive fields are strided views."""
    B, (O, Cg, kh, kw), (Ho, Wo) = x.shape[0], weight.shape, z_lpm.shape[2:]
    L, Og = _kernels.LANES, O // groups
    pad_b = -B % L
    xb = _image_to_lanes(x, groups, *padding)
    if pad_b:
        z_lpm, z_lpm32 = (F.pad(t, (0, 0, 0, 0, 0, 0, 0, pad_b)) for t in (z_lpm, z_lpm32))
    # contiguous: handed a strided view instead, Inductor reorders the kernels' loops around it (35x slower)
    z0b = z_lpm32.view(-1, L, groups, Og, Ho, Wo).permute(0, 4, 5, 2, 3, 1).contiguous()
    geom = (kh, kw, *stride, *dilation)
    # the padding's gradient is dropped by _image_to_lanes' backward: the core need not compute it
    z = _run_core(xb, weight.view(groups, Og, Cg, kh, kw), z0b, geom, K, eps, detach_weights, est, padding)
    # mixed in the (B/16, 16, G, Og, Ho, Wo) view of NCHW: the lerp is the only pass over z's layout
    out = _mix(lam, z_lpm.view(-1, L, groups, Og, Ho, Wo), z.permute(0, 5, 3, 4, 1, 2).to(z_lpm.dtype))
    return out.view(-1, O, Ho, Wo)[:B]


def _conv_unfolded(x, weight, z_lpm, stride, padding, dilation, groups, K, eps, detach_weights, est):
    """Output positions in the lanes: unfold's columns (B, G*Dg, L) viewed as (B, G, Dg, L/16, 1, 16)."""
    B, O, Ho, Wo = z_lpm.shape
    L, Og = Ho * Wo, O // groups
    pad = -L % _kernels.LANES
    cols = F.unfold(x, weight.shape[2:], dilation=dilation, padding=padding, stride=stride)
    cols = F.pad(cols, (0, pad)) if pad else cols
    xb = cols.view(B, groups, -1, (L + pad) // _kernels.LANES, 1, _kernels.LANES)
    z0 = z_lpm.reshape(B, groups, Og, L)
    z0 = F.pad(z0, (0, pad)) if pad else z0
    z0b = z0.view(B, groups, Og, -1, 1, _kernels.LANES).permute(0, 3, 4, 1, 2, 5).contiguous()
    z = _run_core(xb, weight.reshape(groups, Og, -1, 1, 1), z0b, _kernels.ONE_BY_ONE, K, eps, detach_weights, est)
    return z.permute(0, 3, 4, 1, 2, 5).reshape(B, O, -1)[..., :L].reshape(B, O, Ho, Wo)
