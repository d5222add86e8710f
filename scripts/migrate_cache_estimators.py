"""Add the estimator to the fingerprint of an audit cache written before the fingerprint held it.

Before 2026-12-06 an audit's cache.json fingerprint held the weights, data, lam and norm but not the robust
estimator, so an MCP / Huber / HM audit could resume an L1 audit's cells (same weights, lam and data). The
fingerprint now holds ``estimators`` ({layer: {norm, gamma, delta, scale}}) for non-L1 models; a cache written
before by a non-L1 audit is refused by the new code until this adds the entry its own audit would write. Give the
audit's own estimator options (those of its command: the folder's audit.json ``eval_settings``, or its script):

    .venv/bin/python scripts/migrate_cache_estimators.py FOLDER --estimator mcp --gamma 2 --scale relative

The values are resolved as nrpm's layers resolve them (the defaults of the options not given), so the entry is the
one a fresh run would write; a rerun of the folder's command then resumes every cell (or refuses, naming what
differs, if the options given here were not the audit's). The file is rewritten atomically.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from nrpm.reports import atomic_write_text
from nrpm.validation import DEFAULT_DELTA, DEFAULT_GAMMA, DEFAULT_SCALE, check_estimator


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("folder", type=Path)
    p.add_argument("--estimator", required=True, choices=["mcp", "huber", "hm"])
    p.add_argument("--gamma", type=float, default=DEFAULT_GAMMA)
    p.add_argument("--delta", type=float, default=DEFAULT_DELTA)
    p.add_argument("--scale", default=DEFAULT_SCALE)
    args = p.parse_args(argv)
    check_estimator(args.estimator, args.gamma, args.delta, args.scale)
    path = args.folder / "cache.json"
    cache = json.loads(path.read_text())
    fingerprint = cache["fingerprint"]
    if "estimators" in fingerprint:
        print(f"{path}: already holds estimators; nothing to do", file=sys.stderr)
        return 0
    estimator = {"norm": args.estimator, "gamma": args.gamma, "delta": args.delta, "scale": args.scale}
    fingerprint["estimators"] = {layer: dict(estimator) for layer in fingerprint["lam"]}
    atomic_write_text(path, json.dumps(cache, indent=2))
    print(f"{path}: estimators {estimator} added for {len(fingerprint['lam'])} layers", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
