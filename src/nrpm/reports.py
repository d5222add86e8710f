"""Result files: atomic text and JSON writes, budget labels and accuracy-vs-budget plots (the eval grid's own
table and CSV are :mod:`nrpm.evaluation.grid`'s)."""

from __future__ import annotations

import json
import os
from typing import Sequence

from ._io import atomic_write

__all__ = ["atomic_write_text", "write_json", "read_json", "plot_curves", "format_budget", "jsonable"]


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` atomically (temp file + rename): readers never see a half-written file."""
    atomic_write(path, lambda f: f.write(text), binary=False)


def write_json(path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


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
