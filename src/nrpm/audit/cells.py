"""The audit's cells: a *cell* is one (model, attack, budget) run, its result a per-sample robustness mask.

:class:`CellRunner` runs cells and keeps their masks (for the checks and the worst case) in the audit's results
file, ``cache.json`` (a :class:`~nrpm.runs.ResultsFile`, written after every cell and every batch): ``{"format":
CACHE_FORMAT, "fingerprint": ..., "cells": {key: {"mask": "0110...", "seconds": s}}, "partial": {key: {"candidates":
"0110...", "results": "01--...", "seconds": s}}}``, each cell keyed
``"{model tag}|{attack key}|{attack parameters}|{budget:.10g}"``, next to a :func:`fingerprint` of the weights,
data, lam and norm (the run's identity). A rerun with the same settings reuses the finished cells and goes on with
an interrupted cell at its first unfinished batch (``partial``: '-' marks a sample not attacked yet); a cache of
another model, or a damaged one, is refused (:func:`cached_cells`) rather than mixed in.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from typing import Callable, Mapping, NamedTuple

import torch
from torch import nn

from .. import attacks as A
from .. import distributed as dist
from ..attacks.base import logits_2d
from ..runs import START_AGAIN, ResultsFile, RunContext

__all__ = ["CACHE_FORMAT", "CACHE_FILE", "AttackSpec", "CellKey", "CellRunner", "cache_file", "cached_cells",
           "cached_masks", "fingerprint", "parse_cache_key", "worst_case_masks"]

CACHE_FORMAT = "nrpm-audit-cache/1"
CACHE_FILE = "cache.json"
SURVIVORS_OF = "on=survivors-of-"  # the key part naming the attack whose survivors a cell attacked


@dataclass
class AttackSpec:
    """One attack of the audit: how to build it for a budget, and how it is named in the cache and the tables."""

    key: str                       # cache / JSON key ('pgd', 'square', ...)
    label: str                     # shown in tables and plots
    make: Callable[[float], A.Attack]
    params: str                    # in the cache key: a cell is reused only with equal parameters


def cache_file(ctx: RunContext, identity: dict) -> ResultsFile:
    """The audit's results file in ``ctx.out`` (field names and format tag of every earlier version's cache)."""
    return ResultsFile(ctx, CACHE_FILE, fmt=CACHE_FORMAT, identity=identity, what="an nrpm audit cache",
                       identity_field="fingerprint", settings_hint="model, data, lam and norm")


def cached_cells(results: ResultsFile, n: int) -> dict[str, dict]:
    """The finished cells ({cache key: {"mask": "0110...", "seconds": s}}) of an earlier run (none: {}).

    Raises ValueError (:class:`~nrpm.runs.RunRefused`), naming the file, when it is not a cache of this audit
    (other model, data or lam) or is damaged, so a resume never silently mixes results.
    """
    return _cached(results, n)[0]


def _cached(results: ResultsFile, n: int) -> tuple[dict[str, dict], dict[str, dict]]:
    """The finished cells and the interrupted cells' finished batches of an earlier run, both checked."""
    previous = results.previous()
    if previous is None:
        return {}, {}
    cells, partial = previous.get("cells"), previous.get("partial", {})
    if not isinstance(cells, dict):
        raise _damaged_cache(results.path, "no 'cells' object")
    for key, cell in cells.items():
        if not _is_cached_cell(cell, n):
            raise _damaged_cache(results.path, f"cell {key!r} needs a 'mask' of {n} '0'/'1' characters and 'seconds'")
    if not isinstance(partial, dict) or not all(_is_partial_cell(cell, n) for cell in partial.values()):
        raise _damaged_cache(results.path, f"'partial' needs, per cell, 'candidates' ({n} '0'/'1'), 'results' "
                                           f"({n} '0'/'1'/'-') and 'seconds'")
    return cells, partial


def _is_cached_cell(cell, n: int) -> bool:
    if not isinstance(cell, dict):
        return False
    mask, seconds = cell.get("mask"), cell.get("seconds")
    return (isinstance(mask, str) and len(mask) == n and set(mask) <= {"0", "1"}
            and isinstance(seconds, (int, float)) and not isinstance(seconds, bool))


def _is_partial_cell(cell, n: int) -> bool:
    if not isinstance(cell, dict):
        return False
    candidates, results, seconds = cell.get("candidates"), cell.get("results"), cell.get("seconds")
    return (isinstance(candidates, str) and len(candidates) == n and set(candidates) <= {"0", "1"}
            and isinstance(results, str) and len(results) == n and set(results) <= {"0", "1", "-"}
            and isinstance(seconds, (int, float)) and not isinstance(seconds, bool))


def _bits(mask) -> str:
    return "".join("1" if v else "0" for v in mask.tolist())


def _mask(bits: str) -> torch.Tensor:
    """The bool mask of a cache string ('-', a sample not attacked yet, reads as not robust)."""
    return torch.tensor([c == "1" for c in bits], dtype=torch.bool)


def _damaged_cache(path, why: str) -> ValueError:
    return ValueError(f"{path} is not a usable nrpm audit cache ({why}): {START_AGAIN}")


class CellRunner:
    """Runs (model, attack, budget) cells, keeping per-sample results and a resumable cache."""

    def __init__(self, x, y, batch_size: int, results: ResultsFile, progress, log: Callable[[str], None]):
        self.x, self.y, self.batch_size = x, y, batch_size
        self.masks: dict[tuple, torch.Tensor] = {}
        self.cells: list[dict] = []
        self.errors: list[str] = []
        self.log, self.progress, self.results = log, progress, results
        # read by the main rank and handed to the others: ranks on other nodes need not see the folder
        cells, partial = dist.broadcast_object(_cached(results, len(x)) if results.ctx.is_main else None)
        self.cache: dict[str, dict] = cells
        self.partial: dict[str, dict] = partial  # interrupted cells: their finished batches
        if self.cache or self.partial:
            log(f"resuming: {len(self.cache)} finished cells"
                + (f" and {len(self.partial)} interrupted" if self.partial else "") + f" in {results.path}")

    def _save(self):
        self.results.write({"cells": self.cache, **({"partial": self.partial} if self.partial else {})})

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
            extra: bool = False, on: str | None = None) -> torch.Tensor | None:
        """Per-sample robustness of ``model`` under ``spec`` at ``budget``, attacking only ``candidates``;
        from the cache when the cell ran before. None (and an error recorded) when the attack fails.

        ``on``: the attack whose survivors ``candidates`` are (None: every clean-correct sample); it is in the cache
        key (a cell of another candidate set holds other numbers) and in the cell's ``ran_on``."""
        key = _cache_key(tag, spec, budget) + ("" if on is None else f"|{SURVIVORS_OF}{on}")
        start = time.perf_counter()
        if key in self.cache:
            entry = self.cache[key]
            mask = _mask(entry["mask"])
            seconds = entry["seconds"]
        else:
            earlier = self._saved_part(key, candidates)[1]  # spent before an interruption
            try:
                mask = self.attack_candidates(model, spec, budget, candidates, key=key)
            except (RuntimeError, ValueError) as error:
                message = f"{spec.label} at budget {budget:g} on the {tag} model failed: {error}"
                self.errors.append(message)
                self.log(message)
                return None
            seconds = round(earlier + time.perf_counter() - start, 3)
            self.partial.pop(key, None)
            self.cache[key] = {"mask": _bits(mask), "seconds": seconds}
            self._save()
        self._record(tag, spec, budget, mask, seconds, extra, on, int(candidates.sum()))
        return mask

    def _record(self, tag, spec, budget, mask, seconds, extra, on, attacked) -> None:
        self.masks[(tag, spec.key, round(budget, 10))] = mask
        acc = int(mask.sum()) / len(mask) if len(mask) else 0.0
        self.cells.append({"model": tag, "attack": spec.key, "label": spec.label, "budget": budget,
                           "accuracy": acc, "correct": int(mask.sum()), "n": len(mask), "seconds": seconds,
                           "ran_on": "clean-correct" if on is None else f"survivors of {on}",
                           "attacked": attacked,
                           **({"extra": True} if extra else {})})
        if self.progress is not None:
            self.progress.set_postfix_str(f"{tag} {spec.label} @ {budget:g}: {100 * acc:.1f}%")
            self.progress.update(1)

    def attack_candidates(self, model, spec: AttackSpec, budget: float, candidates: torch.Tensor,
                          key: str | None = None) -> torch.Tensor:
        """Attack the ``candidates`` samples (the others stay False) and return which ones stay correct.

        One process with a cache ``key``: each batch's results are saved as it finishes, so an interrupted cell
        goes on at its first unfinished batch (:meth:`_attack_in_saved_batches`). Under torchrun the batches one
        process would form go round the ranks, whole, and every rank gets the whole mask: nrpm's attacks are seeded
        per sample, and pyautoattack's (APGD, Square, AutoAttack), seeded per batch, see the same batches, so the
        mask is one process's at the same batch size. An attack that fails on
        any rank fails on all, so no rank waits for the others forever."""
        if key is not None and dist.get_world_size() == 1:
            return self._attack_in_saved_batches(model, spec.make(budget), candidates, key)
        index = candidates.nonzero().squeeze(1)
        batches = list(index.split(self.batch_size))[dist.get_rank()::dist.get_world_size()]
        index = torch.cat(batches) if batches else index[:0]
        try:
            mine = ("ok", index.tolist(), self._survivors(model, spec.make(budget), index))
        except (RuntimeError, ValueError) as error:
            mine = ("error", type(error).__name__, str(error))
        result = torch.zeros(len(self.x), dtype=torch.bool)
        for part in dist.all_gather_object(mine):
            if part[0] == "error":
                raise (RuntimeError if part[1] == "RuntimeError" else ValueError)(part[2])
            result[torch.tensor(part[1], dtype=torch.long)] = torch.tensor(part[2], dtype=torch.bool)
        return result

    def _attack_in_saved_batches(self, model, attack, candidates: torch.Tensor, key: str) -> torch.Tensor:
        """Attack ``candidates`` batch by batch, saving each batch's results under ``partial`` in the cache.

        The batches are those of an uninterrupted run (the candidates split in order), and nrpm's attacks are
        seeded per sample, pyautoattack's per batch: a resumed cell gives the mask the uninterrupted one would."""
        wanted = _bits(candidates)
        results, seconds = self._saved_part(key, candidates)
        batches = [b for b in candidates.nonzero().squeeze(1).split(self.batch_size) if len(b)]
        for number, idx in enumerate(batches):
            if results[int(idx[0])] != "-":
                continue  # finished before the interruption
            start = time.perf_counter()
            for i, ok in zip(idx.tolist(), self._survivors(model, attack, idx)):
                results[i] = "1" if ok else "0"
            seconds += time.perf_counter() - start
            if number < len(batches) - 1:  # the last batch finishes the cell: run() saves it whole
                self.partial[key] = {"candidates": wanted, "results": "".join(results),
                                     "seconds": round(seconds, 3)}
                self._save()
                # a cell of many batches can run for an hour (AutoAttack on 500 images): say where it stands
                cell = parse_cache_key(key)
                self.log(f"{cell.tag} {cell.attack} at {float(cell.budget):.4g}: batch {number + 1} of "
                         f"{len(batches)} saved ({seconds:.0f} s in this cell so far)")
        return _mask("".join(results))

    def _saved_part(self, key: str, candidates: torch.Tensor) -> tuple[list[str], float]:
        """The interrupted cell's per-sample results ('-': not attacked yet) and seconds; fresh ones when none
        was saved, or when it was saved for another candidate set (the cell's reference attack changed)."""
        saved = self.partial.get(key)
        if saved is None or saved["candidates"] != _bits(candidates):
            return ["-"] * len(self.x), 0.0
        return list(saved["results"]), float(saved["seconds"])

    def _survivors(self, model, attack, index: torch.Tensor) -> list[bool]:
        """Which samples of ``index`` ``attack`` leaves correctly classified, in batches."""
        device = A.model_device(model, self.x.device)
        out = []
        for i in range(0, len(index), self.batch_size):
            idx = index[i:i + self.batch_size]
            xb, yb = self.x[idx].to(device), self.y[idx].to(device)
            x_adv = attack(model, xb, yb, indices=idx)  # seeded per sample: masks do not depend on batching
            with torch.no_grad():
                out += (logits_2d(model, x_adv).argmax(1) == yb).cpu().tolist()
        return out


def _cache_key(tag: str, spec: AttackSpec, budget: float) -> str:
    """The cell's cache key. Attacks seeded per sample add '|rng=sample': their cells cached before that seeding
    hold other numbers and are recomputed, not reused (an attack that cannot be built fails later, in its run)."""
    key = f"{tag}|{spec.key}|{spec.params}|{budget:.10g}"
    try:
        seeded = spec.make(budget).seeded_per_sample
    except (RuntimeError, ValueError, TypeError):
        seeded = False
    return key + "|rng=sample" if seeded else key


class CellKey(NamedTuple):
    """A cache.json cell key read back (:func:`parse_cache_key`)."""

    tag: str            # the model's tag: 'nrpm' or 'plain'
    attack: str         # the attack's key: 'pgd', 'autoattack', ...
    params: str         # its parameters as written: 'steps=20,alpha=...,seed=0'
    budget: str         # the budget as written (10 significant digits): float() it to compare
    on: str | None      # the attack whose survivors the cell attacked; None: every clean-correct sample


def parse_cache_key(key: str) -> CellKey:
    """The parts of a cell key ``tag|attack|params|budget[|rng=sample][|on=survivors-of-REF]`` (what
    :meth:`CellRunner.run` writes); the one reader of keys, for ``audit-compare`` and the audit benchmarks."""
    parts = key.split("|")
    if len(parts) < 4:
        raise ValueError(f"{key!r} is not an audit cell key (tag|attack|params|budget|...)")
    on = next((p.removeprefix(SURVIVORS_OF) for p in parts[4:] if p.startswith(SURVIVORS_OF)), None)
    return CellKey(parts[0], parts[1], parts[2], parts[3], on)


def cached_masks(cells: Mapping[str, dict]) -> dict[tuple[str, str, str], torch.Tensor]:
    """{(model tag, cell key, budget as written): per-sample robustness} of cache.json's finished ``cells``."""
    return {(k.tag, key, k.budget): _mask(cell["mask"]) for key, cell in cells.items()
            for k in [parse_cache_key(key)]}


def worst_case_masks(masks: Mapping[tuple, torch.Tensor]) -> dict[tuple, torch.Tensor]:
    """{(model tag, budget): per-sample worst case} of {(model tag, attack, budget): per-sample robustness}: a
    sample counts as robust at a budget only if no attack at that budget broke it. The one place the worst case is
    formed: for the audit's report (:attr:`CellRunner.masks`), and from cache.json (:func:`cached_masks`) for
    ``audit-compare`` and the audit benchmarks."""
    worst: dict[tuple, torch.Tensor] = {}
    for (tag, _attack, budget), mask in masks.items():
        worst[(tag, budget)] = worst[(tag, budget)] & mask if (tag, budget) in worst else mask.clone()
    return worst


# ----------------------------------------------------------------------------------------------- fingerprints
def _state_hash(model: nn.Module) -> str:
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def fingerprint(model, base, plain, x, y, lam_info, norm, estimators: dict | None = None) -> dict:
    """What every cached cell depends on besides its attack: weights, data, lam, norm and, for a model with another
    estimator than L1, the estimators (absent for L1, so L1 caches written before they were keyed still resume)."""
    d = hashlib.sha256(x.detach().float().cpu().contiguous().numpy().tobytes())
    d.update(y.detach().cpu().contiguous().numpy().tobytes())
    return {"model": _state_hash(model), "data": d.hexdigest()[:16], "lam": lam_info, "norm": norm,
            "model_type": type(model).__name__, "base": type(base).__name__ if base is not None else None,
            "plain": None if plain is None or plain is base else _state_hash(plain),
            **({"estimators": estimators} if estimators else {})}
