"""Attacks by name: ``make_attack('pgd', 8/255, steps=20)``, as ``nrpm eval --attack``, the training CLI and the
audit use them.

Each attack registers itself where it is defined, as models do (``nrpm.models.register_model``):

    @register_attack("pgd", help="Linf PGD")
    class PGD(...): ...

    @register_attack("autoattack-l2", norm="L2")     # fixed keyword arguments: one class, several names
    class AutoAttackStandard(...): ...

A registered name is one of the CLI's ``--attack`` choices. ``audit=`` (one of :data:`AUDIT_ROLES`) also puts it
in ``nrpm audit``: its sweep runs it at every budget, and the check of its role judges it (white-box: check 5's
reference; black-box: check 5; adaptive: check 6). The audit's own attacks, with the settings it gives them, are
listed in :data:`nrpm.audit.plan.CATALOGUE`.
"""
from __future__ import annotations

import difflib
import functools
import inspect
from dataclasses import dataclass, field
from typing import Callable

from .base import Attack

__all__ = ["ATTACKS", "STEP_SIZES", "AttackEntry", "register_attack", "unregister_attack", "attack_entries",
           "make_attack", "canonical_name", "attack_factory", "with_default_seed", "step_size_options",
           "unknown_attack_message", "WHITE_BOX", "BLACK_BOX", "ADAPTIVE", "AUDIT_ROLES"]

# the roles a registered attack may take in the audit (nrpm.audit.plan adds its own internal ones)
WHITE_BOX, BLACK_BOX, ADAPTIVE = "white-box", "black-box", "adaptive"
AUDIT_ROLES = (WHITE_BOX, BLACK_BOX, ADAPTIVE)


@dataclass(frozen=True)
class AttackEntry:
    """A registered attack: its factory ``factory(eps, **kwargs)``, a help note and its role in the audit."""

    name: str
    factory: Callable[..., Attack] = field(compare=False)
    help: str = ""
    audit: str | None = None


_REGISTRY: dict[str, AttackEntry] = {}

#: name -> factory called as ``factory(eps, **kwargs)`` (a live view of the registry, in registration order)
ATTACKS: dict[str, Callable[..., Attack]] = {}


def register_attack(name: str, *, help: str = "", audit: str | None = None, **fixed
                    ) -> Callable[[Callable[..., Attack]], Callable[..., Attack]]:
    """Decorator registering an attack class (or factory) under ``name``; ``fixed`` keyword arguments are bound
    (``register_attack("autoattack-l2", norm="L2")``), ``help`` is its note in the CLI's list, ``audit`` its role
    in ``nrpm audit`` (None: not audited). Decorators stack, so one class may register several names."""
    if audit is not None and audit not in AUDIT_ROLES:
        raise ValueError(f"audit role of attack {name!r} must be one of {', '.join(AUDIT_ROLES)}, got {audit!r}")

    def decorator(factory: Callable[..., Attack]) -> Callable[..., Attack]:
        if name in _REGISTRY:
            raise ValueError(f"attack name {name!r} is already registered")
        bound = functools.partial(factory, **fixed) if fixed else factory
        _REGISTRY[name] = AttackEntry(name, bound, help, audit)
        ATTACKS[name] = bound
        return factory

    return decorator


def unregister_attack(name: str) -> None:
    """Remove the attack registered as ``name`` (a plugin's, or a test's); KeyError if there is none."""
    del _REGISTRY[name]
    del ATTACKS[name]


def attack_entries() -> tuple[AttackEntry, ...]:
    """Every registered attack, in registration order."""
    return tuple(_REGISTRY.values())


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


def unknown_attack_message(name) -> str:
    """'unknown attack ...' with the closest registered names and the full list."""
    by_canonical = {canonical_name(key): key for key in _REGISTRY}
    close = difflib.get_close_matches(canonical_name(str(name)), list(by_canonical), n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(by_canonical[c] for c in close)}?" if close else ""
    return f"unknown attack {name!r}{hint} (known attacks: {', '.join(_REGISTRY)})"


def attack_factory(name: str) -> tuple[str, Callable[..., Attack]]:
    """(registered key, factory) of the attack called ``name`` (any spelling :func:`canonical_name` accepts)."""
    by_canonical = {canonical_name(key): key for key in _REGISTRY}
    key = by_canonical.get(canonical_name(name)) if isinstance(name, str) else None
    if key is None:
        raise ValueError(unknown_attack_message(name))
    return key, _REGISTRY[key].factory


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
