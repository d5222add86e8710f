"""Result files: atomic writes, markdown tables, CSV and accuracy-vs-budget plots."""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Iterable, Sequence

from ._io import atomic_write

__all__ = ["atomic_write_text", "write_json", "read_json", "markdown_grid", "write_grid_csv", "plot_curves",
           "format_budget", "jsonable"]


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` atomically (temp file + rename): readers never see a half-written file."""
    atomic_write(path, lambda f: f.write(text), binary=False)


def write_json(path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def read_results_file(path: Path, fmt: str, what: str, fix: str):
    """The JSON object in results file ``path`` of format ``fmt``, or None when there is no file.

    Unreadable JSON or another format raises one ValueError naming the file, ``what`` it should be and the ``fix``.
    """
    if not path.exists():
        return None
    try:
        previous = read_json(path)
    except (ValueError, UnicodeDecodeError) as error:  # json.JSONDecodeError is a ValueError
        raise ValueError(f"{path} is not valid JSON ({error}): {fix}") from None
    if not isinstance(previous, dict) or previous.get("format") != fmt:
        raise ValueError(f"{path} is not {what} (format {fmt!r}): {fix}")
    return previous


def jsonable(obj):
    """A copy of ``obj`` that json can write: containers kept, anything else exotic as its repr."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return repr(obj)


def format_budget(budget: float, unit: float = 1.0) -> str:
    """0.1 -> '0.1'; with unit 255, 8/255 -> '8/255'."""
    if unit != 1.0:
        return f"{budget * unit:g}/{unit:g}"
    return f"{budget:g}"


def cell_map(cells: Iterable[dict]) -> dict[tuple[float, float], dict]:
    """Result cells keyed by (lam, budget), rounded so that float noise never splits one cell in two."""
    return {(round(c["lam"], 6), round(c["budget"], 9)): c for c in cells}


def markdown_grid(cells: Sequence[dict], lams: Sequence[float], budgets: Sequence[float], *, unit: float = 1.0,
                  row_label: str = "lam", value_key: str = "accuracy") -> str:
    """Rows lam, columns budgets (clean = budget 0 first), values in %; missing cells show as '…'."""
    lookup = cell_map(cells)
    header = [row_label] + [("clean" if b == 0 else format_budget(b, unit)) for b in budgets]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for lam in lams:
        row = [f"{lam:g}"]
        for b in budgets:
            cell = lookup.get((round(lam, 6), round(b, 9)))
            row.append("…" if cell is None else f"{100 * cell[value_key]:.1f}")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def write_grid_csv(path, cells: Sequence[dict]) -> None:
    fields = ["lam", "budget", "attack", "accuracy", "correct", "n", "seconds"]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore")
    writer.writeheader()
    for cell in sorted(cells, key=lambda c: (-c["lam"], c["budget"])):
        writer.writerow(cell)
    atomic_write_text(path, buf.getvalue())


def plot_curves(path, curves: dict[str, tuple[Sequence[float], Sequence[float]]], *, title: str,
                xlabel: str = "budget", ylabel: str = "accuracy (%)", styles: dict[str, dict] | None = None,
                legend_outside: bool = False) -> None:
    """One line per curve name: {label: (budgets, accuracies in [0, 1])}; saved atomically as PNG.

    ``styles``: {label: keyword arguments of ``Axes.plot``} (colour, marker, linewidth, ...) overriding the default
    style of those curves. ``legend_outside``: the legend right of the axes instead of over the curves.
    """
    import matplotlib

    matplotlib.use("Agg")  # headless: never needs a display
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8.8, 4.2) if legend_outside else (6.4, 4.2))
    # the default cycle has 10 colours, and a full lam sweep has 11 curves: past 10, colour them in order instead
    colors = plt.cm.viridis([i / max(len(curves) - 1, 1) * 0.95 for i in range(len(curves))]) \
        if len(curves) > 10 else [None] * len(curves)
    for (label, (xs, ys)), color in zip(curves.items(), colors):
        style = {"marker": "o", "color": color, **(styles or {}).get(label, {})}
        ax.plot(xs, [100 * v for v in ys], label=label, **style)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel, ylim=(-2, 102))
    ax.grid(alpha=0.3)
    if legend_outside:
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
    else:
        ax.legend(fontsize=8, ncol=2 if len(curves) > 6 else 1)
    fig.tight_layout()
    try:
        atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110), binary=True)
    finally:
        plt.close(fig)
