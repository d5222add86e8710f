"""The audit's cells: a *cell* is one (model, attack, budget) run, its result a per-sample robustness mask.

:class:`CellRunner` runs cells and keeps their masks (for the checks and the worst case) and a resumable cache:
a JSON file written after every cell, keyed ``"{model tag}|{attack key}|{attack parameters}|{budget:.10g}"``,
next to a :func:`fingerprint` of the weights, data, lam and norm. A rerun with the same settings reuses the
finished cells; a cache of another model, or a damaged one, is refused (:func:`load_cache`) rather than mixed in.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from .. import attacks as A
from .. import reports
from ..attacks.base import logits_2d

__all__ = ["CACHE_FORMAT", "AttackSpec", "CellRunner", "load_cache", "fingerprint"]

CACHE_FORMAT = "nrpm-audit-cache/1"


@dataclass
class AttackSpec:
    """One attack of the audit: how to build it for a budget, and how it is named in the cache and the tables."""

    key: str                       # cache / JSON key ('pgd', 'square', ...)
    label: str                     # shown in tables and plots
    make: Callable[[float], A.Attack]
    params: str                    # in the cache key: a cell is reused only with equal parameters


def load_cache(path: Path, expected_fingerprint: dict, n: int) -> dict[str, dict]:
    """The finished cells ({cache key: {"mask": "0110...", "seconds": s}}) of the cache file at ``path``.

    Raises ValueError, naming the file, when it is not a cache of this audit (other model, data or lam) or is
    damaged, so a resume never silently mixes results.
    """
    try:
        previous = reports.read_json(path)
    except ValueError as error:  # json.JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise _damaged_cache(path, f"not JSON: {error}") from error
    if not isinstance(previous, dict):
        raise _damaged_cache(path, f"expected a JSON object, got {json.dumps(previous)[:40]}")
    if previous.get("format") != CACHE_FORMAT or previous.get("fingerprint") != expected_fingerprint:
        raise ValueError(f"{path} holds results for another model, data or lam; use another output folder or "
                         f"--overwrite")
    cells = previous.get("cells")
    if not isinstance(cells, dict):
        raise _damaged_cache(path, "no 'cells' object")
    for key, cell in cells.items():
        if not _is_cached_cell(cell, n):
            raise _damaged_cache(path, f"cell {key!r} needs a 'mask' of {n} '0'/'1' characters and 'seconds'")
    return cells


def _is_cached_cell(cell, n: int) -> bool:
    if not isinstance(cell, dict):
        return False
    mask, seconds = cell.get("mask"), cell.get("seconds")
    return (isinstance(mask, str) and len(mask) == n and set(mask) <= {"0", "1"}
            and isinstance(seconds, (int, float)) and not isinstance(seconds, bool))


def _damaged_cache(path, why: str) -> ValueError:
    return ValueError(f"{path} is not a usable nrpm audit cache ({why}); use another output folder or --overwrite")


class CellRunner:
    """Runs (model, attack, budget) cells, keeping per-sample results and a resumable cache."""

    def __init__(self, x, y, batch_size, cache_path, fingerprint_, progress, log):
        self.x, self.y, self.batch_size = x, y, batch_size
        self.masks: dict[tuple, torch.Tensor] = {}
        self.cells: list[dict] = []
        self.errors: list[str] = []
        self.log = log
        self.progress = progress
        self.cache_path = Path(cache_path) if cache_path is not None else None
        self.fingerprint = fingerprint_
        self.cache: dict[str, dict] = {}
        if self.cache_path is not None and self.cache_path.exists():
            self.cache = load_cache(self.cache_path, fingerprint_, len(x))
            if self.cache and log:
                log(f"resuming: {len(self.cache)} finished cells in {self.cache_path}")

    def _save(self):
        if self.cache_path is not None:
            reports.write_json(self.cache_path, {"format": CACHE_FORMAT, "fingerprint": self.fingerprint,
                                                 "cells": self.cache})

    def predict_mask(self, model) -> torch.Tensor:
        """Which samples ``model`` classifies correctly (clean)."""
        device = A.model_device(model, self.x.device)
        out = []
        with torch.no_grad():
            for i in range(0, len(self.x), self.batch_size):
                xb, yb = self.x[i:i + self.batch_size].to(device), self.y[i:i + self.batch_size].to(device)
                out.append((logits_2d(model, xb).argmax(1) == yb).cpu())
        return torch.cat(out) if out else torch.zeros(0, dtype=torch.bool)

    def run(self, tag: str, model: nn.Module, spec: AttackSpec, budget: float, candidates: torch.Tensor,
            extra: bool = False) -> torch.Tensor | None:
        """Per-sample robustness of ``model`` under ``spec`` at ``budget``, attacking only ``candidates``;
        from the cache when the cell ran before. None (and an error recorded) when the attack fails."""
        key = _cache_key(tag, spec, budget)
        start = time.perf_counter()
        if key in self.cache:
            entry = self.cache[key]
            mask = torch.tensor([c == "1" for c in entry["mask"]], dtype=torch.bool)
            seconds = entry["seconds"]
        else:
            try:
                mask = self.attack_candidates(model, spec, budget, candidates)
            except (RuntimeError, ValueError) as error:
                message = f"{spec.label} at budget {budget:g} on the {tag} model failed: {error}"
                self.errors.append(message)
                if self.log:
                    self.log(message)
                return None
            seconds = round(time.perf_counter() - start, 3)
            self.cache[key] = {"mask": "".join("1" if v else "0" for v in mask.tolist()), "seconds": seconds}
            self._save()
        self._record(tag, spec, budget, mask, seconds, extra)
        return mask

    def _record(self, tag, spec, budget, mask, seconds, extra) -> None:
        self.masks[(tag, spec.key, round(budget, 10))] = mask
        acc = int(mask.sum()) / len(mask) if len(mask) else 0.0
        self.cells.append({"model": tag, "attack": spec.key, "label": spec.label, "budget": budget,
                           "accuracy": acc, "correct": int(mask.sum()), "n": len(mask), "seconds": seconds,
                           **({"extra": True} if extra else {})})
        if self.progress is not None:
            self.progress.set_postfix_str(f"{tag} {spec.label} @ {budget:g}: {100 * acc:.1f}%")
            self.progress.update(1)

    def attack_candidates(self, model, spec: AttackSpec, budget: float, candidates: torch.Tensor) -> torch.Tensor:
        """Attack the ``candidates`` samples (the others stay False) and return which ones stay correct."""
        device = A.model_device(model, self.x.device)
        attack = spec.make(budget)
        result = torch.zeros(len(self.x), dtype=torch.bool)
        index = candidates.nonzero().squeeze(1)
        for i in range(0, len(index), self.batch_size):
            idx = index[i:i + self.batch_size]
            xb, yb = self.x[idx].to(device), self.y[idx].to(device)
            x_adv = attack(model, xb, yb, indices=idx)  # seeded per sample: masks do not depend on batching
            with torch.no_grad():
                result[idx] = (logits_2d(model, x_adv).argmax(1) == yb).cpu()
        return result


def _cache_key(tag: str, spec: AttackSpec, budget: float) -> str:
    """The cell's cache key. Attacks seeded per sample add '|rng=sample': their cells cached before that seeding
    hold other numbers and are recomputed, not reused (an attack that cannot be built fails later, in its run)."""
    key = f"{tag}|{spec.key}|{spec.params}|{budget:.10g}"
    try:
        seeded = spec.make(budget).seeded_per_sample
    except (RuntimeError, ValueError, TypeError):
        seeded = False
    return key + "|rng=sample" if seeded else key


# ----------------------------------------------------------------------------------------------- fingerprints
def _state_hash(model: nn.Module) -> str:
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def fingerprint(model, base, plain, x, y, lam_info, norm) -> dict:
    """What every cached cell depends on besides its attack: weights, data, lam and norm."""
    d = hashlib.sha256(x.detach().float().cpu().contiguous().numpy().tobytes())
    d.update(y.detach().cpu().contiguous().numpy().tobytes())
    return {"model": _state_hash(model), "data": d.hexdigest()[:16], "lam": lam_info, "norm": norm,
            "model_type": type(model).__name__, "base": type(base).__name__ if base is not None else None,
            "plain": None if plain is None or plain is base else _state_hash(plain)}
