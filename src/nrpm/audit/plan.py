"""The audit's attacks: one typed :data:`CATALOGUE`, and the plan of one audit derived from it.

Every attack of the audit is an :class:`AuditAttack`: its cache key, its short label (in the checks' summaries and
the skip notes), its *role* and how it is built from the :class:`~nrpm.audit.config.AuditConfig`. Everything else
is derived from the catalogue, never listed again: the sweep of the audited model (:func:`sweep_keys`), the plain
model's sweep, the attacks ``skip_attacks`` may switch off (:func:`optional_keys`) and the groups each check reads
(:func:`keys_with_role`). An attack registered with ``@nrpm.attacks.register_attack(name, audit=ROLE)`` joins the
catalogue at its end, with default settings (:func:`catalogue`).

The roles: ``white-box`` (check 5's reference), ``black-box`` and ``noise`` (check 5), ``adaptive`` (check 6),
``autoattack`` (check 7), and the extra PGD runs of checks 3 and 4 (``unbounded``, ``step-variant``), which are
not part of the sweeps.

The order of the catalogue is the order the cells run in; attacks added later come at its end, under new cache
keys, so an older ``cache.json`` still resumes.
"""

from __future__ import annotations

import copy
import inspect
import math
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from .. import attacks as A
from ..attacks.base import logits_2d
from ..attacks.registry import ADAPTIVE, BLACK_BOX, WHITE_BOX
from ..reprogram import undo_reprogramming
from .adaptive import SMOOTHINGS, bpda_pgd, detached_irls_pgd, pgd_class, smoothed_pgd, transfer_pgd
from .cells import AttackSpec
from .config import AuditConfig

__all__ = ["AuditAttack", "CATALOGUE", "catalogue", "attack", "sweep_keys", "plain_sweep_keys", "optional_keys",
           "keys_with_role", "OPTIONAL_ATTACKS", "AuditPlan", "make_plan", "WHITE_BOX", "BLACK_BOX", "NOISE",
           "ADAPTIVE", "AUTOATTACK", "UNBOUNDED", "STEP_VARIANT", "DIRECT_PGD", "SINGLE_STEP"]

NOISE, AUTOATTACK, UNBOUNDED, STEP_VARIANT = "noise", "autoattack", "unbounded", "step-variant"
_SWEPT = (WHITE_BOX, BLACK_BOX, NOISE, ADAPTIVE)   # the roles run at every budget (AutoAttack: after the sweep)

#: the attack checks 4 and 6 compare with ('direct PGD'), and whose accuracies pick check 4's budget
DIRECT_PGD = "pgd"
#: the paper's single-step attack, whose overstatement of robust accuracy the report notes
SINGLE_STEP = "fgsm"


@dataclass(frozen=True)
class AuditAttack:
    """One attack of the audit.

    ``build(config, plan) -> (table label, factory eps -> Attack, parameters)``: the parameters go into the cache
    key, so a cell is reused only with equal ones. ``optional``: ``skip_attacks`` may switch it off. ``plain_rank``:
    its place in the plain model's sweep (None: the plain model is not attacked with it; that sweep ran FGSM first
    when it was introduced, and its cells keep that order). ``min_classes``, ``needs_base`` and ``layers_to``
    (what it does with the robust layers: it is skipped without any) are when it can run.
    """

    key: str
    label: str
    role: str
    build: Callable[[AuditConfig, "AuditPlan"], tuple[str, Callable[[float], A.Attack], str]] = \
        field(compare=False, repr=False)
    optional: bool = False
    plain_rank: int | None = None
    min_classes: int = 0
    needs_base: bool = False
    layers_to: str | None = None

    def spec(self, config: AuditConfig, plan: "AuditPlan") -> AttackSpec:
        label, make, params = self.build(config, plan)
        return AttackSpec(self.key, label, make, params)


# ----------------------------------------------------------------------------------------------- builders
def pgd_kwargs(config: AuditConfig, eps: float, *, steps_factor=1, alpha_scale=1.0, restarts=None) -> dict:
    """The PGD settings of the audit at ``eps``, scaled for check 4's variants."""
    alpha = config.alpha if config.alpha is not None else 2.5 * eps / config.steps
    return dict(steps=config.steps * steps_factor, alpha=alpha * alpha_scale,
                restarts=config.restarts if restarts is None else restarts, seed=config.seed)


def _pgd_params(config) -> str:
    alpha_text = "default" if config.alpha is None else f"{config.alpha:g}"
    return f"steps={config.steps},alpha={alpha_text},restarts={config.restarts},seed={config.seed}"


def _pgd_label(config) -> str:
    return f"PGD-{config.steps}" + (f" x{config.restarts} restarts" if config.restarts > 1 else "")


def _fgsm(config, plan):
    if config.norm == "Linf":
        return "FGSM", lambda e: A.FGSM(e), ""
    return "FGM-L2", lambda e: A.FGML2(e), ""


def _pgd(config, plan):
    pgd = pgd_class(config.norm)
    return _pgd_label(config), lambda e: pgd(e, **pgd_kwargs(config, e)), _pgd_params(config)


def _apgd(cls, name):
    def build(config, plan):
        norm, steps, seed = config.norm, config.apgd_steps, config.seed
        return f"{name} ({steps})", lambda e: cls(e, norm=norm, steps=steps, seed=seed), f"steps={steps},seed={seed}"
    return build


def _square(config, plan):
    norm, queries, seed = config.norm, config.square_queries, config.seed
    return (f"Square ({queries} q.)", lambda e: A.Square(e, norm=norm, n_queries=queries, seed=seed),
            f"q={queries},seed={seed}")


def _noise(config, plan):
    return "random noise", lambda e: A.NoiseAttack(e, norm=config.norm, seed=config.seed), f"seed={config.seed}"


def _transfer(config, plan):
    return (f"transfer from lam=1 ({_pgd_label(config)})",
            lambda e: transfer_pgd(e, plan.base_model, norm=config.norm, steps=config.steps, alpha=config.alpha,
                                   seed=config.seed), _pgd_params(config))


def _bpda(config, plan):
    return (f"BPDA, plain backward ({_pgd_label(config)})",
            lambda e: bpda_pgd(e, norm=config.norm, **pgd_kwargs(config, e)), _pgd_params(config))


def _detached(config, plan):
    return (f"IRLS weights detached ({_pgd_label(config)})",
            lambda e: detached_irls_pgd(e, norm=config.norm, **pgd_kwargs(config, e)), _pgd_params(config))


def _autoattack(config, plan):
    return ("AutoAttack (standard)", lambda e: A.AutoAttackStandard(e, norm=config.norm, seed=config.seed),
            f"seed={config.seed}")


def _cw(config, plan):
    """PGD on the Carlini-Wagner margin loss (``CWLinf`` for Linf)."""
    def make(e):
        if config.norm == "Linf":
            return A.CWLinf(e, **pgd_kwargs(config, e))
        return A.PGDL2(e, loss_fn=A.margin_loss_per_sample, **pgd_kwargs(config, e))
    return f"C&W margin ({_pgd_label(config)})", make, _pgd_params(config)


def _spsa(config, plan):
    steps, samples, norm, seed = config.spsa_steps, config.spsa_samples, config.norm, config.seed
    # delta and lr are SPSA's defaults; they are in the key so that a change of default starts new cells
    defaults = A.SPSA(1.0, norm=norm, steps=steps, samples=samples, seed=seed)
    return (f"SPSA ({steps} x {samples} q.)", lambda e: A.SPSA(e, norm=norm, steps=steps, samples=samples, seed=seed),
            f"steps={steps},samples={samples},delta={defaults.delta:g},lr={defaults.lr:g},seed={seed}")


def _smoothed(eps_scale: float, K: int | None):
    """Check 6's PGD with the gradient of a smoother IRLS estimator (eps x10, eps x100, one IRLS step)."""
    def build(config, plan):
        smoothing = f"eps x{eps_scale:g}" if K is None else f"K={K}"
        return (f"smoothed IRLS, {smoothing} (PGD-{config.steps})",
                lambda e: smoothed_pgd(e, eps_scale=eps_scale, K=K, norm=config.norm, steps=config.steps,
                                       alpha=config.alpha, seed=config.seed), _pgd_params(config))
    return build


def _variant(label: Callable[[int, int], str], steps_factor=1, alpha_scale=1.0, restarts_factor=1):
    """Check 4's PGD variants, on the samples PGD left at the check budget; ``label(steps, restarts)``."""
    def build(config, plan):
        pgd, restarts = pgd_class(config.norm), restarts_factor * config.restarts
        scaling = dict(steps_factor=steps_factor, alpha_scale=alpha_scale, restarts=restarts)
        return (label(config.steps, config.restarts), lambda e: pgd(e, **pgd_kwargs(config, e, **scaling)),
                _pgd_params(config))
    return build


def _unbounded(config, plan):
    """Check 3's PGD at the unbounded budget, with PGD's default step (2.5 * eps / steps), not ``alpha``."""
    pgd, steps = pgd_class(config.norm), config.steps
    return (f"PGD-{steps} at {config.norm} {plan.unbounded_eps:g}", lambda e: pgd(e, steps=steps, seed=config.seed),
            f"steps={steps},seed={config.seed}")


def _registered(name: str):
    """A registered attack with its defaults, the audit's norm and seed where it takes them."""
    def build(config, plan):
        _, factory = A.attack_factory(name)
        accepts = inspect.signature(factory).parameters
        kwargs = {k: v for k, v in (("norm", config.norm), ("seed", config.seed)) if k in accepts}
        params = ",".join(f"{k}={v}" for k, v in kwargs.items() if k == "seed")
        return name, lambda e: A.make_attack(name, e, **kwargs), params
    return build


# ----------------------------------------------------------------------------------------------- the catalogue
#: every attack of the audit, in the order the cells run (newer ones last: older caches keep their keys)
CATALOGUE: tuple[AuditAttack, ...] = (
    AuditAttack("pgd", "PGD", WHITE_BOX, _pgd, plain_rank=1),
    AuditAttack("fgsm", "FGSM", WHITE_BOX, _fgsm, plain_rank=0),
    AuditAttack("apgd-ce", "APGD-CE", WHITE_BOX, _apgd(A.APGDCE, "APGD-CE"), plain_rank=2),
    AuditAttack("apgd-dlr", "APGD-DLR", WHITE_BOX, _apgd(A.APGDDLR, "APGD-DLR"), plain_rank=3, min_classes=3),
    AuditAttack("autoattack", "AutoAttack standard", AUTOATTACK, _autoattack, plain_rank=7, min_classes=4),
    AuditAttack("square", "Square", BLACK_BOX, _square, plain_rank=4),
    AuditAttack("noise", "noise", NOISE, _noise),
    AuditAttack("transfer", "transfer from lam=1", ADAPTIVE, _transfer, needs_base=True),
    AuditAttack("bpda", "BPDA", ADAPTIVE, _bpda, layers_to="approximate"),
    AuditAttack("detached", "IRLS detached", ADAPTIVE, _detached, layers_to="approximate"),
    AuditAttack("cw", "C&W margin", WHITE_BOX, _cw, optional=True, plain_rank=5),
    AuditAttack("spsa", "SPSA", BLACK_BOX, _spsa, optional=True, plain_rank=6),
    *(AuditAttack(key, f"smoothed IRLS {'K=%d' % K if K is not None else f'eps x{scale:g}'}", ADAPTIVE,
                  _smoothed(scale, K), optional=True, layers_to="smooth") for key, (scale, K) in SMOOTHINGS.items()),
    AuditAttack("pgd-x4-steps", "x4 steps", STEP_VARIANT,
                _variant(lambda s, r: f"PGD-{4 * s} (x4 steps, same step)", steps_factor=4)),
    AuditAttack("pgd-x5-restarts", "x5 restarts", STEP_VARIANT,
                _variant(lambda s, r: f"PGD-{s} x{5 * r} restarts", restarts_factor=5)),
    AuditAttack("pgd-half-step", "half step, x2 steps", STEP_VARIANT,
                _variant(lambda s, r: f"PGD-{2 * s} (half step)", steps_factor=2, alpha_scale=0.5)),
    AuditAttack("pgd-unbounded", "unbounded PGD", UNBOUNDED, _unbounded),
)


def catalogue() -> tuple[AuditAttack, ...]:
    """:data:`CATALOGUE`, then every attack registered with an audit role (optional, default settings)."""
    own = {a.key for a in CATALOGUE}
    extra = tuple(AuditAttack(e.name, e.name, e.audit, _registered(e.name), optional=True)
                  for e in A.attack_entries() if e.audit is not None and e.name not in own)
    return CATALOGUE + extra


def attack(key: str) -> AuditAttack:
    """The catalogue's attack ``key``."""
    return next(a for a in catalogue() if a.key == key)


def keys_with_role(*roles: str) -> tuple[str, ...]:
    """The keys of the attacks of these roles, in catalogue order."""
    return tuple(a.key for a in catalogue() if a.role in roles)


def sweep_keys() -> tuple[str, ...]:
    """The audited model's budget sweep (before AutoAttack)."""
    return keys_with_role(*_SWEPT)


def plain_sweep_keys() -> tuple[str, ...]:
    """The plain model's budget sweep (before AutoAttack)."""
    ranked = [a for a in catalogue() if a.plain_rank is not None and a.role != AUTOATTACK]
    return tuple(a.key for a in sorted(ranked, key=lambda a: a.plain_rank))


def optional_keys() -> tuple[str, ...]:
    """The attacks ``skip_attacks`` may switch off for a quick run (the others are what checks 3-7 stand on)."""
    return tuple(a.key for a in catalogue() if a.optional)


#: the built-in optional attacks (``optional_keys()`` adds the registered ones)
OPTIONAL_ATTACKS = tuple(a.key for a in CATALOGUE if a.optional)


# ----------------------------------------------------------------------------------------------- the plan
@dataclass
class AuditPlan:
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
    skipped: dict[str, str] = field(default_factory=dict)

    @property
    def sweep(self) -> list[str]:
        return [k for k in sweep_keys() if k not in self.skipped]

    @property
    def plain_sweep(self) -> list[str]:
        return [k for k in plain_sweep_keys() if k not in self.skipped]

    @property
    def variants(self) -> dict[str, AttackSpec]:
        return {k: self.specs[k] for k in keys_with_role(STEP_VARIANT)}

    @property
    def unbounded(self) -> AttackSpec:
        return self.specs[keys_with_role(UNBOUNDED)[0]]

    @property
    def run_autoattack(self) -> bool:
        return AUTOATTACK not in self.skipped


def make_plan(model, x, layers, config: AuditConfig, base_model=None, plain_model=None) -> AuditPlan:
    """The plan of auditing ``model`` (robust ``layers``) on ``x``: its reference models, attacks and skips."""
    unknown = sorted(set(config.skip_attacks) - set(optional_keys()))
    if unknown:
        raise ValueError(f"skip_attacks may only name {', '.join(optional_keys())}; got {unknown}")
    derived_base = False
    if base_model is None and layers:
        base_model = undo_reprogramming(copy.deepcopy(model))
        derived_base = True
    all_plain = bool(layers) and all(m.is_plain() for m in layers.values())
    compare_plain = config.compare_plain
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
    plan = AuditPlan(layers, base_model, plain_model, derived_base, compare_plain, device, n_classes, unbounded_eps)
    plan.specs = {a.key: a.spec(config, plan) for a in catalogue()}
    plan.skipped = _skipped(config, plan)
    return plan


def _skipped(config: AuditConfig, plan: AuditPlan) -> dict[str, str]:
    """{key: why} of the attacks this audit cannot or need not run, in catalogue order, then ``skip_attacks``."""
    skipped = {}
    for a in catalogue():
        why = _why_not(a, config, plan)
        if why:
            skipped[a.key] = why
    for key in config.skip_attacks:
        skipped.setdefault(key, "switched off (skip_attacks)")
    return skipped


def _why_not(a: AuditAttack, config, plan: AuditPlan) -> str | None:
    if a.role == AUTOATTACK and not config.autoattack:
        return "AutoAttack switched off (--no-autoattack)"
    if plan.n_classes < a.min_classes:
        return f"{a.label} needs >= {a.min_classes} classes (model has {plan.n_classes})"
    if a.needs_base and plan.base_model is None:
        return "no plain reference model (no robust layers and no base_model)"
    if a.layers_to and not plan.layers:
        return f"no robust layers to {a.layers_to}"
    return None
