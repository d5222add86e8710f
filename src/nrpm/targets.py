"""Which modules a reprogramming targets: name patterns the way PEFT users expect, and module aliases.

A pattern is one of

* a plain name, e.g. ``"fc2"`` or ``"layer1.0.conv1"``: matches a module of that name or any module whose
  dotted name ends with it (``"fc2"`` matches ``"head.fc2"``), as PEFT's ``target_modules`` do;
* a glob with ``*``, ``?`` or ``[...]``, e.g. ``"layer*.*.conv1"``: matched (``fnmatch``) against the full
  dotted name or any dotted suffix of it;
* a regular expression, written ``"re:PATTERN"`` (or given as a compiled ``re.Pattern``): must match the whole
  dotted name (``re.fullmatch``), e.g. ``"re:layer[12]\\..*conv\\d"``.

A module registered under several names (``s = nn.Linear(8, 8); nn.Sequential(s, nn.ReLU(), s)``) is one
module: :func:`module_aliases` lists all its names so that every alias gets the same robust module.
Wrapper prefixes (``module.`` of DataParallel / DDP, ``_orig_mod.`` of ``torch.compile``) are dropped by
:func:`canonical_name` when saved names are matched to a model.
"""

from __future__ import annotations

import fnmatch
import re
from typing import Iterable, Union

from torch import nn

__all__ = ["Pattern", "normalize_pattern", "matches", "module_aliases", "canonical_name"]

Pattern = Union[str, "re.Pattern[str]"]
_REGEX_PREFIX = "re:"
_GLOB_CHARS = set("*?[")
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def normalize_pattern(pattern: Pattern) -> str:
    """A pattern as a string (compiled regexes become ``"re:..."``); invalid regexes raise ValueError."""
    if isinstance(pattern, re.Pattern):
        return _REGEX_PREFIX + pattern.pattern
    if not isinstance(pattern, str) or not pattern:
        raise ValueError(f"a module pattern must be a non-empty string or re.Pattern, got {pattern!r}")
    if pattern.startswith(_REGEX_PREFIX):
        try:
            re.compile(pattern[len(_REGEX_PREFIX):])
        except re.error as error:
            raise ValueError(f"invalid regular expression in module pattern {pattern!r}: {error}") from None
    return pattern


def _suffixes(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[i:]) for i in range(len(parts))]


def _matches_one(name: str, pattern: str) -> bool:
    if pattern.startswith(_REGEX_PREFIX):
        return re.fullmatch(pattern[len(_REGEX_PREFIX):], name) is not None
    if _GLOB_CHARS & set(pattern):
        return any(fnmatch.fnmatchcase(suffix, pattern) for suffix in _suffixes(name))
    return name == pattern or name.endswith("." + pattern)


def matches(name: str, patterns: Iterable[Pattern]) -> bool:
    """Whether the dotted module ``name`` matches any of ``patterns`` (see the module docstring)."""
    return any(_matches_one(name, normalize_pattern(p)) for p in patterns)


def module_aliases(model: nn.Module) -> dict[int, list[str]]:
    """{id(module): [every name it is registered under]} for the submodules of ``model`` (root excluded), in
    module order; the first name is the one ``named_modules()`` reports."""
    aliases: dict[int, list[str]] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        if name:
            aliases.setdefault(id(module), []).append(name)
    return aliases


def canonical_name(name: str) -> str:
    """``name`` without wrapper prefixes: ``module.`` (DataParallel / DDP) in front, ``_orig_mod.``
    (torch.compile) anywhere."""
    while name.startswith(_WRAPPER_PREFIXES):
        name = name.split(".", 1)[1]
    return name.replace("._orig_mod.", ".")
