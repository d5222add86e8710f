"""Which weight-bearing modules a reprogramming leaves plain, so that none is left plain silently.

A module is *weight-bearing* when it directly owns a parameter of two or more dimensions whose name contains
``weight`` (``weight``, ``in_proj_weight``, ``weight_ih_l0`` ...): the units that multiply their input by a
weight matrix or kernel (nn.Embedding, nn.Conv1d, nn.MultiheadAttention, RNNs, custom attention holding a
``qkv_weight``...). Normalisation layers (1-D weights) and free tensors such as a ViT's ``cls_token`` are not.

:func:`unreprogrammed_weights` lists those a reprogramming did not cover: a module is covered when its exact type
is one of the targeted types (also when the user's names, ``skip`` or predicate then excluded it: that is a
choice, not an omission) or when it lies inside a covered module (``out_proj`` of a targeted attention).
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Callable, Iterator

from torch import nn

__all__ = ["UnreprogrammedWeightsWarning", "is_weight_bearing", "unreprogrammed_weights", "warn_unreprogrammed"]


class UnreprogrammedWeightsWarning(UserWarning):
    """A reprogramming left some weight-bearing modules plain (see :func:`unreprogrammed_weights`)."""


def is_weight_bearing(module: nn.Module) -> bool:
    """Whether ``module`` directly owns a weight matrix or kernel (see the module docstring)."""
    return any("weight" in name and p is not None and p.dim() >= 2
               for name, p in module.named_parameters(recurse=False))


def _inside(name: str, prefixes: list[str]) -> bool:
    return any(p == "" or name == p or name.startswith(p + ".") for p in prefixes)


def unreprogrammed_weights(model: nn.Module, target_types: tuple[type, ...], supported: tuple[type, ...],
                           robust_types: tuple[type, ...]) -> dict[str, str]:
    """{module name ('' for the root): why it stays plain} for the weight-bearing modules not covered.

    ``target_types``: the exact types the reprogramming targets; ``supported``: the types nrpm can reprogram
    (for the reason given); ``robust_types``: nrpm's own robust modules, which count as covered.
    """
    covered: list[str] = []  # names whose whole subtree needs no report
    report: dict[str, str] = {}
    for name, module in model.named_modules():
        if _inside(name, covered):
            continue
        kind = type(module).__name__
        if type(module) in target_types or isinstance(module, robust_types):
            covered.append(name)
        elif type(module) in supported:
            # one entry for an untargeted supported module, not one more for its out_proj-like children
            covered.append(name)
            report[name] = f"{kind} is not in target_types"
        elif is_weight_bearing(module):
            report[name] = f"nrpm does not reprogram {kind}"
    return report


def warn_unreprogrammed(report: dict[str, str]) -> None:
    """One warning naming every module of ``report`` (nothing when it is empty)."""
    if not report:
        return
    listed = "; ".join(f"{name or '(root)'}: {why}" for name, why in report.items())
    warnings.warn(f"reprogramming left {len(report)} weight-bearing module(s) plain: {listed}. Add their type to "
                  "target_types where nrpm supports it; the list is also in model.nrpm_unreprogrammed",
                  UnreprogrammedWeightsWarning, stacklevel=3)


@contextlib.contextmanager
def warnings_as_notes(log: Callable[[str], None]) -> Iterator[None]:
    """Inside: an :class:`UnreprogrammedWeightsWarning` goes to ``log`` as one ``note: ...`` line (how the CLI
    commands report coverage) instead of Python's ``file:line: UnreprogrammedWeightsWarning`` form; every other
    warning is shown as before."""
    with warnings.catch_warnings():
        shown = warnings.showwarning

        def show(message, category, filename, lineno, file=None, line=None):
            if issubclass(category, UnreprogrammedWeightsWarning):
                log(f"note: {message}")
            else:
                shown(message, category, filename, lineno, file, line)

        warnings.showwarning = show
        yield
