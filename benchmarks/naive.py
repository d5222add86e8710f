"""The paper's straightforward NRPM formulation (:mod:`nrpm.reference`, which the tests check against too) as
the benchmark's baseline.

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
from torch import nn

from nrpm.nn import RobustConv2d, RobustLinear, RobustMixin
from nrpm.reference import naive_conv2d, naive_linear

# Bytes autograd keeps per vote (float32) and step: the votes once, then per step |r| and w (saved by abs and
# reciprocal) and w * y (saved for the product's backward); plus about three vote-sized temporaries in flight.
# Calibrated against measured peaks of mlp3 / LeNet (see benchmarks/README.md).
_SAVED_PER_VOTE_STEP = 3
_TEMPORARIES = 3


def _naive_linear_forward(self: RobustLinear, x):
    return naive_linear(x, self.weight, self.bias, self.lam_value() if not self.learnable_lam else self.get_lam(), self.K, self.eps,
                        self.detach_weights)


def _naive_conv_forward(self: RobustConv2d, x):
    if self.padding_mode != "zeros" or isinstance(self.padding, str) or x.dim() != 4:
        raise NotImplementedError("the naive baseline covers batched, zero-padded convolutions only")
    return naive_conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups,
                        self.lam_value() if not self.learnable_lam else self.get_lam(), self.K, self.eps,
                        self.detach_weights)


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
