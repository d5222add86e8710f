"""The audit's seven checks, each a small function over attack results returning a :class:`CheckResult`.

Like AutoAttack's ``checks.py``, every check states its numbers, a verdict (:data:`PASS`, :data:`WARN`,
:data:`FAIL` or :data:`SKIP`) and the tolerance it applied. Accuracy comparisons go through :func:`grade`: within
``tol`` passes, within ``2 * tol`` warns, beyond fails, with ``tol`` never below one sample (1/n).

Every check takes one :class:`Evidence`, everything the audit measured: checks 1 and 2 read what it measured on
the model itself (:mod:`~nrpm.audit.probes`), checks 3-7 the per-sample results of the attacks
(``masks``: {(model tag, attack key, rounded budget): robust mask}, read through :meth:`Evidence.accuracy`).
The attacks each check compares are the catalogue's groups (:mod:`~nrpm.audit.plan`), never listed here.

A black-box, adaptive or AutoAttack cell usually ran only on the survivors of the attack it is compared with
(:mod:`~nrpm.audit.survivors`): its mask is then "reference and attack" per sample, so checks 5-7's formulas,
unchanged, read "the samples the attack broke that the reference left" (never less than the old difference of
standalone accuracies; the reasoning for each check is in that module).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping

import torch

from .. import reports
from .plan import ADAPTIVE, AUTOATTACK, BLACK_BOX, DIRECT_PGD, NOISE, SINGLE_STEP, WHITE_BOX, attack, keys_with_role
from .config import Tolerances
from .probes import ForwardProbe, GradientProbe
from .survivors import AA_NOT_COMPARED

__all__ = ["PASS", "WARN", "FAIL", "SKIP", "Tolerances", "CheckResult", "Evidence", "grade", "grade_ratio", "worst",
           "fraction", "format_pts", "format_pct", "format_num",
           "check_lam_and_determinism", "check_gradients", "CHECKS", "check_budget_curve", "check_steps", "check_blackbox",
           "check_transfer", "check_autoattack", "single_step_notes"]

PASS, WARN, FAIL, SKIP = "pass", "warn", "fail", "skip"
_SEVERITY = {SKIP: 0, PASS: 1, WARN: 2, FAIL: 3}

@dataclass
class CheckResult:
    """One check: its verdict, a one-line summary with the numbers, the numbers and the stated tolerance."""

    id: int
    title: str
    verdict: str
    summary: str
    tolerance: str
    numbers: dict = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------- grading
def grade(excess: float, tol: float, n: int) -> str:
    """pass within tol, warn within 2 tol, else fail; tol is at least one sample."""
    tol = max(tol, 1.0 / max(n, 1)) + 1e-9
    if excess <= tol:
        return PASS
    return WARN if excess <= 2 * tol else FAIL


def grade_ratio(value: float, limit: float) -> str:
    """pass up to ``limit``, warn up to 100 x ``limit``, else fail (for relative logit differences)."""
    if value <= limit:
        return PASS
    return WARN if value <= 100 * limit else FAIL


def worst(*verdicts: str | None) -> str:
    """The most severe verdict (fail > warn > pass > skip); SKIP when there is none."""
    verdicts = [v for v in verdicts if v is not None]
    return max(verdicts, key=_SEVERITY.__getitem__) if verdicts else SKIP


# ----------------------------------------------------------------------------------------------- numbers
def fraction(mask: torch.Tensor) -> float:
    """Fraction of True entries, exactly (correct / n), not a float32 mean."""
    return int(mask.sum()) / len(mask) if len(mask) else 0.0


def format_pts(fraction_: float) -> str:
    """A signed difference in percentage points, '+1.0 pts'."""
    value = round(100 * fraction_, 1)
    return f"{value + 0.0:+.1f} pts"  # + 0.0: no "-0.0"


def format_pct(fraction_) -> str:
    return "n/a" if fraction_ is None else f"{100 * fraction_:.1f}%"


def format_num(fraction_) -> str:
    """An accuracy as a table entry (percent without the sign); '…' when missing."""
    return "…" if fraction_ is None else f"{100 * fraction_:.1f}"


# ----------------------------------------------------------------------------------------------- the evidence
@dataclass(frozen=True)
class Evidence:
    """Everything the audit measured, the one input of every check.

    ``masks``: {(model tag, attack key, budget rounded to 10 digits): per-sample robust mask}; ``swept``:
    {(model tag, attack key): table label} of the sweeps (not check 3 / 4's extra runs); ``forward`` and
    ``gradients``: checks 1 and 2's probes; ``pgd_mask`` / ``variant_masks``: check 4's PGD at ``check_budget``
    and its variants (each on the samples PGD left); ``unbounded_mask``: check 3's PGD at ``unbounded_eps``;
    ``skipped``: {attack key: why}; ``autoattack_flags``: AutoAttack's own warnings (check 7).
    """

    budgets: tuple[float, ...] = ()
    n: int = 0
    tol: Tolerances = field(default_factory=Tolerances)
    norm: str = "Linf"
    budget_unit: float = 1.0
    model_labels: Mapping[str, str] = field(default_factory=dict)
    clean_accuracy: Mapping[str, float] = field(default_factory=dict)
    masks: Mapping[tuple, torch.Tensor] = field(default_factory=dict)
    swept: Mapping[tuple[str, str], str] = field(default_factory=dict)
    skipped: Mapping[str, str] = field(default_factory=dict)
    forward: ForwardProbe | None = None
    gradients: GradientProbe | None = None
    check_budget: float | None = None
    pgd_mask: torch.Tensor | None = None
    variant_masks: Mapping[str, torch.Tensor | None] = field(default_factory=dict)
    unbounded_eps: float = 1.0
    unbounded_mask: torch.Tensor | None = None
    autoattack_flags: tuple[str, ...] = ()

    def accuracy(self, key: str, budget: float, tag: str = "nrpm") -> float | None:
        """The accuracy of one (model, attack, budget) cell; None if it did not run."""
        mask = self.masks.get((tag, key, round(budget, 10)))
        return None if mask is None else fraction(mask)

    def budget_text(self, budget: float) -> str:
        return reports.format_budget(budget, self.budget_unit)


# ----------------------------------------------------------------------------------------------- check 1
def check_lam_and_determinism(ev: Evidence) -> CheckResult:
    """1: two forward passes agree, and lam = 1 reproduces the plain base model (when there are robust layers)."""
    probe, tol = ev.forward, ev.tol
    ratio = probe.repeat_diff / probe.scale
    numbers = {"determinism_max_abs_diff": probe.repeat_diff, "determinism_prediction_flips": probe.repeat_flips}
    if math.isnan(probe.repeat_diff) or probe.repeat_flips or ratio > 1e-3:
        verdicts = [FAIL]
    else:
        verdicts = [PASS if ratio <= tol.determinism_rtol else WARN]
    flips = f", {probe.repeat_flips} predictions change" if probe.repeat_flips else ""
    parts = [f"repeat forward: max |Δ| {probe.repeat_diff:.2g}{flips}"]
    if probe.lam1_diff is not None:
        d, rel = probe.lam1_diff, probe.lam1_diff / probe.lam1_scale
        numbers.update(lam1_max_abs_diff=d, lam1_rel_diff=rel, lam1_prediction_flips=probe.lam1_flips)
        parts.insert(0, f"lam=1 vs base: max |Δlogit| {d:.2g} (rel {rel:.1g})")
        verdicts.append(FAIL if math.isnan(d) or probe.lam1_flips else grade_ratio(rel, tol.logits_rtol))
    elif probe.base_diff is not None:
        numbers.update(base_max_abs_diff=probe.base_diff)
        parts.insert(0, f"no robust layers; model vs base: max |Δlogit| {probe.base_diff:.2g}")
    else:
        parts.insert(0, "no robust layers: lam=1 part skipped")
    return CheckResult(1, "lam=1 reproduces the base model; deterministic", worst(*verdicts),
                       "; ".join(parts) + f" (first {probe.samples} samples)",
                       f"rel. logit diff <= {tol.logits_rtol:g} (warn <= 100x); repeat diff <= "
                       f"{tol.determinism_rtol:g} (warn <= 1e-3)", numbers)


# ----------------------------------------------------------------------------------------------- check 2
def check_gradients(ev: Evidence) -> CheckResult:
    """2: input gradients of the margin and cross-entropy losses are finite and non-zero."""
    probe, tol = ev.gradients, ev.tol
    title, tolerance = "input gradients finite and non-zero", f"fraction >= {tol.gradient_fraction:g}"
    if probe.error is not None:
        return CheckResult(2, title, FAIL, probe.error, tolerance, {"error": probe.error})
    frac_m, frac_c, n = fraction(probe.ok_margin), fraction(probe.ok_ce), len(probe.ok_margin)
    median = probe.norms.median().item() if len(probe.norms) else float("nan")
    verdict = PASS if frac_m >= tol.gradient_fraction else (WARN if frac_m >= 0.9 else FAIL)
    if frac_c < 0.9 and verdict == PASS:
        verdict = WARN  # cross-entropy saturates: CE-based attacks see no gradient there
    if probe.nonfinite:
        verdict = worst(verdict, WARN if probe.nonfinite / n <= 1 - tol.gradient_fraction else FAIL)
    summary = (f"margin loss: {100 * frac_m:.1f}% ({int(probe.ok_margin.sum())}/{n}) finite and non-zero; "
               f"cross-entropy: {100 * frac_c:.1f}%; non-finite: {probe.nonfinite}; median |grad|_1 {median:.3g}")
    return CheckResult(2, title, verdict, summary, tolerance + " (warn >= 0.9)",
                       {"fraction_margin": frac_m, "fraction_ce": frac_c, "nonfinite": probe.nonfinite,
                        "median_l1": median, "n": n})


# ----------------------------------------------------------------------------------------------- check 3
def check_budget_curve(ev: Evidence) -> CheckResult:
    """3: no attack's accuracy rises with the budget, and PGD at the unbounded budget leaves ~0."""
    tol = ev.tol
    rise, who = _largest_rise(ev)
    v_mono = grade(rise, tol.monotone, ev.n)
    numbers = {"largest_rise": rise, "largest_rise_attack": who, "unbounded_eps": ev.unbounded_eps}
    parts = [f"largest rise with the budget {format_pts(rise)} ({who})" if rise > 0 else "no attack's accuracy "
             "rises with the budget"]
    if ev.unbounded_mask is None:
        v_unb = FAIL
        parts.append("unbounded PGD failed to run")
    else:
        acc = fraction(ev.unbounded_mask)
        numbers["unbounded_accuracy"] = acc
        v_unb = grade(acc, tol.unbounded, ev.n)
        parts.append(f"PGD at {ev.norm} {ev.unbounded_eps:g}: {format_pct(acc)}")
    return CheckResult(3, "accuracy falls with the budget, ~0 when unbounded", worst(v_mono, v_unb),
                       "; ".join(parts), f"rise <= {100 * tol.monotone:g} pts; unbounded <= "
                       f"{100 * tol.unbounded:g}%", numbers)


def _largest_rise(ev: Evidence) -> tuple[float, str]:
    """The largest accuracy increase from a smaller to a larger budget (clean first) over the NRPM attacks
    (random noise is no attack: its accuracy may rise by chance)."""
    rises, noise = [], set(keys_with_role(NOISE))
    for (tag, key), label in ev.swept.items():
        if tag != "nrpm" or key in noise:
            continue
        accs = [ev.clean_accuracy["nrpm"]] + [a for a in (ev.accuracy(key, b) for b in ev.budgets) if a is not None]
        rise = max((accs[j] - accs[i] for i in range(len(accs)) for j in range(i + 1, len(accs))), default=0.0)
        rises.append((rise, label))
    return max(rises, default=(0.0, "-"))


# ----------------------------------------------------------------------------------------------- check 4
def check_steps(ev: Evidence) -> CheckResult:
    """4: PGD with x4 steps, x5 restarts or half the step finds (almost) nothing on the samples PGD left."""
    tol = ev.tol
    if ev.pgd_mask is None:
        return CheckResult(4, "more steps / restarts / finer steps", FAIL, "PGD failed to run",
                           f"drop <= {100 * tol.steps:g} pts")
    base = fraction(ev.pgd_mask)
    parts, verdicts, numbers = [], [], {"budget": ev.check_budget, "pgd_accuracy": base}
    for key, mask in ev.variant_masks.items():
        short = attack(key).label
        if mask is None:
            verdicts.append(FAIL)
            parts.append(f"{short}: failed")
            continue
        drop = base - fraction(mask)
        numbers[key] = {"accuracy_with_pgd": base - drop, "drop": drop}
        verdicts.append(grade(drop, tol.steps, ev.n))
        parts.append(f"{short} {format_pts(-drop)}")
    summary = (f"at {ev.budget_text(ev.check_budget)}: PGD {format_pct(base)}; accuracy change when the "
               f"samples PGD left are also attacked with " + ", ".join(parts))
    return CheckResult(4, "more steps (x4) / restarts (x5) / half step", worst(*verdicts), summary,
                       f"drop <= {100 * tol.steps:g} pts", numbers)


# ----------------------------------------------------------------------------------------------- check 5
def check_blackbox(ev: Evidence) -> CheckResult:
    """5: the black-box attacks and random noise are not stronger than the best white-box attack at any budget."""
    tol, whitebox = ev.tol, keys_with_role(WHITE_BOX)
    leads_by_attack, parts, numbers = {}, [], {}
    for key in keys_with_role(BLACK_BOX) + keys_with_role(NOISE):
        leads = []
        for b in ev.budgets:
            wb = [ev.accuracy(k, b) for k in whitebox if ev.accuracy(k, b) is not None]
            if not wb or ev.accuracy(key, b) is None:
                continue
            leads.append((min(wb) - ev.accuracy(key, b), b))
        if leads:
            lead, b = max(leads)
            leads_by_attack[key] = lead
            numbers[key] = {"largest_lead": lead, "budget": b}
            parts.append(f"{attack(key).label} minus best white-box: {format_pts(-lead)} at {ev.budget_text(b)}")
    if not leads_by_attack:
        return CheckResult(5, "black-box / noise not stronger than white-box", SKIP, "nothing to compare",
                           f"lead <= {100 * tol.blackbox:g} pts")
    verdict = worst(*(grade(v, tol.blackbox, ev.n) for v in leads_by_attack.values()))
    return CheckResult(5, "black-box / noise not stronger than white-box", verdict,
                       "; ".join(parts) + " (the lowest over budgets; should be >= 0)",
                       f"lead <= {100 * tol.blackbox:g} pts", numbers)


# ----------------------------------------------------------------------------------------------- check 6
def check_transfer(ev: Evidence) -> CheckResult:
    """6: the adaptive attacks (transfer from lam = 1, BPDA, detached-IRLS PGD, PGD on a smoothed IRLS estimator,
    judged on the true model) are not stronger than direct PGD at any budget."""
    parts, verdicts, numbers = [], [], {}
    for key in keys_with_role(ADAPTIVE):
        label = attack(key).label
        if key in ev.skipped:
            parts.append(f"{label}: skipped")
            continue
        leads = [(ev.accuracy(DIRECT_PGD, b) - ev.accuracy(key, b), b) for b in ev.budgets
                 if ev.accuracy(DIRECT_PGD, b) is not None and ev.accuracy(key, b) is not None]
        if not leads:
            verdicts.append(FAIL)
            parts.append(f"{label}: failed")
            continue
        lead, b = max(leads)
        numbers[key] = {"largest_lead": lead, "budget": b}
        verdicts.append(grade(lead, ev.tol.transfer, ev.n))
        parts.append(f"{label} minus direct PGD: {format_pts(-lead)} at {ev.budget_text(b)}")
    return CheckResult(6, "transfer / BPDA / detached / smoothed IRLS not stronger than direct PGD", worst(*verdicts),
                       "; ".join(parts) + " (the lowest over budgets; should be >= 0)",
                       f"lead <= {100 * ev.tol.transfer:g} pts", numbers)


# ----------------------------------------------------------------------------------------------- check 7
def check_autoattack(ev: Evidence) -> CheckResult:
    """7: AutoAttack agrees with the strongest other attack at every budget, and raised none of its flags."""
    tol, (aa_key,) = ev.tol, keys_with_role(AUTOATTACK)
    if aa_key in ev.skipped:
        return CheckResult(7, "AutoAttack agrees with the strongest attack", SKIP, ev.skipped[aa_key],
                           f"|diff| <= {100 * tol.autoattack:g} pts")
    # not compared: AutoAttack itself, the noise baseline and check 3 / 4's extra PGD runs
    excluded = set(keys_with_role(*AA_NOT_COMPARED))
    others = sorted({k for (t, k, _b) in ev.masks if t == "nrpm" and k not in excluded})
    rows, verdicts = [], []
    for b in ev.budgets:
        aa = ev.accuracy(aa_key, b)
        vals = [(ev.accuracy(k, b), k) for k in others if ev.accuracy(k, b) is not None]
        if aa is None or not vals:
            verdicts.append(FAIL)
            continue
        strongest, who = min(vals)
        rows.append({"budget": b, "autoattack": aa, "strongest": strongest, "strongest_attack": who})
        verdicts.append(grade(strongest - aa, tol.autoattack, ev.n))        # AA much lower: the others are weak
        if aa - strongest > max(tol.autoattack, 1 / ev.n) + 1e-9:
            verdicts.append(WARN)                                            # AA much weaker than our attacks
    if ev.autoattack_flags:
        verdicts.append(WARN)
    return CheckResult(7, "AutoAttack agrees with the strongest attack", worst(*verdicts),
                       _autoattack_summary(ev, rows),
                       f"|diff| <= {100 * tol.autoattack:g} pts (AA lower: fail band; AA higher: warn)",
                       {"per_budget": rows, "flags": list(ev.autoattack_flags)})


def _autoattack_summary(ev: Evidence, rows) -> str:
    diffs = [r["autoattack"] - r["strongest"] for r in rows]
    largest = max(rows, key=lambda r: abs(r["autoattack"] - r["strongest"])) if rows else None
    summary = ("AutoAttack minus strongest other attack: " +
               ", ".join(f"{format_pts(d)} at {ev.budget_text(r['budget'])}" for d, r in zip(diffs, rows)))
    if largest:
        summary += f" (strongest there: {largest['strongest_attack']})"
    flags = ev.autoattack_flags
    return summary + "; AutoAttack flags: " + ("; ".join(flags) if flags else "none")


#: the seven checks, in order
CHECKS = (check_lam_and_determinism, check_gradients, check_budget_curve, check_steps, check_blackbox,
          check_transfer, check_autoattack)


# ----------------------------------------------------------------------------------------------- notes
def single_step_notes(ev: Evidence, worst_case: Mapping[str, Mapping[float, float]]) -> list[str]:
    """A note per (model, budget) where single-step FGSM overstates robust accuracy against the worst case."""
    notes = []
    for tag in ("nrpm", "plain"):
        for b in ev.budgets:
            fg, wc = ev.accuracy(SINGLE_STEP, b, tag), worst_case.get(tag, {}).get(b)
            if fg is None or wc is None:
                continue
            if fg - wc > max(ev.tol.steps, 1 / ev.n) + 1e-9:
                notes.append(f"{ev.model_labels[tag]}, budget {ev.budget_text(b)}: the single-step attack "
                             f"({ev.norm} FGSM, the paper's) reports {format_pct(fg)}, but the strongest "
                             f"attacks leave {format_pct(wc)}: FGSM overstates robust accuracy by "
                             f"{100 * (fg - wc):.1f} points.")
    return notes
