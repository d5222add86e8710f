"""Estimate what an every-sample audit (the protocol before survivors-only cells and PGD's early stopping) would
cost under the new protocol, from its cache.json alone: no attack runs.

    .venv/bin/python benchmarks/audit_estimate.py results/audit/resnet18_narrow_p1_lam0.9_K1_n100_reaudit \\
        --out results/audit_estimate

The new protocol is replayed on the old per-sample masks (black-box cells on the survivors of the strongest
white-box cell, adaptive ones on PGD's, AutoAttack on the strongest other cell's: ``nrpm.audit.survivors``), and
each cell's new cost is its old seconds scaled by the work it keeps, a *model*, not a measurement:

* pyautoattack's APGD, FGSM, noise (they run on every clean-correct sample as before): unchanged;
* PGD-style attacks that keep the first adversarial point (PGD, C&W, BPDA, detached, check 4's variants,
  unbounded PGD) stopped per sample: old x (robust + 0.5 broken among the attacked) / clean-correct, a broken
  sample costing half its steps on average;
* the transfer and smoothed attacks (last iterate, no early stop): old x attacked / clean-correct;
* Square, SPSA, AutoAttack (already stop per sample): old x (robust + 0.5 broken) new / (robust + 0.5 broken) old.

Checked against a measured run in results/audit_speed.md (the LeNet estimate is printed next to it).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from nrpm.audit.cells import parse_cache_key

from audit_profile import write_report  # benchmarks/ is the script's folder: on sys.path

UNCHANGED = {"apgd-ce", "apgd-dlr", "fgsm", "noise"}
EARLY_STOPPED = {"pgd", "cw", "bpda", "detached", "pgd-x4-steps", "pgd-x5-restarts", "pgd-half-step", "pgd-unbounded"}
LAST_ITERATE = {"transfer", "smoothed-eps10", "smoothed-eps100", "smoothed-k1"}
WHITE_BOX = ("pgd", "fgsm", "apgd-ce", "apgd-dlr", "cw")
BLACK_BOX = ("square", "spsa")
ADAPTIVE = ("transfer", "bpda", "detached", "smoothed-eps10", "smoothed-eps100", "smoothed-k1")
NOT_COMPARED = {"autoattack", "noise", "pgd-unbounded", "pgd-x4-steps", "pgd-x5-restarts", "pgd-half-step"}


def read(folder: Path) -> dict[tuple, dict]:
    """{(tag, attack, budget): {"mask": [bool], "seconds": s}} of an every-sample cache.json."""
    cells = {}
    for key, cell in json.loads((Path(folder) / "cache.json").read_text())["cells"].items():
        tag, attack, _params, budget, _on = parse_cache_key(key)
        cells[(tag, attack, budget)] = {"mask": [c == "1" for c in cell["mask"]], "seconds": cell["seconds"]}
    return cells


def _and(a, b):
    return [x and y for x, y in zip(a, b)]


def _strongest(cells, tag, keys, budget):
    ran = [k for k in keys if (tag, k, budget) in cells]
    return min(ran, key=lambda k: sum(cells[(tag, k, budget)]["mask"]), default=None)


def _reference(cells, tag, attack, budget):
    if attack in BLACK_BOX:
        return _strongest(cells, tag, WHITE_BOX, budget)
    if attack in ADAPTIVE:
        return "pgd" if (tag, "pgd", budget) in cells else None
    if attack == "autoattack":
        others = sorted({k for (t, k, b) in cells if t == tag and b == budget and k not in NOT_COMPARED})
        return _strongest(cells, tag, others, budget)
    return None


def replay(cells: dict) -> dict[tuple, dict]:
    """The new protocol on the old masks: every cell's candidates and combined mask, references first."""
    clean = {}  # clean-correct samples per model
    order = sorted(cells, key=lambda k: (k[1] == "autoattack", k[1] in BLACK_BOX + ADAPTIVE))
    new = {}
    for tag, attack, budget in order:
        old = cells[(tag, attack, budget)]
        n_clean = clean.setdefault(tag, _clean_count(cells, tag))
        ref = _reference(new, tag, attack, budget)
        mask, cand = old["mask"], None
        if ref is not None:
            cand = new[(tag, ref, budget)]["mask"]
            mask = _and(cand, mask)
        new[(tag, attack, budget)] = {"mask": mask, "ref": ref, "seconds": old["seconds"],
                                      "estimate": _estimate(attack, old, cand, n_clean)}
    return new


def _clean_count(cells, tag) -> int:
    """Clean-correct samples ~ the most any cell of the model left robust (noise at the smallest budget)."""
    return max(sum(c["mask"]) for (t, _a, _b), c in cells.items() if t == tag)


def _estimate(attack, old, cand, n_clean) -> float:
    seconds, mask = old["seconds"], old["mask"]
    if attack in UNCHANGED or attack not in EARLY_STOPPED | LAST_ITERATE | set(BLACK_BOX) | {"autoattack"}:
        return seconds
    robust = sum(m and (cand[i] if cand is not None else True) for i, m in enumerate(mask))
    attacked = sum(cand) if cand is not None else n_clean
    if attack in LAST_ITERATE:
        return seconds * attacked / max(n_clean, 1)
    new_work = robust + 0.5 * (attacked - robust)
    if attack in EARLY_STOPPED:
        return seconds * new_work / max(n_clean, 1)
    old_work = sum(mask) + 0.5 * (n_clean - sum(mask))
    return seconds * new_work / max(old_work, 1e-9)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folders", nargs="+")
    p.add_argument("--out", default=None, help="write OUT.md and OUT.json")
    args = p.parse_args(argv)
    report, lines = {}, ["# Audit cost under the new protocol, estimated from every-sample runs (a model)", ""]
    for folder in args.folders:
        new = replay(read(Path(folder)))
        old_total, new_total = (sum(c[k] for c in new.values()) for k in ("seconds", "estimate"))
        per_attack = {}
        for (tag, attack, _b), c in new.items():
            row = per_attack.setdefault(f"{tag} {attack}", [0.0, 0.0])
            row[0] += c["seconds"]
            row[1] += c["estimate"]
        report[folder] = {"old_seconds": old_total, "estimated_seconds": new_total, "per_attack": per_attack}
        lines += [f"## {folder}: {old_total:.0f} s -> ~{new_total:.0f} s (x{old_total / new_total:.2f})", "",
                  "| model attack | old s | estimated new s |", "|---|---|---|"]
        lines += [f"| {k} | {o:.1f} | {n:.1f} |" for k, (o, n) in sorted(per_attack.items(), key=lambda kv: -kv[1][0])]
        lines.append("")
    text = "\n".join(lines)
    if args.out:
        write_report(args.out, text, report)
    print(text)


if __name__ == "__main__":
    main()
