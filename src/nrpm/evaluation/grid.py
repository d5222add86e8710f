"""The (lam x budget) grid: measuring its cells, and its outputs (table, CSV, plot) from every cell on file.

A cell is ``{"lam", "budget", "attack", "accuracy", "correct", "n", "seconds"}``; budget 0 is clean accuracy. A lam
row is a number (every robust layer set to it) or :data:`TRAINED` (each layer's lam as a stored reprogramming has
it). ``nrpm eval`` writes these outputs, ``nrpm demo`` prints the table.
"""

from __future__ import annotations

import csv
import io
import time
from pathlib import Path
from typing import Callable, Iterable, Sequence

from .. import attacks as A
from .. import distributed as dist
from .. import reports
from ..reprogram import lam_table, set_lam

__all__ = ["TRAINED", "grid_key", "cell_map", "evaluate_grid", "markdown_grid", "write_grid_csv", "grid_axes",
           "plot_grid"]

TRAINED = "trained"  # the lam row that keeps each layer's lam as the stored reprogramming has it
_CSV_FIELDS = ["lam", "budget", "attack", "accuracy", "correct", "n", "seconds"]


def grid_key(lam: float | str, budget: float) -> tuple:
    """The key of a (lam, budget) cell, rounded so that float noise never splits one cell in two."""
    return (lam if isinstance(lam, str) else round(lam, 6), round(budget, 9))


def cell_map(cells: Iterable[dict]) -> dict[tuple, dict]:
    """Cells keyed by :func:`grid_key` (a later cell of the same key replaces an earlier one)."""
    return {grid_key(c["lam"], c["budget"]): c for c in cells}


# ------------------------------------------------------------------------------------------ measuring
def evaluate_grid(model, x, y, lams, budgets, make_attack: Callable[[float], A.Attack], *, batch_size: int,
                  done: dict | None = None, on_cell: Callable[[dict], None] | None = None,
                  progress: bool = True, attack_name: str = "") -> list[dict]:
    """Accuracy of ``model`` for every (lam, budget); budget 0 is clean accuracy.

    Cells already in ``done`` ({grid_key: cell}) are kept, not recomputed; ``on_cell`` is called after each new
    cell (used to save progress). Under torchrun each rank measures its block of ``x``; the counts are summed.
    """
    from tqdm.auto import tqdm

    trained = lam_table(model) if TRAINED in lams else None  # before a numeric row overwrites it
    done = dict(done or {})
    todo = [(lam, b) for lam in lams for b in budgets if grid_key(lam, b) not in done]
    bar = tqdm(total=len(lams) * len(budgets), initial=len(lams) * len(budgets) - len(todo),
               disable=not progress or not dist.is_main(), desc="eval cells", unit="cell")
    for lam, budget in todo:
        set_lam(model, trained if lam == TRAINED else lam)
        cell = _measure(model, x, y, lam, budget, make_attack, batch_size, attack_name)
        done[grid_key(lam, budget)] = cell
        if on_cell is not None and dist.is_main():
            on_cell(cell)
        bar.set_postfix(lam=lam, budget=f"{budget:g}", acc=f"{100 * cell['accuracy']:.1f}")
        bar.update(1)
    bar.close()
    return [done[grid_key(lam, b)] for lam in lams for b in budgets]


def _measure(model, x, y, lam, budget: float, make_attack, batch_size: int, attack_name: str) -> dict:
    """One cell at the model's current lam: clean accuracy for budget 0, else under ``make_attack(budget)``."""
    start = time.perf_counter()
    attack = None if budget == 0 else make_attack(budget)
    correct = A.sharded_correct_count(model, attack, x, y, batch_size)  # one process's count on any world size
    return {"lam": lam, "budget": budget, "attack": "clean" if budget == 0 else attack_name,
            "accuracy": correct / len(x), "correct": correct, "n": len(x),
            "seconds": round(time.perf_counter() - start, 3)}


# ------------------------------------------------------------------------------------------ outputs
def _row_label(lam: float | str) -> str:
    return lam if isinstance(lam, str) else f"{lam:g}"


def grid_axes(cells: Sequence[dict]) -> tuple[list, list[float]]:
    """The rows (the trained row first, then lam from 1 down) and budgets (ascending) of the cells."""
    lams = {grid_key(c["lam"], 0)[0]: c["lam"] for c in cells}
    budgets = {round(c["budget"], 9): c["budget"] for c in cells}
    rows = ([TRAINED] if TRAINED in lams else []) + sorted((v for v in lams.values() if v != TRAINED), reverse=True)
    return rows, sorted(budgets.values())


def markdown_grid(cells: Sequence[dict], lams: Sequence, budgets: Sequence[float], *, unit: float = 1.0) -> str:
    """Rows lam, columns budgets (clean = budget 0 first), values in %; missing cells show as '…'."""
    lookup = cell_map(cells)
    header = ["lam"] + [("clean" if b == 0 else reports.format_budget(b, unit)) for b in budgets]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for lam in lams:
        values = [lookup.get(grid_key(lam, b)) for b in budgets]
        row = [_row_label(lam)] + ["…" if c is None else f"{100 * c['accuracy']:.1f}" for c in values]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def write_grid_csv(path: Path, cells: Sequence[dict]) -> None:
    """One row per cell, in the table's order (rows as :func:`grid_axes`, then budgets ascending)."""
    rows, _ = grid_axes(cells)
    order = {grid_key(lam, 0)[0]: i for i, lam in enumerate(rows)}
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=_CSV_FIELDS, extrasaction="ignore")
    writer.writeheader()
    for cell in sorted(cells, key=lambda c: (order[grid_key(c["lam"], 0)[0]], c["budget"])):
        writer.writerow(cell)
    reports.atomic_write_text(path, buf.getvalue())


def plot_grid(path: Path, cells: Sequence[dict], *, title: str, unit: float = 1.0) -> None:
    """Accuracy against budget, one curve per lam row."""
    rows, budgets = grid_axes(cells)
    lookup = cell_map(cells)
    curves = {}
    for lam in rows:
        points = [(b * unit, lookup[grid_key(lam, b)]["accuracy"]) for b in budgets if grid_key(lam, b) in lookup]
        curves[f"lam={_row_label(lam)}"] = ([p[0] for p in points], [p[1] for p in points])
    reports.plot_curves(path, curves, title=title, xlabel=f"budget (x1/{unit:g})" if unit != 1 else "budget")
