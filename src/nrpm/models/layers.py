"""Small building blocks shared by the models."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

__all__ = ["Normalize"]


class Normalize(nn.Module):
    """Per-channel ``(x - mean) / std`` as a layer, so models take raw [0, 1] inputs.

    mean/std are non-persistent buffers: they follow ``.to(device)`` but stay out of the
    state_dict, so checkpoints trained without this layer still load unchanged.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(-1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(-1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        return f"mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()}"
