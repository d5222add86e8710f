"""Did an audit run the full protocol? :func:`assess_protocol` compares a run's settings with the protocol's
defaults and lists how it was reduced, so that a quick run's PASS never reads like a full audit's.

The full protocol is :class:`~nrpm.audit.config.AuditConfig`'s defaults (PGD steps per dataset: the paper's 40 on
MNIST, 20 on CIFAR-10 / CIFAR-100 / SVHN), AutoAttack on, no optional attack switched off, the default tolerances
and at least :data:`MIN_SAMPLES` samples. Attacks the audit *cannot* run on a model (AutoAttack on fewer than 4
classes, check 6 without robust layers) are not reductions: they are in the report's notes, and no setting would
run them. Settings above the defaults (more steps, more samples) are not reductions either.

:data:`MIN_SAMPLES` is 100: the 95% interval of an accuracy measured on n samples is up to ~1/sqrt(n) wide
(+-9.8 points at n = 100, +-21 at n = 20), so below 100 samples the audit's 2-point tolerances compare numbers
whose noise is several times larger. The report states the interval's half-width either way
(:func:`wilson_half_width`).

The decision is stored in audit.json as ``"protocol"`` (:func:`assess_protocol`'s dict); a report saved before
it has none, and reads as "protocol unknown" (:func:`describe`).
"""

from __future__ import annotations

import math
from dataclasses import fields

from .config import AuditConfig, Tolerances

__all__ = ["MIN_SAMPLES", "DATASET_STEPS", "protocol_steps", "assess_protocol", "wilson_half_width",
           "widest_half_width", "is_protocol", "describe", "verdict_text", "settings_text"]

#: below this many samples a verdict is 'reduced': its accuracies' 95% interval is wider than ~+-10 points
MIN_SAMPLES = 100
#: the paper's PGD steps per dataset (CIFAR-100 and SVHN, not in the paper, take CIFAR-10's)
DATASET_STEPS = {"mnist": 40, "cifar10": 20, "cifar100": 20, "svhn": 20}
_Z95 = 1.959963984540054  # the normal quantile of a two-sided 95% interval

# (setting, what it counts): the settings whose values below the default weaken an attack, and the attack they
# belong to (None: always ran), so that a skipped attack's settings are not listed as a second reduction
_BUDGETS = (("restarts", "PGD restarts", None), ("apgd_steps", "APGD steps", None),
            ("square_queries", "Square queries", None), ("spsa_steps", "SPSA steps", "spsa"),
            ("spsa_samples", "SPSA queries per step", "spsa"))


def protocol_steps(dataset: str | None) -> int:
    """The protocol's PGD steps for ``dataset`` (a dataset name such as 'cifar10'; None: AuditConfig's default)."""
    return DATASET_STEPS.get(dataset or "", _defaults()["steps"])


def _defaults() -> dict:
    return {f.name: f.default for f in fields(AuditConfig) if not callable(f.default)}


def wilson_half_width(accuracy: float, n: int) -> float:
    """Half the width of the 95% Wilson interval of an accuracy measured on ``n`` samples (a fraction)."""
    if n <= 0:
        return 1.0
    z2 = _Z95 ** 2
    return _Z95 * math.sqrt(accuracy * (1 - accuracy) / n + z2 / (4 * n * n)) / (1 + z2 / n)


def widest_half_width(accuracies, n: int) -> float:
    """The largest 95% half-width over these accuracies (that of 50% when there are none: the widest)."""
    return max((wilson_half_width(a, n) for a in accuracies), default=wilson_half_width(0.5, n))


def assess_protocol(settings: dict, worst_case: dict | None = None) -> dict:
    """``{"full", "reductions", "n", "min_samples", "worst_case_ci95"}`` of a run with these report settings.

    ``reductions``: one phrase per way the run fell short of the protocol ("no AutoAttack", "5 PGD steps instead
    of 40", "20 samples (< 100)"), empty for a full run. ``worst_case_ci95``: the largest 95% half-width of the
    audited model's worst-case accuracy over the budgets (``worst_case`` {model: {budget: accuracy}})."""
    n = int(settings["n"])
    reductions = _attack_reductions(settings) + _setting_reductions(settings) + _tolerance_reductions(settings)
    if n < MIN_SAMPLES:
        reductions.append(f"{n} samples (< {MIN_SAMPLES})")
    accuracies = (worst_case or {}).get("nrpm", {}).values()
    return {"full": not reductions, "reductions": reductions, "n": n, "min_samples": MIN_SAMPLES,
            "worst_case_ci95": round(widest_half_width(accuracies, n), 4)}


def _attack_reductions(settings: dict) -> list[str]:
    out = [] if settings.get("autoattack", True) else ["no AutoAttack"]
    skipped = list(settings.get("skip_attacks") or [])
    if skipped:
        out.append(f"skipped {', '.join(skipped)}")
    return out


def _setting_reductions(settings: dict) -> list[str]:
    defaults, skipped = _defaults(), set(settings.get("skip_attacks") or [])
    out = []
    steps = protocol_steps(settings.get("dataset"))
    if settings["steps"] < steps:
        out.append(f"{settings['steps']} PGD steps instead of {steps}")
    for name, what, attack in _BUDGETS:
        value = settings.get(name)
        if value is not None and attack not in skipped and value < defaults[name]:
            out.append(f"{value} {what} instead of {defaults[name]}")
    return out


def _tolerance_reductions(settings: dict) -> list[str]:
    """Looser accuracy tolerances let a weaker result pass: a reduction as much as fewer steps."""
    given, default = settings.get("tolerances") or {}, Tolerances()
    loose = [name for name, value in given.items()
             if isinstance(value, (int, float)) and value > getattr(default, name, math.inf)]
    return [f"looser tolerances ({', '.join(loose)})"] if loose else []


def is_protocol(value) -> bool:
    """Whether ``value`` reads as :func:`assess_protocol`'s dict, or is None (a report saved before it)."""
    if value is None:
        return True
    return (isinstance(value, dict) and isinstance(value.get("full"), bool) and isinstance(value.get("n"), int)
            and isinstance(value.get("reductions"), list))


# ----------------------------------------------------------------------------------------------- wording
def describe(protocol: dict | None) -> str:
    """'full protocol, 100 samples', 'reduced protocol: ...' or, for a report saved before protocols were
    recorded, 'protocol unknown (...)'."""
    if not protocol:
        return "protocol unknown (audit.json from before the protocol was recorded)"
    if protocol["full"]:
        return f"full protocol, {protocol['n']} samples"
    return f"reduced protocol: {', '.join(protocol['reductions'])}"


def verdict_text(verdict: str, protocol: dict | None) -> str:
    """'PASS (reduced protocol: no AutoAttack, 20 samples (< 100)) — not a full audit', 'FAIL (full protocol, 100
    samples)': the verdict never without what it stands on."""
    tail = " — not a full audit" if protocol and not protocol["full"] else ""
    return f"{verdict.upper()} ({describe(protocol)}){tail}"


def settings_text(s: dict) -> str:
    """The attack settings of a report in one phrase (the report's settings line and ``audit-table``)."""
    # SPSA's settings only where it ran (reports saved before SPSA joined the audit have none)
    ran_spsa = "spsa_steps" in s and "spsa" not in (s.get("skip_attacks") or [])
    spsa = f"SPSA {s['spsa_steps']} steps x {s['spsa_samples']} queries, " if ran_spsa else ""
    skipped = f", skipped {', '.join(s['skip_attacks'])}" if s.get("skip_attacks") else ""
    return (f"PGD {s['steps']} steps x {s['restarts']} restart(s), APGD {s['apgd_steps']} steps, Square "
            f"{s['square_queries']} queries, {spsa}AutoAttack {'on' if s['autoattack'] else 'off'}{skipped}")
