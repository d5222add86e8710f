"""The least time the full audit protocol can take on a model, however its cells are scheduled: the work it must do
on the samples no attack breaks.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/audit_floor.py \\
        results/audit/resnet18_narrow_p1_lam0.9_K1_n100_reaudit --model resnet18_narrow --lam 0.9 --K 1 \\
        --target-s 1020 --out results/audit_floor_resnet

A sample robust in the audit's worst case is one every attack fails on, so every attack spends its whole budget
on it: all PGD-style steps and restarts (no early stop), all Square / SPSA queries, every AutoAttack stage (APGD-CE,
then APGD-T, FAB-T and Square on its own survivors). pyautoattack's APGD-CE / APGD-DLR cells run all their steps
on every sample they attack (the clean-correct ones). Whatever the audit does, it cannot skip this work without
weakening a check, so

    floor = sum over budgets and attacks of  n x (forwards x t_forward(n) + gradients x t_gradient(n))

with n the samples that attack must attack in full there, the per-attack counts from the cell's parameters in
the folder's cache.json (AutoAttack's counted: it runs on a few samples the plain model keeps robust, through a
counting wrapper) and t the NRPM model's measured per-sample time of a no-grad forward and of a forward plus input
gradient at batch n (under ``nrpm.sustained_work``, as in attacks), for the NRPM model's cells and the plain
model's beside them. The transfer attack's plain-model gradients, FGSM, noise and the checks' own forwards are
left out: the floor is a lower bound.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch

import nrpm
from nrpm import data as D
from nrpm.attacks import AutoAttackStandard
from nrpm.audit.cells import parse_cache_key
from nrpm.models import load_pretrained, model_entry

from audit_profile import write_report  # benchmarks/ is the script's folder: on sys.path

GRADIENT_STEPS = {"pgd", "cw", "bpda", "detached", "smoothed-eps10", "smoothed-eps100", "smoothed-k1",
                  "pgd-x4-steps", "pgd-x5-restarts", "pgd-half-step"}
# check 4's variants are keyed with the base PGD's parameters: x4 steps, x5 restarts, half the step for x2 steps
VARIANT_FACTOR = {"pgd-x4-steps": 4, "pgd-x5-restarts": 5, "pgd-half-step": 2}
EVERY_SAMPLE = {"apgd-ce", "apgd-dlr"}  # pyautoattack's single run: every step on every sample it attacks


def params(key: str) -> dict[str, str]:
    """The attack parameters of a cache key ('steps=20,alpha=default,restarts=1,seed=0' -> dict)."""
    return dict(p.split("=", 1) for p in key.split("|")[2].split(",") if "=" in p)


def work(attack: str, p: dict[str, str], autoattack: tuple[float, float]) -> tuple[float, float] | None:
    """(forwards, input gradients) one fully attacked sample costs the NRPM model; None: no NRPM-model work
    counted (transfer: plain-model gradients; fgsm / noise: one pass, negligible)."""
    if attack in GRADIENT_STEPS:
        return 0.0, float(int(p["steps"]) * int(p.get("restarts", 1)) * VARIANT_FACTOR.get(attack, 1))
    if attack in EVERY_SAMPLE:
        return 0.0, float(p["steps"])
    if attack == "square":
        return float(p["q"]), 0.0
    if attack == "spsa":
        return float(int(p["steps"]) * int(p["samples"])), 0.0
    if attack == "autoattack":
        return autoattack
    return None


def required(folder: Path):
    """From the audit's cache.json and audit.json, per model tag ('nrpm', 'plain'): the worst-case robust count per
    budget, the clean-correct count and the (attack, budget, parameters) cells; then the samples the plain model
    keeps robust under AutoAttack at its lowest budget, and the number of samples."""
    cells = json.loads((folder / "cache.json").read_text())["cells"]
    masks, found, plain_aa = {}, {}, {}
    for key, cell in cells.items():
        tag, attack, _params, budget, _on = parse_cache_key(key)
        mask = [c == "1" for c in cell["mask"]]
        if tag == "plain" and attack == "autoattack":
            plain_aa[float(budget)] = mask
        masks.setdefault(tag, {}).setdefault(float(budget), []).append(mask)
        found.setdefault(tag, []).append((attack, float(budget), params(key)))
    n = len(next(iter(masks["nrpm"].values()))[0])
    clean_accuracy = json.loads((folder / "audit.json").read_text())["settings"]["clean_accuracy"]
    robust = {tag: {b: sum(all(col) for col in zip(*ms)) for b, ms in per.items()} for tag, per in masks.items()}
    clean = {tag: round(clean_accuracy[tag] * n) for tag in masks}
    return robust, clean, found, plain_aa[min(plain_aa)] if plain_aa else [False] * n, n


class Counting(torch.nn.Module):
    """Counts the sample-forwards a wrapped model runs: no-grad ones, and ones built for a gradient."""

    def __init__(self, model):
        super().__init__()
        self.model, self.forwards, self.gradients = model, 0, 0

    def forward(self, x):
        out = self.model(x)
        if out.requires_grad:
            self.gradients += len(x)
        else:
            self.forwards += len(x)
        return out


def autoattack_work(name: str, budget: float, robust_plain: list[bool], probe: int) -> tuple[float, float]:
    """(forwards, gradients) per sample of standard AutoAttack at ``budget`` on samples it cannot break, counted on
    up to ``probe`` samples the plain model kept robust under it in the audit (a cheap model: AutoAttack's work on a
    sample it cannot break is its whole schedule, whatever the model)."""
    plain, _ = load_pretrained(name)
    x, y = D.subset(*D.load_dataset(model_entry(name).dataset, train=False), len(robust_plain))
    keep = [i for i, r in enumerate(robust_plain) if r][:probe]
    if not keep:
        raise SystemExit("the plain model kept no sample robust under AutoAttack: nothing to count on")
    counter = Counting(plain.eval())
    robust = AutoAttackStandard(budget)(counter, x[keep], y[keep])
    with torch.no_grad():
        still = int((plain(robust).argmax(1) == y[keep]).sum())
    print(f"AutoAttack counted on {len(keep)} samples, {still} of them still robust")
    return counter.forwards / len(keep), counter.gradients / len(keep)


def per_sample_seconds(model, x, repeats: int) -> tuple[float, float]:
    """Median per-sample seconds of a no-grad forward and of a forward plus input gradient on batch ``x``."""
    def forward():
        with torch.no_grad():
            model(x)

    def gradient():
        xg = x.clone().requires_grad_(True)
        model(xg).sum().backward()

    times = []
    for fn in (forward, gradient):
        fn()  # compiles this batch size's kernels
        runs = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            runs.append(time.perf_counter() - start)
        times.append(statistics.median(runs) / len(x))
    return times[0], times[1]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folder", type=Path, help="a full-protocol audit folder (cache.json, audit.json)")
    ap.add_argument("--model", required=True)
    ap.add_argument("--lam", type=float, required=True)
    ap.add_argument("--K", type=int, default=1)
    ap.add_argument("--eps", type=float, default=1e-3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--probe", type=int, default=3, help="robust samples AutoAttack's counts are taken on")
    ap.add_argument("--target-s", type=float, help="the time the issue asks for, to compare")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    robust, clean, cells, robust_plain, n = required(args.folder)
    nrpm_model, _ = load_pretrained(args.model)
    nrpm.reprogram(nrpm_model, nrpm.ReprogramConfig(lam=args.lam, K=args.K, eps=args.eps, paradigm=1))
    models = {"nrpm": nrpm_model.eval(), "plain": load_pretrained(args.model)[0].eval()}
    x, _ = D.subset(*D.load_dataset(model_entry(args.model).dataset, train=False), n)
    budgets = sorted({b for a, b, _ in cells["nrpm"] if a == "autoattack"})
    aa = autoattack_work(args.model, budgets[0], robust_plain, args.probe) if budgets else (0.0, 0.0)
    timing: dict[tuple[str, int], tuple[float, float]] = {}
    rows = []
    with nrpm.sustained_work():
        for tag in [t for t in ("nrpm", "plain") if t in cells]:
            for attack, budget, p in sorted(cells[tag], key=lambda c: (c[1], c[0])):
                per = work(attack, p, aa)
                size = clean[tag] if attack in EVERY_SAMPLE else robust[tag][budget]
                if per is None or size == 0:
                    continue
                if (tag, size) not in timing:
                    timing[(tag, size)] = per_sample_seconds(models[tag], x[:size], args.repeats)
                t_f, t_g = timing[(tag, size)]
                rows.append({"model": tag, "attack": attack, "budget": budget, "samples": size, "forwards": per[0],
                             "gradients": per[1], "seconds": size * (per[0] * t_f + per[1] * t_g)})
    total = sum(r["seconds"] for r in rows)
    data = {"folder": str(args.folder), "model": args.model, "lam": args.lam, "K": args.K, "eps": args.eps,
            "threads": args.threads, "n": n,
            "robust": {tag: {str(b): v for b, v in per.items()} for tag, per in robust.items()},
            "clean_correct": clean, "autoattack_per_sample": list(aa),
            "per_sample_seconds": {f"{tag}@{size}": {"forward": v[0], "gradient": v[1]}
                                   for (tag, size), v in timing.items()},
            "rows": rows, "floor_s": total, "target_s": args.target_s,
            "load_average": list(os.getloadavg())}
    write_report(args.out, markdown(data), data)
    print(markdown(data))


def markdown(d: dict) -> str:
    lines = [f"# Audit floor: {d['model']} lam {d['lam']} K {d['K']} ({d['n']} samples, {d['threads']} thread(s))",
             "", f"Robust in the worst case per budget (from `{d['folder']}`): {d['robust']}; clean-correct: "
             f"{d['clean_correct']}. AutoAttack per fully attacked sample: "
             f"{d['autoattack_per_sample'][0]:.0f} forwards, {d['autoattack_per_sample'][1]:.0f} gradients. "
             f"Load average at the end {[round(v, 2) for v in d['load_average']]}.", "",
             "| model | attack | budget | samples | forwards / sample | gradients / sample | seconds |",
             "|---|---|---|---:|---:|---:|---:|"]
    for r in sorted(d["rows"], key=lambda r: -r["seconds"]):
        lines.append(f"| {r['model']} | {r['attack']} | {r['budget']:.6g} | {r['samples']} | {r['forwards']:.0f} | "
                     f"{r['gradients']:.0f} | {r['seconds']:.1f} |")
    by_model = {tag: sum(r["seconds"] for r in d["rows"] if r["model"] == tag) for tag in ("nrpm", "plain")}
    lines += ["", "Per model: " + ", ".join(f"{tag} {s:.0f} s" for tag, s in by_model.items()) + "."]
    lines += ["", f"**Floor: {d['floor_s']:.0f} s** of model work that no scheduling can skip{_against_target(d)}."]
    return "\n".join(lines) + "\n"


def _against_target(d: dict) -> str:
    if not d["target_s"]:
        return ""
    reach = "within reach" if d["floor_s"] <= d["target_s"] else "out of reach"
    return f" (target {d['target_s']:.0f} s: {reach} with these kernels)"


if __name__ == "__main__":
    main()
