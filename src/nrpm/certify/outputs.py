"""Certified accuracy against radius, from certified samples: table.md, results.csv and certified.png.

Certified accuracy at radius r is the fraction of samples whose smoothed prediction is correct with a certified
radius >= r (an abstention counts as wrong). At r = 0 it is the clean accuracy of the smoothed classifier.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Sequence

from .. import reports
from .._io import atomic_write
from ..evaluation import TRAINED  # the lam row that keeps each layer's stored lam
from .smoothing import ABSTAIN

__all__ = ["certified_accuracy", "radius_grid", "cell_summary", "order_cells", "certify_markdown",
           "write_certify_csv", "plot_certified", "write_outputs", "cell_name", "RADIUS_STEP"]

RADIUS_STEP = 0.25


def cell_name(lam: float | str, sigma: float) -> str:
    """The key of a (lam, sigma) cell in results.json, e.g. ``lam=0.9|sigma=0.25``."""
    lam_text = lam if isinstance(lam, str) else f"{lam:g}"
    return f"lam={lam_text}|sigma={sigma:g}"


def certified_accuracy(samples: Sequence[dict], radius: float) -> float:
    """Fraction of ``samples`` predicted correctly with a certified radius >= ``radius`` (0.0 for no samples)."""
    if not samples:
        return 0.0
    return sum(1 for s in samples if s["correct"] and s["radius"] >= radius) / len(samples)


def radius_grid(max_radius: float, step: float = RADIUS_STEP) -> list[float]:
    """0, step, 2 step, ... up to ``max_radius`` rounded up to a step, and at least up to 1."""
    stop = max(1.0, math.ceil(max_radius / step - 1e-9) * step)
    return [round(i * step, 9) for i in range(int(round(stop / step)) + 1)]


def cell_summary(cell: dict, radii: Sequence[float]) -> dict:
    """n, base (un-noised) accuracy, abstention rate, smoothed clean accuracy and certified accuracy per radius."""
    samples = cell["samples"]
    n = len(samples)
    with_base = [s for s in samples if s.get("base_prediction") is not None]
    base = sum(s["base_prediction"] == s["label"] for s in with_base) / len(with_base) if with_base else math.nan
    return {"lam": cell["lam"], "sigma": cell["sigma"], "n": n, "base_accuracy": base,
            "abstention_rate": sum(s["prediction"] == ABSTAIN for s in samples) / n if n else math.nan,
            "smoothed_accuracy": certified_accuracy(samples, 0.0),
            "certified": {r: certified_accuracy(samples, r) for r in radii}}


def order_cells(cells: dict[str, dict]) -> list[dict]:
    """The cells by row: the trained row first, then lam from 1 down; sigma ascending within a lam."""
    def key(cell):
        lam = cell["lam"]
        return (0 if lam == TRAINED else 1, 0.0 if lam == TRAINED else -lam, cell["sigma"])

    return sorted(cells.values(), key=key)


def _lam_label(lam) -> str:
    return lam if isinstance(lam, str) else f"{lam:g}"


def _percent(value: float) -> str:
    return "…" if math.isnan(value) else f"{100 * value:.1f}"


def certify_markdown(cells: dict[str, dict], radii: Sequence[float]) -> str:
    """Rows (lam, sigma); columns n, base accuracy, abstention rate and certified accuracy (%) per radius."""
    header = ["lam", "sigma", "n", "base clean", "abstain"] + [f"r={r:g}" for r in radii]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for cell in order_cells(cells):
        summary = cell_summary(cell, radii)
        row = [_lam_label(cell["lam"]), f"{cell['sigma']:g}", str(summary["n"]),
               _percent(summary["base_accuracy"]), _percent(summary["abstention_rate"])]
        row += [_percent(summary["certified"][r]) for r in radii]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def write_certify_csv(path, cells: dict[str, dict], radii: Sequence[float]) -> None:
    """One row per (lam, sigma): fractions in [0, 1], a column ``r=R`` of certified accuracy per radius."""
    fields = ["lam", "sigma", "n", "base_accuracy", "abstention_rate", "smoothed_accuracy"]
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(fields + [f"r={r:g}" for r in radii])
    for cell in order_cells(cells):
        summary = cell_summary(cell, radii)
        writer.writerow([summary[f] for f in fields] + [summary["certified"][r] for r in radii])
    reports.atomic_write_text(path, buf.getvalue())


def plot_certified(path, cells: dict[str, dict], max_radius: float, *, title: str) -> None:
    """Certified accuracy against radius: one panel per sigma, one curve per lam; saved atomically as PNG."""
    import matplotlib

    matplotlib.use("Agg")  # headless: never needs a display
    import matplotlib.pyplot as plt

    ordered = order_cells(cells)
    sigmas = sorted({c["sigma"] for c in ordered})
    # a fine grid: certified accuracy is a step function of the radius, and the steps are what matters
    xs = [max_radius * i / 200 for i in range(201)]
    fig, axes = plt.subplots(1, len(sigmas), figsize=(4.2 * len(sigmas) + 1.2, 3.8), squeeze=False, sharey=True)
    for ax, sigma in zip(axes[0], sigmas):
        for cell in (c for c in ordered if c["sigma"] == sigma):
            ys = [100 * certified_accuracy(cell["samples"], x) for x in xs]
            ax.plot(xs, ys, label=f"lam={_lam_label(cell['lam'])}", drawstyle="steps-post")
        ax.set(title=f"sigma={sigma:g}", xlabel="L2 radius", ylim=(-2, 102))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0][0].set_ylabel("certified accuracy (%)")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    try:
        atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110), binary=True)
    finally:
        plt.close(fig)


def write_outputs(out: Path, results: dict, max_radius: float, *, title: str, note: str = "", footer: str = ""
                  ) -> str:
    """table.md, results.csv and certified.png from the cells of ``results`` (results.json itself is the run's
    results file, written by :class:`nrpm.runs.ResultsFile`); returns the table."""
    out = Path(out)
    cells = {name: cell for name, cell in results["cells"].items() if cell["samples"]}
    radii = radius_grid(max_radius)
    table = certify_markdown(cells, radii)
    reports.atomic_write_text(out / "table.md", f"# {title}\n\n{note}\n\n{table}\n" + (f"\n{footer}\n" if footer else ""))
    write_certify_csv(out / "results.csv", cells, radii)
    if cells:
        plot_certified(out / "certified.png", cells, radii[-1], title=title)
    return table
