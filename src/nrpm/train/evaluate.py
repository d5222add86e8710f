"""Accuracy measurements during and after training: the per-epoch check on the held-out images and the final
test evaluation(s). Both deal one process's batches over the processes (:func:`nrpm.attacks.sharded_correct_count`),
so every rank must call them and all ranks get the totals of a single process."""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

from torch import nn

from .. import attacks as A
from .. import data as D
from .. import reports
from .artifacts import TEST_FORMAT, write_test_files
from .config import TestSettings

__all__ = ["evaluate_split", "run_test"]


def evaluate_split(model: nn.Module, x, y, attack: A.Attack | None, batch_size: int) -> tuple[float, float | None]:
    """(clean accuracy, robust accuracy or None without an attack) on (x, y)."""
    n = len(x)
    clean = A.sharded_correct_count(model, None, x, y, batch_size) / n
    robust = None if attack is None else A.sharded_correct_count(model, attack, x, y, batch_size) / n
    return clean, robust


def _measure(model: nn.Module, settings: TestSettings, kwargs: dict, budget: float, x, y) -> dict:
    start = time.perf_counter()
    attack = None if budget == 0 else A.make_attack(settings.attack, budget, **kwargs)
    correct = A.sharded_correct_count(model, attack, x, y, settings.batch_size)
    return {"budget": budget, "attack": "clean" if budget == 0 else settings.attack,
            "accuracy": correct / len(x), "correct": correct, "n": len(x),
            "seconds": round(time.perf_counter() - start, 3)}


def _table(row_name: str, cells: list[dict], unit: float) -> str:
    header = ["model"] + ["clean" if c["budget"] == 0 else reports.format_budget(c["budget"], unit) for c in cells]
    row = [row_name] + [f"{100 * c['accuracy']:.1f}" for c in cells]
    return "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header), "| " + " | ".join(row) + " |"])


def run_test(model: nn.Module, settings: TestSettings, test_data, seed: int,
             out: Path, main: bool, log, meta: dict) -> dict:
    """One final evaluation on the first ``settings.n_samples`` of ``test_data`` (x, y), one cell per budget;
    rank 0 writes ``test_<label>.json/.md`` and logs the table. ``meta`` (the row name, epochs done) goes into
    the file."""
    x, y = D.subset(*test_data, min(settings.n_samples, len(test_data[0])))
    kwargs = A.with_default_seed(settings.attack, settings.attack_kwargs, seed)
    cells = [_measure(model, settings, kwargs, budget, x, y) for budget in settings.budgets]
    table = _table(meta["row"], cells, settings.budget_unit)
    result = {"format": TEST_FORMAT, "settings": asdict(settings), "cells": cells, "table": table, **meta}
    if main:
        write_test_files(out, settings, result, len(x))
        log(table)
    return result
