"""Bring an older audit cache's fingerprint to the one today's audit writes, so a rerun resumes its cells.

An audit's cache.json is resumed only when its fingerprint equals the run's. Two changes to the fingerprint left
older caches behind, each refused by today's code although its cells hold the same numbers:

* ``lam`` is read as the float32 the layer computes with (0.80000001, since 2026-12-02); caches written while a
  fixed lam kept a Python copy hold 0.8. Rounded here as nrpm rounds it.
* ``estimators`` ({layer: {norm, gamma, delta, scale}}, since 2026-12-06) for non-L1 models: before it an MCP /
  Huber / HM audit could resume an L1 audit's cells. Give the audit's own estimator options (those of its command,
  its audit.json, or the estimator study's chosen.json); a robust layer built with them resolves and checks them
  (the defaults of the options not given), so the entry is the one a fresh run would write.

    .venv/bin/python scripts/migrate_cache_fingerprint.py FOLDER                       # an L1 audit
    .venv/bin/python scripts/migrate_cache_fingerprint.py FOLDER --estimator mcp --gamma 2 --scale relative

A rerun of the folder's command then resumes every cell, or refuses naming what differs (options given here that
were not the audit's). Nothing else is touched; the file is rewritten atomically, and only if something changed.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from nrpm.audit.runner import fingerprint_lam
from nrpm.nn import RobustLinear
from nrpm.reports import atomic_write_text
from nrpm.validation import DEFAULT_DELTA, DEFAULT_GAMMA, DEFAULT_SCALE


def migrate(fingerprint: dict, estimator: dict | None) -> list[str]:
    """Update ``fingerprint`` in place; what was changed, one phrase each."""
    changes = []
    for info in fingerprint["lam"].values():
        if info["lam"] != fingerprint_lam(info["lam"]):
            changes.append(f"lam {info['lam']} read as float32 {fingerprint_lam(info['lam'])}")
            info["lam"] = fingerprint_lam(info["lam"])
    if estimator is not None and "estimators" not in fingerprint:
        fingerprint["estimators"] = {layer: dict(estimator) for layer in fingerprint["lam"]}
        changes.append(f"estimators {estimator} added for {len(fingerprint['lam'])} layers")
    return sorted(set(changes))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("folder", type=Path)
    p.add_argument("--estimator", choices=["l1", "mcp", "huber", "hm"], default="l1")
    p.add_argument("--gamma", type=float, default=DEFAULT_GAMMA)
    p.add_argument("--delta", type=float, default=DEFAULT_DELTA)
    p.add_argument("--scale", default=DEFAULT_SCALE)
    args = p.parse_args(argv)
    estimator = None
    if args.estimator != "l1":  # the entry a layer of these options writes: estimator_info reads layer.estimator()
        estimator = RobustLinear(1, 1, norm=args.estimator, gamma=args.gamma, delta=args.delta,
                                 scale=args.scale).estimator()
    path = args.folder / "cache.json"
    if not path.is_file():
        print(f"{path}: no such file; give an audit's --out folder", file=sys.stderr)
        return 2
    cache = json.loads(path.read_text())
    changes = migrate(cache["fingerprint"], estimator)
    if changes:
        atomic_write_text(path, json.dumps(cache, indent=2))
    print(f"{path}: {'; '.join(changes) if changes else 'already current; nothing to do'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
