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
  eager``); inside :func:`sustained_work` (attacks, audits, training) every size compiles. Both run the same kernel functions; results agree to float rounding.
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

from typing import NamedTuple

import torch
import torch.nn.functional as F

from . import _kernels
from ._backend import (STATE, CompileFailed, get_backend, get_memory_budget, set_backend, set_memory_budget,
                       sustained_work)
from ._weightings import Estimator
from .validation import (DEFAULT_DELTA, DEFAULT_GAMMA, DEFAULT_NORM, DEFAULT_SCALE, ESTIMATORS, SCALES, LamType,
                         check_eps, check_estimator, check_floating, check_K, check_lam)

__all__ = [
    "DEFAULT_K",
    "DEFAULT_EPS",
    "DEFAULT_LAM",
    "IRLSSettings",
    "Estimator",
    "ESTIMATORS",
    "SCALES",
    "robust_sum",
    "robust_linear",
    "robust_conv2d",
    "set_memory_budget",
    "get_memory_budget",
    "set_backend",
    "get_backend",
    "sustained_work",
]

DEFAULT_K = 3
DEFAULT_EPS = 1e-3
DEFAULT_LAM = 0.5


def _estimator(norm, gamma, delta, scale) -> Estimator | None:
    """The estimator validated, as the kernels take it (None: L1)."""
    key = check_estimator(norm, gamma, delta, scale)
    return None if key is None else Estimator(*key)


class IRLSSettings(NamedTuple):
    """The settings of one robust IRLS run as one hashable value: ``K`` steps, ``eps``, ``detach_weights`` (the
    IRLS weights constant in the backward) and the ``estimator`` (None: L1, the paper's; else an
    :class:`Estimator`). :meth:`create` builds it, validated, from the keyword arguments of :func:`robust_linear`;
    the functions and layers that take those arguments also take ``settings=`` instead."""

    K: int = DEFAULT_K
    eps: float = DEFAULT_EPS
    detach_weights: bool = False
    estimator: Estimator | None = None

    @classmethod
    def create(cls, K: int = DEFAULT_K, eps: float = DEFAULT_EPS, detach_weights: bool = False,
               norm: str = DEFAULT_NORM, gamma: float = DEFAULT_GAMMA, delta: float = DEFAULT_DELTA,
               scale: str = DEFAULT_SCALE) -> IRLSSettings:
        return cls(check_K(K), check_eps(eps), bool(detach_weights), _estimator(norm, gamma, delta, scale))

    def checked(self) -> IRLSSettings:
        """These settings validated (a value built field by field is checked like one from :meth:`create`)."""
        options = {} if self.estimator is None else self.estimator.options()
        return IRLSSettings.create(self.K, self.eps, self.detach_weights, **options)

    def options(self) -> dict:
        """The keyword arguments that :meth:`create` these settings."""
        options = {} if self.estimator is None else self.estimator.options()
        return {"K": self.K, "eps": self.eps, "detach_weights": self.detach_weights, **options}


# the IRLS keyword arguments that settings= replaces, with their defaults
_OPTION_DEFAULTS = {"K": DEFAULT_K, "eps": DEFAULT_EPS, "detach_weights": False, "norm": DEFAULT_NORM,
                    "gamma": DEFAULT_GAMMA, "delta": DEFAULT_DELTA, "scale": DEFAULT_SCALE}


def resolve_settings(settings: IRLSSettings | None, **options) -> IRLSSettings:
    """``settings`` validated, or settings created from the IRLS keyword ``options`` (K, eps, detach_weights, norm,
    gamma, delta, scale) when it is None. Both at once is an error unless the options are at their defaults."""
    if settings is None:
        return IRLSSettings.create(**options)
    if not isinstance(settings, IRLSSettings):
        raise ValueError(f"settings must be an nrpm.functional.IRLSSettings, got {type(settings).__name__}")
    changed = sorted(name for name, value in options.items() if value != _OPTION_DEFAULTS[name])
    if changed:
        raise ValueError(f"pass either settings= or the IRLS options, not both (got settings and {changed})")
    return settings.checked()


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
    settings: IRLSSettings | None = None,
) -> torch.Tensor:
    """Robust sum of already-materialised votes along ``dim`` (plain autograd).

    This is the building block for custom units whose votes are cheap to hold; Linear and Conv2d use the
    memory-bounded :func:`robust_linear` / :func:`robust_conv2d` instead. ``norm``, ``gamma``, ``delta``,
    ``scale``: the estimator (see :data:`ESTIMATORS`). ``settings``: an :class:`IRLSSettings` instead of K, eps,
    detach_weights and the estimator.
    """
    settings = resolve_settings(settings, K=K, eps=eps, detach_weights=detach_weights, norm=norm, gamma=gamma,
                                delta=delta, scale=scale)
    K, eps, est, lam = settings.K, settings.eps, settings.estimator, check_lam(lam)
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
        if settings.detach_weights:
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
    def forward(ctx, x, weight, z0, geom, settings, crop):
        zs, ss, qs, scale = _kernels.run_forward(x, weight, z0, geom, settings, with_stats=True)
        ctx.save_for_backward(x, weight, z0, *scale, *zs, *ss, *qs)
        ctx.geom, ctx.settings, ctx.crop = geom, settings, crop
        ctx.n_scale = len(scale)
        return zs[-1]

    @staticmethod
    def backward(ctx, grad_out):
        K, detach = ctx.settings.K, ctx.settings.detach_weights
        x, weight, z0, *rest = ctx.saved_tensors
        scale, rest = rest[:ctx.n_scale], rest[ctx.n_scale:]
        zs, ss, qs = [z0] + rest[:K], rest[K:2 * K], rest[2 * K:]
        stats, grad_z0 = _kernels.step_statistics(zs, ss, qs, scale, grad_out, weight[0, 0].numel(), detach)
        need_x, need_w, need_z0 = ctx.needs_input_grad[:3]
        grad_x = grad_w = None
        if need_x or need_w:
            grad_x, grad_w = _kernels.run_backward(x, weight, stats, ctx.geom, ctx.settings, need_x, need_w,
                                                   ctx.crop)
        grad_z0 = grad_z0 if need_z0 else None
        return grad_x, grad_w, grad_z0, None, None, None


def _run_core(x, weight, z0, geom, settings, crop=(0, 0)):
    """z_NRPM in the kernels' layout: x (N, G, Cg, Hp, Wp, LANES), weight (G, Og, Cg, kh, kw), z0 = z_LPM.

    ``crop = (ch, cw)``: x's outer ch rows and cw columns on each side are zero padding that the caller made and
    whose gradient it discards; the backward does not compute it (returns 0 there)."""
    try:
        return _core_once(x, weight, z0, geom, settings, crop)
    except CompileFailed:  # the compiled kernels are now disabled (with a warning): this reruns eagerly
        return _core_once(x, weight, z0, geom, settings, crop)


def _core_once(x, weight, z0, geom, settings, crop):
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad or z0.requires_grad):
        return _RobustCore.apply(x, weight, z0, geom, settings, crop)
    # inference: no per-step statistics to keep
    return _kernels.run_forward(x, weight, z0, geom, settings)[0][-1]


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


def _linear_nrpm(x2d, weight, z_lpm2d, settings):
    """Rows in the lanes: a 1x1 "convolution" on a 1x1 plane, (N/16, 1, D, 1, 1, 16) against (1, O, D, 1, 1)."""
    (N, D), O = x2d.shape, weight.shape[0]
    if _is_half(z_lpm2d):  # the IRLS starts from z_LPM: take it in float32, not rounded to half precision
        x2d, weight = _float32_at_least(x2d, weight)
        z_lpm2d = F.linear(x2d, weight)
    xb = _lanes_last(x2d).view(-1, 1, D, 1, 1, _kernels.LANES)
    z0b = _lanes_last(z_lpm2d).view(-1, 1, 1, 1, O, _kernels.LANES)
    z = _run_core(xb, weight.view(1, O, D, 1, 1), z0b, _kernels.ONE_BY_ONE, settings)
    return z.view(-1, O, _kernels.LANES).transpose(1, 2).reshape(-1, O)[:N]


# ----------------------------------------------------------------------------------------------- linear
def _is_plain(lam, settings: IRLSSettings, z_lpm: torch.Tensor) -> bool:
    """The output is z_LPM itself: lam == 1 (a float), no IRLS step, or an empty batch (an empty output)."""
    return (isinstance(lam, float) and lam == 1.0) or settings.K == 0 or z_lpm.numel() == 0


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
    settings: IRLSSettings | None = None,
) -> torch.Tensor:
    """NRPM counterpart of ``F.linear``: ``lam * x W^T + (1 - lam) * NRPM(x, W) + bias``.

    ``x`` has any shape ``(*, in_features)`` that ``F.linear`` accepts. ``lam`` is a float in [0, 1] or a 0-d
    tensor (e.g. a learnable ``sigmoid(logit)``); ``lam = 1`` is exactly ``F.linear`` and ``K = 0`` is LPM.
    ``norm`` / ``gamma`` / ``delta`` / ``scale``: the robust estimator (:data:`ESTIMATORS`; default L1).
    ``settings``: an :class:`IRLSSettings` in place of K, eps, detach_weights and the estimator.
    """
    settings = resolve_settings(settings, K=K, eps=eps, detach_weights=detach_weights, norm=norm, gamma=gamma,
                                delta=delta, scale=scale)
    lam = check_lam(lam)
    _check_operands(x, weight, 2, "(out_features, in_features)")
    if x.dim() == 0 or x.shape[-1] != weight.shape[1]:
        raise ValueError(
            f"input of shape {tuple(x.shape)} does not match in_features={weight.shape[1]}: "
            f"expected (*, {weight.shape[1]})")
    if bias is not None and bias.shape != (weight.shape[0],):
        raise ValueError(f"bias must have shape ({weight.shape[0]},), got {tuple(bias.shape)}")
    z_lpm = F.linear(x, weight)
    if _is_plain(lam, settings, z_lpm):
        out = z_lpm
    else:
        z_nrpm = _linear_nrpm(x.reshape(-1, weight.shape[1]), weight, z_lpm.reshape(-1, weight.shape[0]), settings)
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


class _Conv(NamedTuple):
    """A convolution's arguments after the weight, in F.conv2d's order (stride, padding, dilation as pairs)."""

    stride: tuple
    padding: tuple
    dilation: tuple
    groups: int


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
    settings: IRLSSettings | None = None,
) -> torch.Tensor:
    """NRPM counterpart of ``F.conv2d`` (zero padding; other padding modes pad first, as ``nn.Conv2d`` does).

    The votes of one output are the ``C_in/groups * kh * kw`` products of its receptive field, zero padding
    included. ``x`` is (B, C_in, H, W) or unbatched (C_in, H, W). The bias is added after the mix.
    ``norm`` / ``gamma`` / ``delta`` / ``scale``: the robust estimator (:data:`ESTIMATORS`; default L1).
    ``settings``: an :class:`IRLSSettings` in place of K, eps, detach_weights and the estimator.
    """
    settings = resolve_settings(settings, K=K, eps=eps, detach_weights=detach_weights, norm=norm, gamma=gamma,
                                delta=delta, scale=scale)
    lam = check_lam(lam)
    _check_operands(x, weight, 4, "(C_out, C_in/groups, kh, kw)")
    unbatched = x.dim() == 3
    x, conv = _conv_arguments(x, weight, bias, _Conv(stride, padding, dilation, groups))
    z_lpm = F.conv2d(x, weight, None, *conv)
    out = z_lpm if _is_plain(lam, settings, z_lpm) else _robust_conv_mixed(x, weight, z_lpm, lam, conv, settings)
    if bias is not None:
        out = out + bias.view(1, -1, 1, 1)
    return out.squeeze(0) if unbatched else out


def _conv_arguments(x, weight, bias, conv: _Conv):
    """(x batched and 'same'-padded, the convolution's arguments as pairs), validated as F.conv2d would."""
    groups = conv.groups
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1 or weight.shape[0] % groups:
        raise ValueError(f"groups must be a positive int dividing C_out={weight.shape[0]}, got {groups!r}")
    if x.dim() not in (3, 4):
        raise ValueError(f"input must be 4-D (B, C, H, W) or 3-D (C, H, W), got shape {tuple(x.shape)}")
    if x.dim() == 3:
        x = x.unsqueeze(0)
    c_in = weight.shape[1] * groups
    if x.shape[1] != c_in:
        raise ValueError(f"input has {x.shape[1]} channels but the convolution expects {c_in} "
                         f"(input shape {tuple(x.shape)})")
    if bias is not None and bias.shape != (weight.shape[0],):
        raise ValueError(f"bias must have shape ({weight.shape[0]},), got {tuple(bias.shape)}")
    stride, dilation, padding = _pair(conv.stride, "stride"), _pair(conv.dilation, "dilation"), conv.padding
    if isinstance(padding, str):
        if padding == "valid":
            padding = (0, 0)
        elif padding == "same":
            x = F.pad(x, _same_padding(tuple(weight.shape[2:]), dilation, stride))
            padding = (0, 0)
        else:
            raise ValueError(f"padding must be an int, a pair, 'valid' or 'same', got {padding!r}")
    return x, _Conv(stride, _pair(padding, "padding"), dilation, groups)


def _robust_conv_mixed(x, weight, z_lpm, lam, conv: _Conv, settings: IRLSSettings):
    """lam * z_LPM + (1 - lam) * z_NRPM of a convolution (no bias)."""
    dtype = z_lpm.dtype
    z_lpm32 = z_lpm
    if _is_half(z_lpm):  # the IRLS starts from z_LPM: take it in float32, not rounded to half precision
        x, weight = _float32_at_least(x, weight)
        z_lpm32 = F.conv2d(x, weight, None, *conv)
    B = x.shape[0]
    vote_steps = z_lpm.numel() * weight[0].numel() * settings.K
    # Directly on the image, batch in the lanes, when the compiled kernels run (the eager ones would materialise
    # whole images' votes per chunk), padding the batch to a multiple of 16 wastes little, and the stride is 1 or
    # no input gradient is needed (the gathered input gradient needs stride 1); otherwise on unfold's columns.
    needs_grad = torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)
    if ((conv.stride == (1, 1) or not needs_grad) and (B % _kernels.LANES == 0 or B >= 4 * _kernels.LANES)
            and STATE.will_compile(x.device, vote_steps)):
        return _conv_direct(x, weight, (z_lpm, z_lpm32), lam, conv, settings)
    z = _conv_unfolded(x, weight, z_lpm32, conv, settings)
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


def _conv_direct(x, weight, z_lpms, lam, conv: _Conv, settings: IRLSSettings):
    """Batch in the lanes: the zero-padded image (B/16, G, Cg, Hp, Wp, 16); receptive fields are strided views.
    ``z_lpms``: z_LPM in the output's dtype (for the mix) and in at least float32 (the IRLS start)."""
    (z_lpm, z_lpm32), groups = z_lpms, conv.groups
    B, (O, Cg, kh, kw), (Ho, Wo) = x.shape[0], weight.shape, z_lpm.shape[2:]
    L, Og = _kernels.LANES, O // groups
    pad_b = -B % L
    xb = _image_to_lanes(x, groups, *conv.padding)
    if pad_b:
        z_lpm, z_lpm32 = (F.pad(t, (0, 0, 0, 0, 0, 0, 0, pad_b)) for t in (z_lpm, z_lpm32))
    # contiguous: handed a strided view instead, Inductor reorders the kernels' loops around it (35x slower)
    z0b = z_lpm32.view(-1, L, groups, Og, Ho, Wo).permute(0, 4, 5, 2, 3, 1).contiguous()
    geom = (kh, kw, *conv.stride, *conv.dilation)
    # the padding's gradient is dropped by _image_to_lanes' backward: the core need not compute it
    z = _run_core(xb, weight.view(groups, Og, Cg, kh, kw), z0b, geom, settings, conv.padding)
    # mixed in the (B/16, 16, G, Og, Ho, Wo) view of NCHW: the lerp is the only pass over z's layout
    out = _mix(lam, z_lpm.view(-1, L, groups, Og, Ho, Wo), z.permute(0, 5, 3, 4, 1, 2).to(z_lpm.dtype))
    return out.view(-1, O, Ho, Wo)[:B]


def _conv_unfolded(x, weight, z_lpm, conv: _Conv, settings: IRLSSettings):
    """Output positions in the lanes: unfold's columns (B, G*Dg, L) viewed as (B, G, Dg, L/16, 1, 16)."""
    B, O, Ho, Wo = z_lpm.shape
    groups = conv.groups
    L, Og = Ho * Wo, O // groups
    pad = -L % _kernels.LANES
    cols = F.unfold(x, weight.shape[2:], dilation=conv.dilation, padding=conv.padding, stride=conv.stride)
    cols = F.pad(cols, (0, pad)) if pad else cols
    xb = cols.view(B, groups, -1, (L + pad) // _kernels.LANES, 1, _kernels.LANES)
    z0 = z_lpm.reshape(B, groups, Og, L)
    z0 = F.pad(z0, (0, pad)) if pad else z0
    z0b = z0.view(B, groups, Og, -1, 1, _kernels.LANES).permute(0, 3, 4, 1, 2, 5).contiguous()
    z = _run_core(xb, weight.reshape(groups, Og, -1, 1, 1), z0b, _kernels.ONE_BY_ONE, settings)
    return z.permute(0, 3, 4, 1, 2, 5).reshape(B, O, -1)[..., :L].reshape(B, O, Ho, Wo)

from .attention import robust_attention  # noqa: E402,F401  (robust attention lives in nrpm.attention)
