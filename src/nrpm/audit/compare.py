"""Two finished audits' worst cases compared sample by sample (``nrpm audit-compare``).

A robustness gain is the difference of two accuracies measured on the same images. Its sampling noise is that of a
*paired* difference: most images are robust under both models or broken under both, and only the images on which
they disagree carry information. Two separate Wilson intervals (what each audit reports) overstate that noise, so
a gain can look like noise when it is not, and the other way round when the two audits ran on different images.

What is compared: each audit's per-sample worst case at each budget both audited (a sample counts only if no
attack of that audit broke it, and a misclassified clean sample counts as broken), rebuilt from its cache.json and
checked against the worst case its audit.json reports. The two sides must have audited the same images (the data
fingerprint of their caches); they may come from two folders, e.g. an NRPM setting run with ``--no-plain`` against
the folder holding the plain model's rows.

The numbers: the difference A - B, its 95% interval (Agresti & Min's adjusted Wald interval for paired
proportions: one half-sample added to each cell of the 2 x 2 table, which keeps its coverage near 95% even when
few samples disagree), and the exact McNemar p-value (a two-sided binomial test of the disagreeing samples; scipy's
``binomtest``, not written here).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from statistics import NormalDist
from typing import Sequence

from ..formats import read_tagged
from ..reports import format_budget
from .cells import CACHE_FILE, CACHE_FORMAT, cached_masks, worst_case_masks
from .protocol import wilson_half_width
from .report import AUDIT_FORMAT

__all__ = ["AuditSide", "PairedDifference", "load_side", "paired_difference", "compare_sides", "comparison_markdown"]

_Z95 = NormalDist().inv_cdf(0.975)
_TAGS = ("nrpm", "plain")


@dataclass(frozen=True)
class AuditSide:
    """One audited model (``tag``: 'nrpm' or 'plain') of one finished audit, with its per-sample worst case."""

    folder: Path
    tag: str
    label: str                            # 'resnet18_narrow (paper checkpoint), NRPM lam=0.9 K=1'
    n: int
    data: str                             # the data fingerprint of its cache: which images, in which order
    unit: float
    clean: float | None
    worst_case: dict[float, list[bool]]   # budget -> robust per sample

    @property
    def name(self) -> str:
        return f"{self.folder.name}:{self.tag}"


@dataclass(frozen=True)
class PairedDifference:
    """Two per-sample masks on the same samples: robust counts, disagreements, and the statistics of A - B."""

    n: int
    a: int           # robust under A
    b: int           # robust under B
    a_only: int      # robust under A, broken under B
    b_only: int      # robust under B, broken under A

    @property
    def difference(self) -> float:
        return (self.a - self.b) / self.n

    @property
    def interval(self) -> tuple[float, float]:
        """The 95% Agresti-Min interval of the difference (a fraction)."""
        n = self.n + 2
        p_a, p_b = (self.a_only + 0.5) / n, (self.b_only + 0.5) / n
        centre = p_a - p_b
        half = _Z95 * math.sqrt(max(p_a + p_b - centre ** 2, 0.0) / n)
        return max(centre - half, -1.0), min(centre + half, 1.0)

    @property
    def p_value(self) -> float:
        """Exact two-sided McNemar p-value (1 when no sample disagrees)."""
        from scipy.stats import binomtest  # scipy is slow to import: only here

        discordant = self.a_only + self.b_only
        return 1.0 if discordant == 0 else float(binomtest(self.a_only, discordant, 0.5).pvalue)


def paired_difference(a: Sequence[bool], b: Sequence[bool]) -> PairedDifference:
    """The paired comparison of two per-sample robustness masks of the same samples, in the same order."""
    if len(a) != len(b) or not len(a):
        raise ValueError(f"a paired comparison needs two masks of the same non-zero length, got {len(a)} and {len(b)}")
    a_only = sum(1 for x, y in zip(a, b) if x and not y)
    b_only = sum(1 for x, y in zip(a, b) if y and not x)
    return PairedDifference(n=len(a), a=sum(map(bool, a)), b=sum(map(bool, b)), a_only=a_only, b_only=b_only)


# ------------------------------------------------------------------------------------------------ reading
def load_side(spec: str) -> AuditSide:
    """``FOLDER`` (its NRPM model) or ``FOLDER:TAG`` (TAG 'nrpm' or 'plain') of a finished audit.

    ValueError / FileNotFoundError, one line naming the folder and the fix: no audit.json (unfinished), no rows
    of that model (``--no-plain``), or a cache.json that does not give the audit.json's worst case."""
    head, _, tail = spec.rpartition(":")
    folder, tag = (Path(head), tail) if head and tail in _TAGS else (Path(spec), "nrpm")
    if not (folder / "audit.json").is_file():
        if (folder / CACHE_FILE).is_file():
            raise FileNotFoundError(f"{folder}: not finished (only cache.json); audit-compare needs a finished "
                                    f"audit (audit.json and cache.json): rerun its `nrpm audit` command to finish it")
        raise FileNotFoundError(f"{folder}: not an audit folder (no audit.json); give a folder written by "
                                f"`nrpm audit --out FOLDER`")
    report = read_tagged(folder / "audit.json", AUDIT_FORMAT, "an nrpm audit report")
    cache = read_tagged(folder / CACHE_FILE, CACHE_FORMAT, "an nrpm audit cache")
    try:
        return _side(folder, tag, report, cache)
    except (KeyError, IndexError, TypeError, AttributeError) as error:  # ValueError: ours, already one line
        raise ValueError(f"{folder}: audit.json or cache.json is damaged ({type(error).__name__}: {error}); "
                         f"rerun its `nrpm audit` command") from None


def _side(folder: Path, tag: str, report: dict, cache: dict) -> AuditSide:
    settings = report["settings"]
    reported = {w["budget"]: w["accuracy"] for w in report["worst_case"].get(tag, [])}
    if not reported:
        raise ValueError(f"{folder} has no '{tag}' rows (audited with --no-plain?): compare with the folder that "
                         f"audited that model, as FOLDER:{tag}")
    n = int(settings["n"])
    cached = _cached_worst_case(cache["cells"], tag, n)
    masks = {b: next((m for cb, m in cached.items() if math.isclose(cb, b, rel_tol=1e-9)), [True] * n)
             for b in reported}
    for b, mask in masks.items():
        if sum(mask) != round(reported[b] * n):
            raise ValueError(f"{folder}: cache.json gives {sum(mask)} robust samples for '{tag}' at "
                             f"{format_budget(b, settings.get('budget_unit', 1.0))}, audit.json reports "
                             f"{round(reported[b] * n)}: the two files do not belong together; rerun the audit")
    return AuditSide(folder=folder, tag=tag, label=f"{settings['title']}, {settings['model_labels'][tag]}", n=n,
                     data=cache["fingerprint"]["data"], unit=settings.get("budget_unit", 1.0),
                     clean=settings.get("clean_accuracy", {}).get(tag), worst_case=masks)


def _cached_worst_case(cells: dict, tag: str, n: int) -> dict[float, list[bool]]:
    """{budget: per-sample worst case of ``tag``} over every cached cell
    (:func:`~nrpm.audit.cells.worst_case_masks`)."""
    for key, cell in cells.items():
        if len(cell["mask"]) != n:
            raise ValueError(f"cache.json cell {key!r} has {len(cell['mask'])} samples, the audit {n}: the two "
                             f"files do not belong together; rerun the audit")
    worst = worst_case_masks(cached_masks(cells))
    return {float(budget): mask.tolist() for (t, budget), mask in worst.items() if t == tag}


# ----------------------------------------------------------------------------------------------- comparing
def compare_sides(a: AuditSide, b: AuditSide) -> list[tuple[float, PairedDifference]]:
    """(budget, paired difference A - B) at every budget both audited; ValueError unless same images."""
    if a.data != b.data or a.n != b.n:
        raise ValueError(f"{a.name} and {b.name} audited different images ({a.n} vs {b.n} samples, data "
                         f"fingerprints {a.data} vs {b.data}): a paired comparison needs the same images")
    common = [(ba, bb) for ba in a.worst_case for bb in b.worst_case if math.isclose(ba, bb, rel_tol=1e-9)]
    if not common:
        raise ValueError(f"{a.name} and {b.name} share no budget: audit both at the same --budgets")
    return [(ba, paired_difference(a.worst_case[ba], b.worst_case[bb])) for ba, bb in common]


def _pct(x: float, n: int) -> str:
    return f"{100 * x:.1f} ± {100 * wilson_half_width(x, n):.1f}"


def comparison_markdown(a: AuditSide, b: AuditSide, rows: list[tuple[float, PairedDifference]]) -> str:
    """The comparison as markdown: both sides, then one row per budget."""
    def side(name, s):
        clean = "" if s.clean is None else f", clean {100 * s.clean:.1f} %"
        return f"* **{name}** `{s.name}`: {s.label}{clean}"

    lines = [f"# Paired comparison of worst cases: {a.name} vs {b.name}", "", side("A", a), side("B", b), "",
             f"The same {a.n} images (data fingerprint {a.data}). Worst case per sample: robust only if no attack of "
             "that audit broke it. Accuracies with their 95% Wilson half-width; A - B with its paired 95% interval "
             "(Agresti-Min) and the exact McNemar p-value, from the samples on which A and B disagree.", "",
             "| budget | A worst case % | B worst case % | A - B (pts) | 95% interval (pts) | robust only under A "
             "| only under B | McNemar p |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for budget, d in rows:
        lo, hi = d.interval
        lines.append(f"| {format_budget(budget, a.unit)} | {_pct(d.a / d.n, d.n)} | {_pct(d.b / d.n, d.n)} | "
                     f"{100 * d.difference:+.1f} | [{100 * lo:+.1f}, {100 * hi:+.1f}] | {d.a_only} | {d.b_only} | "
                     f"{d.p_value:.2g} |")
    return "\n".join(lines)
