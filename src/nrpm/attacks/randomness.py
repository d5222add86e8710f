"""Per-sample randomness for attacks: every random choice an attack makes for a sample comes from a generator
seeded by (the attack's seed, the sample's global index, a stream number), never from one generator per batch.

Why: with one generator per batch, sample i's random start depends on which batch it lands in and on how many
samples precede it there, so robust accuracy changed with ``--batch-size`` (and would change with how samples
are sharded over torchrun ranks). Seeding per sample makes an attack's result on a sample a function of the
sample, its index and the seed only.

Use it inside :meth:`~nrpm.attacks.base.Attack.perturb` through :meth:`~nrpm.attacks.base.Attack.sample_rng`
(which knows the global indices of the batch's rows), or directly::

    rng = SampleRNG.for_samples(seed, indices, device)
    noise = rng.rand(x.shape[1:], like=x)        # (N, *sample shape), row i from sample i's own generator
    subset = rng.take(still_open)                # the same generators, for a subset of the rows

A sample's generator is kept for the whole call, so consecutive draws (restarts, SPSA steps) continue its own
stream, and the draws of a sample depend only on how often *that* sample drew before.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

__all__ = ["sample_seed", "SampleRNG", "per_sample_noise"]

_SEED_MASK = (1 << 64) - 1


def sample_seed(seed: int, index: int, stream: int = 0) -> int:
    """A generator seed for sample ``index`` of an attack seeded with ``seed``: mixed by numpy's SeedSequence, so
    neighbouring seeds, indices and streams give unrelated random streams."""
    state = np.random.SeedSequence([int(seed) & _SEED_MASK, int(index), int(stream)]).generate_state(1, np.uint64)[0]
    return int(state) >> 1  # 63 bits: what torch.Generator.manual_seed surely takes


def _index_list(indices) -> list[int]:
    if isinstance(indices, torch.Tensor):
        return [int(i) for i in indices.detach().cpu().reshape(-1).tolist()]
    return [int(i) for i in indices]


class SampleRNG:
    """One ``torch.Generator`` per sample (row); every draw returns a batch whose row ``i`` comes from row
    ``i``'s generator, so it does not depend on the other rows."""

    def __init__(self, generators: Sequence[torch.Generator], device: torch.device):
        self.generators = list(generators)
        self.device = torch.device(device)

    @classmethod
    def for_samples(cls, seed: int, indices, device, stream: int = 0) -> "SampleRNG":
        """Generators for the samples with global ``indices`` (a sequence or 1-D tensor of ints)."""
        generators = [torch.Generator(device=device).manual_seed(sample_seed(seed, i, stream))
                      for i in _index_list(indices)]
        return cls(generators, device)

    def __len__(self) -> int:
        return len(self.generators)

    def take(self, rows) -> "SampleRNG":
        """The generators of ``rows`` (indices into this RNG, or a boolean mask), shared, not copied."""
        if isinstance(rows, torch.Tensor) and rows.dtype == torch.bool:
            rows = rows.nonzero().squeeze(1)
        return SampleRNG([self.generators[i] for i in _index_list(rows)], self.device)

    def _stack(self, draw, shape, like: torch.Tensor | None) -> torch.Tensor:
        rows = [draw(tuple(shape), g) for g in self.generators]
        if not rows:
            dtype = like.dtype if like is not None else torch.float32
            return torch.zeros((0, *shape), device=self.device, dtype=dtype)
        return torch.stack(rows)

    def rand(self, shape, like: torch.Tensor) -> torch.Tensor:
        """Uniform [0, 1) noise of per-sample ``shape``, dtype and device of ``like``."""
        return self._stack(lambda s, g: torch.rand(s, generator=g, device=self.device, dtype=like.dtype), shape, like)

    def randn(self, shape, like: torch.Tensor) -> torch.Tensor:
        """Standard normal noise of per-sample ``shape``."""
        return self._stack(lambda s, g: torch.randn(s, generator=g, device=self.device, dtype=like.dtype), shape, like)

    def signs(self, shape, like: torch.Tensor) -> torch.Tensor:
        """Uniformly random +-1 entries of per-sample ``shape``."""
        bits = self._stack(lambda s, g: torch.randint(0, 2, s, generator=g, device=self.device), shape, None)
        return (2 * bits - 1).to(like.dtype)

    def randint(self, high: int, shape) -> torch.Tensor:
        """Integers uniform in [0, high) of per-sample ``shape`` (int64)."""
        return self._stack(lambda s, g: torch.randint(0, high, s, generator=g, device=self.device), shape, None)

    def poisson(self, rates: torch.Tensor) -> torch.Tensor:
        """Poisson draws with the given rates (N, ...), row i from sample i's generator."""
        if len(rates) != len(self):
            raise ValueError(f"{len(rates)} rows of rates for {len(self)} samples")
        rows = [torch.poisson(r, generator=g) for r, g in zip(rates, self.generators)]
        return torch.stack(rows) if rows else rates.clone()


def per_sample_noise(shape, seeds: Sequence[int], like: torch.Tensor, kind: str = "uniform") -> torch.Tensor:
    """One-shot per-sample noise: row ``i`` of the (len(seeds), *shape) result is drawn from a generator seeded
    with ``seeds[i]`` (e.g. ``sample_seed(attack_seed, global_index)``). ``kind``: 'uniform', 'normal', 'signs'."""
    rng = SampleRNG([torch.Generator(device=like.device).manual_seed(int(s)) for s in seeds], like.device)
    draws = {"uniform": rng.rand, "normal": rng.randn, "signs": rng.signs}
    if kind not in draws:
        raise ValueError(f"kind must be one of {', '.join(draws)}, got {kind!r}")
    return draws[kind](shape, like)
