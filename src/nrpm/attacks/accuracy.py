"""Clean and robust accuracy over a dataset, in batches, on the model's device."""
from __future__ import annotations

import torch

from .. import distributed as dist
from ..validation import check_batch, check_count
from .base import Attack, eval_frozen, logits_2d

__all__ = ["clean_accuracy", "robust_accuracy", "sharded_correct_count", "model_device"]


def model_device(model, fallback: torch.device) -> torch.device:
    """The device of the model's first parameter (or buffer), else ``fallback``."""
    if isinstance(model, torch.nn.Module):
        for tensor in model.parameters():
            return tensor.device
        for tensor in model.buffers():
            return tensor.device
    return fallback


def _batches(x, y, batch_size: int, device):
    """(first row, x batch, y batch) on ``device``."""
    batch_size = check_count(batch_size, "batch_size", 1)
    for start in range(0, len(x), batch_size):
        yield start, x[start:start + batch_size].to(device), y[start:start + batch_size].to(device)


@torch.no_grad()
def _predict(model, x: torch.Tensor) -> torch.Tensor:
    return logits_2d(model, x).argmax(dim=1)


def _count_correct(model, x, y, batch_size: int, correct_in_batch) -> float:
    """Sum of ``correct_in_batch(first_row, x_batch, y_batch)`` over batches on the model's device, as a fraction
    of x."""
    check_batch(x, y)
    if len(x) == 0:
        raise ValueError("cannot compute an accuracy on an empty batch")
    correct = 0
    with eval_frozen(model):
        for start, x_batch, y_batch in _batches(x, y, batch_size, model_device(model, x.device)):
            correct += correct_in_batch(start, x_batch, y_batch)
    return correct / len(x)


def clean_accuracy(model, x: torch.Tensor, y: torch.Tensor, batch_size: int = 256) -> float:
    """Fraction of ``x`` the model classifies correctly (eval mode, no grad)."""
    return _count_correct(model, x, y, batch_size, lambda _, xb, yb: (_predict(model, xb) == yb).sum().item())


def robust_accuracy(model, attack: Attack, x: torch.Tensor, y: torch.Tensor,
                    batch_size: int = 256, first_index: int = 0) -> float:
    """Fraction of ``x`` classified correctly both clean and under ``attack``.

    Misclassified clean samples count as errors and are not attacked (they could not become robust), which also
    saves time. Row ``i`` of ``x`` is attacked as sample ``first_index + i`` (its random choices are seeded by
    that index), so the result does not depend on ``batch_size``; pass a shard's offset as ``first_index``.
    """
    def robust_in_batch(start, x_batch, y_batch) -> int:
        correct = _predict(model, x_batch) == y_batch
        if not correct.any():
            return 0
        indices = first_index + start + correct.nonzero().squeeze(1).cpu()
        x_adv = attack(model, x_batch[correct], y_batch[correct], indices=indices)
        return (_predict(model, x_adv) == y_batch[correct]).sum().item()

    return _count_correct(model, x, y, batch_size, robust_in_batch)


def sharded_correct_count(model, attack: Attack | None, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> int:
    """How many samples of (x, y) ``model`` gets right, clean (``attack`` None) or under ``attack``, measured over
    torchrun's ranks: the batches one process would form are dealt round the ranks and the counts summed, so the
    total is one process's on any number of ranks (per-sample seeds see their global index, and pyautoattack's
    per-batch seeding sees the same batches). Every rank must call it (it is a collective)."""
    correct = 0
    for first, stop in dist.batch_shards(len(x), batch_size):
        xs, ys = x[first:stop], y[first:stop]
        accuracy = clean_accuracy(model, xs, ys, batch_size=batch_size) if attack is None else \
            robust_accuracy(model, attack, xs, ys, batch_size=batch_size, first_index=first)
        correct += int(round(accuracy * (stop - first)))
    return dist.all_reduce_sum(correct)
