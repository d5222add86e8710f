"""The audit's result: :class:`AuditReport` (verdict, markdown, accuracy table, plot, files) and
:func:`collate_reports`, which turns several saved ``audit.json`` files into one markdown document.

The plot gives each attack family one colour family (:func:`curve_styles`), so the PGD variants (with
C&W-margin PGD), APGD, the black-box attacks (Square, SPSA, noise), the adaptive (transfer / BPDA / detached /
smoothed IRLS) attacks, FGSM and AutoAttack read as groups, and draws the worst case (the number to quote) as a
thick black line.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

from .. import reports
from .checks import FAIL, PASS, SKIP, WARN, CheckResult, format_num, format_pct, worst
from .plan import ADAPTIVE, AUTOATTACK, BLACK_BOX, NOISE, SINGLE_STEP, STEP_VARIANT, UNBOUNDED, catalogue
from .protocol import describe, is_protocol, settings_text, verdict_text, widest_half_width

__all__ = ["AUDIT_FORMAT", "AuditReport", "collate_reports", "attack_family", "curve_styles", "WORST_CASE",
           "worst_case_attacks"]

AUDIT_FORMAT = "nrpm-audit/1"

#: the curve key of the per-sample worst case over all attacks (drawn bold)
WORST_CASE = "worst case"

# per attack family: its shades (darkest first, hex so no matplotlib is needed to pick them), marker, line style
_FAMILY_STYLES = {
    "pgd": (("#08519c", "#3182bd", "#6baed6", "#9ecae1"), "o", "-"),
    "apgd": (("#006d2c", "#31a354", "#74c476", "#a1d99b"), "s", "-"),
    "blackbox": (("#d94801", "#fd8d3c", "#fdae6b"), "^", "-"),
    "adaptive": (("#54278f", "#756bb1", "#9e9ac8", "#3f007d", "#6a51a3", "#807dba", "#bcbddc"), "D", "--"),
    "fgsm": (("#525252", "#969696"), "x", "-"),
    "autoattack": (("#d62728",), "*", "-"),
    "other": (("#8c564b", "#c49c94"), "v", ":"),
}
# the families of the roles that are families of their own (white-box attacks are told apart by their kind)
_ROLE_FAMILIES = {BLACK_BOX: "blackbox", NOISE: "blackbox", ADAPTIVE: "adaptive", AUTOATTACK: "autoattack",
                  STEP_VARIANT: "pgd", UNBOUNDED: "pgd"}
_WORST_CASE_STYLE = {"color": "black", "linewidth": 3.0, "marker": "o", "linestyle": "-", "zorder": 5}
_PLAIN_WORST_CASE_STYLE = {"color": "black", "linewidth": 2.0, "marker": "o", "linestyle": "--", "zorder": 4}


def attack_family(key: str) -> str:
    """The family of an attack key: 'pgd', 'apgd', 'blackbox', 'adaptive', 'fgsm', 'autoattack' or 'other'
    (by the attack's role in the catalogue, and for the white-box attacks by their kind)."""
    role = next((a.role for a in catalogue() if a.key == key), None)
    if role in _ROLE_FAMILIES:
        return _ROLE_FAMILIES[role]
    if key.startswith("apgd"):
        return "apgd"
    if key.startswith("pgd") or key == "cw":
        return "pgd"
    return "fgsm" if key == SINGLE_STEP else "other"


def worst_case_attacks(cells: Sequence[dict], model: str, budget: float) -> list[str]:
    """The keys of the attacks whose results make ``model``'s worst case at ``budget``: every attack that ran
    there, the check-4 variants included (they run at the check budget only). The one count of attacks behind a
    worst case, in audit.md and the RobustBench entry alike."""
    keys = [c["attack"] for c in cells
            if c["model"] == model and math.isclose(float(c["budget"]), float(budget), rel_tol=1e-9, abs_tol=1e-12)]
    return list(dict.fromkeys(keys))


def curve_styles(keys: Sequence[str]) -> dict[str, dict]:
    """Plot style (colour, marker, line) per attack key: one colour family per attack family, shades in order.

    :data:`WORST_CASE` gets a thick black line, ``"plain " + WORST_CASE`` a dashed black one.
    """
    styles, used = {}, {}
    for key in keys:
        if key == WORST_CASE:
            styles[key] = dict(_WORST_CASE_STYLE)
            continue
        if key == f"plain {WORST_CASE}":
            styles[key] = dict(_PLAIN_WORST_CASE_STYLE)
            continue
        family = attack_family(key)
        shades, marker, linestyle = _FAMILY_STYLES[family]
        index = used.get(family, 0)
        used[family] = index + 1
        styles[key] = {"color": shades[index % len(shades)], "marker": marker, "linestyle": linestyle,
                       "linewidth": 1.5}
    return styles


@dataclass
class AuditReport:
    """Everything the audit measured. ``cells`` holds one row per (model, attack, budget) with the accuracy;
    ``worst_case`` {model: {budget: accuracy}} is the per-sample worst case over all attacks."""

    settings: dict
    checks: list[CheckResult]
    cells: list[dict]
    worst_case: dict
    notes: list[str]
    errors: list[str]
    seconds: float
    versions: dict = field(default_factory=dict)
    protocol: dict | None = None  # protocol.assess_protocol's; None: a report saved before it was recorded

    @property
    def verdict(self) -> str:
        """'fail' if any check failed or an attack could not run, else 'warn' if any warned, else 'pass'."""
        if self.errors:
            return FAIL
        verdict = worst(*(c.verdict for c in self.checks))
        return PASS if verdict == SKIP else verdict

    @property
    def passed(self) -> bool:
        return self.verdict != FAIL

    def check(self, id_: int) -> CheckResult:
        return next(c for c in self.checks if c.id == id_)

    def accuracy(self, attack: str, budget: float, model: str = "nrpm") -> float | None:
        """Accuracy of ``model`` ('nrpm' or 'plain') under ``attack`` (a key such as 'pgd') at ``budget``."""
        for cell in self.cells:
            if cell["model"] == model and cell["attack"] == attack and math.isclose(cell["budget"], budget,
                                                                                     abs_tol=1e-12):
                return cell["accuracy"]
        return None

    def to_dict(self) -> dict:
        return {"format": AUDIT_FORMAT, "verdict": self.verdict, "settings": self.settings,
                "checks": [asdict(c) for c in self.checks], "cells": self.cells,
                "worst_case": {m: [{"budget": b, "accuracy": a} for b, a in wc.items()]
                               for m, wc in self.worst_case.items()},
                "notes": self.notes, "errors": self.errors, "seconds": round(self.seconds, 2),
                "versions": self.versions, "protocol": self.protocol}

    @classmethod
    def from_dict(cls, data: dict) -> "AuditReport":
        """The report of a saved audit.json (``to_dict``'s output)."""
        return cls(settings=data["settings"], checks=[CheckResult(**c) for c in data["checks"]],
                   cells=data["cells"], worst_case={m: {w["budget"]: w["accuracy"] for w in ws}
                                                    for m, ws in data["worst_case"].items()},
                   notes=data["notes"], errors=data["errors"], seconds=data["seconds"],
                   versions=data.get("versions", {}), protocol=data.get("protocol"))

    def _table_attacks(self, model: str) -> list[str]:
        """The attack keys of ``model``'s sweep (not the extra check-3/4 runs), in the order they ran."""
        keys = []
        for cell in self.cells:
            if cell["model"] == model and cell["attack"] not in keys and not cell.get("extra"):
                keys.append(cell["attack"])
        return keys

    def _label(self, model: str, key: str) -> str:
        return next(c["label"] for c in self.cells if c["model"] == model and c["attack"] == key)

    # -------------------------------------------------------------------------------------- markdown
    def table_markdown(self) -> str:
        """Accuracy (%) per attack (rows) and budget (columns, clean first), NRPM rows then plain rows."""
        unit = self.settings.get("budget_unit", 1.0)
        budgets = list(self.settings["budgets"])
        header = ["attack", "model", "clean"] + [reports.format_budget(b, unit) for b in budgets]
        lines = ["| " + " | ".join(header) + " |", "|---|---|" + "---:|" * (len(header) - 2)]
        clean = self.settings.get("clean_accuracy", {})
        for model in ("nrpm", "plain"):
            keys = self._table_attacks(model)
            if not keys:
                continue
            name = self.settings["model_labels"][model]
            for key in keys:
                row = [self._label(model, key), name, format_pct(clean.get(model))]
                row += [format_num(self.accuracy(key, b, model)) for b in budgets]
                lines.append("| " + " | ".join(row) + " |")
            wc = self.worst_case.get(model, {})
            lines.append("| " + " | ".join([f"**worst case ({self._attack_count_text(model, budgets)})**", name,
                                            format_pct(clean.get(model))]
                                           + [f"**{format_num(wc.get(b))}**" for b in budgets]) + " |")
        return "\n".join(lines)

    def _attack_count_text(self, model: str, budgets) -> str:
        """'15 attacks', or '15 attacks; 18 at 0.1' where the check-4 variants (or the unbounded PGD) add some."""
        unit = self.settings.get("budget_unit", 1.0)
        counts = {b: len(worst_case_attacks(self.cells, model, b)) for b in budgets}
        base = min(counts.values(), default=0)
        more = [f"{n} at {reports.format_budget(b, unit)}" for b, n in counts.items() if n != base]
        return "; ".join([f"{base} attacks"] + more)

    def half_width(self) -> float:
        """The widest 95% (Wilson) half-width of the audited model's worst-case accuracies: their sampling noise."""
        return widest_half_width(self.worst_case.get("nrpm", {}).values(), self.settings["n"])

    def sample_text(self) -> str:
        """'100 samples (worst-case accuracy +-9.8 pts, 95% Wilson interval)': how far the numbers can be trusted."""
        half = 100 * self.half_width()
        return f"{self.settings['n']} samples (worst-case accuracy ±{half:.1f} pts, 95% Wilson interval)"

    def to_markdown(self) -> str:
        s = self.settings
        counts = {v: sum(c.verdict == v for c in self.checks) for v in (FAIL, WARN, PASS, SKIP)}
        tally = ", ".join(f"{n} {v}" for v, n in counts.items() if n)
        out = [f"# nrpm audit: {s['title']}, {s['model_labels']['nrpm']}", "",
               f"**Verdict: {verdict_text(self.verdict, self.protocol)}** "
               f"({tally}{'; attack errors' if self.errors else ''})", "",
               f"{self.sample_text()}, norm {s['norm']}, budgets "
               f"{', '.join(reports.format_budget(b, s.get('budget_unit', 1.0)) for b in s['budgets'])}; "
               f"{settings_text(s)}; seed {s['seed']}. "
               f"Accuracy tolerances pass within tol, warn within 2 tol, fail beyond (tol never below one "
               f"sample = {100 / max(s['n'], 1):.2g} pts).", "",
               "| # | check | verdict | numbers | tolerance |", "|---|---|---|---|---|"]
        for c in self.checks:
            out.append(f"| {c.id} | {c.title} | **{c.verdict}** | {c.summary} | {c.tolerance} |")
        out += ["", "## Accuracy (%)", "", "Robust accuracy: a sample counts as robust only if it is classified "
                "correctly both clean and under the attack. *Worst case*: robust against every attack run at "
                "that budget (including the check-4 variants, which run at the check budget only: its row counts them "
                "there).", "", self.table_markdown(), ""]
        if self.notes:
            out += ["## Notes", ""] + [f"* {n}" for n in self.notes] + [""]
        if self.errors:
            out += ["## Errors", ""] + [f"* {e}" for e in self.errors] + [""]
        out.append(self.run_time_text())
        return "\n".join(out) + "\n"

    def run_time_text(self) -> str:
        """'Run time 21 s on cpu.', plus the attacks' own total where cells came from an earlier, interrupted run
        (a resumed audit's run time alone would read as the cost of the whole audit)."""
        text = f"Run time {self.seconds:.0f} s on {self.settings.get('device', '?')}"
        cells = sum(float(c.get("seconds", 0.0)) for c in self.cells)
        if cells > self.seconds:
            text += (f" (this run); the attack cells took {cells:.0f} s in all, those resumed from cache.json at the "
                     f"time they took when they ran")
        return text + "."

    # -------------------------------------------------------------------------------------- files
    def curve_data(self) -> dict[str, tuple[str, list, list]]:
        """{curve key: (legend label, budgets, accuracies)}: every NRPM attack (clean first), then the NRPM and
        the plain model's worst cases. Keys are attack keys, :data:`WORST_CASE` and ``"plain " + WORST_CASE``."""
        budgets = [0.0] + list(self.settings["budgets"])
        unit = self.settings.get("budget_unit", 1.0)
        xs = [b * unit for b in budgets]
        clean = self.settings.get("clean_accuracy", {})
        curves = {}
        for key in self._table_attacks("nrpm"):
            ys = [clean.get("nrpm")] + [self.accuracy(key, b, "nrpm") for b in budgets[1:]]
            if all(v is not None for v in ys):
                curves[key] = (self._label("nrpm", key), xs, ys)
        for model, key, label in (("nrpm", WORST_CASE, WORST_CASE), ("plain", f"plain {WORST_CASE}",
                                                                     f"plain: {WORST_CASE}")):
            wc = self.worst_case.get(model)
            if wc:
                curves[key] = (label, xs, [clean.get(model)] + [wc[b] for b in budgets[1:]])
        return curves

    def plot(self, path) -> None:
        """Accuracy vs budget for every attack (NRPM model) plus the plain model's worst case."""
        curves = self.curve_data()
        if not curves:
            return
        styles = curve_styles(list(curves))
        unit = self.settings.get("budget_unit", 1.0)
        suffix = f" (x1/{unit:g})" if unit != 1 else ""
        title = f"{self.settings['title']}, {self.settings['model_labels']['nrpm']}"
        reports.plot_curves(path, {label: (xs, ys) for label, xs, ys in curves.values()}, title=title,
                            xlabel=f"{self.settings['norm']} budget{suffix}", legend_outside=True,
                            styles={label: styles[key] for key, (label, _xs, _ys) in curves.items()})

    def save(self, out_dir) -> dict[str, Path]:
        """Write audit.json, audit.md and audit.png to ``out_dir`` (atomically); returns the paths."""
        out = Path(out_dir)
        paths = {"json": out / "audit.json", "md": out / "audit.md", "png": out / "audit.png"}
        reports.write_json(paths["json"], self.to_dict())
        reports.atomic_write_text(paths["md"], self.to_markdown())
        self.plot(paths["png"])
        return paths


# ----------------------------------------------------------------------------------------------- collating
def collate_reports(paths: Sequence[str | Path]) -> str:
    """One markdown document from several audit.json files (or folders holding one): per run its verdict,
    check verdicts and accuracy table, and a summary table of the worst case per budget."""
    docs, unfinished = _read_reports(paths)
    lines = ["# Robustness audit tables", "",
             "Worst case = a sample counts as robust only if no attack of the audit broke it. "
             "Verdicts: see each run's audit.md for the numbers behind every check. A verdict of a reduced protocol "
             "(fewer samples, steps or attacks than the full audit) is not a full audit's.", "",
             "| run | model | verdict | protocol | samples | settings | checks 1-7 | clean | worst case per budget |",
             "|---|---|---|---|---:|---|---|---|---|"]
    for p, d in docs:
        lines += _summary_rows(p, d)
    unknown = [p.parent.name for p, d in docs if not d.get("protocol")]
    if unknown:  # older files: their settings are shown, but whether they were a full audit was not recorded
        lines += ["", "Protocol unknown (audit.json written before nrpm recorded whether a run was a full audit; "
                  "judge by the settings column, or rerun the same `nrpm audit` command): "
                  + ", ".join(f"`{name}`" for name in unknown) + "."]
    if unfinished:
        lines += ["", "Not finished (cache.json but no audit.json yet; rerun the same `nrpm audit` command to resume): "
                  + ", ".join(f"`{name}`" for name in unfinished) + "."]
    lines.append("")
    for p, d in docs:
        report = AuditReport.from_dict(d)
        lines += [f"## {p.parent.name}: {d['settings']['title']}, {d['settings']['model_labels']['nrpm']} — "
                  f"{verdict_text(report.verdict, report.protocol)}", "",
                  f"{report.sample_text()}; {settings_text(d['settings'])}.", "",
                  report.table_markdown(), ""]
        lines += [f"* {n}" for n in d["notes"] if "overstates" in n]
        lines.append("")
    return "\n".join(lines)


def _read_reports(paths) -> tuple[list[tuple[Path, dict]], list[str]]:
    """(path, data) of every finished report, and the names of folders holding only a cache (runs in progress)."""
    docs, unfinished = [], []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            if not (p / "audit.json").is_file() and (p / "cache.json").is_file():
                unfinished.append(p.name)  # a run in progress (or interrupted): listed, not an error
                continue
            p = p / "audit.json"
        if not p.is_file():
            raise FileNotFoundError(f"no audit report at {p} (expected an audit.json or a folder holding one)")
        data = reports.read_json(p)
        if data.get("format") != AUDIT_FORMAT:
            raise ValueError(f"{p} is not an nrpm audit report")
        if not is_protocol(data.get("protocol")):
            raise ValueError(f"{p} has a damaged 'protocol' entry (expected full, reductions and n): rerun the audit")
        docs.append((p, data))
    return docs, unfinished


def _samples_cell(n: int, worst_case: dict) -> str:
    """'100 (±9.8)': the sample count and the widest 95% half-width (points) of the worst-case accuracies."""
    half = widest_half_width(worst_case.values(), n)
    return f"{n} (±{100 * half:.1f})"


def _summary_rows(p: Path, d: dict) -> list[str]:
    s = d["settings"]
    unit = s.get("budget_unit", 1.0)
    checks = " ".join(f"{c['id']}:{c['verdict']}" for c in d["checks"])
    rows = []
    for tag in ("nrpm", "plain"):
        wc = {w["budget"]: w["accuracy"] for w in d["worst_case"].get(tag, [])}
        if not wc:
            continue
        per = ", ".join(f"{reports.format_budget(b, unit)}: {100 * v:.1f}" for b, v in wc.items())
        protocol = describe(d["protocol"]) if d.get("protocol") else "unknown"
        run = (d["verdict"].upper(), protocol, _samples_cell(s["n"], wc), settings_text(s), checks)
        rows.append(f"| {p.parent.name} | {s['title']}, {s['model_labels'][tag]} | "
                    + " | ".join(run if tag == "nrpm" else [""] * len(run)) + " | "
                    f"{format_pct(s['clean_accuracy'].get(tag))} | {per} |")
    return rows
