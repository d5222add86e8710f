"""The estimator study (results/estimators/): which robust estimator, if any, gives real robustness?

Paradigm 1 on the paper's checkpoints. For each model, every estimator over a small grid of its parameters and
lam values is scored on held-out TRAINING images (the last --val-n of the training split, never the test set):
clean accuracy and PGD at one budget. Per estimator the configuration with the best held-out PGD accuracy whose
held-out clean accuracy stays within --max-clean-drop points of the plain model is chosen; only the chosen ones
(and the plain model) are then measured on the first --test-n test images (clean, PGD at every budget) and
audited on the first --audit-n test images with the quick protocol (no AutoAttack, Square 1000 queries, APGD 50
steps, SPSA 20 steps x 32 samples; the full AutoAttack protocol does not fit the CPU budget), whose worst case
over all attacks is the number to quote. Cells are keyed by configuration and budget (not by sample count): change
--val-n / --test-n only with a fresh results folder.

    .venv/bin/python scripts/estimator_study.py run mnist      # mlp3 and LeNet (resumable)
    .venv/bin/python scripts/estimator_study.py run cifar --max-clean-drop 15   # narrow ResNet-18 (smaller grid;
        # every NRPM setting costs 10-16 held-out clean points there, so the default 5 would choose nothing)
    .venv/bin/python scripts/estimator_study.py report         # results/estimators/README tables

Every measured cell is stored in results/estimators/<model>/cells.json right after it finishes (atomically), so an
interrupted run resumes; audits write their own folder (audit.json/.md/.png, cache.json) beside it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

import nrpm
from nrpm import attacks as A
from nrpm import data as D
from nrpm.models import default_robust_layers, load_pretrained
from nrpm.reports import write_json
from report_estimators import audit_folder  # scripts/report_estimators.py (this script's folder is on sys.path)

OUT = Path(__file__).resolve().parents[1] / "results" / "estimators"

# relative scale: gamma / delta in units of each output's mean absolute residual; absolute: the official values
MNIST_GRID = [
    {"norm": "l1"},
    {"norm": "mcp", "gamma": 4.0, "delta": 3.0, "scale": "absolute"},
    {"norm": "huber", "gamma": 4.0, "delta": 3.0, "scale": "absolute"},
    {"norm": "hm", "gamma": 4.0, "delta": 3.0, "scale": "absolute"},
    {"norm": "mcp", "gamma": 1.0, "scale": "relative"},
    {"norm": "mcp", "gamma": 2.0, "scale": "relative"},
    {"norm": "huber", "delta": 0.5, "scale": "relative"},
    {"norm": "huber", "delta": 1.0, "scale": "relative"},
    {"norm": "hm", "gamma": 2.0, "delta": 1.0, "scale": "relative"},
    {"norm": "hm", "gamma": 3.0, "delta": 0.5, "scale": "relative"},
]
# LeNet and the ResNet: the relative forms only (mlp3 shows the absolute official values degenerate) and one lam
SMALL_GRID = [
    {"norm": "l1"},
    {"norm": "mcp", "gamma": 2.0, "scale": "relative"},
    {"norm": "huber", "delta": 1.0, "scale": "relative"},
    {"norm": "hm", "gamma": 2.0, "delta": 1.0, "scale": "relative"},
]
PROTOCOLS = {
    # model: (K, eps, lams, PGD steps, alpha (None: 2.5 eps / steps), selection budget, test budgets, unit, grid,
    #         val_n, test_n, audit_n)
    "mlp3": dict(K=3, eps=1e-3, lams=[0.6, 0.8], steps=40, alpha=None, select=0.05, budgets=[0.05, 0.1],
                 unit=1.0, grid=MNIST_GRID, val_n=500, test_n=200, audit_n=100),
    "lenet": dict(K=3, eps=1e-3, lams=[0.8], steps=40, alpha=None, select=0.1, budgets=[0.1, 0.2],
                  unit=1.0, grid=SMALL_GRID, val_n=200, test_n=200, audit_n=100),
    "resnet18_narrow": dict(K=1, eps=1e-3, lams=[0.9], steps=20, alpha=2 / 255, select=8 / 255,
                            budgets=[8 / 255, 16 / 255], unit=255.0, grid=SMALL_GRID, val_n=200, test_n=200,
                            audit_n=50),
}
GROUPS = {"mnist": ["mlp3", "lenet"], "cifar": ["resnet18_narrow"]}


def config_label(est: dict, lam: float | None) -> str:
    """'plain' or e.g. 'hm(gamma=2,delta=1,relative) lam=0.5'."""
    if lam is None:
        return "plain"
    args = ",".join(f"{k}={est[k]:g}" for k in ("gamma", "delta") if k in est)
    scale = est.get("scale", "absolute") if est["norm"] != "l1" else ""
    inner = ",".join(p for p in (args, scale) if p)
    return f"{est['norm']}({inner}) lam={lam:g}" if inner else f"{est['norm']} lam={lam:g}"


class Cells:
    """results/estimators/<model>/cells.json: {key: cell}, saved after every cell."""

    def __init__(self, model: str):
        self.path = OUT / model / "cells.json"
        self.cells = json.loads(self.path.read_text())["cells"] if self.path.exists() else {}

    def get(self, key, compute):
        if key not in self.cells:
            start = time.perf_counter()
            self.cells[key] = {**compute(), "seconds": round(time.perf_counter() - start, 1)}
            write_json(self.path, {"format": "nrpm-estimator-study/1", "cells": self.cells})
            print(f"{self.path.parent.name}: {key}: {self.cells[key]}", file=sys.stderr, flush=True)
        return self.cells[key]


def build(model_name: str, proto: dict, est: dict, lam: float | None):
    model, _ = load_pretrained(model_name)
    if lam is not None:
        nrpm.reprogram(model, nrpm.ReprogramConfig(lam=lam, K=proto["K"], eps=proto["eps"],
                                                   target_modules=default_robust_layers(model_name), **est))
    return model.eval()


def pgd(proto: dict, budget: float) -> A.PGD:
    return A.PGD(budget, steps=proto["steps"], alpha=proto["alpha"], seed=0)


def accuracy_cell(model, x, y, proto, budget):
    if budget == 0:
        correct = round(A.clean_accuracy(model, x, y, batch_size=250) * len(x))
    else:
        correct = round(A.robust_accuracy(model, pgd(proto, budget), x, y, batch_size=250) * len(x))
    return {"accuracy": correct / len(x), "correct": correct, "n": len(x)}


def configs(proto):
    yield {}, None
    for est in proto["grid"]:
        for lam in proto["lams"]:
            yield est, lam


def select(model_name: str, proto: dict, cells: Cells, max_drop: float) -> dict:
    """{estimator: (est, lam)} chosen on held-out training images."""
    x, y = D.load_dataset(build(model_name, proto, {}, None).dataset, train=True)
    x, y = x[-proto["val_n"]:], y[-proto["val_n"]:]
    scores = {}
    for est, lam in configs(proto):
        label = config_label(est, lam)
        model = build(model_name, proto, est, lam)
        clean = cells.get(f"val|{label}|clean", lambda: accuracy_cell(model, x, y, proto, 0))["accuracy"]
        robust = cells.get(f"val|{label}|pgd|{proto['select']:.6g}",
                           lambda: accuracy_cell(model, x, y, proto, proto["select"]))["accuracy"]
        scores[label] = (est, lam, clean, robust)
    plain_clean = scores["plain"][2]
    chosen = {}
    for label, (est, lam, clean, robust) in scores.items():
        if lam is None or clean < plain_clean - max_drop / 100:
            continue
        name = est["norm"]
        if name not in chosen or robust > chosen[name][3]:
            chosen[name] = (est, lam, clean, robust, label)
    return {name: {"est": c[0], "lam": c[1], "val_clean": c[2], "val_robust": c[3], "label": c[4]}
            for name, c in chosen.items()}


def test_and_audit(model_name: str, proto: dict, cells: Cells, chosen: dict, audit: bool) -> None:
    dataset = build(model_name, proto, {}, None).dataset
    x, y = D.subset(*D.load_dataset(dataset, train=False), proto["test_n"])
    rows = [("plain", {}, None)] + [(c["label"], c["est"], c["lam"]) for c in chosen.values()]
    for label, est, lam in rows:
        model = build(model_name, proto, est, lam)
        for budget in [0.0] + proto["budgets"]:
            key = f"test|{label}|" + ("clean" if budget == 0 else f"pgd|{budget:.6g}")
            cells.get(key, lambda: accuracy_cell(model, x, y, proto, budget))
        if audit and lam is not None:
            run_quick_audit(model_name, proto, model, label, dataset)


def run_quick_audit(model_name, proto, model, label, dataset):
    from nrpm.audit import AuditConfig, run_audit
    from nrpm.runs import RunContext

    folder = audit_folder(OUT / model_name, label)
    if (folder / "audit.json").exists():
        return
    x, y = D.subset(*D.load_dataset(dataset, train=False), proto["audit_n"])
    config = AuditConfig(budgets=proto["budgets"], steps=proto["steps"], alpha=proto["alpha"], apgd_steps=50,
                         square_queries=1000, autoattack=False, batch_size=250, spsa_steps=20, spsa_samples=32,
                         title=f"{model_name}: {label}", budget_unit=proto["unit"])
    # the run writes cache.json after every cell (a rerun resumes), then the report files
    run_audit(model, x, y, config, RunContext(folder, "audit", progress=False,
                                              log=lambda m: print(m, file=sys.stderr)))


def run(group: str, max_drop: float, audit: bool) -> None:
    for model_name in GROUPS[group]:
        proto = PROTOCOLS[model_name]
        cells = Cells(model_name)
        chosen = select(model_name, proto, cells, max_drop)
        write_json(OUT / model_name / "chosen.json", {"max_clean_drop_points": max_drop, "chosen": chosen})
        test_and_audit(model_name, proto, cells, chosen, audit)


def report() -> None:
    from report_estimators import write_report

    write_report(OUT, PROTOCOLS, config_label)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="the estimator study (see the module docstring)")
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("group", choices=list(GROUPS))
    r.add_argument("--max-clean-drop", type=float, default=5.0, help="points of held-out clean accuracy")
    r.add_argument("--no-audit", action="store_true")
    r.add_argument("--threads", type=int, default=1)
    sub.add_parser("report")
    args = p.parse_args(argv)
    if args.cmd == "report":
        report()
        return 0
    torch.set_num_threads(args.threads)
    run(args.group, args.max_clean_drop, not args.no_audit)
    return 0


if __name__ == "__main__":
    sys.exit(main())
