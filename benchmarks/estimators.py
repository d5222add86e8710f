"""The robust estimators against L1 on the fast path: LeNet (the paper's MNIST convs and linears), batch 256,
K = 3, forward + backward, on the compiled kernels.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/estimators.py --out results/bench_estimators.json

Two backward modes: ``input`` (the gradient w.r.t. the input only: one attack step) and ``input+weights`` (both,
as paradigm 3 training needs). The estimators run interleaved, repeat after repeat, after a warm-up that compiles
their kernels; the median is reported with its ratio to L1. Writes <out>.json and <out>.md.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

import nrpm
from nrpm import functional as RF
from nrpm.models import create_model

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import machine_info, save_report  # noqa: E402  (benchmarks/run.py)

ESTIMATORS = {
    "l1": dict(norm="l1"),
    "mcp": dict(norm="mcp", gamma=4.0, delta=3.0),
    "huber": dict(norm="huber", gamma=4.0, delta=3.0),
    "hm": dict(norm="hm", gamma=4.0, delta=3.0),
    "mcp (relative)": dict(norm="mcp", gamma=2.0, delta=1.0, scale="relative"),
    "hm (relative)": dict(norm="hm", gamma=2.0, delta=1.0, scale="relative"),
}
MODES = ("input", "input+weights")


def build(estimator: dict, K: int) -> torch.nn.Module:
    torch.manual_seed(0)
    model = create_model("lenet").eval()
    nrpm.reprogram(model, nrpm.ReprogramConfig(lam=0.5, K=K, paradigm=1, **estimator))
    return model


def step(model, x, mode: str) -> None:
    weights = [p for n, p in model.named_parameters() if n.endswith("weight")]
    for p in weights:
        p.requires_grad_(mode == "input+weights")
    x = x.detach().requires_grad_(True)
    loss = model(x).logsumexp(1).sum()
    torch.autograd.grad(loss, [x] + (weights if mode == "input+weights" else []))


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def run(args) -> dict:
    RF.set_backend(args.backend)
    x = torch.rand(args.batch, 1, 28, 28)
    models = {name: build(est, args.K) for name, est in ESTIMATORS.items() if name in args.estimators}
    rows = []
    for mode in MODES:
        for name, model in models.items():  # warm-up: compiles each estimator's kernels once
            print(f"warm-up {mode} {name}", file=sys.stderr, flush=True)
            step(model, x, mode)
        times = {name: [] for name in models}
        for _ in range(args.repeats):
            for name, model in models.items():
                times[name].append(timed(lambda: step(model, x, mode)))
        l1 = statistics.median(times["l1"]) if "l1" in times else None
        for name, ts in times.items():
            median = statistics.median(ts)
            rows.append({"estimator": name, "mode": mode, "median_ms": round(1000 * median, 2),
                         "ratio_to_l1": None if l1 is None else round(median / l1, 3),
                         "times_ms": [round(1000 * t, 2) for t in ts]})
    return {"case": f"lenet, batch {args.batch}, K={args.K}, lam 0.5, backend {args.backend}",
            "estimators": {k: ESTIMATORS[k] for k in models}, "rows": rows,
            "machine": machine_info("cpu")}


def markdown(report: dict) -> str:
    lines = [f"# Estimators on the fast path: {report['case']}", "",
             "Median time of a forward + backward step; `input`: input gradient only (an attack step); "
             "`input+weights`: also the weight gradient. Command: `benchmarks/estimators.py` "
             "(see its docstring).", "",
             "| estimator | mode | median ms | x L1 |", "|---|---|---:|---:|"]
    for r in report["rows"]:
        lines.append(f"| {r['estimator']} | {r['mode']} | {r['median_ms']:.1f} | {r['ratio_to_l1']:.2f} |")
    lines += ["", f"Machine: {report['machine']}", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="results/bench_estimators.json")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--K", type=int, default=3)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--backend", default="compiled", choices=RF.BACKENDS if hasattr(RF, "BACKENDS") else
                   ("auto", "compiled", "eager"))
    p.add_argument("--estimators", nargs="+", default=list(ESTIMATORS), choices=list(ESTIMATORS))
    args = p.parse_args(argv)
    report = run(args)
    save_report(args.out, report, markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
