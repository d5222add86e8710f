"""An adaptive-attack audit: does a (reprogrammed) model's robustness survive the checks that expose gradient
masking? One call, ``run_audit(model, x, y, budgets=...)``, returns an :class:`AuditReport` with seven checks,
each with its numbers and a pass / warn / fail verdict, following Carlini et al. (2019), "On Evaluating
Adversarial Robustness", Tramer et al. (2020), "On Adaptive Attacks to Adversarial Example Defenses", and
AutoAttack's built-in flags:

1. lam = 1 reproduces the base model's logits, and the model is deterministic;
2. input gradients are finite and non-zero on the evaluated samples;
3. robust accuracy falls as the budget grows and reaches about 0 at an unbounded budget (Linf 1.0);
4. more PGD steps (x4) and restarts (x5), and half the step size with twice the steps, find (almost) nothing more;
5. the black-box Square attack and random noise of the same budget are not stronger than the white-box attacks;
6. transfer from the plain (lam = 1) model, a BPDA attack (the robust layers' backward replaced by the plain
   linear one) and PGD with the IRLS weights detached in the backward pass are not stronger than direct PGD;
7. AutoAttack (standard) agrees with the strongest of the above.

Accuracy comparisons use a stated tolerance ``tol`` (default 2 percentage points, never less than one sample):
a difference within ``tol`` passes, within ``2 * tol`` warns, beyond fails. Every attack also yields per-sample
results, so the report gives, per budget, the *worst case over all attacks* (a sample counts as robust only if
no attack broke it): the number to quote.

Works on any ``nn.Module`` mapping inputs in [0, 1] to logits; the lam-specific parts (check 1's lam = 1, check 6)
use the robust layers of an nrpm-reprogrammed model, or a plain reference model passed as ``base_model``.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import logging
import math
import platform
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from . import attacks as A
from . import reports
from .reprogram import robust_layers, undo_reprogramming
from .validation import check_batch

__all__ = ["Tolerances", "CheckResult", "AuditReport", "run_audit", "straight_through", "lam_one",
           "collate_reports", "PASS", "WARN", "FAIL", "SKIP"]

PASS, WARN, FAIL, SKIP = "pass", "warn", "fail", "skip"
AUDIT_FORMAT = "nrpm-audit/1"
CACHE_FORMAT = "nrpm-audit-cache/1"
_ORDER = {SKIP: 0, PASS: 1, WARN: 2, FAIL: 3}
_WHITEBOX = ("fgsm", "pgd", "apgd-ce", "apgd-dlr")
_TABLE_ATTACKS = ("fgsm", "pgd", "apgd-ce", "apgd-dlr", "square", "autoattack")


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
    blackbox: float = 0.02            # 5: lead of Square / noise over the best white-box attack
    transfer: float = 0.02            # 6: lead of transfer / BPDA over direct PGD
    autoattack: float = 0.02          # 7: AutoAttack vs the strongest other attack

    @classmethod
    def uniform(cls, tol: float, **overrides) -> "Tolerances":
        """All accuracy tolerances set to ``tol`` (a fraction), then ``overrides``."""
        names = ("monotone", "unbounded", "steps", "blackbox", "transfer", "autoattack")
        return cls(**{**{n: tol for n in names}, **overrides})


def _grade(excess: float, tol: float, n: int) -> str:
    """pass within tol, warn within 2 tol, else fail; tol is at least one sample."""
    tol = max(tol, 1.0 / max(n, 1)) + 1e-9
    if excess <= tol:
        return PASS
    return WARN if excess <= 2 * tol else FAIL


def _worst(*verdicts: str) -> str:
    verdicts = [v for v in verdicts if v is not None]
    return max(verdicts, key=_ORDER.__getitem__) if verdicts else SKIP


def _pts(fraction: float) -> str:
    value = round(100 * fraction, 1)
    return f"{value + 0.0:+.1f} pts"  # + 0.0: no "-0.0"


def _pct(fraction) -> str:
    return "n/a" if fraction is None else f"{100 * fraction:.1f}%"


# ----------------------------------------------------------------------------------------------- results
@dataclass
class CheckResult:
    """One check: its verdict, a one-line summary with the numbers, the numbers and the stated tolerance."""

    id: int
    title: str
    verdict: str
    summary: str
    tolerance: str
    numbers: dict = field(default_factory=dict)


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

    @property
    def verdict(self) -> str:
        """'fail' if any check failed or an attack could not run, else 'warn' if any warned, else 'pass'."""
        if self.errors:
            return FAIL
        worst = _worst(*(c.verdict for c in self.checks))
        return PASS if worst == SKIP else worst

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
                "versions": self.versions}

    # -------------------------------------------------------------------------------------- markdown
    def table_markdown(self) -> str:
        """Accuracy (%) per attack (rows) and budget (columns, clean first), NRPM rows then plain rows."""
        unit = self.settings.get("budget_unit", 1.0)
        budgets = list(self.settings["budgets"])
        header = ["attack", "model", "clean"] + [reports.format_budget(b, unit) for b in budgets]
        lines = ["| " + " | ".join(header) + " |", "|---|---|" + "---:|" * (len(header) - 2)]
        clean = self.settings.get("clean_accuracy", {})
        for model in ("nrpm", "plain"):
            keys = []
            for cell in self.cells:
                if cell["model"] == model and cell["attack"] not in keys and not cell.get("extra"):
                    keys.append(cell["attack"])
            if not keys:
                continue
            name = self.settings["model_labels"][model]
            for key in keys:
                label = next(c["label"] for c in self.cells if c["model"] == model and c["attack"] == key)
                row = [label, name, _pct(clean.get(model))]
                row += [_num(self.accuracy(key, b, model)) for b in budgets]
                lines.append("| " + " | ".join(row) + " |")
            wc = self.worst_case.get(model, {})
            lines.append("| " + " | ".join([f"**worst case ({len(keys)} attacks)**", name,
                                            _pct(clean.get(model))]
                                           + [f"**{_num(wc.get(b))}**" for b in budgets]) + " |")
        return "\n".join(lines)

    def to_markdown(self) -> str:
        s = self.settings
        counts = {v: sum(c.verdict == v for c in self.checks) for v in (FAIL, WARN, PASS, SKIP)}
        tally = ", ".join(f"{n} {v}" for v, n in counts.items() if n)
        out = [f"# nrpm audit: {s['title']}, {s['model_labels']['nrpm']}", "",
               f"**Verdict: {self.verdict.upper()}** ({tally}{'; attack errors' if self.errors else ''})", "",
               f"{s['n']} samples, norm {s['norm']}, budgets "
               f"{', '.join(reports.format_budget(b, s.get('budget_unit', 1.0)) for b in s['budgets'])}; "
               f"PGD {s['steps']} steps x {s['restarts']} restart(s), APGD {s['apgd_steps']} steps, Square "
               f"{s['square_queries']} queries, AutoAttack {'on' if s['autoattack'] else 'off'}; seed {s['seed']}. "
               f"Accuracy tolerances pass within tol, warn within 2 tol, fail beyond (tol never below one "
               f"sample = {100 / max(s['n'], 1):.2g} pts).", "",
               "| # | check | verdict | numbers | tolerance |", "|---|---|---|---|---|"]
        for c in self.checks:
            out.append(f"| {c.id} | {c.title} | **{c.verdict}** | {c.summary} | {c.tolerance} |")
        out += ["", "## Accuracy (%)", "", "Robust accuracy: a sample counts as robust only if it is classified "
                "correctly both clean and under the attack. *Worst case*: robust against every attack run at "
                "that budget (including the check-4 variants).", "", self.table_markdown(), ""]
        if self.notes:
            out += ["## Notes", ""] + [f"* {n}" for n in self.notes] + [""]
        if self.errors:
            out += ["## Errors", ""] + [f"* {e}" for e in self.errors] + [""]
        out.append(f"Run time {self.seconds:.0f} s on {s.get('device', '?')}.")
        return "\n".join(out) + "\n"

    # -------------------------------------------------------------------------------------- files
    def plot(self, path) -> None:
        """Accuracy vs budget for every attack (NRPM model) plus the plain model's worst case."""
        budgets = [0.0] + list(self.settings["budgets"])
        unit = self.settings.get("budget_unit", 1.0)
        xs = [b * unit for b in budgets]
        clean = self.settings.get("clean_accuracy", {})
        curves = {}
        for model in ("nrpm", "plain"):
            name = "" if model == "nrpm" else "plain: "
            keys = []
            for cell in self.cells:
                if cell["model"] == model and cell["attack"] not in keys and not cell.get("extra"):
                    keys.append(cell["attack"])
            if model == "nrpm":
                for key in keys:
                    label = next(c["label"] for c in self.cells if c["model"] == model and c["attack"] == key)
                    ys = [clean.get(model)] + [self.accuracy(key, b, model) for b in budgets[1:]]
                    if all(v is not None for v in ys):
                        curves[label] = (xs, ys)
            wc = self.worst_case.get(model)
            if wc:
                curves[f"{name}worst case"] = (xs, [clean.get(model)] + [wc[b] for b in budgets[1:]])
        if curves:
            suffix = f" (x1/{unit:g})" if unit != 1 else ""
            title = f"{self.settings['title']}, {self.settings['model_labels']['nrpm']}"
            reports.plot_curves(path, curves, title=title, xlabel=f"{self.settings['norm']} budget{suffix}")

    def save(self, out_dir) -> dict[str, Path]:
        """Write audit.json, audit.md and audit.png to ``out_dir`` (atomically); returns the paths."""
        out = Path(out_dir)
        paths = {"json": out / "audit.json", "md": out / "audit.md", "png": out / "audit.png"}
        reports.write_json(paths["json"], self.to_dict())
        reports.atomic_write_text(paths["md"], self.to_markdown())
        self.plot(paths["png"])
        return paths


def _frac(mask: torch.Tensor) -> float:
    """Fraction of True entries, exactly (correct / n), not a float32 mean."""
    return int(mask.sum()) / len(mask) if len(mask) else 0.0


def _num(v) -> str:
    return "…" if v is None else f"{100 * v:.1f}"


# ----------------------------------------------------------------------------------------------- model helpers
@contextlib.contextmanager
def _frozen_eval(*models: nn.Module | None) -> Iterator[None]:
    """Eval mode and frozen parameters; every module's flags are restored afterwards."""
    saved = []
    for model in models:
        if model is None:
            continue
        saved += [(m, m.training) for m in model.modules()]
        saved += [(p, p.requires_grad) for p in model.parameters()]
    try:
        for model in models:
            if model is not None:
                model.eval()
                for p in model.parameters():
                    p.requires_grad_(False)
        yield
    finally:
        for obj, flag in saved:
            if isinstance(obj, nn.Module):
                obj.training = flag
            else:
                obj.requires_grad_(flag)


def _plain_forward_of(layer: nn.Module):
    for cls in type(layer).__mro__:
        if cls in (nn.Linear, nn.Conv2d):
            return cls.forward
    raise ValueError(f"{type(layer).__name__} is not a Linear/Conv2d robust layer")


@contextlib.contextmanager
def straight_through(model: nn.Module) -> Iterator[nn.Module]:
    """BPDA surrogate (Athalye et al., 2018): inside the block every robust layer outputs its robust value but
    backpropagates like the plain linear layer, ``plain + (robust - plain).detach()``. Restored on exit."""
    patched = []
    try:
        for layer in robust_layers(model).values():
            plain_forward = _plain_forward_of(layer)
            robust_forward = layer.forward
            had_own = "forward" in layer.__dict__

            def forward(x, _layer=layer, _plain=plain_forward, _robust=robust_forward):
                plain = _plain(_layer, x)
                with torch.no_grad():
                    robust = _robust(x)
                return plain + (robust - plain.detach())

            patched.append((layer, had_own, layer.__dict__.get("forward")))
            layer.forward = forward
        yield model
    finally:
        for layer, had_own, old in patched:
            if had_own:
                layer.forward = old
            else:
                del layer.forward


def _lam_tensor(layer) -> torch.Tensor:
    return layer.lam_logit if layer.learnable_lam else layer._buffers["lam"]


@contextlib.contextmanager
def _restoring_lams(model: nn.Module) -> Iterator[None]:
    """Restore every robust layer's lam storage (buffer or logit) bit for bit on exit."""
    saved = [(_lam_tensor(layer), _lam_tensor(layer).detach().clone()) for layer in robust_layers(model).values()]
    try:
        yield
    finally:
        with torch.no_grad():
            for tensor, value in saved:
                tensor.copy_(value)


@contextlib.contextmanager
def lam_one(model: nn.Module) -> Iterator[nn.Module]:
    """Every robust layer at lam = 1 exactly (a learnable lam via an infinite logit), restored on exit."""
    with _restoring_lams(model):
        with torch.no_grad():
            for layer in robust_layers(model).values():
                if layer.learnable_lam:
                    layer.lam_logit.fill_(math.inf)
                else:
                    layer.set_lam(1.0)
        yield model


def _device_of(model: nn.Module, fallback: torch.device) -> torch.device:
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return fallback


def _logits(model, x):
    out = model(x)
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or len(out) != len(x):
        raise ValueError("the model must return a (batch, classes) tensor of logits")
    return out


# ----------------------------------------------------------------------------------------------- attacks
class _TransferPGD(A.Attack):
    """PGD crafted on a *source* model (final iterate, the usual transfer protocol); the target is not queried."""

    name = "transfer"

    def __init__(self, eps, source: nn.Module, *, norm="Linf", steps=40, alpha=None, seed=0):
        super().__init__(eps)
        self.source, self.norm, self.steps, self.seed = source, norm, int(steps), int(seed)
        self.alpha = 2.5 * self.eps / self.steps if alpha is None else float(alpha)

    def perturb(self, model, x, y):
        g = torch.Generator(device=x.device)
        g.manual_seed(self.seed)
        if self.norm == "Linf":
            x_adv = (x + self.eps * (2 * torch.rand(x.shape, generator=g, device=x.device, dtype=x.dtype) - 1))
        else:
            d = torch.randn(x.shape, generator=g, device=x.device, dtype=x.dtype)
            r = self.eps * torch.rand(len(x), generator=g, device=x.device, dtype=x.dtype)
            x_adv = x + d / _l2(d).clamp_min(1e-12).view(-1, *[1] * (x.dim() - 1)) * r.view(-1, *[1] * (x.dim() - 1))
        x_adv = self._project(x_adv, x)
        for _ in range(self.steps):
            x_adv = x_adv.detach().requires_grad_(True)
            with torch.enable_grad():
                loss = F.cross_entropy(_logits(self.source, x_adv), y, reduction="sum")
                (grad,) = torch.autograd.grad(loss, x_adv)
            if self.norm == "Linf":
                step = grad.sign()
            else:
                step = grad / _l2(grad).clamp_min(1e-12).view(-1, *[1] * (x.dim() - 1))
            x_adv = self._project(x_adv.detach() + self.alpha * step, x)
        return x_adv.detach()

    def _project(self, x_adv, x):
        if self.norm == "Linf":
            x_adv = torch.min(torch.max(x_adv, x - self.eps), x + self.eps)
        else:
            delta = x_adv - x
            scale = (self.eps / _l2(delta).clamp_min(1e-12)).clamp(max=1.0)
            x_adv = x + delta * scale.view(-1, *[1] * (x.dim() - 1))
        return x_adv.clamp(0.0, 1.0)


def _l2(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).norm(dim=1)


class _BPDA(A.Attack):
    """An attack run on the model with straight-through robust layers (robust forward, plain backward)."""

    def __init__(self, inner: A.Attack):
        super().__init__(inner.eps)
        self.inner, self.norm, self.name = inner, inner.norm, "bpda"

    def perturb(self, model, x, y):
        with straight_through(model):
            return self.inner(model, x, y)


class _DetachedIRLS(A.Attack):
    """An attack run with every robust layer's IRLS weights treated as constants in the backward pass
    (``detach_weights=True``): another adaptive gradient approximation; the forward pass is unchanged."""

    def __init__(self, inner: A.Attack):
        super().__init__(inner.eps)
        self.inner, self.norm, self.name = inner, inner.norm, "detached-irls"

    def perturb(self, model, x, y):
        layers = list(robust_layers(model).values())
        saved = [layer.detach_weights for layer in layers]
        try:
            for layer in layers:
                layer.detach_weights = True
            return self.inner(model, x, y)
        finally:
            for layer, flag in zip(layers, saved):
                layer.detach_weights = flag


@dataclass
class _Spec:
    key: str                       # cache / JSON key ('pgd', 'square', ...)
    label: str                     # shown in tables and plots
    make: Callable[[float], A.Attack]
    params: str                    # in the cache key: a cell is reused only with equal parameters
    craft_on_base: bool = False    # transfer: no target queries


class _Runner:
    """Runs (model, attack, budget) cells, keeping per-sample results and a resumable cache."""

    def __init__(self, x, y, batch_size, cache_path, fingerprint, progress, log):
        self.x, self.y, self.batch_size = x, y, batch_size
        self.masks: dict[tuple, torch.Tensor] = {}
        self.cells: list[dict] = []
        self.errors: list[str] = []
        self.log = log
        self.progress = progress
        self.cache_path = Path(cache_path) if cache_path is not None else None
        self.fingerprint = fingerprint
        self.cache: dict[str, dict] = {}
        if self.cache_path is not None and self.cache_path.exists():
            previous = reports.read_json(self.cache_path)
            if previous.get("format") != CACHE_FORMAT or previous.get("fingerprint") != fingerprint:
                raise ValueError(f"{self.cache_path} holds results for another model, data or lam; use another "
                                 f"output folder or --overwrite")
            self.cache = previous["cells"]
            if self.cache and log:
                log(f"resuming: {len(self.cache)} finished cells in {self.cache_path}")

    def _save(self):
        if self.cache_path is not None:
            reports.write_json(self.cache_path, {"format": CACHE_FORMAT, "fingerprint": self.fingerprint,
                                                 "cells": self.cache})

    def predict_mask(self, model) -> torch.Tensor:
        device = _device_of(model, self.x.device)
        out = []
        with torch.no_grad():
            for i in range(0, len(self.x), self.batch_size):
                xb, yb = self.x[i:i + self.batch_size].to(device), self.y[i:i + self.batch_size].to(device)
                out.append((_logits(model, xb).argmax(1) == yb).cpu())
        return torch.cat(out) if out else torch.zeros(0, dtype=torch.bool)

    def run(self, tag: str, model: nn.Module, spec: _Spec, budget: float, candidates: torch.Tensor,
            base: nn.Module | None = None, extra: bool = False) -> torch.Tensor | None:
        """Per-sample robustness of ``model`` under ``spec`` at ``budget``, attacking only ``candidates``."""
        key = f"{tag}|{spec.key}|{spec.params}|{budget:.10g}"
        start = time.perf_counter()
        if key in self.cache:
            entry = self.cache[key]
            mask = torch.tensor([c == "1" for c in entry["mask"]], dtype=torch.bool)
            seconds = entry["seconds"]
        else:
            try:
                mask = self._attack(model, spec, budget, candidates, base)
            except (RuntimeError, ValueError) as error:
                message = f"{spec.label} at budget {budget:g} on the {tag} model failed: {error}"
                self.errors.append(message)
                if self.log:
                    self.log(message)
                return None
            seconds = round(time.perf_counter() - start, 3)
            self.cache[key] = {"mask": "".join("1" if v else "0" for v in mask.tolist()), "seconds": seconds}
            self._save()
        self.masks[(tag, spec.key, round(budget, 10))] = mask
        acc = int(mask.sum()) / len(mask) if len(mask) else 0.0
        self.cells.append({"model": tag, "attack": spec.key, "label": spec.label, "budget": budget,
                           "accuracy": acc, "correct": int(mask.sum()), "n": len(mask), "seconds": seconds,
                           **({"extra": True} if extra else {})})
        if self.progress is not None:
            self.progress.set_postfix_str(f"{tag} {spec.label} @ {budget:g}: {100 * acc:.1f}%")
            self.progress.update(1)
        return mask

    def _attack(self, model, spec, budget, candidates, base):
        source = base if spec.craft_on_base else model
        device = _device_of(model, self.x.device)
        attack = spec.make(budget)
        result = torch.zeros(len(self.x), dtype=torch.bool)
        index = candidates.nonzero().squeeze(1)
        for i in range(0, len(index), self.batch_size):
            idx = index[i:i + self.batch_size]
            xb, yb = self.x[idx].to(device), self.y[idx].to(device)
            x_adv = attack(source, xb, yb)
            with torch.no_grad():
                result[idx] = (_logits(model, x_adv).argmax(1) == yb).cpu()
        return result


# ----------------------------------------------------------------------------------------------- the audit
def _state_hash(model: nn.Module) -> str:
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _fingerprint(model, base, plain, x, y, lam_info, norm) -> dict:
    """What every cached cell depends on besides its attack: weights, data, lam and norm."""
    d = hashlib.sha256(x.detach().float().cpu().contiguous().numpy().tobytes())
    d.update(y.detach().cpu().contiguous().numpy().tobytes())
    return {"model": _state_hash(model), "data": d.hexdigest()[:16], "lam": lam_info, "norm": norm,
            "model_type": type(model).__name__, "base": type(base).__name__ if base is not None else None,
            "plain": None if plain is None or plain is base else _state_hash(plain)}


def _layer_info(model) -> dict:
    return {n: {"lam": round(m.lam_value(), 8), "K": m.K, "eps": m.eps, "learnable": m.learnable_lam}
            for n, m in robust_layers(model).items()}


def run_audit(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, budgets: Sequence[float],
              norm: str = "Linf", lam: float | dict | None = None, base_model: nn.Module | None = None,
              plain_model: nn.Module | None = None, plain_label: str = "plain (lam=1)", compare_plain: bool = True,
              steps: int = 40, alpha: float | None = None, restarts: int = 1,
              apgd_steps: int = 100, square_queries: int = 5000, autoattack: bool = True,
              unbounded_eps: float | None = None, check_budget: float | None = None,
              tolerances: Tolerances | None = None, seed: int = 0, batch_size: int = 256,
              cache_path: str | Path | None = None, title: str | None = None, budget_unit: float = 1.0,
              progress: bool = False, log: Callable[[str], None] | None = None) -> AuditReport:
    """Audit ``model`` on ``(x, y)`` (inputs in [0, 1]) at the given ``budgets``; returns an :class:`AuditReport`.

    lam: set on the robust layers for the audit (float or {layer: lam}); restored afterwards. None: as is.
    base_model: the plain reference (lam = 1) model; default: a deep copy of ``model`` with the reprogramming
        undone, or none for a model without robust layers (then checks 1's lam part and 6 skip).
    plain_model, plain_label: the model shown next to the audited one in the table (default: ``base_model``),
        e.g. the original checkpoint when the audited weights were fine-tuned (paradigm 3).
    compare_plain: also run FGSM, PGD, APGD-CE/DLR, Square and AutoAttack on the plain model, for the table.
    steps, alpha, restarts: the PGD attack (alpha absolute; default 2.5 * eps / steps). The transfer and BPDA
        attacks use the same PGD. apgd_steps, square_queries: APGD iterations and Square queries.
    autoattack: run check 7 (AutoAttack standard: APGD-CE, APGD-T, FAB-T, Square-5000); the slowest part.
    unbounded_eps: budget at which accuracy must reach ~0 (default: Linf 1.0, L2 sqrt(input size)).
    check_budget: budget for check 4 (default: the one where PGD accuracy is closest to half the clean one).
    cache_path: JSON file of per-sample results written after every cell; a rerun reuses finished cells.
    """
    started = time.perf_counter()
    if norm not in ("Linf", "L2"):
        raise ValueError(f"norm must be 'Linf' or 'L2', got {norm!r}")
    budgets = sorted({float(b) for b in budgets if float(b) > 0})
    if not budgets:
        raise ValueError("give at least one budget > 0 (clean accuracy is always measured)")
    check_batch(x, y)
    if len(x) == 0:
        raise ValueError("the audit needs at least one sample")
    for name, value in (("steps", steps), ("restarts", restarts), ("apgd_steps", apgd_steps),
                        ("square_queries", square_queries), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    for name, value in (("alpha", alpha), ("unbounded_eps", unbounded_eps), ("check_budget", check_budget)):
        if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be a number > 0, got {value!r}")
    tol = tolerances or Tolerances()
    x, y = x.detach().cpu(), y.detach().cpu().long()
    layers = robust_layers(model)
    if lam is not None and not layers:
        raise ValueError("lam given, but the model has no robust layers (call nrpm.reprogram first)")
    with _restoring_lams(model):
        if lam is not None:
            from .reprogram import set_lam
            set_lam(model, lam)
        return _run_audit(model, x, y, layers, started, budgets=budgets, norm=norm, base_model=base_model,
                          plain_model=plain_model, plain_label=plain_label, compare_plain=compare_plain,
                          steps=steps, alpha=alpha, restarts=restarts,
                          apgd_steps=apgd_steps, square_queries=square_queries, autoattack=autoattack,
                          unbounded_eps=unbounded_eps, check_budget=check_budget, tol=tol, seed=seed,
                          batch_size=batch_size, cache_path=cache_path, title=title, budget_unit=budget_unit,
                          progress=progress, log=log)


def _run_audit(model, x, y, layers, started, *, budgets, norm, base_model, plain_model, plain_label, compare_plain,
               steps, alpha, restarts,
               apgd_steps, square_queries, autoattack, unbounded_eps, check_budget, tol, seed, batch_size,
               cache_path, title, budget_unit, progress, log) -> AuditReport:
    n = len(x)
    derived_base = False
    if base_model is None and layers:
        base_model = undo_reprogramming(copy.deepcopy(model))
        derived_base = True
    all_plain = bool(layers) and all(m.is_plain() for m in layers.values())
    if plain_model is None:
        plain_model = base_model
    else:
        compare_plain = True
    compare_plain = bool(compare_plain and plain_model is not None and not (all_plain and plain_model is base_model))
    device = _device_of(model, x.device)
    with torch.no_grad():
        n_classes = _logits(model, x[:1].to(device)).shape[1]
    if unbounded_eps is None:
        unbounded_eps = 1.0 if norm == "Linf" else math.sqrt(x[0].numel())
    a_steps = int(steps)

    def pgd(eps, *, k=1, alpha_scale=1.0, restarts_=restarts, steps_=None):
        cls = A.PGD if norm == "Linf" else A.PGDL2
        n_steps = steps_ if steps_ is not None else a_steps * k
        base_alpha = alpha if alpha is not None else 2.5 * eps / a_steps
        return cls(eps, steps=n_steps, alpha=base_alpha * alpha_scale, restarts=restarts_, seed=seed)

    alpha_text = "default" if alpha is None else f"{alpha:g}"
    pgd_params = f"steps={a_steps},alpha={alpha_text},restarts={restarts},seed={seed}"
    pgd_label = f"PGD-{a_steps}" + (f" x{restarts} restarts" if restarts > 1 else "")
    fgsm = _Spec("fgsm", "FGSM" if norm == "Linf" else "FGM-L2",
                 (lambda e: A.FGSM(e)) if norm == "Linf" else (lambda e: A.FGML2(e)), "")
    specs = {
        "fgsm": fgsm,
        "pgd": _Spec("pgd", pgd_label, lambda e: pgd(e), pgd_params),
        "apgd-ce": _Spec("apgd-ce", f"APGD-CE ({apgd_steps})",
                         lambda e: A.APGDCE(e, norm=norm, steps=apgd_steps, seed=seed),
                         f"steps={apgd_steps},seed={seed}"),
        "apgd-dlr": _Spec("apgd-dlr", f"APGD-DLR ({apgd_steps})",
                          lambda e: A.APGDDLR(e, norm=norm, steps=apgd_steps, seed=seed),
                          f"steps={apgd_steps},seed={seed}"),
        "square": _Spec("square", f"Square ({square_queries} q.)",
                        lambda e: A.Square(e, norm=norm, n_queries=square_queries, seed=seed),
                        f"q={square_queries},seed={seed}"),
        "noise": _Spec("noise", "random noise", lambda e: A.NoiseAttack(e, norm=norm, seed=seed), f"seed={seed}"),
        "transfer": _Spec("transfer", f"transfer from lam=1 ({pgd_label})",
                          lambda e: _TransferPGD(e, base_model, norm=norm, steps=a_steps, alpha=alpha, seed=seed),
                          pgd_params, craft_on_base=True),
        "bpda": _Spec("bpda", f"BPDA, plain backward ({pgd_label})", lambda e: _BPDA(pgd(e)), pgd_params),
        "detached": _Spec("detached", f"IRLS weights detached ({pgd_label})", lambda e: _DetachedIRLS(pgd(e)),
                          pgd_params),
        "autoattack": _Spec("autoattack", "AutoAttack (standard)",
                            lambda e: A.AutoAttackStandard(e, norm=norm, seed=seed), f"seed={seed}"),
    }
    skipped = {}
    if n_classes < 3:
        skipped["apgd-dlr"] = f"APGD-DLR needs >= 3 classes (model has {n_classes})"
    if not autoattack:
        skipped["autoattack"] = "AutoAttack switched off (--no-autoattack)"
    elif n_classes < 4:
        skipped["autoattack"] = f"AutoAttack standard needs >= 4 classes (model has {n_classes})"
    if base_model is None:
        skipped["transfer"] = "no plain reference model (no robust layers and no base_model)"
    if not layers:
        skipped["bpda"] = skipped["detached"] = "no robust layers to approximate"

    sweep = [k for k in ("pgd", "fgsm", "apgd-ce", "apgd-dlr", "square", "noise", "transfer", "bpda", "detached")
             if k not in skipped]
    plain_sweep = [k for k in ("fgsm", "pgd", "apgd-ce", "apgd-dlr", "square") if k not in skipped]
    aa = "autoattack" not in skipped
    n_cells = (len(sweep) + aa) * len(budgets) + 4 + (len(plain_sweep) + aa) * len(budgets) * compare_plain
    from tqdm.auto import tqdm

    bar = tqdm(total=n_cells, desc="audit cells", unit="cell", disable=not progress)
    lam_info = _layer_info(model)
    settings = {"title": title or type(model).__name__, "n": n, "n_classes": n_classes, "norm": norm,
                "budgets": budgets, "budget_unit": budget_unit, "steps": a_steps, "alpha": alpha, "restarts": restarts,
                "apgd_steps": apgd_steps, "square_queries": square_queries, "autoattack": bool(autoattack),
                "unbounded_eps": unbounded_eps, "seed": seed, "batch_size": batch_size,
                "tolerances": asdict(tol), "robust_layers": lam_info, "device": str(device),
                "base_model": "derived (reprogramming undone)" if derived_base else
                ("given" if base_model is not None else None),
                "skipped": skipped,
                "model_labels": {"nrpm": _nrpm_label(lam_info), "plain": plain_label}}
    fingerprint = _fingerprint(model, base_model, plain_model, x, y, lam_info, norm)
    runner = _Runner(x, y, batch_size, cache_path, fingerprint, bar, log)
    checks: list[CheckResult] = []
    notes: list[str] = []
    library_flags: list[str] = []  # pyautoattack warnings outside AutoAttack (e.g. APGD's zero gradients)
    aa_flags: list[str] = []       # AutoAttack's own flags (check 7)
    try:
        frozen = [m for i, m in enumerate((model, base_model, plain_model))
                  if m is not None and all(m is not o for o in (model, base_model, plain_model)[:i])]
        with _frozen_eval(*frozen), _capture_autoattack_flags(library_flags):
            # ---- check 1 and 2 (cheap, no attacks)
            checks.append(_check_lam_and_determinism(model, base_model, layers, x, batch_size, device, tol))
            clean = runner.predict_mask(model)
            clean_plain = runner.predict_mask(plain_model) if compare_plain else None
            settings["clean_accuracy"] = {"nrpm": _frac(clean)}
            if compare_plain:
                settings["clean_accuracy"]["plain"] = _frac(clean_plain)
            checks.append(_check_gradients(model, x, y, batch_size, device, tol))

            # ---- budget sweep: every attack at every budget (PGD first: it picks check 4's budget)
            for key in sweep:
                for b in budgets:
                    runner.run("nrpm", model, specs[key], b, clean, base=base_model)
            pgd_acc = {b: runner.masks.get(("nrpm", "pgd", round(b, 10))) for b in budgets}
            pgd_acc = {b: _frac(m) for b, m in pgd_acc.items() if m is not None}
            if check_budget is None:
                target = _frac(clean) / 2
                check_budget = min(pgd_acc or {budgets[0]: 0}, key=lambda b: (abs(pgd_acc.get(b, 0) - target), -b))
            check_budget = float(check_budget)
            settings["check_budget"] = check_budget

            # ---- check 4: more steps / restarts / finer steps, on the samples PGD did not break
            base_mask = runner.masks.get(("nrpm", "pgd", round(check_budget, 10)))
            if base_mask is None:  # check budget outside the sweep
                base_mask = runner.run("nrpm", model, specs["pgd"], check_budget, clean, extra=True)
            variants = {
                "pgd-x4-steps": _Spec("pgd-x4-steps", f"PGD-{4 * a_steps} (x4 steps, same step)",
                                      lambda e: pgd(e, k=4), pgd_params),
                "pgd-x5-restarts": _Spec("pgd-x5-restarts", f"PGD-{a_steps} x{5 * restarts} restarts",
                                         lambda e: pgd(e, restarts_=5 * restarts), pgd_params),
                "pgd-half-step": _Spec("pgd-half-step", f"PGD-{2 * a_steps} (half step)",
                                       lambda e: pgd(e, k=2, alpha_scale=0.5), pgd_params),
            }
            variant_masks = {}
            if base_mask is not None:
                for key, spec in variants.items():
                    m = runner.run("nrpm", model, spec, check_budget, base_mask, extra=True)
                    variant_masks[key] = None if m is None else (m & base_mask)
            unbounded_spec = _Spec("pgd-unbounded", f"PGD-{a_steps} at {norm} {unbounded_eps:g}",
                                   lambda e: (A.PGD if norm == "Linf" else A.PGDL2)(e, steps=a_steps, seed=seed),
                                   f"steps={a_steps},seed={seed}")
            unbounded_mask = runner.run("nrpm", model, unbounded_spec, unbounded_eps, clean, extra=True)

            # ---- AutoAttack, with its built-in flags captured
            if aa:
                with _capture_autoattack_flags(aa_flags):
                    for b in budgets:
                        runner.run("nrpm", model, specs["autoattack"], b, clean)

            # ---- the plain model, for the table
            if compare_plain:
                for key in plain_sweep + (["autoattack"] if aa else []):
                    for b in budgets:
                        runner.run("plain", plain_model, specs[key], b, clean_plain)
    finally:
        bar.close()

    # ---- checks from the per-sample results
    acc = {(t, k, b): _frac(m) for (t, k, b), m in runner.masks.items()}

    def a(key, b, tag="nrpm"):
        return acc.get((tag, key, round(b, 10)))

    checks.append(_check_budget_curve(runner, budgets, settings, unbounded_mask, unbounded_eps, n, tol))
    checks.append(_check_steps(base_mask, variant_masks, variants, check_budget, settings, n, tol))
    checks.append(_check_blackbox(a, budgets, n, tol, budget_unit))
    checks.append(_check_transfer(a, budgets, n, tol, skipped, budget_unit))
    checks.append(_check_autoattack(a, runner, budgets, n, tol, skipped, aa_flags, budget_unit))
    checks.sort(key=lambda c: c.id)

    worst = {}
    for tag in ("nrpm", "plain"):
        per_budget = {}
        for b in budgets:
            masks = [m for (t, k, bb), m in runner.masks.items() if t == tag and bb == round(b, 10)]
            if masks:
                per_budget[b] = _frac(torch.stack(masks).all(0))
        if per_budget:
            worst[tag] = per_budget
    notes += _single_step_notes(a, worst, budgets, settings, tol, n)
    notes += [f"pyautoattack: {msg}" for msg in library_flags if msg not in aa_flags]
    if skipped:
        notes += [f"skipped {k}: {why}" for k, why in skipped.items()]
    return AuditReport(settings=settings, checks=checks, cells=runner.cells, worst_case=worst, notes=notes,
                       errors=runner.errors, seconds=time.perf_counter() - started, versions=_versions())


def _nrpm_label(lam_info: dict) -> str:
    if not lam_info:
        return "model (no robust layers)"
    lams = sorted({v["lam"] for v in lam_info.values()})
    Ks = sorted({v["K"] for v in lam_info.values()})
    lam_text = f"{lams[0]:g}" if len(lams) == 1 else f"{lams[0]:g}..{lams[-1]:g}"
    return f"NRPM lam={lam_text} K={','.join(map(str, Ks))}"


def _versions() -> dict:
    import numpy

    import nrpm

    try:
        from importlib.metadata import version
        paa = version("pyautoattack")
    except Exception:  # noqa: BLE001 - version lookup is informative only
        paa = None
    return {"nrpm": nrpm.__version__, "torch": torch.__version__, "numpy": numpy.__version__,
            "pyautoattack": paa, "python": platform.python_version()}


@contextlib.contextmanager
def _capture_autoattack_flags(sink: list[str]) -> Iterator[None]:
    """Collect AutoAttack's built-in flags (randomness, probability outputs, zero gradients, Square success)."""
    logger = logging.getLogger("auto-attack")

    class _Handler(logging.Handler):
        def emit(self, record):
            msg = record.getMessage()
            msg = _first_sentence(msg)
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


# ----------------------------------------------------------------------------------------------- the checks
def _check_lam_and_determinism(model, base, layers, x, batch_size, device, tol) -> CheckResult:
    xb = x[:batch_size].to(device)
    numbers = {}
    verdicts = []
    parts = []
    with torch.no_grad():
        first = _logits(model, xb)
        second = _logits(model, xb)
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
            with lam_one(model):
                at_one = _logits(model, xb)
            ref = _logits(base, xb)
            scale = 1.0 + ref.abs().max().item()
            d = (at_one - ref).abs().max().item()
            flips = int((at_one.argmax(1) != ref.argmax(1)).sum())
            numbers.update(lam1_max_abs_diff=d, lam1_rel_diff=d / scale, lam1_prediction_flips=flips)
            parts.insert(0, f"lam=1 vs base: max |Δlogit| {d:.2g} (rel {d / scale:.1g})")
            if math.isnan(d) or flips:
                verdicts.append(FAIL)
            else:
                verdicts.append(_grade_ratio(d / scale, tol.logits_rtol))
        elif base is not None:
            ref = _logits(base, xb)
            d = (first - ref).abs().max().item()
            numbers.update(base_max_abs_diff=d)
            parts.insert(0, f"no robust layers; model vs base: max |Δlogit| {d:.2g}")
        else:
            parts.insert(0, "no robust layers: lam=1 part skipped")
    return CheckResult(1, "lam=1 reproduces the base model; deterministic", _worst(*verdicts),
                       "; ".join(parts) + f" (first {len(xb)} samples)",
                       f"rel. logit diff <= {tol.logits_rtol:g} (warn <= 100x); repeat diff <= "
                       f"{tol.determinism_rtol:g} (warn <= 1e-3)", numbers)


def _grade_ratio(value, limit) -> str:
    if value <= limit:
        return PASS
    return WARN if value <= 100 * limit else FAIL


def _check_gradients(model, x, y, batch_size, device, tol) -> CheckResult:
    ok_margin, ok_ce, nonfinite, norms = [], [], 0, []
    error = None
    for i in range(0, len(x), batch_size):
        xb = x[i:i + batch_size].to(device).requires_grad_(True)
        yb = y[i:i + batch_size].to(device)
        with torch.enable_grad():
            logits = _logits(model, xb)
            if not logits.requires_grad:
                error = "the model output does not depend differentiably on the input"
                break
            ce = F.cross_entropy(logits, yb, reduction="sum")
            true = logits.gather(1, yb[:, None]).squeeze(1)
            other = logits.masked_fill(F.one_hot(yb, logits.shape[1]).bool(), -math.inf).amax(1)
            margin = (other - true).sum()
            g_ce, = torch.autograd.grad(ce, xb, retain_graph=True, allow_unused=True)
            g_m, = torch.autograd.grad(margin, xb, allow_unused=True)
        for g, sink in ((g_ce, ok_ce), (g_m, ok_margin)):
            if g is None:
                g = torch.zeros_like(xb)
            flat = g.detach().flatten(1)
            finite = torch.isfinite(flat).all(1)
            sink.append((finite & (flat.abs().sum(1) > 0)).cpu())
            if sink is ok_margin:
                nonfinite += int((~finite).sum())
                norms.append(flat.abs().sum(1)[finite].cpu())
    if error is not None:
        return CheckResult(2, "input gradients finite and non-zero", FAIL, error,
                           f"fraction >= {tol.gradient_fraction:g}", {"error": error})
    ok_m, ok_c = torch.cat(ok_margin), torch.cat(ok_ce)
    frac_m, frac_c = _frac(ok_m), _frac(ok_c)
    n = len(ok_m)
    norms = torch.cat(norms) if norms else torch.zeros(0)
    median = norms.median().item() if len(norms) else float("nan")
    verdict = PASS if frac_m >= tol.gradient_fraction else (WARN if frac_m >= 0.9 else FAIL)
    if frac_c < 0.9 and verdict == PASS:
        verdict = WARN  # cross-entropy saturates: CE-based attacks see no gradient there
    if nonfinite:
        verdict = _worst(verdict, WARN if nonfinite / n <= 1 - tol.gradient_fraction else FAIL)
    summary = (f"margin loss: {100 * frac_m:.1f}% ({int(ok_m.sum())}/{n}) finite and non-zero; cross-entropy: "
               f"{100 * frac_c:.1f}%; non-finite: {nonfinite}; median |grad|_1 {median:.3g}")
    return CheckResult(2, "input gradients finite and non-zero", verdict, summary,
                       f"fraction >= {tol.gradient_fraction:g} (warn >= 0.9)",
                       {"fraction_margin": frac_m, "fraction_ce": frac_c, "nonfinite": nonfinite,
                        "median_l1": median, "n": n})


def _check_budget_curve(runner, budgets, settings, unbounded_mask, unbounded_eps, n, tol) -> CheckResult:
    clean = settings["clean_accuracy"]["nrpm"]
    rises = []
    for (tag, key) in {(c["model"], c["attack"]) for c in runner.cells if not c.get("extra")}:
        if tag != "nrpm" or key == "noise":
            continue
        accs = [clean] + [_frac(runner.masks[(tag, key, round(b, 10))])
                          for b in budgets if (tag, key, round(b, 10)) in runner.masks]
        rise = max((accs[j] - accs[i] for i in range(len(accs)) for j in range(i + 1, len(accs))), default=0.0)
        label = next(c["label"] for c in runner.cells if c["model"] == tag and c["attack"] == key)
        rises.append((rise, label))
    rise, who = max(rises, default=(0.0, "-"))
    v_mono = _grade(rise, tol.monotone, n)
    numbers = {"largest_rise": rise, "largest_rise_attack": who, "unbounded_eps": unbounded_eps}
    parts = [f"largest rise with the budget {_pts(rise)} ({who})" if rise > 0 else "no attack's accuracy rises "
             "with the budget"]
    if unbounded_mask is None:
        v_unb = FAIL
        parts.append("unbounded PGD failed to run")
    else:
        acc = _frac(unbounded_mask)
        numbers["unbounded_accuracy"] = acc
        v_unb = _grade(acc, tol.unbounded, n)
        parts.append(f"PGD at {settings['norm']} {unbounded_eps:g}: {_pct(acc)}")
    return CheckResult(3, "accuracy falls with the budget, ~0 when unbounded", _worst(v_mono, v_unb),
                       "; ".join(parts), f"rise <= {100 * tol.monotone:g} pts; unbounded <= "
                       f"{100 * tol.unbounded:g}%", numbers)


def _check_steps(base_mask, variant_masks, variants, check_budget, settings, n, tol) -> CheckResult:
    if base_mask is None:
        return CheckResult(4, "more steps / restarts / finer steps", FAIL, "PGD failed to run",
                           f"drop <= {100 * tol.steps:g} pts")
    unit = settings.get("budget_unit", 1.0)
    base = _frac(base_mask)
    parts, verdicts, numbers = [], [], {"budget": check_budget, "pgd_accuracy": base}
    short = {"pgd-x4-steps": "x4 steps", "pgd-x5-restarts": "x5 restarts", "pgd-half-step": "half step, x2 steps"}
    for key, mask in variant_masks.items():
        if mask is None:
            verdicts.append(FAIL)
            parts.append(f"{short[key]}: failed")
            continue
        drop = base - _frac(mask)
        numbers[key] = {"accuracy_with_pgd": base - drop, "drop": drop}
        verdicts.append(_grade(drop, tol.steps, n))
        parts.append(f"{short[key]} {_pts(-drop)}")
    summary = (f"at {reports.format_budget(check_budget, unit)}: PGD {_pct(base)}; accuracy change when the "
               f"samples PGD left are also attacked with " + ", ".join(parts))
    return CheckResult(4, "more steps (x4) / restarts (x5) / half step", _worst(*verdicts), summary,
                       f"drop <= {100 * tol.steps:g} pts", numbers)


def _check_blackbox(a, budgets, n, tol, unit) -> CheckResult:
    worst, parts, numbers = {}, [], {}
    for key, label in (("square", "Square"), ("noise", "noise")):
        leads = []
        for b in budgets:
            wb = [a(k, b) for k in _WHITEBOX if a(k, b) is not None]
            if not wb or a(key, b) is None:
                continue
            leads.append((min(wb) - a(key, b), b))
        if leads:
            lead, b = max(leads)
            worst[key] = lead
            numbers[key] = {"largest_lead": lead, "budget": b}
            parts.append(f"{label} minus best white-box: {_pts(-lead)} at {reports.format_budget(b, unit)}")
    if not worst:
        return CheckResult(5, "black-box / noise not stronger than white-box", SKIP, "nothing to compare",
                           f"lead <= {100 * tol.blackbox:g} pts")
    verdict = _worst(*(_grade(v, tol.blackbox, n) for v in worst.values()))
    return CheckResult(5, "black-box / noise not stronger than white-box", verdict,
                       "; ".join(parts) + " (the lowest over budgets; should be >= 0)",
                       f"lead <= {100 * tol.blackbox:g} pts", numbers)


def _check_transfer(a, budgets, n, tol, skipped, unit) -> CheckResult:
    parts, verdicts, numbers = [], [], {}
    for key, label in (("transfer", "transfer from lam=1"), ("bpda", "BPDA"), ("detached", "IRLS detached")):
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
        verdicts.append(_grade(lead, tol.transfer, n))
        parts.append(f"{label} minus direct PGD: {_pts(-lead)} at {reports.format_budget(b, unit)}")
    return CheckResult(6, "transfer / BPDA / detached IRLS not stronger than direct PGD", _worst(*verdicts),
                       "; ".join(parts) + " (the lowest over budgets; should be >= 0)",
                       f"lead <= {100 * tol.transfer:g} pts", numbers)


def _check_autoattack(a, runner, budgets, n, tol, skipped, flags, unit) -> CheckResult:
    if "autoattack" in skipped:
        return CheckResult(7, "AutoAttack agrees with the strongest attack", SKIP, skipped["autoattack"],
                           f"|diff| <= {100 * tol.autoattack:g} pts")
    others = sorted({k for (t, k, _b) in runner.masks if t == "nrpm" and k not in
                     ("autoattack", "noise", "pgd-unbounded", "pgd-x4-steps", "pgd-x5-restarts", "pgd-half-step")})
    rows, verdicts = [], []
    for b in budgets:
        aa = a("autoattack", b)
        vals = [(a(k, b), k) for k in others if a(k, b) is not None]
        if aa is None or not vals:
            verdicts.append(FAIL)
            continue
        strongest, who = min(vals)
        rows.append({"budget": b, "autoattack": aa, "strongest": strongest, "strongest_attack": who})
        verdicts.append(_grade(strongest - aa, tol.autoattack, n))          # AA much lower: the others are weak
        if aa - strongest > max(tol.autoattack, 1 / n) + 1e-9:
            verdicts.append(WARN)                                            # AA much weaker than our attacks
    if flags:
        verdicts.append(WARN)
    diffs = [r["autoattack"] - r["strongest"] for r in rows]
    worst = max(rows, key=lambda r: abs(r["autoattack"] - r["strongest"])) if rows else None
    summary = ("AutoAttack minus strongest other attack: " +
               ", ".join(f"{_pts(d)} at {reports.format_budget(r['budget'], unit)}" for d, r in zip(diffs, rows)))
    if worst:
        summary += f" (strongest there: {worst['strongest_attack']})"
    summary += "; AutoAttack flags: " + ("; ".join(flags) if flags else "none")
    return CheckResult(7, "AutoAttack agrees with the strongest attack", _worst(*verdicts), summary,
                       f"|diff| <= {100 * tol.autoattack:g} pts (AA lower: fail band; AA higher: warn)",
                       {"per_budget": rows, "flags": list(flags)})


def _single_step_notes(a, worst, budgets, settings, tol, n) -> list[str]:
    notes = []
    unit = settings.get("budget_unit", 1.0)
    for tag in ("nrpm", "plain"):
        name = settings["model_labels"][tag]
        for b in budgets:
            fg, wc = a("fgsm", b, tag), worst.get(tag, {}).get(b)
            if fg is None or wc is None:
                continue
            if fg - wc > max(tol.steps, 1 / n) + 1e-9:
                notes.append(f"{name}, budget {reports.format_budget(b, unit)}: the single-step attack "
                             f"({settings['norm']} FGSM, the paper's) reports {_pct(fg)}, but the strongest "
                             f"attacks leave {_pct(wc)}: FGSM overstates robust accuracy by "
                             f"{100 * (fg - wc):.1f} points.")
    return notes


# ----------------------------------------------------------------------------------------------- tables
def collate_reports(paths: Sequence[str | Path]) -> str:
    """One markdown document from several audit.json files (or folders holding one): per run its verdict,
    check verdicts and accuracy table, and a summary table of the worst case per budget."""
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
        docs.append((p, data))
    lines = ["# Robustness audit tables", "",
             "Worst case = a sample counts as robust only if no attack of the audit broke it. "
             "Verdicts: see each run's audit.md for the numbers behind every check.", "",
             "| run | model | verdict | checks 1-7 | clean | worst case per budget |", "|---|---|---|---|---|---|"]
    for p, d in docs:
        s = d["settings"]
        unit = s.get("budget_unit", 1.0)
        checks = " ".join(f"{c['id']}:{c['verdict']}" for c in d["checks"])
        for tag in ("nrpm", "plain"):
            wc = {w["budget"]: w["accuracy"] for w in d["worst_case"].get(tag, [])}
            if not wc:
                continue
            per = ", ".join(f"{reports.format_budget(b, unit)}: {100 * v:.1f}" for b, v in wc.items())
            lines.append(f"| {p.parent.name} | {s['title']}, {s['model_labels'][tag]} | "
                         f"{d['verdict'] if tag == 'nrpm' else ''} | {checks if tag == 'nrpm' else ''} | "
                         f"{_pct(s['clean_accuracy'].get(tag))} | {per} |")
    if unfinished:
        lines += ["", "Not finished (cache.json but no audit.json yet; rerun the same `nrpm audit` command to resume): "
                  + ", ".join(f"`{name}`" for name in unfinished) + "."]
    lines.append("")
    for p, d in docs:
        report = AuditReport(settings=d["settings"], checks=[CheckResult(**c) for c in d["checks"]],
                             cells=d["cells"], worst_case={m: {w["budget"]: w["accuracy"] for w in ws}
                                                           for m, ws in d["worst_case"].items()},
                             notes=d["notes"], errors=d["errors"], seconds=d["seconds"])
        lines += [f"## {p.parent.name}: {d['settings']['title']}, {d['settings']['model_labels']['nrpm']} — "
                  f"{report.verdict.upper()}", "",
                  report.table_markdown(), ""]
        lines += [f"* {n}" for n in d["notes"] if "overstates" in n]
        lines.append("")
    return "\n".join(lines)
