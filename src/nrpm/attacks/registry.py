"""Attacks by name: ``make_attack('pgd', 8/255, steps=20)``, as ``nrpm eval --attack`` and the training CLI
use them."""
from __future__ import annotations

import functools
import inspect
from typing import Callable

from .autoattack import APGDCE, APGDDLR, AutoAttackStandard, Square
from .base import Attack
from .corruptions import Corruption
from .cw import CWL2, CWLinf
from .deepfool import DeepFool
from .noise import NoiseAttack
from .pgd import PGD, PGDL2
from .single_step import FGML1, FGML2, FGSM, L0TopK
from .spsa import SPSA

__all__ = ["ATTACKS", "STEP_SIZES", "make_attack", "canonical_name", "attack_factory", "with_default_seed",
           "step_size_options"]

#: name -> factory called as ``factory(eps, **kwargs)``
ATTACKS: dict[str, Callable[..., Attack]] = {
    "fgsm": FGSM,
    "pgd": PGD,
    "pgd_l2": PGDL2,
    "fgm_l1": FGML1,
    "fgm_l2": FGML2,
    "l0": L0TopK,
    "apgd-ce": APGDCE,
    "apgd-dlr": APGDDLR,
    "square": Square,
    "autoattack": functools.partial(AutoAttackStandard, norm="Linf"),
    "autoattack-l2": functools.partial(AutoAttackStandard, norm="L2"),
    "noise": NoiseAttack,
    "cw": CWLinf,
    "cw-l2": CWL2,
    "deepfool": DeepFool,
    "spsa": SPSA,
    "corruption": Corruption,
}


#: per attack, its options that are lengths in input space (step sizes, probe sizes): the CLI takes them in
#: --budget-unit, like the budgets. (C&W-L2's lr is a step in tanh space and Square's p_init a fraction: not here.)
STEP_SIZES: dict[str, tuple[str, ...]] = {
    "pgd": ("alpha",), "pgd_l2": ("alpha",), "cw": ("alpha",), "spsa": ("lr", "delta"),
}


def step_size_options(name: str) -> tuple[str, ...]:
    """The options of attack ``name`` given in budget units on the command line (see :data:`STEP_SIZES`)."""
    key, _ = attack_factory(name)
    return STEP_SIZES.get(key, ())


def canonical_name(name: str) -> str:
    """The spelling names are compared in: case-insensitive, '-' and '_' interchangeable ('PGD_L2' -> 'pgd-l2')."""
    return name.strip().lower().replace("_", "-")


def attack_factory(name: str) -> tuple[str, Callable[..., Attack]]:
    """(registered key, factory) of the attack called ``name`` (any spelling :func:`canonical_name` accepts)."""
    by_canonical = {canonical_name(key): key for key in ATTACKS}
    key = by_canonical.get(canonical_name(name)) if isinstance(name, str) else None
    if key is None:
        raise ValueError(f"unknown attack {name!r}; known attacks: {', '.join(ATTACKS)}")
    return key, ATTACKS[key]


def with_default_seed(name: str, kwargs: dict, seed: int) -> dict:
    """``kwargs`` plus ``seed`` when the attack takes a seed and none was given (a run's seed reaches its attacks)."""
    _, factory = attack_factory(name)
    if "seed" in inspect.signature(factory).parameters and "seed" not in kwargs:
        return {**kwargs, "seed": seed}
    return dict(kwargs)


def make_attack(name: str, eps: float, **kwargs) -> Attack:
    """Build a registered attack: ``make_attack('pgd', 8/255, steps=20)``.

    Names are case-insensitive and '-' / '_' are interchangeable. For 'l0', ``eps`` is the number of
    coordinates ``k``; for 'corruption' it is the severity 1-5 (``make_attack('corruption', 3, kind='contrast')``).
    """
    key, factory = attack_factory(name)
    fixed = getattr(factory, "keywords", {}) or {}
    clash = sorted(set(kwargs) & set(fixed))
    if clash:
        raise TypeError(f"attack {key!r} fixes {', '.join(f'{k}={fixed[k]!r}' for k in clash)}; "
                        f"do not pass {', '.join(clash)}")
    signature = inspect.signature(factory)
    budget_name = next(iter(signature.parameters))
    options = [p for p in signature.parameters if p not in fixed][1:]  # the budget is no option: not listed
    if budget_name in kwargs:
        raise TypeError(f"attack {key!r} takes its budget as make_attack's eps, not as an option "
                        f"{budget_name}={kwargs[budget_name]!r}; its options: {', '.join(options) or 'none'}")
    try:
        signature.bind(eps, **kwargs)
    except TypeError as error:
        raise TypeError(f"bad arguments for attack {key!r}: {error}; "
                        f"its options: {', '.join(options) or 'none'}") from None
    return factory(eps, **kwargs)
