"""Running the audit: :func:`run_audit`.

:func:`run_audit` plans the attacks (:func:`~nrpm.audit.plan.make_plan`: models, attack specs, skipped attacks),
runs them as cells through :class:`~nrpm.audit.cells.CellRunner` (per-sample masks, the resumable ``cache.json``
of its :class:`~nrpm.runs.RunContext`'s folder), gathers what it measured into one
:class:`~nrpm.audit.checks.Evidence`, grades it with the seven checks and returns an
:class:`~nrpm.audit.report.AuditReport` (also written into the folder).

The attacks run in a fixed order (checks 1 and 2, the budget sweep in catalogue order with every reference attack
before the attacks that run on its survivors (:mod:`~nrpm.audit.survivors`), check 4's PGD variants, the unbounded
PGD, AutoAttack, then the plain model), each with the configured seed, so a run is reproducible.
"""

from __future__ import annotations

import contextlib
import logging
import time
import warnings
from dataclasses import asdict, dataclass, replace
from typing import Callable, Iterator

import torch
from torch import nn

from .. import attacks as A
from .. import distributed as dist
from ..nn import lam_override
from ..provenance import versions
from ..reprogram import robust_layers
from ..runs import RunContext, run_folder
from ..validation import check_batch
from .cells import CellRunner, cache_file, fingerprint, worst_case_masks
from .checks import CHECKS, Evidence, fraction, single_step_notes
from .config import AuditConfig
from . import survivors
from .plan import AUTOATTACK, DIRECT_PGD, AuditPlan, keys_with_role, make_plan
from .probes import ForwardProbe, GradientProbe, probe_forward, probe_gradients
from .protocol import assess_protocol
from .report import AuditReport

__all__ = ["run_audit", "capture_autoattack_flags", "layer_info", "estimator_info", "fingerprint_lam"]


def fingerprint_lam(lam: float) -> float:
    """lam as the settings and the cache fingerprint hold it: the float32 the layer computes with, to 8 places. A
    fixed lam is held as a Python float (0.8) and a stored one as a float32 tensor (0.80000001); the same model must
    give the same cache fingerprint either way."""
    return round(float(torch.tensor(lam, dtype=torch.float32)), 8)


def layer_info(model) -> dict:
    """{layer name: {lam, K, eps, learnable}} of the model's robust layers (in the settings and the fingerprint)."""
    return {n: {"lam": fingerprint_lam(m.lam_value()), "K": m.K, "eps": m.eps, "learnable": m.learnable_lam}
            for n, m in robust_layers(model).items()}


def estimator_info(model) -> dict:
    """{layer name: {norm, gamma, delta, scale}} of the robust layers with another estimator than the paper's L1
    (empty for an L1 model): in the cache fingerprint, so an L1 cache is never resumed for an MCP / Huber / HM
    audit of the same weights and lam."""
    every = {n: m.estimator() for n, m in robust_layers(model).items()}
    return {n: e for n, e in every.items() if e["norm"] != "l1"}


def _estimator_text(estimators: dict) -> str:
    """'MCP gamma=2 relative ' (one estimator in every such layer), 'mixed estimators ' or '' (L1)."""
    kinds = {tuple(sorted(e.items())) for e in estimators.values()}
    if not kinds:
        return ""
    if len(kinds) > 1:
        return "mixed estimators "
    e = dict(next(iter(kinds)))
    name, params = {"mcp": ("MCP", f"gamma={e['gamma']:g}"), "huber": ("Huber", f"delta={e['delta']:g}"),
                    "hm": ("HM", f"gamma={e['gamma']:g} delta={e['delta']:g}")}[e["norm"]]
    return f"{name} {params} {e['scale']} "


def _nrpm_label(lam_info: dict, estimators: dict) -> str:
    if not lam_info:
        return "model (no robust layers)"
    lams = sorted({v["lam"] for v in lam_info.values()})
    Ks = sorted({v["K"] for v in lam_info.values()})
    lam_text = f"{lams[0]:g}" if len(lams) == 1 else f"{lams[0]:g}..{lams[-1]:g}"
    return f"NRPM {_estimator_text(estimators)}lam={lam_text} K={','.join(map(str, Ks))}"


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


# ----------------------------------------------------------------------------------------------- running
@dataclass(frozen=True)
class _Findings:
    """What the attack phase measured, besides the cells the runner holds."""

    forward: ForwardProbe
    gradients: GradientProbe
    clean_accuracy: dict          # {"nrpm": accuracy, "plain": accuracy (with the plain model)}
    check_budget: float
    pgd_mask: torch.Tensor | None
    variant_masks: dict
    unbounded_mask: torch.Tensor | None
    library_flags: list[str]   # pyautoattack warnings outside AutoAttack (e.g. APGD's zero gradients)
    aa_flags: list[str]        # AutoAttack's own flags (check 7)


def _run_attacks(model, x, y, config: AuditConfig, plan: AuditPlan, runner: CellRunner) -> _Findings:
    library_flags, aa_flags = [], []
    with A.eval_frozen(model, plan.base_model, plan.plain_model), capture_autoattack_flags(library_flags):
        forward = probe_forward(model, plan.base_model, plan.layers, x, config.batch_size, plan.device)
        clean = runner.predict_mask(model)
        clean_plain = runner.predict_mask(plan.plain_model) if plan.compare_plain else None
        gradients = probe_gradients(model, x, y, config.batch_size, plan.device)
        _sweep(runner, "nrpm", model, plan.sweep, plan, config, clean)
        check_budget = _pick_check_budget(runner, config, clean)
        pgd_mask, variant_masks = _run_step_variants(runner, model, plan, check_budget, clean)
        unbounded_mask = runner.run("nrpm", model, plan.unbounded, plan.unbounded_eps, clean, extra=True)
        if plan.run_autoattack:
            with capture_autoattack_flags(aa_flags):
                _sweep(runner, "nrpm", model, keys_with_role(AUTOATTACK), plan, config, clean)
        if plan.compare_plain:
            keys = plan.plain_sweep + (list(keys_with_role(AUTOATTACK)) if plan.run_autoattack else [])
            _sweep(runner, "plain", plan.plain_model, keys, plan, config, clean_plain)
    accuracy = {"nrpm": fraction(clean), **({"plain": fraction(clean_plain)} if plan.compare_plain else {})}
    return _Findings(forward, gradients, accuracy, check_budget, pgd_mask, variant_masks, unbounded_mask,
                     _every_rank(library_flags), _every_rank(aa_flags))


def _every_rank(messages: list[str]) -> list[str]:
    """The messages of every rank (each raised them on its own shard), each once, in order of appearance."""
    return list(dict.fromkeys(m for part in dist.all_gather_object(messages) for m in part))


def _sweep(runner: CellRunner, tag: str, model, keys, plan: AuditPlan, config: AuditConfig, clean) -> None:
    """Every attack of ``keys`` at every budget; with ``survivors_only``, the references first and each other
    attack on its reference's survivors (:mod:`~nrpm.audit.survivors` says why no check gets weaker)."""
    keys = survivors.run_order(keys) if config.survivors_only else keys
    for key in keys:
        for b in config.budgets:
            on, candidates = (survivors.candidates(key, runner.masks, tag, b, clean) if config.survivors_only
                              else (None, clean))
            runner.run(tag, model, plan.specs[key], b, candidates, on=on)


def _pick_check_budget(runner: CellRunner, config: AuditConfig, clean: torch.Tensor) -> float:
    """The configured check-4 budget, else the one where PGD accuracy is nearest half the clean accuracy."""
    if config.check_budget is not None:
        return float(config.check_budget)
    pgd_acc = {b: runner.masks.get(("nrpm", DIRECT_PGD, round(b, 10))) for b in config.budgets}
    pgd_acc = {b: fraction(m) for b, m in pgd_acc.items() if m is not None}
    target = fraction(clean) / 2
    return float(min(pgd_acc or {config.budgets[0]: 0}, key=lambda b: (abs(pgd_acc.get(b, 0) - target), -b)))


def _run_step_variants(runner, model, plan: AuditPlan, check_budget, clean):
    """Check 4: the PGD variants on the samples PGD did not break at ``check_budget``."""
    pgd_mask = runner.masks.get(("nrpm", DIRECT_PGD, round(check_budget, 10)))
    if pgd_mask is None:  # check budget outside the sweep
        pgd_mask = runner.run("nrpm", model, plan.specs[DIRECT_PGD], check_budget, clean, extra=True)
    variant_masks = {}
    if pgd_mask is not None:
        for key, spec in plan.variants.items():
            m = runner.run("nrpm", model, spec, check_budget, pgd_mask, extra=True)
            variant_masks[key] = None if m is None else (m & pgd_mask)
    return pgd_mask, variant_masks


def _n_cells(config: AuditConfig, plan: AuditPlan) -> int:
    """Cells the progress bar counts: the sweeps, AutoAttack and check 3 / 4's four extra PGD runs."""
    n_budgets, aa = len(config.budgets), plan.run_autoattack
    return ((len(plan.sweep) + aa) * n_budgets + 4
            + (len(plan.plain_sweep) + aa) * n_budgets * plan.compare_plain)


# ----------------------------------------------------------------------------------------------- the report
def _settings(model, x, config: AuditConfig, plan: AuditPlan, lam_info: dict, estimators: dict, found: _Findings
              ) -> dict:
    base = ("derived (reprogramming undone)" if plan.derived_base else
            ("given" if plan.base_model is not None else None))
    return {"title": config.title or type(model).__name__, "n": len(x), "n_classes": plan.n_classes,
            "norm": config.norm, "budgets": config.budgets, "budget_unit": config.budget_unit,
            "steps": config.steps, "alpha": config.alpha, "restarts": config.restarts,
            "apgd_steps": config.apgd_steps, "square_queries": config.square_queries,
            "spsa_steps": config.spsa_steps, "spsa_samples": config.spsa_samples,
            "skip_attacks": list(config.skip_attacks), "dataset": config.dataset,
            "autoattack": bool(config.autoattack), "unbounded_eps": plan.unbounded_eps, "seed": config.seed,
            "batch_size": config.batch_size, "survivors_only": config.survivors_only,
            "tolerances": asdict(config.tolerances), "robust_layers": lam_info,
            "device": str(plan.device), "base_model": base, "skipped": plan.skipped,
            "model_labels": {"nrpm": _nrpm_label(lam_info, estimators), "plain": config.plain_label},
            "clean_accuracy": found.clean_accuracy, "check_budget": found.check_budget, **config.provenance}


def _evidence(runner: CellRunner, config: AuditConfig, plan: AuditPlan, settings: dict, found: _Findings
              ) -> Evidence:
    swept = {}
    for cell in runner.cells:
        if not cell.get("extra"):
            swept.setdefault((cell["model"], cell["attack"]), cell["label"])
    return Evidence(
        budgets=tuple(config.budgets), n=settings["n"], tol=config.tolerances, norm=config.norm,
        budget_unit=config.budget_unit, model_labels=settings["model_labels"], clean_accuracy=found.clean_accuracy,
        masks=dict(runner.masks), swept=swept, skipped=dict(plan.skipped), forward=found.forward,
        gradients=found.gradients, check_budget=found.check_budget, pgd_mask=found.pgd_mask,
        variant_masks=found.variant_masks, unbounded_eps=plan.unbounded_eps, unbounded_mask=found.unbounded_mask,
        autoattack_flags=tuple(found.aa_flags))


def _worst_case(masks: dict, budgets) -> dict[str, dict[float, float]]:
    """{model tag: {budget: accuracy}} at the swept ``budgets`` (:func:`~nrpm.audit.cells.worst_case_masks`)."""
    worst, out = worst_case_masks(masks), {}
    for tag in ("nrpm", "plain"):
        per_budget = {b: fraction(worst[(tag, round(b, 10))]) for b in budgets if (tag, round(b, 10)) in worst}
        if per_budget:
            out[tag] = per_budget
    return out


def _report(runner: CellRunner, ev: Evidence, settings: dict, found: _Findings, started: float) -> AuditReport:
    worst = _worst_case(runner.masks, ev.budgets)
    notes = single_step_notes(ev, worst)
    notes += [f"pyautoattack: {msg}" for msg in found.library_flags if msg not in found.aa_flags]
    notes += [f"skipped {k}: {why}" for k, why in ev.skipped.items()]
    notes += survivors.survivor_notes(runner.cells, ev.model_labels, ev.budget_unit)
    return AuditReport(settings=settings, checks=[check(ev) for check in CHECKS], cells=runner.cells,
                       worst_case=worst, notes=notes, errors=runner.errors, seconds=time.perf_counter() - started,
                       versions=versions(), protocol=assess_protocol(settings, worst))


def _audit(model, x, y, layers, config: AuditConfig, ctx: RunContext, base_model, plain_model, started: float,
           on_start) -> AuditReport:
    from tqdm.auto import tqdm

    plan = make_plan(model, x, layers, config, base_model, plain_model)
    lam_info, estimators = layer_info(model), estimator_info(model)
    identity = fingerprint(model, plan.base_model, plan.plain_model, x, y, lam_info, config.norm, estimators)
    with run_folder(ctx):
        bar = tqdm(total=_n_cells(config, plan), desc="audit cells", unit="cell", disable=not ctx.progress)
        try:
            runner = CellRunner(x, y, config.batch_size, cache_file(ctx, identity), bar, ctx.log)
            if on_start is not None:
                on_start()
            found = _run_attacks(model, x, y, config, plan, runner)
        finally:
            bar.close()
        settings = _settings(model, x, config, plan, lam_info, estimators, found)
        report = _report(runner, _evidence(runner, config, plan, settings, found), settings, found, started)
        if ctx.writes:
            report.save(ctx.out)
    return report


def _silent(_message: str) -> None:
    """The log of a library call without a context: the report holds every message's content."""


def run_audit(model: nn.Module, x: torch.Tensor, y: torch.Tensor, config: AuditConfig | None = None,
              ctx: RunContext | None = None, *, base_model: nn.Module | None = None,
              plain_model: nn.Module | None = None, on_start: Callable[[], None] | None = None,
              **overrides) -> AuditReport:
    """Audit ``model`` on ``(x, y)`` (inputs in [0, 1]); returns an :class:`~nrpm.audit.AuditReport`.

    ``config``: an :class:`AuditConfig`; ``overrides``: any of its fields, replacing the config's, so
    ``run_audit(model, x, y, budgets=[0.1, 0.2], steps=20)`` works without one. ``ctx``: where the audit writes
    (``ctx.out``: cache.json after every cell, so a rerun resumes, then audit.json, audit.md and audit.png; the
    folder is locked and claimed for ``audit``), its progress bar and log; default: nothing written, silent.
    ``base_model``: the plain reference (lam = 1) model; default: a deep copy of the model with the reprogramming
    undone, or none for a model without robust layers (then check 1's lam part and check 6 skip).
    ``plain_model``: the model shown next to the audited one (default: ``base_model``), e.g. the original
    checkpoint when the audited weights were fine-tuned (paradigm 3); giving one compares it.
    ``on_start()``: called once the output folder is held and its cache checked, before the first attack (the CLI
    prints its data line there, so that a refused folder stays one line of error).
    """
    started = time.perf_counter()
    config = AuditConfig(**overrides) if config is None else replace(config, **overrides)
    ctx = ctx if ctx is not None else RunContext(command="audit", progress=False, log=_silent)
    check_batch(x, y)
    if len(x) == 0:
        raise ValueError("the audit needs at least one sample")
    x, y = x.detach().cpu(), y.detach().cpu().long()
    layers = robust_layers(model)
    if config.lam is not None and not layers:
        raise ValueError("lam given, but the model has no robust layers (call nrpm.reprogram first)")
    with lam_override(model, config.lam) if config.lam is not None else contextlib.nullcontext():
        return _audit(model, x, y, layers, config, ctx, base_model, plain_model, started, on_start)
