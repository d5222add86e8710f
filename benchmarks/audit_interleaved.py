"""PGD-style audit cells, old code vs new (per-sample early stopping), interleaved on the same inputs in one process,
so that the machine's load falls on both alike; also checks that each cell's per-sample results are identical.

    git worktree add --detach /tmp/oldcode e98b10c
    OMP_NUM_THREADS=1 NRPM_DATA=... NRPM_PRETRAINED=... .venv/bin/python benchmarks/audit_interleaved.py \\
        --old-src /tmp/oldcode/src --new-src src --rounds 2 --out results/audit_interleaved

LeNet (the authors' checkpoint) at lam 0.8, K 1 (the `nrpm audit --model lenet --lam 0.8 --K 1` model), first 100
MNIST test images; PGD-40 at 0.1 / 0.2 / 0.3 and PGD-160 (check 4's x4 steps) and detached-IRLS PGD at 0.1.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from audit_profile import write_report  # benchmarks/ is the script's folder: on sys.path


def load_code(src: str):
    """(``nrpm.attacks``, ``nrpm.audit.adaptive``, the model) of the code at ``src``, a fresh import of that tree.
    Each tree builds its own model: the gradient overrides (BPDA, detached) find the robust layers by their class,
    so an attack of one tree on a model of the other would silently attack it with plain PGD."""
    for name in [m for m in sys.modules if m == "nrpm" or m.startswith("nrpm.")]:
        del sys.modules[name]
    sys.path.insert(0, str(Path(src).resolve()))
    try:
        import nrpm
        import nrpm.attacks as attacks
        import nrpm.audit.adaptive as adaptive
        from nrpm.models import load_pretrained
        model, _ = load_pretrained("lenet")
        nrpm.reprogram(model, nrpm.ReprogramConfig(lam=0.8, K=1, paradigm=1))
    finally:
        sys.path.pop(0)
    return attacks, adaptive, model.eval()


def cells(A, adaptive):
    """name -> factory of the attack (same settings as the audit's cells)."""
    return {"pgd@0.1": lambda: A.PGD(0.1, steps=40), "pgd@0.2": lambda: A.PGD(0.2, steps=40),
            "pgd@0.3": lambda: A.PGD(0.3, steps=40),
            "pgd-x4-steps@0.1": lambda: A.PGD(0.1, steps=160, alpha=2.5 * 0.1 / 40),
            "detached@0.1": lambda: adaptive.detached_irls_pgd(0.1, steps=40)}


def robust(model, attack, x, y) -> torch.Tensor:
    x_adv = attack(model, x, y, indices=torch.arange(len(x)))
    with torch.no_grad():
        return model(x_adv).argmax(1) == y


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--old-src", required=True)
    p.add_argument("--new-src", required=True)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--cells", nargs="+", default=None, help="only these cells (default: all)")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    codes = {"old": load_code(args.old_src), "new": load_code(args.new_src)}
    from nrpm.data import load_dataset  # the new tree's (imported last)
    x, y = load_dataset("mnist")
    x, y = x[:100], y[:100]
    with torch.no_grad():
        clean = codes["new"][2](x).argmax(1) == y
    x, y = x[clean], y[clean]
    times = {name: {"old": [], "new": []} for name in cells(*codes["new"][:2]) if name in (args.cells or [name])}
    masks = {}
    for r in range(args.rounds):
        for name in times:
            for code in (("old", "new") if r % 2 == 0 else ("new", "old")):
                attack, model = cells(*codes[code][:2])[name](), codes[code][2]
                start = time.perf_counter()
                masks[(name, code)] = robust(model, attack, x, y)
                times[name][code].append(time.perf_counter() - start)
    rows = {name: {"old_s": min(t["old"]), "new_s": min(t["new"]), "speedup": min(t["old"]) / min(t["new"]),
                   "robust": int(masks[(name, "new")].sum()),
                   "masks_equal": bool(torch.equal(masks[(name, "old")], masks[(name, "new")]))}
            for name, t in times.items()}
    lines = ["# PGD-style audit cells, old vs new, interleaved (best of rounds, seconds)", "",
             f"{len(x)} clean-correct LeNet samples, lam 0.8, K 1, {args.rounds} rounds, 1 thread", "",
             "| cell | old s | new s | speedup | robust | per-sample masks equal |", "|---|---|---|---|---|---|"]
    lines += [f"| {n} | {r['old_s']:.2f} | {r['new_s']:.2f} | {r['speedup']:.2f}x | {r['robust']} | "
              f"{r['masks_equal']} |" for n, r in rows.items()]
    write_report(args.out, "\n".join(lines) + "\n", rows)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
