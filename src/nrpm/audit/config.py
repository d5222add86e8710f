"""What an audit does: :class:`AuditConfig`, data only (numbers, names, flags).

The models an audit needs besides the audited one (``base_model``, ``plain_model``) are arguments of
:func:`~nrpm.audit.run_audit`, and where and how it writes (output folder, progress bar, log) is its
:class:`~nrpm.runs.RunContext`: a config can then be compared, copied and recorded as it is.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence


__all__ = ["AuditConfig", "Tolerances"]


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
class AuditConfig:
    """What :func:`~nrpm.audit.run_audit` does; every field is also a keyword of ``run_audit``.

    budgets: the attack budgets (> 0; clean accuracy is always measured), in input units.
    lam: set on the robust layers for the audit (float or {layer: lam}); restored afterwards. None: as is.
    plain_label: the name of the model shown next to the audited one in the table (``run_audit``'s
        ``plain_model``, default its ``base_model``: the audited model with the reprogramming undone).
    compare_plain: also run FGSM, PGD, APGD-CE/DLR, Square and AutoAttack on the plain model, for the table.
    steps, alpha, restarts: the PGD attack (alpha absolute; default 2.5 * eps / steps). The transfer, BPDA,
        detached, smoothed-IRLS and C&W-margin attacks use the same PGD (transfer and smoothed: one run, last
        iterate). apgd_steps, square_queries: APGD iterations and Square queries.
    spsa_steps, spsa_samples: the SPSA black-box attack (check 5): Adam steps and queries per step (antithetic
        pairs); a sample costs at most spsa_steps * (spsa_samples + 1) queries, 3250 by default (Square: 5000).
    skip_attacks: keys of optional attacks to leave out for a quick run, from ``optional_keys()``: 'cw', 'spsa',
        'smoothed-eps10', 'smoothed-eps100', 'smoothed-k1' (listed in the report's notes as skipped).
    autoattack: run check 7 (AutoAttack standard: APGD-CE, APGD-T, FAB-T, Square-5000); the slowest part.
    unbounded_eps: budget at which accuracy must reach ~0 (default: Linf 1.0, L2 sqrt(input size)).
    check_budget: budget for check 4 (default: the one where PGD accuracy is closest to half the clean one).
    survivors_only: run each black-box, adaptive and AutoAttack cell only on the samples its reference attack
        left at that budget (the strongest white-box attack, direct PGD, the strongest other cell), a sample
        already broken being broken in the worst case whatever else runs on it (:mod:`~nrpm.audit.survivors` says
        why no check gets weaker, and what such a cell's accuracy means). False: every attack on every
        clean-correct sample (needed only for check 7's "AutoAttack much weaker" warning and standalone curves).
    title, budget_unit: the report's title and the unit budgets are shown in (e.g. 255 for 8/255).
    dataset: the dataset's name ('mnist', 'cifar10', ...), whose protocol (PGD steps) the run is compared with
        to say whether it was a full audit (:mod:`~nrpm.audit.protocol`); None: this config's defaults.
    provenance: facts recorded in the report's settings as they are (the CLI's model, checkpoint and data
        descriptions); no number depends on them.
    """

    budgets: Sequence[float]
    norm: str = "Linf"
    lam: float | dict | None = None
    plain_label: str = "plain (lam=1)"
    compare_plain: bool = True
    steps: int = 40
    alpha: float | None = None
    restarts: int = 1
    apgd_steps: int = 100
    square_queries: int = 5000
    spsa_steps: int = 50
    spsa_samples: int = 64
    skip_attacks: Sequence[str] = ()
    autoattack: bool = True
    unbounded_eps: float | None = None
    check_budget: float | None = None
    tolerances: Tolerances | None = None
    seed: int = 0
    batch_size: int = 256
    survivors_only: bool = True
    title: str | None = None
    budget_unit: float = 1.0
    dataset: str | None = None
    provenance: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.norm not in ("Linf", "L2"):
            raise ValueError(f"norm must be 'Linf' or 'L2', got {self.norm!r}")
        self.budgets = sorted({float(b) for b in self.budgets if float(b) > 0})
        if not self.budgets:
            raise ValueError("give at least one budget > 0 (clean accuracy is always measured)")
        for name in ("steps", "restarts", "apgd_steps", "square_queries", "spsa_steps", "spsa_samples", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        for name in ("alpha", "unbounded_eps", "check_budget"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a number > 0, got {value!r}")
        if self.spsa_samples % 2:
            raise ValueError(f"spsa_samples must be even (antithetic pairs), got {self.spsa_samples}")
        self.skip_attacks = tuple(self.skip_attacks)  # their names are checked against the plan's (make_plan)
        if self.tolerances is None:
            self.tolerances = Tolerances()
