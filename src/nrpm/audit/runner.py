"""Running the audit: :class:`AuditConfig`, the attack plan and :func:`run_audit`.

:func:`run_audit` plans the attacks (:class:`AuditConfig` -> models, attack specs, skipped attacks), runs them as
cells through :class:`~nrpm.audit.cells.CellRunner` (per-sample masks, resumable cache), grades the results with
:mod:`nrpm.audit.checks` and returns an :class:`~nrpm.audit.report.AuditReport`.

The attacks run in a fixed order (checks 1 and 2, the budget sweep with PGD first, check 4's PGD variants, the
unbounded PGD, AutoAttack, then the plain model), each with the configured seed, so a run is reproducible.
Attacks added later come at the end of the sweeps, under new cache keys, so an older ``cache.json`` still
resumes: its cells are reused and only the new attacks run.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch
from torch import nn

from .. import attacks as A
from ..attacks.base import logits_2d
from ..nn import lam_override
from ..provenance import versions
from ..reprogram import robust_layers, undo_reprogramming
from ..validation import check_batch
from .adaptive import SMOOTHINGS, bpda_pgd, detached_irls_pgd, pgd_class, smoothed_pgd, transfer_pgd
from .cells import AttackSpec, CellRunner, fingerprint
from .checks import (CheckResult, Tolerances, accuracy_lookup, check_autoattack, check_blackbox, check_budget_curve,
                     check_gradients, check_lam_and_determinism, check_steps, check_transfer, fraction,
                     single_step_notes)
from .report import AuditReport

__all__ = ["AuditConfig", "run_audit", "capture_autoattack_flags", "OPTIONAL_ATTACKS"]

#: attacks that ``skip_attacks`` may switch off for a quick run (the others are what checks 3-7 stand on)
OPTIONAL_ATTACKS = ("cw", "spsa", *SMOOTHINGS)

# the budget sweep of the audited model (PGD first: it picks check 4's budget) and of the plain model; newer
# attacks are appended, so the cells of older caches keep their keys and order
_SWEEP = ("pgd", "fgsm", "apgd-ce", "apgd-dlr", "square", "noise", "transfer", "bpda", "detached",
          "cw", "spsa", *SMOOTHINGS)
_PLAIN_SWEEP = ("fgsm", "pgd", "apgd-ce", "apgd-dlr", "square", "cw", "spsa")


# ----------------------------------------------------------------------------------------------- configuration
@dataclass
class AuditConfig:
    """What :func:`run_audit` does; every field is also a keyword of ``run_audit``.

    budgets: the attack budgets (> 0; clean accuracy is always measured), in input units.
    lam: set on the robust layers for the audit (float or {layer: lam}); restored afterwards. None: as is.
    base_model: the plain reference (lam = 1) model; default: a deep copy of the model with the reprogramming
        undone, or none for a model without robust layers (then checks 1's lam part and 6 skip).
    plain_model, plain_label: the model shown next to the audited one in the table (default: ``base_model``),
        e.g. the original checkpoint when the audited weights were fine-tuned (paradigm 3).
    compare_plain: also run FGSM, PGD, APGD-CE/DLR, Square and AutoAttack on the plain model, for the table.
    steps, alpha, restarts: the PGD attack (alpha absolute; default 2.5 * eps / steps). The transfer, BPDA,
        detached, smoothed-IRLS and C&W-margin attacks use the same PGD (transfer and smoothed: one run, last
        iterate). apgd_steps, square_queries: APGD iterations and Square queries.
    spsa_steps, spsa_samples: the SPSA black-box attack (check 5): Adam steps and queries per step (antithetic
        pairs); a sample costs at most spsa_steps * (spsa_samples + 1) queries, 3250 by default (Square: 5000).
    skip_attacks: keys of optional attacks to leave out for a quick run, from ``OPTIONAL_ATTACKS``: 'cw', 'spsa',
        'smoothed-eps10', 'smoothed-eps100', 'smoothed-k1' (listed in the report's notes as skipped).
    autoattack: run check 7 (AutoAttack standard: APGD-CE, APGD-T, FAB-T, Square-5000); the slowest part.
    unbounded_eps: budget at which accuracy must reach ~0 (default: Linf 1.0, L2 sqrt(input size)).
    check_budget: budget for check 4 (default: the one where PGD accuracy is closest to half the clean one).
    cache_path: JSON file of per-sample results written after every cell; a rerun reuses finished cells.
    title, budget_unit: the report's title and the unit budgets are shown in (e.g. 255 for 8/255).
    progress, log: a progress bar, and a function receiving progress messages (resuming, attack errors).
    """

    budgets: Sequence[float]
    norm: str = "Linf"
    lam: float | dict | None = None
    base_model: nn.Module | None = None
    plain_model: nn.Module | None = None
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
    cache_path: str | Path | None = None
    title: str | None = None
    budget_unit: float = 1.0
    progress: bool = False
    log: Callable[[str], None] | None = None

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
        self.skip_attacks = tuple(self.skip_attacks)
        unknown = sorted(set(self.skip_attacks) - set(OPTIONAL_ATTACKS))
        if unknown:
            raise ValueError(f"skip_attacks may only name {', '.join(OPTIONAL_ATTACKS)}; got {unknown}")
        if self.tolerances is None:
            self.tolerances = Tolerances()


def _layer_info(model) -> dict:
    # lam as the float32 the layer computes with: a fixed lam is held as a Python float (0.8) and a stored one as
    # a float32 tensor (0.80000001); the same model must give the same cache fingerprint either way
    return {n: {"lam": round(float(torch.tensor(m.lam_value(), dtype=torch.float32)), 8), "K": m.K, "eps": m.eps,
                "learnable": m.learnable_lam}
            for n, m in robust_layers(model).items()}


def _nrpm_label(lam_info: dict) -> str:
    if not lam_info:
        return "model (no robust layers)"
    lams = sorted({v["lam"] for v in lam_info.values()})
    Ks = sorted({v["K"] for v in lam_info.values()})
    lam_text = f"{lams[0]:g}" if len(lams) == 1 else f"{lams[0]:g}..{lams[-1]:g}"
    return f"NRPM lam={lam_text} K={','.join(map(str, Ks))}"


# ----------------------------------------------------------------------------------------------- AutoAttack flags
@contextlib.contextmanager
def capture_autoattack_flags(sink: list[str]) -> Iterator[None]:
    """Collect AutoAttack's built-in flags (randomness, probability outputs, zero gradients, Square success)."""
    logger = logging.getLogger("auto-attack")

    class _Handler(logging.Handler):
        def emit(self, record):
            msg = _first_sentence(record.getMessage())
            if record.levelno >= logging.WARNING and msg not in sink:
                sink.append(msg)

    handler = _Handler()
    logger.addHandler(handler)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            yield
        finally:
            logger.removeHandler(handler)
            for w in caught:
                msg = _first_sentence(str(w.message))
                if "pyautoattack" in (w.filename or "") or "autoattack" in (w.filename or "").lower():
                    if msg not in sink:
                        sink.append(msg)


def _first_sentence(msg: str) -> str:
    """AutoAttack's flags end with a pointer to its docs; keep the finding."""
    return msg.split(" See flags_doc.md")[0].split(" This might")[0].strip()


# ----------------------------------------------------------------------------------------------- the plan
@dataclass
class _Plan:
    """The models and attacks of one audit, decided before any attack runs."""

    layers: dict
    base_model: nn.Module | None
    plain_model: nn.Module | None
    derived_base: bool
    compare_plain: bool
    device: torch.device
    n_classes: int
    unbounded_eps: float
    specs: dict[str, AttackSpec] = field(default_factory=dict)
    variants: dict[str, AttackSpec] = field(default_factory=dict)
    unbounded: AttackSpec | None = None
    skipped: dict[str, str] = field(default_factory=dict)

    @property
    def sweep(self) -> list[str]:
        return [k for k in _SWEEP if k not in self.skipped]

    @property
    def plain_sweep(self) -> list[str]:
        return [k for k in _PLAIN_SWEEP if k not in self.skipped]

    @property
    def run_autoattack(self) -> bool:
        return "autoattack" not in self.skipped


def _make_plan(model, x, layers, config: AuditConfig) -> _Plan:
    base_model, derived_base = config.base_model, False
    if base_model is None and layers:
        base_model = undo_reprogramming(copy.deepcopy(model))
        derived_base = True
    all_plain = bool(layers) and all(m.is_plain() for m in layers.values())
    plain_model, compare_plain = config.plain_model, config.compare_plain
    if plain_model is None:
        plain_model = base_model
    else:
        compare_plain = True
    # an all-plain model (lam = 1) next to itself would only repeat its own rows
    compare_plain = bool(compare_plain and plain_model is not None and not (all_plain and plain_model is base_model))
    device = A.model_device(model, x.device)
    with torch.no_grad():
        n_classes = logits_2d(model, x[:1].to(device)).shape[1]
    unbounded_eps = config.unbounded_eps
    if unbounded_eps is None:
        unbounded_eps = 1.0 if config.norm == "Linf" else math.sqrt(x[0].numel())
    plan = _Plan(layers, base_model, plain_model, derived_base, compare_plain, device, n_classes, unbounded_eps)
    plan.specs = _attack_specs(config, base_model)
    plan.variants = _step_variants(config)
    plan.unbounded = _unbounded_spec(config, unbounded_eps)
    plan.skipped = _skipped(config, plan)
    return plan


def _pgd_kwargs(config: AuditConfig, eps: float, *, steps_factor=1, alpha_scale=1.0, restarts=None) -> dict:
    """The PGD settings of the audit at ``eps``, scaled for check 4's variants."""
    alpha = config.alpha if config.alpha is not None else 2.5 * eps / config.steps
    return dict(steps=config.steps * steps_factor, alpha=alpha * alpha_scale,
                restarts=config.restarts if restarts is None else restarts, seed=config.seed)


def _pgd_params(config: AuditConfig) -> str:
    alpha_text = "default" if config.alpha is None else f"{config.alpha:g}"
    return f"steps={config.steps},alpha={alpha_text},restarts={config.restarts},seed={config.seed}"


def _pgd_label(config: AuditConfig) -> str:
    return f"PGD-{config.steps}" + (f" x{config.restarts} restarts" if config.restarts > 1 else "")


def _attack_specs(config: AuditConfig, base_model) -> dict[str, AttackSpec]:
    norm, seed, apgd_steps, queries = config.norm, config.seed, config.apgd_steps, config.square_queries
    pgd = pgd_class(norm)
    pgd_params, pgd_label = _pgd_params(config), _pgd_label(config)
    specs = [
        AttackSpec("fgsm", "FGSM" if norm == "Linf" else "FGM-L2",
                   (lambda e: A.FGSM(e)) if norm == "Linf" else (lambda e: A.FGML2(e)), ""),
        AttackSpec("pgd", pgd_label, lambda e: pgd(e, **_pgd_kwargs(config, e)), pgd_params),
        AttackSpec("apgd-ce", f"APGD-CE ({apgd_steps})",
                   lambda e: A.APGDCE(e, norm=norm, steps=apgd_steps, seed=seed), f"steps={apgd_steps},seed={seed}"),
        AttackSpec("apgd-dlr", f"APGD-DLR ({apgd_steps})",
                   lambda e: A.APGDDLR(e, norm=norm, steps=apgd_steps, seed=seed), f"steps={apgd_steps},seed={seed}"),
        AttackSpec("square", f"Square ({queries} q.)",
                   lambda e: A.Square(e, norm=norm, n_queries=queries, seed=seed), f"q={queries},seed={seed}"),
        AttackSpec("noise", "random noise", lambda e: A.NoiseAttack(e, norm=norm, seed=seed), f"seed={seed}"),
        AttackSpec("transfer", f"transfer from lam=1 ({pgd_label})",
                   lambda e: transfer_pgd(e, base_model, norm=norm, steps=config.steps, alpha=config.alpha,
                                          seed=seed), pgd_params),
        AttackSpec("bpda", f"BPDA, plain backward ({pgd_label})",
                   lambda e: bpda_pgd(e, norm=norm, **_pgd_kwargs(config, e)), pgd_params),
        AttackSpec("detached", f"IRLS weights detached ({pgd_label})",
                   lambda e: detached_irls_pgd(e, norm=norm, **_pgd_kwargs(config, e)), pgd_params),
        AttackSpec("autoattack", "AutoAttack (standard)",
                   lambda e: A.AutoAttackStandard(e, norm=norm, seed=seed), f"seed={seed}"),
        AttackSpec("cw", f"C&W margin ({pgd_label})", lambda e: _cw_pgd(e, norm, **_pgd_kwargs(config, e)),
                   pgd_params),
        _spsa_spec(config),
        *_smoothed_specs(config),
    ]
    return {spec.key: spec for spec in specs}


def _cw_pgd(eps: float, norm: str, **pgd_kwargs) -> A.Attack:
    """PGD on the Carlini-Wagner margin loss (``CWLinf`` for Linf)."""
    if norm == "Linf":
        return A.CWLinf(eps, **pgd_kwargs)
    return A.PGDL2(eps, loss_fn=A.margin_loss_per_sample, **pgd_kwargs)


def _spsa_spec(config: AuditConfig) -> AttackSpec:
    steps, samples, norm, seed = config.spsa_steps, config.spsa_samples, config.norm, config.seed
    # delta and lr are SPSA's defaults; they are in the key so that a change of default starts new cells
    defaults = A.SPSA(1.0, norm=norm, steps=steps, samples=samples, seed=seed)
    return AttackSpec("spsa", f"SPSA ({steps} x {samples} q.)",
                      lambda e: A.SPSA(e, norm=norm, steps=steps, samples=samples, seed=seed),
                      f"steps={steps},samples={samples},delta={defaults.delta:g},lr={defaults.lr:g},seed={seed}")


def _smoothed_specs(config: AuditConfig) -> list[AttackSpec]:
    """Check 6's PGD with the gradient of a smoother IRLS estimator (eps x10, eps x100, one IRLS step)."""
    specs = []
    for key, (eps_scale, K) in SMOOTHINGS.items():
        smoothing = f"eps x{eps_scale:g}" if K is None else f"K={K}"
        specs.append(AttackSpec(
            key, f"smoothed IRLS, {smoothing} (PGD-{config.steps})",
            lambda e, _s=eps_scale, _k=K: smoothed_pgd(e, eps_scale=_s, K=_k, norm=config.norm, steps=config.steps,
                                                       alpha=config.alpha, seed=config.seed),
            _pgd_params(config)))
    return specs


def _step_variants(config: AuditConfig) -> dict[str, AttackSpec]:
    """Check 4's PGD variants: x4 steps, x5 restarts, half the step with twice the steps."""
    pgd, steps, params = pgd_class(config.norm), config.steps, _pgd_params(config)
    specs = [
        AttackSpec("pgd-x4-steps", f"PGD-{4 * steps} (x4 steps, same step)",
                   lambda e: pgd(e, **_pgd_kwargs(config, e, steps_factor=4)), params),
        AttackSpec("pgd-x5-restarts", f"PGD-{steps} x{5 * config.restarts} restarts",
                   lambda e: pgd(e, **_pgd_kwargs(config, e, restarts=5 * config.restarts)), params),
        AttackSpec("pgd-half-step", f"PGD-{2 * steps} (half step)",
                   lambda e: pgd(e, **_pgd_kwargs(config, e, steps_factor=2, alpha_scale=0.5)), params),
    ]
    return {spec.key: spec for spec in specs}


def _unbounded_spec(config: AuditConfig, unbounded_eps: float) -> AttackSpec:
    """Check 3's PGD at the unbounded budget, with PGD's default step (2.5 * eps / steps), not ``alpha``."""
    pgd, steps = pgd_class(config.norm), config.steps
    return AttackSpec("pgd-unbounded", f"PGD-{steps} at {config.norm} {unbounded_eps:g}",
                      lambda e: pgd(e, steps=steps, seed=config.seed), f"steps={steps},seed={config.seed}")


def _skipped(config: AuditConfig, plan: _Plan) -> dict[str, str]:
    skipped = {}
    if plan.n_classes < 3:
        skipped["apgd-dlr"] = f"APGD-DLR needs >= 3 classes (model has {plan.n_classes})"
    if not config.autoattack:
        skipped["autoattack"] = "AutoAttack switched off (--no-autoattack)"
    elif plan.n_classes < 4:
        skipped["autoattack"] = f"AutoAttack standard needs >= 4 classes (model has {plan.n_classes})"
    if plan.base_model is None:
        skipped["transfer"] = "no plain reference model (no robust layers and no base_model)"
    if not plan.layers:
        skipped["bpda"] = skipped["detached"] = "no robust layers to approximate"
        for key in SMOOTHINGS:
            skipped[key] = "no robust layers to smooth"
    for key in config.skip_attacks:
        skipped.setdefault(key, "switched off (skip_attacks)")
    return skipped


def _n_cells(config: AuditConfig, plan: _Plan) -> int:
    """Cells the progress bar counts: the sweeps, AutoAttack and check 3 / 4's four extra PGD runs."""
    n_budgets, aa = len(config.budgets), plan.run_autoattack
    return ((len(plan.sweep) + aa) * n_budgets + 4
            + (len(plan.plain_sweep) + aa) * n_budgets * plan.compare_plain)


def _settings(model, x, config: AuditConfig, plan: _Plan, lam_info: dict) -> dict:
    base = ("derived (reprogramming undone)" if plan.derived_base else
            ("given" if plan.base_model is not None else None))
    return {"title": config.title or type(model).__name__, "n": len(x), "n_classes": plan.n_classes,
            "norm": config.norm, "budgets": config.budgets, "budget_unit": config.budget_unit,
            "steps": config.steps, "alpha": config.alpha, "restarts": config.restarts,
            "apgd_steps": config.apgd_steps, "square_queries": config.square_queries,
            "spsa_steps": config.spsa_steps, "spsa_samples": config.spsa_samples,
            "skip_attacks": list(config.skip_attacks),
            "autoattack": bool(config.autoattack), "unbounded_eps": plan.unbounded_eps, "seed": config.seed,
            "batch_size": config.batch_size, "tolerances": asdict(config.tolerances), "robust_layers": lam_info,
            "device": str(plan.device), "base_model": base, "skipped": plan.skipped,
            "model_labels": {"nrpm": _nrpm_label(lam_info), "plain": config.plain_label}}


# ----------------------------------------------------------------------------------------------- running
@dataclass
class _Findings:
    """What the attack phase measured, for the checks that grade per-sample results."""

    early_checks: list[CheckResult]
    check_budget: float
    base_mask: torch.Tensor | None
    variant_masks: dict
    unbounded_mask: torch.Tensor | None
    library_flags: list[str]   # pyautoattack warnings outside AutoAttack (e.g. APGD's zero gradients)
    aa_flags: list[str]        # AutoAttack's own flags (check 7)


def _run_attacks(model, x, y, config: AuditConfig, plan: _Plan, runner: CellRunner, settings: dict) -> _Findings:
    library_flags, aa_flags = [], []
    tol, batch_size = config.tolerances, config.batch_size
    with A.eval_frozen(model, plan.base_model, plan.plain_model), capture_autoattack_flags(library_flags):
        checks = [check_lam_and_determinism(model, plan.base_model, plan.layers, x, batch_size, plan.device, tol)]
        clean = runner.predict_mask(model)
        clean_plain = runner.predict_mask(plan.plain_model) if plan.compare_plain else None
        settings["clean_accuracy"] = {"nrpm": fraction(clean)}
        if plan.compare_plain:
            settings["clean_accuracy"]["plain"] = fraction(clean_plain)
        checks.append(check_gradients(model, x, y, batch_size, plan.device, tol))
        for key in plan.sweep:
            for b in config.budgets:
                runner.run("nrpm", model, plan.specs[key], b, clean)
        check_budget = _pick_check_budget(runner, config, clean)
        settings["check_budget"] = check_budget
        base_mask, variant_masks = _run_step_variants(runner, model, plan, check_budget, clean)
        unbounded_mask = runner.run("nrpm", model, plan.unbounded, plan.unbounded_eps, clean, extra=True)
        if plan.run_autoattack:
            with capture_autoattack_flags(aa_flags):
                for b in config.budgets:
                    runner.run("nrpm", model, plan.specs["autoattack"], b, clean)
        if plan.compare_plain:
            for key in plan.plain_sweep + (["autoattack"] if plan.run_autoattack else []):
                for b in config.budgets:
                    runner.run("plain", plan.plain_model, plan.specs[key], b, clean_plain)
    return _Findings(checks, check_budget, base_mask, variant_masks, unbounded_mask, library_flags, aa_flags)


def _pick_check_budget(runner: CellRunner, config: AuditConfig, clean: torch.Tensor) -> float:
    """The configured check-4 budget, else the one where PGD accuracy is nearest half the clean accuracy."""
    if config.check_budget is not None:
        return float(config.check_budget)
    pgd_acc = {b: runner.masks.get(("nrpm", "pgd", round(b, 10))) for b in config.budgets}
    pgd_acc = {b: fraction(m) for b, m in pgd_acc.items() if m is not None}
    target = fraction(clean) / 2
    return float(min(pgd_acc or {config.budgets[0]: 0}, key=lambda b: (abs(pgd_acc.get(b, 0) - target), -b)))


def _run_step_variants(runner, model, plan: _Plan, check_budget, clean):
    """Check 4: the PGD variants on the samples PGD did not break at ``check_budget``."""
    base_mask = runner.masks.get(("nrpm", "pgd", round(check_budget, 10)))
    if base_mask is None:  # check budget outside the sweep
        base_mask = runner.run("nrpm", model, plan.specs["pgd"], check_budget, clean, extra=True)
    variant_masks = {}
    if base_mask is not None:
        for key, spec in plan.variants.items():
            m = runner.run("nrpm", model, spec, check_budget, base_mask, extra=True)
            variant_masks[key] = None if m is None else (m & base_mask)
    return base_mask, variant_masks


def _grade(runner: CellRunner, config: AuditConfig, plan: _Plan, settings: dict, found: _Findings
           ) -> list[CheckResult]:
    a = accuracy_lookup(runner.masks)
    n, tol, budgets, unit = settings["n"], config.tolerances, config.budgets, config.budget_unit
    checks = found.early_checks + [
        check_budget_curve(runner, budgets, settings, found.unbounded_mask, plan.unbounded_eps, n, tol),
        check_steps(found.base_mask, found.variant_masks, plan.variants, found.check_budget, settings, n, tol),
        check_blackbox(a, budgets, n, tol, unit),
        check_transfer(a, budgets, n, tol, plan.skipped, unit),
        check_autoattack(a, runner, budgets, n, tol, plan.skipped, found.aa_flags, unit),
    ]
    return sorted(checks, key=lambda c: c.id)


def _worst_case(runner: CellRunner, budgets) -> dict[str, dict[float, float]]:
    """{model tag: {budget: accuracy}}: a sample counts only if no attack at that budget broke it."""
    worst = {}
    for tag in ("nrpm", "plain"):
        per_budget = {}
        for b in budgets:
            masks = [m for (t, _k, bb), m in runner.masks.items() if t == tag and bb == round(b, 10)]
            if masks:
                per_budget[b] = fraction(torch.stack(masks).all(0))
        if per_budget:
            worst[tag] = per_budget
    return worst


def _notes(runner, config, plan, settings, found, worst) -> list[str]:
    a = accuracy_lookup(runner.masks)
    notes = single_step_notes(a, worst, config.budgets, settings, config.tolerances, settings["n"])
    notes += [f"pyautoattack: {msg}" for msg in found.library_flags if msg not in found.aa_flags]
    notes += [f"skipped {k}: {why}" for k, why in plan.skipped.items()]
    return notes


def _audit(model, x, y, layers, config: AuditConfig, started: float) -> AuditReport:
    plan = _make_plan(model, x, layers, config)
    from tqdm.auto import tqdm

    bar = tqdm(total=_n_cells(config, plan), desc="audit cells", unit="cell", disable=not config.progress)
    lam_info = _layer_info(model)
    settings = _settings(model, x, config, plan, lam_info)
    cache_fingerprint = fingerprint(model, plan.base_model, plan.plain_model, x, y, lam_info, config.norm)
    try:
        runner = CellRunner(x, y, config.batch_size, config.cache_path, cache_fingerprint, bar, config.log)
        found = _run_attacks(model, x, y, config, plan, runner, settings)
    finally:
        bar.close()
    checks = _grade(runner, config, plan, settings, found)
    worst = _worst_case(runner, config.budgets)
    return AuditReport(settings=settings, checks=checks, cells=runner.cells, worst_case=worst,
                       notes=_notes(runner, config, plan, settings, found, worst), errors=runner.errors,
                       seconds=time.perf_counter() - started, versions=versions())


def run_audit(model: nn.Module, x: torch.Tensor, y: torch.Tensor, config: AuditConfig | None = None,
              **overrides) -> AuditReport:
    """Audit ``model`` on ``(x, y)`` (inputs in [0, 1]); returns an :class:`~nrpm.audit.AuditReport`.

    ``config``: an :class:`AuditConfig`; ``overrides``: any of its fields, replacing the config's, so
    ``run_audit(model, x, y, budgets=[0.1, 0.2], steps=20)`` works without one. See :class:`AuditConfig`.
    """
    started = time.perf_counter()
    config = AuditConfig(**overrides) if config is None else replace(config, **overrides)
    check_batch(x, y)
    if len(x) == 0:
        raise ValueError("the audit needs at least one sample")
    x, y = x.detach().cpu(), y.detach().cpu().long()
    layers = robust_layers(model)
    if config.lam is not None and not layers:
        raise ValueError("lam given, but the model has no robust layers (call nrpm.reprogram first)")
    with lam_override(model, config.lam) if config.lam is not None else contextlib.nullcontext():
        return _audit(model, x, y, layers, config, started)
