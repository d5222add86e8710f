"""The naive NRPM reference: the paper's straightforward formulation, written from the formulas alone.

It materialises every vote ``y_d = a_d x_d`` of a layer (for a convolution via ``unfold``), runs the K IRLS
steps as plain elementwise ops and lets autograd differentiate through all of it. It is slow and holds several
vote-sized tensors per step, so the library never uses it; the tests check the fast kernels against it and
the benchmarks use it as the baseline (one copy, so both compare against the same thing).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["naive_weights", "naive_irls", "naive_linear", "naive_conv2d"]


def naive_weights(d: torch.Tensor, eps: float, norm: str = "l1", gamma=4.0, delta=3.0) -> torch.Tensor:
    """The IRLS weight of a vote at distance ``d = |y - z/D|`` from the estimate, written from the formulas
    (``gamma`` / ``delta`` may be tensors broadcasting against ``d``)."""
    if norm == "l1":
        return 1.0 / (d + eps)
    if norm == "mcp":
        return torch.maximum(1.0 / (d + eps) - 1.0 / gamma, torch.full_like(d, eps))
    if norm == "huber":
        return torch.minimum(delta / (d + eps), torch.ones_like(d))
    if norm == "hm":
        return (delta / (gamma - delta) * (gamma / (d + eps) - 1)).clamp(eps, 1.0)
    raise ValueError(f"unknown estimator {norm!r}")


def naive_irls(votes: torch.Tensor, lam, K: int, eps: float, detach: bool = False, dim: int = -1, *,
               norm: str = "l1", gamma=4.0, delta=3.0, scale: str = "absolute") -> torch.Tensor:
    """``lam * sum(votes) + (1 - lam) * IRLS_K(votes)`` along ``dim``: z_0 = sum, then K times
    ``w = weight(|y - z/D|)``, ``z = D * sum(w y) / sum(w)`` (``detach``: w treated as a constant).
    ``scale="relative"``: gamma and delta are multiples of the mean absolute residual at z_0 plus eps (held
    constant: no gradient flows through it)."""
    D = votes.shape[dim]
    z_lpm = votes.sum(dim, keepdim=True)
    z = z_lpm
    if scale == "relative":
        spread = ((votes - z_lpm / D).abs().mean(dim, keepdim=True) + eps).detach()
        gamma, delta = gamma * spread, delta * spread
    for _ in range(K):
        w = naive_weights((votes - z / D).abs(), eps, norm, gamma, delta)
        if detach:
            w = w.detach()
        z = D * (w * votes).sum(dim, keepdim=True) / w.sum(dim, keepdim=True)
    return (lam * z_lpm + (1 - lam) * z).squeeze(dim)


def naive_linear(x, weight, bias, lam, K, eps, detach=False, **estimator):
    """NRPM of ``F.linear(x, weight, bias)`` with the votes ``x_d * W_od`` held as a (*, O, D) tensor;
    ``estimator``: norm, gamma, delta, scale as in :func:`naive_irls`."""
    votes = x.unsqueeze(-2) * weight
    out = naive_irls(votes, lam, K, eps, detach, **estimator)
    return out if bias is None else out + bias


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def naive_conv2d(x, weight, bias, stride, padding, dilation, groups, lam, K, eps, detach=False, **estimator):
    """NRPM of ``F.conv2d`` (zero padding, batched input) with every vote of the layer as a (B, G, Og, D, L)
    tensor, D = C_in/groups * kh * kw, L the output positions."""
    stride, padding, dilation = _pair(stride), _pair(padding), _pair(dilation)
    B, O = x.shape[0], weight.shape[0]
    cols = F.unfold(x, weight.shape[2:], dilation=dilation, padding=padding, stride=stride)  # (B, C*kh*kw, L)
    L = cols.shape[-1]
    votes = cols.view(B, groups, 1, -1, L) * weight.reshape(groups, O // groups, -1, 1)
    out = naive_irls(votes, lam, K, eps, detach, dim=3, **estimator).reshape(B, O, L)
    h_out = (x.shape[2] + 2 * padding[0] - dilation[0] * (weight.shape[2] - 1) - 1) // stride[0] + 1
    out = out.view(B, O, h_out, -1)
    return out if bias is None else out + bias.view(1, -1, 1, 1)
