"""Batching helpers and CIFAR augmentation on in-memory tensors (plain torch, no torchvision)."""

from __future__ import annotations

from typing import Iterator

import torch
import torch.nn.functional as F

__all__ = ["subset", "batches", "random_crop_flip"]


def subset(x: torch.Tensor, y: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` samples (the paper evaluates on the first 1000 test images).

    Returns views of ``x`` and ``y``; raises ValueError if ``n`` exceeds the dataset size.
    """
    if len(x) != len(y):
        raise ValueError(f"x has {len(x)} samples but y has {len(y)}")
    if n < 0 or n > len(x):
        raise ValueError(f"cannot take {n} samples from a dataset of {len(x)}: pass n_samples={len(x)} or fewer")
    return x[:n], y[:n]


def batches(
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int,
    shuffle: bool = False,
    generator: torch.Generator | None = None,
    drop_last: bool = False,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(x_batch, y_batch)`` pairs, in order or shuffled with ``generator``."""
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if len(x) != len(y):
        raise ValueError(f"x has {len(x)} samples but y has {len(y)}")
    n = len(x)
    order = torch.randperm(n, generator=generator) if shuffle else None
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        if order is None:
            yield x[start : start + batch_size], y[start : start + batch_size]
        else:
            idx = order[start : start + batch_size].to(x.device)
            yield x[idx], y[idx.to(y.device)]


def random_crop_flip(
    x: torch.Tensor, padding: int = 4, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Standard CIFAR augmentation on a batch: random crop after zero padding + random h-flip.

    Each image gets its own offsets and flip. Done as a single gather (no Python loop) and
    deterministic for a given ``generator`` (whose device is used for the random draws).
    """
    if x.dim() != 4:
        raise ValueError(f"expected a batch (N, C, H, W), got shape {tuple(x.shape)}")
    n, c, h, w = x.shape
    rng_device = generator.device if generator is not None else torch.device("cpu")
    top = torch.randint(0, 2 * padding + 1, (n,), generator=generator, device=rng_device)
    left = torch.randint(0, 2 * padding + 1, (n,), generator=generator, device=rng_device)
    flip = torch.rand(n, generator=generator, device=rng_device) < 0.5
    top, left, flip = top.to(x.device), left.to(x.device), flip.to(x.device)

    padded = F.pad(x, (padding, padding, padding, padding))
    rows = top[:, None] + torch.arange(h, device=x.device)  # (N, H)
    cols_fwd = torch.arange(w, device=x.device)
    # A flipped crop reads the same window right to left.
    cols = left[:, None] + torch.where(flip[:, None], cols_fwd.flip(0), cols_fwd)  # (N, W)
    batch_idx = torch.arange(n, device=x.device)[:, None, None, None]
    chan_idx = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[batch_idx, chan_idx, rows[:, None, :, None], cols[:, None, None, :]]
