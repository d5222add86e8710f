"""Old vs new `nrpm audit`: the time of the full protocol, and proof that the answer did not change.

    # old code: a worktree of the commit before the speed-up; new code: this checkout
    git worktree add --detach /tmp/oldcode e98b10c
    .venv/bin/python benchmarks/audit_speed.py --old-src /tmp/oldcode/src --new-src src \\
        --work /tmp/bench --out results/audit_speed -- \\
        --model lenet --lam 0.8 --K 1 --budgets 0.1 0.2 0.3 --n-samples 100 --threads 1 --no-progress

runs ``nrpm audit ARGS --out WORK/old`` with the old code and ``--out WORK/new`` with the new (each skipped when
its audit.json exists, so an interrupted benchmark resumes), with OMP_NUM_THREADS=1, then compares: wall time and
the seconds of every cell; the worst case per budget; every check's verdict; the per-sample worst-case masks
(cache.json: a sample counts only if no cell at that budget broke it); and, per sample, every new cell with the
old ones: a cell that ran on every clean-correct sample must equal the old cell, a cell that ran on the survivors
of X must equal ``old X and old cell`` (exactly so for the attacks seeded per sample; pyautoattack's Square and
AutoAttack draw one generator per batch, so their draws change with the batch and the comparison is reported).
Writes OUT.md and OUT.json.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

from nrpm.audit.cells import cached_masks, parse_cache_key, worst_case_masks

from audit_profile import write_report  # benchmarks/ is the script's folder: on sys.path

#: attacks whose per-sample results depend on the batch (pyautoattack's generator per batch)
BATCH_SEEDED = {"apgd-ce", "apgd-dlr", "square", "autoattack"}


def run_audit(src: str, out: Path, args: list[str]) -> dict:
    """Run one audit (unless finished before): its wall and CPU seconds (None when it did not run here). CPU
    seconds (user + system of the child) are the fairer measure on a shared machine: wall time also counts the
    time other processes held the core."""
    if (out / "audit.json").exists():
        return {"wall": None, "cpu": None}
    env = {**os.environ, "PYTHONPATH": str(Path(src).resolve()), "OMP_NUM_THREADS": "1"}
    start, before = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run([sys.executable, "-m", "nrpm.cli", "audit", *args, "--out", str(out)], env=env, check=False)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {"wall": time.perf_counter() - start,
            "cpu": after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime}


def load_factor(old_rep: dict, new_rep: dict) -> float:
    """new / old seconds of the cells both runs do alike (APGD, FGSM: every clean-correct sample, same work): how
    much slower the machine was during the new run; the wall-time speedup divided by it is load-corrected."""
    same = {"apgd-ce", "apgd-dlr", "fgsm"}
    def total(rep):
        return sum(c["seconds"] for c in rep["cells"] if c["attack"] in same)
    return total(new_rep) / total(old_rep)


def cache_cells(folder: Path) -> dict[str, dict]:
    """The finished cells of a run's cache.json ({cell key: {"mask", "seconds"}})."""
    return json.loads((folder / "cache.json").read_text())["cells"]


def masks(cells: dict) -> dict[tuple, tuple[str, str | None]]:
    """{(tag, attack, budget): (mask string, reference or None)} of a run's cache cells."""
    out = {}
    for key, cell in cells.items():
        tag, attack, _params, budget, on = parse_cache_key(key)
        out[(tag, attack, budget)] = (cell["mask"], on)
    return out


def worst_masks(cells: dict, budgets: set[str]) -> dict[str, list[bool]]:
    """{'tag@budget': per-sample worst case} of a run's cache cells at each swept budget."""
    return {f"{tag}@{b}": mask.tolist() for (tag, b), mask in worst_case_masks(cached_masks(cells)).items()
            if b in budgets}


def cell_agreement(old: dict, new: dict) -> list[dict]:
    """Per new cell: does it equal the old cell (clean-correct) or old reference AND old cell (survivors)?"""
    rows = []
    for (tag, attack, b), (mask, on) in sorted(new.items()):
        if (tag, attack, b) not in old:
            continue
        expected = old[(tag, attack, b)][0]
        if on is not None:
            ref = old[(tag, on, b)][0]
            expected = "".join("1" if r == e == "1" else "0" for r, e in zip(ref, expected))
        diff = sum(a != e for a, e in zip(mask, expected))
        rows.append({"model": tag, "attack": attack, "budget": b, "ran_on": on or "clean-correct",
                     "differing_samples": diff, "batch_seeded": attack in BATCH_SEEDED})
    return rows


def compare(old_dir: Path, new_dir: Path, seconds: dict) -> dict:
    old_rep, new_rep = (json.loads((d / "audit.json").read_text()) for d in (old_dir, new_dir))
    old_raw, new_raw = cache_cells(old_dir), cache_cells(new_dir)
    budgets = {f"{b:.10g}" for b in new_rep["settings"]["budgets"]}
    wo, wn = worst_masks(old_raw, budgets), worst_masks(new_raw, budgets)
    agreement = cell_agreement(masks(old_raw), masks(new_raw))
    return {
        "measured_here": seconds, "audit_seconds": {"old": old_rep["seconds"], "new": new_rep["seconds"]},
        "speedup": old_rep["seconds"] / new_rep["seconds"],
        "load_factor": load_factor(old_rep, new_rep),
        "speedup_load_corrected": old_rep["seconds"] / new_rep["seconds"] * load_factor(old_rep, new_rep),
        "cell_seconds": {"old": sum(c["seconds"] for c in old_rep["cells"]),
                         "new": sum(c["seconds"] for c in new_rep["cells"])},
        "worst_case": {"old": old_rep["worst_case"], "new": new_rep["worst_case"],
                       "equal": old_rep["worst_case"] == new_rep["worst_case"]},
        "verdicts": {"old": [c["verdict"] for c in old_rep["checks"]],
                     "new": [c["verdict"] for c in new_rep["checks"]]},
        "worst_case_masks_equal": {k: wo.get(k) == wn[k] for k in wn},
        "cells_differing": [r for r in agreement if r["differing_samples"]],
        "cells_compared": len(agreement),
    }


def cpu_text(measured: dict) -> str:
    cpu = {k: v.get("cpu") for k, v in measured.items()}
    if None in cpu.values():
        return "not measured (an audit ran outside this script: see --cpu-seconds)"
    return f"old {cpu['old']:.0f}, new {cpu['new']:.0f}: **{cpu['old'] / cpu['new']:.2f}x**"


def _load_text(r: dict) -> str:
    if r["load_factor"] is None:
        return " (both audits ran at the same time, one thread each)"
    return (f"; the cells both do alike (APGD, FGSM) took {r['load_factor']:.2f}x as long in the new run, so "
            f"load-corrected **{r['speedup_load_corrected']:.2f}x**")


def markdown(result: dict, command: str, resumed: str | None = None) -> str:
    r = result
    cells = r["cell_seconds"]
    timing = ([f"* seconds of all cells (the time each attack took, from cache.json): old {cells['old']:.0f}, new "
               f"{cells['new']:.0f}: **{cells['old'] / cells['new']:.2f}x**; {resumed}"] if resumed else
              [f"* audit wall time: old {r['audit_seconds']['old']:.0f} s, new {r['audit_seconds']['new']:.0f} s: "
               f"**{r['speedup']:.2f}x**" + _load_text(r),
               f"* CPU seconds (user + system): {cpu_text(r['measured_here'])}"])
    lines = ["# Audit speed: old vs new", "", f"Command: `{command}`", "", *timing,
             f"* worst case equal: **{r['worst_case']['equal']}** (old {r['worst_case']['old']}, "
             f"new {r['worst_case']['new']})",
             f"* verdicts: old {r['verdicts']['old']}, new {r['verdicts']['new']}: "
             f"**{'equal' if r['verdicts']['old'] == r['verdicts']['new'] else 'DIFFERENT'}**",
             f"* per-sample worst-case masks equal: {r['worst_case_masks_equal']}",
             f"* cells compared per sample: {r['cells_compared']}; differing: "
             f"{len(r['cells_differing'])}"]
    lines += [f"  * {d['model']} {d['attack']} @{d['budget']} ({d['ran_on']}): {d['differing_samples']} samples"
              f"{' (pyautoattack, one generator per batch)' if d['batch_seeded'] else ''}"
              for d in r["cells_differing"]]
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--old-src", required=True)
    p.add_argument("--new-src", required=True)
    p.add_argument("--work", required=True, help="folder of the two audits' --out (old/, new/)")
    p.add_argument("--out", required=True, help="write OUT.md and OUT.json")
    p.add_argument("--cpu-seconds", nargs=2, type=float, default=None, metavar=("OLD", "NEW"),
                   help="CPU seconds of the two audits when they ran outside this script (e.g. read from "
                        "/proc/PID/stat while they ran)")
    p.add_argument("--concurrent", action="store_true",
                   help="the two audits ran at the same time (audit_speed_parallel.sh): no load correction")
    p.add_argument("--resumed", metavar="WHY",
                   help="the audits ran in parts (resumed caches, other thread counts): compare the cells' "
                        "seconds, not wall times, and say WHY")
    p.add_argument("audit_args", nargs=argparse.REMAINDER, help="-- then the nrpm audit arguments")
    args = p.parse_args(argv)
    audit_args = [a for a in args.audit_args if a != "--"]
    work = Path(args.work)
    seconds = {name: run_audit(src, work / name, audit_args)
               for name, src in (("old", args.old_src), ("new", args.new_src))}
    if args.cpu_seconds:
        seconds = {k: {**v, "cpu": c} for (k, v), c in zip(seconds.items(), args.cpu_seconds)}
    result = compare(work / "old", work / "new", seconds)
    if args.concurrent:  # same machine state for both; and sustained_work speeds up the APGD / FGSM cells too
        result["load_factor"] = result["speedup_load_corrected"] = None
    command = "nrpm audit " + " ".join(audit_args)
    text = markdown(result, command, args.resumed)
    write_report(args.out, text, {"command": command, "resumed": args.resumed, **result})
    print(text)


if __name__ == "__main__":
    main()
