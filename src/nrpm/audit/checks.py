"""The audit's seven checks, each a small function over attack results returning a :class:`CheckResult`.

Like AutoAttack's ``checks.py``, every check states its numbers, a verdict (:data:`PASS`, :data:`WARN`,
:data:`FAIL` or :data:`SKIP`) and the tolerance it applied. Accuracy comparisons go through :func:`grade`: within
``tol`` passes, within ``2 * tol`` warns, beyond fails, with ``tol`` never below one sample (1/n).

Checks 1 and 2 look at the model itself; checks 3-7 read the per-sample results the runner collected, either
through ``runner.masks`` ({(model tag, attack key, rounded budget): robust mask}) and ``runner.cells``, or through
an accuracy lookup ``a(attack key, budget, tag="nrpm") -> accuracy | None`` (see :func:`accuracy_lookup`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

from .. import reports
from ..attacks.base import logits_2d
from .adaptive import lam_one

__all__ = ["PASS", "WARN", "FAIL", "SKIP", "Tolerances", "CheckResult", "grade", "grade_ratio", "worst",
           "fraction", "format_pts", "format_pct", "format_num", "accuracy_lookup", "WHITEBOX",
           "check_lam_and_determinism", "check_gradients", "check_budget_curve", "check_steps", "check_blackbox",
           "check_transfer", "check_autoattack", "single_step_notes"]

PASS, WARN, FAIL, SKIP = "pass", "warn", "fail", "skip"
_SEVERITY = {SKIP: 0, PASS: 1, WARN: 2, FAIL: 3}

#: the white-box attacks a black-box attack (check 5) must not beat
WHITEBOX = ("fgsm", "pgd", "apgd-ce", "apgd-dlr", "cw")

# check 5's black-box attacks and check 6's adaptive ones: (attack key, label)
_BLACKBOX = (("square", "Square"), ("spsa", "SPSA"), ("noise", "noise"))
_ADAPTIVE = (("transfer", "transfer from lam=1"), ("bpda", "BPDA"), ("detached", "IRLS detached"),
             ("smoothed-eps10", "smoothed IRLS eps x10"), ("smoothed-eps100", "smoothed IRLS eps x100"),
             ("smoothed-k1", "smoothed IRLS K=1"))

# attacks check 7 does not compare AutoAttack with: itself, the noise baseline and check 3 / 4's extra PGD runs
_NOT_COMPARED_WITH_AUTOATTACK = ("autoattack", "noise", "pgd-unbounded", "pgd-x4-steps", "pgd-x5-restarts",
                                 "pgd-half-step")


# ----------------------------------------------------------------------------------------------- tolerances
@dataclass
class Tolerances:
    """What each check accepts. Accuracy tolerances are fractions (0.02 = 2 percentage points); each passes
    within ``tol``, warns within ``2 * tol`` and fails beyond, with ``tol`` never below one sample (1/n)."""

    logits_rtol: float = 1e-4         # 1: max |logits(lam=1) - logits(base)| / (1 + max |logits(base)|)
    determinism_rtol: float = 1e-6    # 1: same between two identical forward passes (warn up to 1e-3)
    gradient_fraction: float = 0.99   # 2: fraction of samples with finite, non-zero gradient (warn down to 0.9)
    monotone: float = 0.02            # 3: accuracy may rise with the budget by at most this
    unbounded: float = 0.02           # 3: accuracy left at the unbounded budget
    steps: float = 0.02               # 4: extra accuracy drop from x4 steps / x5 restarts / half step
    blackbox: float = 0.02            # 5: lead of Square / SPSA / noise over the best white-box attack
    transfer: float = 0.02            # 6: lead of transfer / BPDA / detached / smoothed PGD over direct PGD
    autoattack: float = 0.02          # 7: AutoAttack vs the strongest other attack

    @classmethod
    def uniform(cls, tol: float, **overrides) -> "Tolerances":
        """All accuracy tolerances set to ``tol`` (a fraction), then ``overrides``."""
        names = ("monotone", "unbounded", "steps", "blackbox", "transfer", "autoattack")
        return cls(**{**{n: tol for n in names}, **overrides})


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


def accuracy_lookup(masks: dict) -> Callable[..., float | None]:
    """``a(key, budget, tag="nrpm")``: the accuracy of one (model, attack, budget) cell, None if it did not run."""
    accuracies = {cell: fraction(mask) for cell, mask in masks.items()}

    def a(key, budget, tag="nrpm"):
        return accuracies.get((tag, key, round(budget, 10)))

    return a


# ----------------------------------------------------------------------------------------------- check 1
def check_lam_and_determinism(model, base, layers, x, batch_size, device, tol: Tolerances) -> CheckResult:
    """1: two forward passes agree, and lam = 1 reproduces the plain ``base`` model (when there are robust layers)."""
    xb = x[:batch_size].to(device)
    numbers, verdicts, parts = {}, [], []
    with torch.no_grad():
        first, second = logits_2d(model, xb), logits_2d(model, xb)
        scale = 1.0 + first.abs().max().item()
        diff = (first - second).abs().max().item()
        flips = int((first.argmax(1) != second.argmax(1)).sum())
        numbers.update(determinism_max_abs_diff=diff, determinism_prediction_flips=flips)
        if math.isnan(diff) or flips or diff / scale > 1e-3:
            verdicts.append(FAIL)
        else:
            verdicts.append(PASS if diff / scale <= tol.determinism_rtol else WARN)
        parts.append(f"repeat forward: max |Δ| {diff:.2g}" + (f", {flips} predictions change" if flips else ""))
        if base is not None and layers:
            verdicts.append(_compare_lam_one_with_base(model, base, xb, tol, numbers, parts))
        elif base is not None:
            d = (first - logits_2d(base, xb)).abs().max().item()
            numbers.update(base_max_abs_diff=d)
            parts.insert(0, f"no robust layers; model vs base: max |Δlogit| {d:.2g}")
        else:
            parts.insert(0, "no robust layers: lam=1 part skipped")
    return CheckResult(1, "lam=1 reproduces the base model; deterministic", worst(*verdicts),
                       "; ".join(parts) + f" (first {len(xb)} samples)",
                       f"rel. logit diff <= {tol.logits_rtol:g} (warn <= 100x); repeat diff <= "
                       f"{tol.determinism_rtol:g} (warn <= 1e-3)", numbers)


def _compare_lam_one_with_base(model, base, xb, tol, numbers, parts) -> str:
    with lam_one(model):
        at_one = logits_2d(model, xb)
    ref = logits_2d(base, xb)
    scale = 1.0 + ref.abs().max().item()
    d = (at_one - ref).abs().max().item()
    flips = int((at_one.argmax(1) != ref.argmax(1)).sum())
    numbers.update(lam1_max_abs_diff=d, lam1_rel_diff=d / scale, lam1_prediction_flips=flips)
    parts.insert(0, f"lam=1 vs base: max |Δlogit| {d:.2g} (rel {d / scale:.1g})")
    if math.isnan(d) or flips:
        return FAIL
    return grade_ratio(d / scale, tol.logits_rtol)


# ----------------------------------------------------------------------------------------------- check 2
def check_gradients(model, x, y, batch_size, device, tol: Tolerances) -> CheckResult:
    """2: input gradients of the margin and cross-entropy losses are finite and non-zero."""
    ok_margin, ok_ce, nonfinite, norms = [], [], 0, []
    for i in range(0, len(x), batch_size):
        xb = x[i:i + batch_size].to(device).requires_grad_(True)
        yb = y[i:i + batch_size].to(device)
        gradients = _loss_gradients(model, xb, yb)
        if gradients is None:
            error = "the model output does not depend differentiably on the input"
            return CheckResult(2, "input gradients finite and non-zero", FAIL, error,
                               f"fraction >= {tol.gradient_fraction:g}", {"error": error})
        g_ce, g_m = gradients
        for g, sink in ((g_ce, ok_ce), (g_m, ok_margin)):
            if g is None:
                g = torch.zeros_like(xb)
            flat = g.detach().flatten(1)
            finite = torch.isfinite(flat).all(1)
            sink.append((finite & (flat.abs().sum(1) > 0)).cpu())
            if sink is ok_margin:
                nonfinite += int((~finite).sum())
                norms.append(flat.abs().sum(1)[finite].cpu())
    return _grade_gradients(torch.cat(ok_margin), torch.cat(ok_ce), nonfinite, norms, tol)


def _loss_gradients(model, xb, yb):
    """(cross-entropy gradient, margin-loss gradient) w.r.t. ``xb``; None if the output does not depend on it."""
    with torch.enable_grad():
        logits = logits_2d(model, xb)
        if not logits.requires_grad:
            return None
        ce = F.cross_entropy(logits, yb, reduction="sum")
        true = logits.gather(1, yb[:, None]).squeeze(1)
        other = logits.masked_fill(F.one_hot(yb, logits.shape[1]).bool(), -math.inf).amax(1)
        margin = (other - true).sum()
        g_ce, = torch.autograd.grad(ce, xb, retain_graph=True, allow_unused=True)
        g_m, = torch.autograd.grad(margin, xb, allow_unused=True)
    return g_ce, g_m


def _grade_gradients(ok_m, ok_c, nonfinite, norms, tol) -> CheckResult:
    frac_m, frac_c = fraction(ok_m), fraction(ok_c)
    n = len(ok_m)
    norms = torch.cat(norms) if norms else torch.zeros(0)
    median = norms.median().item() if len(norms) else float("nan")
    verdict = PASS if frac_m >= tol.gradient_fraction else (WARN if frac_m >= 0.9 else FAIL)
    if frac_c < 0.9 and verdict == PASS:
        verdict = WARN  # cross-entropy saturates: CE-based attacks see no gradient there
    if nonfinite:
        verdict = worst(verdict, WARN if nonfinite / n <= 1 - tol.gradient_fraction else FAIL)
    summary = (f"margin loss: {100 * frac_m:.1f}% ({int(ok_m.sum())}/{n}) finite and non-zero; cross-entropy: "
               f"{100 * frac_c:.1f}%; non-finite: {nonfinite}; median |grad|_1 {median:.3g}")
    return CheckResult(2, "input gradients finite and non-zero", verdict, summary,
                       f"fraction >= {tol.gradient_fraction:g} (warn >= 0.9)",
                       {"fraction_margin": frac_m, "fraction_ce": frac_c, "nonfinite": nonfinite,
                        "median_l1": median, "n": n})


# ----------------------------------------------------------------------------------------------- check 3
def check_budget_curve(runner, budgets, settings, unbounded_mask, unbounded_eps, n, tol: Tolerances) -> CheckResult:
    """3: no attack's accuracy rises with the budget, and PGD at the unbounded budget leaves ~0."""
    rise, who = _largest_rise(runner, budgets, settings["clean_accuracy"]["nrpm"])
    v_mono = grade(rise, tol.monotone, n)
    numbers = {"largest_rise": rise, "largest_rise_attack": who, "unbounded_eps": unbounded_eps}
    parts = [f"largest rise with the budget {format_pts(rise)} ({who})" if rise > 0 else "no attack's accuracy "
             "rises with the budget"]
    if unbounded_mask is None:
        v_unb = FAIL
        parts.append("unbounded PGD failed to run")
    else:
        acc = fraction(unbounded_mask)
        numbers["unbounded_accuracy"] = acc
        v_unb = grade(acc, tol.unbounded, n)
        parts.append(f"PGD at {settings['norm']} {unbounded_eps:g}: {format_pct(acc)}")
    return CheckResult(3, "accuracy falls with the budget, ~0 when unbounded", worst(v_mono, v_unb),
                       "; ".join(parts), f"rise <= {100 * tol.monotone:g} pts; unbounded <= "
                       f"{100 * tol.unbounded:g}%", numbers)


def _largest_rise(runner, budgets, clean) -> tuple[float, str]:
    """The largest accuracy increase from a smaller to a larger budget (clean first) over the NRPM attacks."""
    rises = []
    for (tag, key) in {(c["model"], c["attack"]) for c in runner.cells if not c.get("extra")}:
        if tag != "nrpm" or key == "noise":
            continue
        accs = [clean] + [fraction(runner.masks[(tag, key, round(b, 10))])
                          for b in budgets if (tag, key, round(b, 10)) in runner.masks]
        rise = max((accs[j] - accs[i] for i in range(len(accs)) for j in range(i + 1, len(accs))), default=0.0)
        label = next(c["label"] for c in runner.cells if c["model"] == tag and c["attack"] == key)
        rises.append((rise, label))
    return max(rises, default=(0.0, "-"))


# ----------------------------------------------------------------------------------------------- check 4
def check_steps(base_mask, variant_masks, variants, check_budget, settings, n, tol: Tolerances) -> CheckResult:
    """4: PGD with x4 steps, x5 restarts or half the step finds (almost) nothing on the samples PGD left."""
    if base_mask is None:
        return CheckResult(4, "more steps / restarts / finer steps", FAIL, "PGD failed to run",
                           f"drop <= {100 * tol.steps:g} pts")
    unit = settings.get("budget_unit", 1.0)
    base = fraction(base_mask)
    parts, verdicts, numbers = [], [], {"budget": check_budget, "pgd_accuracy": base}
    short = {"pgd-x4-steps": "x4 steps", "pgd-x5-restarts": "x5 restarts", "pgd-half-step": "half step, x2 steps"}
    for key, mask in variant_masks.items():
        if mask is None:
            verdicts.append(FAIL)
            parts.append(f"{short[key]}: failed")
            continue
        drop = base - fraction(mask)
        numbers[key] = {"accuracy_with_pgd": base - drop, "drop": drop}
        verdicts.append(grade(drop, tol.steps, n))
        parts.append(f"{short[key]} {format_pts(-drop)}")
    summary = (f"at {reports.format_budget(check_budget, unit)}: PGD {format_pct(base)}; accuracy change when the "
               f"samples PGD left are also attacked with " + ", ".join(parts))
    return CheckResult(4, "more steps (x4) / restarts (x5) / half step", worst(*verdicts), summary,
                       f"drop <= {100 * tol.steps:g} pts", numbers)


# ----------------------------------------------------------------------------------------------- check 5
def check_blackbox(a, budgets, n, tol: Tolerances, unit) -> CheckResult:
    """5: Square, SPSA and random noise are not stronger than the best white-box attack at any budget."""
    leads_by_attack, parts, numbers = {}, [], {}
    for key, label in _BLACKBOX:
        leads = []
        for b in budgets:
            wb = [a(k, b) for k in WHITEBOX if a(k, b) is not None]
            if not wb or a(key, b) is None:
                continue
            leads.append((min(wb) - a(key, b), b))
        if leads:
            lead, b = max(leads)
            leads_by_attack[key] = lead
            numbers[key] = {"largest_lead": lead, "budget": b}
            parts.append(f"{label} minus best white-box: {format_pts(-lead)} at {reports.format_budget(b, unit)}")
    if not leads_by_attack:
        return CheckResult(5, "black-box / noise not stronger than white-box", SKIP, "nothing to compare",
                           f"lead <= {100 * tol.blackbox:g} pts")
    verdict = worst(*(grade(v, tol.blackbox, n) for v in leads_by_attack.values()))
    return CheckResult(5, "black-box / noise not stronger than white-box", verdict,
                       "; ".join(parts) + " (the lowest over budgets; should be >= 0)",
                       f"lead <= {100 * tol.blackbox:g} pts", numbers)


# ----------------------------------------------------------------------------------------------- check 6
def check_transfer(a, budgets, n, tol: Tolerances, skipped, unit) -> CheckResult:
    """6: transfer from lam = 1, BPDA, detached-IRLS PGD and PGD on a smoothed IRLS estimator (eps x10, x100,
    K = 1; judged on the true model) are not stronger than direct PGD at any budget."""
    parts, verdicts, numbers = [], [], {}
    for key, label in _ADAPTIVE:
        if key in skipped:
            parts.append(f"{label}: skipped")
            continue
        leads = [(a("pgd", b) - a(key, b), b) for b in budgets if a("pgd", b) is not None and a(key, b) is not None]
        if not leads:
            verdicts.append(FAIL)
            parts.append(f"{label}: failed")
            continue
        lead, b = max(leads)
        numbers[key] = {"largest_lead": lead, "budget": b}
        verdicts.append(grade(lead, tol.transfer, n))
        parts.append(f"{label} minus direct PGD: {format_pts(-lead)} at {reports.format_budget(b, unit)}")
    return CheckResult(6, "transfer / BPDA / detached / smoothed IRLS not stronger than direct PGD", worst(*verdicts),
                       "; ".join(parts) + " (the lowest over budgets; should be >= 0)",
                       f"lead <= {100 * tol.transfer:g} pts", numbers)


# ----------------------------------------------------------------------------------------------- check 7
def check_autoattack(a, runner, budgets, n, tol: Tolerances, skipped, flags, unit) -> CheckResult:
    """7: AutoAttack agrees with the strongest other attack at every budget, and raised none of its flags."""
    if "autoattack" in skipped:
        return CheckResult(7, "AutoAttack agrees with the strongest attack", SKIP, skipped["autoattack"],
                           f"|diff| <= {100 * tol.autoattack:g} pts")
    others = sorted({k for (t, k, _b) in runner.masks if t == "nrpm" and k not in _NOT_COMPARED_WITH_AUTOATTACK})
    rows, verdicts = [], []
    for b in budgets:
        aa = a("autoattack", b)
        vals = [(a(k, b), k) for k in others if a(k, b) is not None]
        if aa is None or not vals:
            verdicts.append(FAIL)
            continue
        strongest, who = min(vals)
        rows.append({"budget": b, "autoattack": aa, "strongest": strongest, "strongest_attack": who})
        verdicts.append(grade(strongest - aa, tol.autoattack, n))           # AA much lower: the others are weak
        if aa - strongest > max(tol.autoattack, 1 / n) + 1e-9:
            verdicts.append(WARN)                                            # AA much weaker than our attacks
    if flags:
        verdicts.append(WARN)
    return CheckResult(7, "AutoAttack agrees with the strongest attack", worst(*verdicts),
                       _autoattack_summary(rows, flags, unit),
                       f"|diff| <= {100 * tol.autoattack:g} pts (AA lower: fail band; AA higher: warn)",
                       {"per_budget": rows, "flags": list(flags)})


def _autoattack_summary(rows, flags, unit) -> str:
    diffs = [r["autoattack"] - r["strongest"] for r in rows]
    largest = max(rows, key=lambda r: abs(r["autoattack"] - r["strongest"])) if rows else None
    summary = ("AutoAttack minus strongest other attack: " +
               ", ".join(f"{format_pts(d)} at {reports.format_budget(r['budget'], unit)}"
                         for d, r in zip(diffs, rows)))
    if largest:
        summary += f" (strongest there: {largest['strongest_attack']})"
    return summary + "; AutoAttack flags: " + ("; ".join(flags) if flags else "none")


# ----------------------------------------------------------------------------------------------- notes
def single_step_notes(a, worst_case, budgets, settings, tol: Tolerances, n) -> list[str]:
    """A note per (model, budget) where single-step FGSM overstates robust accuracy against the worst case."""
    notes = []
    unit = settings.get("budget_unit", 1.0)
    for tag in ("nrpm", "plain"):
        name = settings["model_labels"][tag]
        for b in budgets:
            fg, wc = a("fgsm", b, tag), worst_case.get(tag, {}).get(b)
            if fg is None or wc is None:
                continue
            if fg - wc > max(tol.steps, 1 / n) + 1e-9:
                notes.append(f"{name}, budget {reports.format_budget(b, unit)}: the single-step attack "
                             f"({settings['norm']} FGSM, the paper's) reports {format_pct(fg)}, but the strongest "
                             f"attacks leave {format_pct(wc)}: FGSM overstates robust accuracy by "
                             f"{100 * (fg - wc):.1f} points.")
    return notes
