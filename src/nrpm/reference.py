"""The naive NRPM reference: the paper's straightforward formulation, written from the formulas alone.

It materialises every vote ``y_d = a_d x_d`` of a layer (for a convolution via ``unfold``), runs the K IRLS
steps as plain elementwise ops and lets autograd differentiate through all of it. It is slow and holds several
vote-sized tensors per step, so the library never uses it; the tests check the fast kernels against it and
the benchmarks use it as the baseline (one copy, so both compare against the same thing).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["naive_irls", "naive_linear", "naive_conv2d"]


def naive_irls(votes: torch.Tensor, lam, K: int, eps: float, detach: bool = False, dim: int = -1) -> torch.Tensor:
    """``lam * sum(votes) + (1 - lam) * IRLS_K(votes)`` along ``dim``: z_0 = sum, then K times
    ``w = 1 / (|y - z/D| + eps)``, ``z = D * sum(w y) / sum(w)`` (``detach``: w treated as a constant)."""
    D = votes.shape[dim]
    z_lpm = votes.sum(dim, keepdim=True)
    z = z_lpm
    for _ in range(K):
        w = 1.0 / ((votes - z / D).abs() + eps)
        if detach:
            w = w.detach()
        z = D * (w * votes).sum(dim, keepdim=True) / w.sum(dim, keepdim=True)
    return (lam * z_lpm + (1 - lam) * z).squeeze(dim)


def naive_linear(x, weight, bias, lam, K, eps, detach=False):
    """NRPM of ``F.linear(x, weight, bias)`` with the votes ``x_d * W_od`` held as a (*, O, D) tensor."""
    votes = x.unsqueeze(-2) * weight
    out = naive_irls(votes, lam, K, eps, detach)
    return out if bias is None else out + bias


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def naive_conv2d(x, weight, bias, stride, padding, dilation, groups, lam, K, eps, detach=False):
    """NRPM of ``F.conv2d`` (zero padding, batched input) with every vote of the layer as a (B, G, Og, D, L)
    tensor, D = C_in/groups * kh * kw, L the output positions."""
    stride, padding, dilation = _pair(stride), _pair(padding), _pair(dilation)
    B, O = x.shape[0], weight.shape[0]
    cols = F.unfold(x, weight.shape[2:], dilation=dilation, padding=padding, stride=stride)  # (B, C*kh*kw, L)
    L = cols.shape[-1]
    votes = cols.view(B, groups, 1, -1, L) * weight.reshape(groups, O // groups, -1, 1)
    out = naive_irls(votes, lam, K, eps, detach, dim=3).reshape(B, O, L)
    h_out = (x.shape[2] + 2 * padding[0] - dilation[0] * (weight.shape[2] - 1) - 1) // stride[0] + 1
    out = out.view(B, O, h_out, -1)
    return out if bias is None else out + bias.view(1, -1, 1, 1)
