"""The paper's straightforward NRPM formulation, kept as the benchmark's baseline (not used by the library).

It materialises every vote ``x_d * a_d`` of the whole layer (for a convolution via ``unfold``, as a
(B, O, D, L) tensor), runs the K IRLS steps as elementwise passes over it, and lets autograd differentiate through
all of it, so autograd keeps several vote-sized tensors per step alive until backward.

``naive_forward(model)`` switches every robust layer of a reprogrammed model to this formulation (and back);
``naive_memory_estimate`` predicts what that costs before anyone tries it.
"""

from __future__ import annotations

import contextlib
import types

import torch
import torch.nn.functional as F
from torch import nn

from nrpm.nn import RobustConv2d, RobustLinear, RobustMixin

# Bytes autograd keeps per vote (float32) and step: the votes once, then per step |r| and w (saved by abs and
# reciprocal) and w * y (saved for the product's backward); plus about three vote-sized temporaries in flight.
# Calibrated against measured peaks of mlp3 / LeNet (see benchmarks/README.md).
_SAVED_PER_VOTE_STEP = 3
_TEMPORARIES = 3


def naive_irls(votes: torch.Tensor, dim: int, lam, K: int, eps: float, detach: bool = False) -> torch.Tensor:
    """lam * sum(votes) + (1 - lam) * IRLS(votes), along ``dim``, by plain elementwise ops and autograd."""
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
    votes = x.unsqueeze(-2) * weight  # (*, O, D)
    out = naive_irls(votes, -1, lam, K, eps, detach)
    return out if bias is None else out + bias


def naive_conv2d(x, weight, bias, stride, padding, dilation, groups, lam, K, eps, detach=False):
    B = x.shape[0]
    O = weight.shape[0]
    cols = F.unfold(x, weight.shape[2:], dilation=dilation, padding=padding, stride=stride)  # (B, C*kh*kw, L)
    L = cols.shape[-1]
    cols = cols.view(B, groups, 1, -1, L)
    w = weight.reshape(groups, O // groups, -1, 1)
    votes = cols * w  # (B, G, O/G, D, L): every vote of the layer
    out = naive_irls(votes, 3, lam, K, eps, detach).reshape(B, O, L)
    h_out = (x.shape[2] + 2 * padding[0] - dilation[0] * (weight.shape[2] - 1) - 1) // stride[0] + 1
    out = out.view(B, O, h_out, -1)
    return out if bias is None else out + bias.view(1, -1, 1, 1)


def _naive_linear_forward(self: RobustLinear, x):
    return naive_linear(x, self.weight, self.bias, self._lam_for_forward(), self.K, self.eps, self.detach_weights)


def _naive_conv_forward(self: RobustConv2d, x):
    if self.padding_mode != "zeros" or isinstance(self.padding, str) or x.dim() != 4:
        raise NotImplementedError("the naive baseline covers batched, zero-padded convolutions only")
    return naive_conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups,
                        self._lam_for_forward(), self.K, self.eps, self.detach_weights)


@contextlib.contextmanager
def naive_forward(model: nn.Module):
    """Within the block, every robust layer of ``model`` computes with the naive formulation."""
    layers = [m for m in model.modules() if isinstance(m, RobustMixin)]
    if not layers:
        raise ValueError("model has no robust layers: reprogram it first")
    for m in layers:
        impl = _naive_linear_forward if isinstance(m, RobustLinear) else _naive_conv_forward
        m.forward = types.MethodType(impl, m)  # an instance attribute shadows the class's forward
    try:
        yield model
    finally:
        for m in layers:
            del m.forward


def vote_counts(model: nn.Module, example: torch.Tensor) -> list[int]:
    """Number of votes (outputs x fan-in) of each robust layer for one forward pass on ``example``."""
    counts = []

    def hook(module, inputs, output):
        fan_in = module.weight[0].numel()
        counts.append(output.numel() * fan_in)

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, RobustMixin)]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in handles:
            h.remove()
    return counts


def naive_memory_estimate(counts: list[int], K: int, backward: bool, element_size: int = 4) -> int:
    """Bytes the naive formulation needs at peak: saved vote-sized tensors of every layer (with backward), plus
    the temporaries of the largest layer."""
    largest = max(counts)
    if not backward:
        return largest * element_size * (_TEMPORARIES + 1)
    saved = sum(counts) * element_size * (1 + _SAVED_PER_VOTE_STEP * K)
    return saved + largest * element_size * _TEMPORARIES
