"""Robust attention vs plain attention: time (forward; forward + backward) and peak memory on the CPU.

For each shape (B, H, N, d) and K, every estimator of :func:`nrpm.attention.robust_attention` is timed against
plain attention, ``F.scaled_dot_product_attention`` (torch's fused kernel) and ``softmax(q k^T / sqrt(d)) v`` (the
same ops the robust version starts with), and the ratio robust / plain is set against the issue's bound
"(2K+1)x plain attention". Times are medians over interleaved repeats (each repeat runs every implementation once,
in turn), so that a load change on a shared machine hits all of them alike.

Peak memory is the highest live CPU memory the torch profiler records during one step (each op's net allocation
in time order, plus the frees outside ops) above what was live before it: the temporaries of the forward, and in fwd+bwd also the saved
activations and the gradients. (tracemalloc sees only Python's allocator, not torch's tensors.)

    OMP_NUM_THREADS=1 PYTHONPATH=src .venv/bin/python benchmarks/attention.py --out results/bench_attention.json
    # also times benchmarks/attention_before.py (the code before the speed-up) in the same repeats (--no-before: not)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from attention_before import robust_attention as robust_attention_before  # noqa: E402
from nrpm.attention import robust_attention  # noqa: E402
from run import machine_info, save_report  # noqa: E402  (benchmarks/run.py)

SHAPES = [(8, 3, 65, 32), (32, 3, 65, 32), (8, 4, 197, 64), (16, 4, 197, 64)]
ESTIMATORS = {"l1": {}, "mcp": {"norm": "mcp"}, "huber": {"norm": "huber"}, "hm": {"norm": "hm"}}
MODES = ("forward", "fwd+bwd")


def plain_sdpa(q, k, v):
    return F.scaled_dot_product_attention(q, k, v)


def plain_manual(q, k, v):
    return torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), dim=-1) @ v


def implementations(K: int, estimators, before: bool) -> dict:
    """sdpa, manual, robust_<est> and (``before``) before_<est>: the frozen pre-speed-up copy."""
    impls = {"sdpa": plain_sdpa, "manual": plain_manual}
    for name in estimators:
        kw = ESTIMATORS[name]
        impls[f"robust_{name}"] = lambda q, k, v, kw=kw: robust_attention(q, k, v, lam=0.5, K=K, **kw)
        if before:
            impls[f"before_{name}"] = lambda q, k, v, kw=kw: robust_attention_before(q, k, v, lam=0.5, K=K, **kw)
    return impls


def make_inputs(shape, grad: bool):
    g = torch.Generator().manual_seed(0)
    return [torch.randn(*shape, generator=g).requires_grad_(grad) for _ in range(3)]


def step(fn, inputs, mode: str) -> None:
    if mode == "forward":
        with torch.no_grad():
            fn(*inputs)
        return
    for t in inputs:
        t.grad = None
    fn(*inputs).sum().backward()  # the gradient an attack needs, plus those of q and k (as in training)


def time_shape(shape, K, impls, repeats: int) -> dict:
    """{mode: {impl: median ms}} over interleaved repeats (one warm-up step each first)."""
    out = {}
    for mode in MODES:
        inputs = make_inputs(shape, mode != "forward")
        times = {name: [] for name in impls}
        for name, fn in impls.items():
            step(fn, inputs, mode)
        for _ in range(repeats):
            for name, fn in impls.items():
                start = time.perf_counter()
                step(fn, inputs, mode)
                times[name].append(1e3 * (time.perf_counter() - start))
        out[mode] = {name: statistics.median(ts) for name, ts in times.items()}
    return out


def peak_bytes(fn, inputs, mode: str) -> int:
    """Peak live CPU memory of one step above its start, from the profiler's allocation events in time order."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step(fn, inputs, mode)
    # an op's *self* memory (its net allocation, children excluded) counts at its start; frees outside any op
    # come as "[memory]" events. The op totals (cpu_memory_usage) would count nested allocations twice.
    changes = sorted((e.time_range.start, e.cpu_memory_usage if e.name == "[memory]" else e.self_cpu_memory_usage)
                     for e in prof.events())
    live = peak = 0
    for _, change in changes:
        live += change
        peak = max(peak, live)
    return peak


def memory_shape(shape, impls) -> dict:
    out = {}
    for mode in MODES:
        inputs = make_inputs(shape, mode != "forward")
        out[mode] = {name: peak_bytes(fn, inputs, mode) / 2**20 for name, fn in impls.items()}
    return out


def measure(args) -> list[dict]:
    rows = []
    for shape in args.shapes:
        for K in args.ks:
            impls = implementations(K, args.estimators, args.before)
            timing = time_shape(shape, K, impls, args.repeats)
            memory = memory_shape(shape, impls)
            for mode in MODES:
                rows.append(make_row(shape, K, mode, timing[mode], memory[mode]))
            print(f"{shape} K={K} done  load {os.getloadavg()[0]:.2f}", file=sys.stderr, flush=True)
    return rows


def make_row(shape, K, mode, ms: dict, mb: dict) -> dict:
    """One (shape, K, mode): times, memory and each robust estimator's ratios against plain attention."""
    row = {"shape": list(shape), "K": K, "mode": mode, "bound": 2 * K + 1, "ms": ms, "peak_mb": mb}
    base = ms["manual"]
    row["ratio_vs_manual"] = {n: ms[n] / base for n in ms if n.startswith("robust_")}
    row["ratio_vs_sdpa"] = {n: ms[n] / ms["sdpa"] for n in ms if n.startswith("robust_")}
    row["memory_ratio_vs_manual"] = {n: mb[n] / max(mb["manual"], 1e-9) for n in mb if n.startswith("robust_")}
    row["speedup_vs_before"] = {n: ms[f"before_{n[7:]}"] / ms[n] for n in row["ratio_vs_manual"]
                                if f"before_{n[7:]}" in ms}
    return row


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def markdown(report: dict) -> str:
    before = any(r["speedup_vs_before"] for r in report["rows"])
    lines = ["# Robust attention vs plain attention (CPU)", "",
             f"Command: `{report['command']}` (commit {report['commit']}).", "",
             f"Machine: {report['machine']['cpu']}, {report['machine']['logical_cpus']} logical CPUs, "
             f"{report['machine']['torch_threads']} torch thread(s), torch {report['machine']['torch']}; load "
             f"average at start {report['machine']['load_average'][0]:.2f}, at end {report['load_end']:.2f}.",
             "", _load_note(report), "",
             "Ratio = robust / plain `softmax(q k^T/sqrt d) v` (same ops as robust_attention's start); "
             "bound = 2K+1 (the issue's). `sdpa` = `F.scaled_dot_product_attention`. lam 0.5, float32.", ""]
    if before:
        lines += ["`before` = robust_attention before the speed-up (benchmarks/attention_before.py, a frozen copy "
                  "of commit 79b2ac4), timed in the same interleaved repeats; speed-up = before / robust.", ""]
    head = "| B,H,N,d | K | mode | sdpa ms | plain ms | estimator | robust ms | ratio | bound | within | " + \
           ("before ms | speed-up | before ratio | " if before else "") + "peak MB plain | peak MB robust |"
    lines += [head, "|" + "---|" * (head.count("|") - 1)]
    for r in report["rows"]:
        for name, ratio in r["ratio_vs_manual"].items():
            cells = [",".join(map(str, r["shape"])), r["K"], r["mode"], f"{r['ms']['sdpa']:.2f}",
                     f"{r['ms']['manual']:.2f}", name[7:], f"{r['ms'][name]:.2f}", f"{ratio:.2f}", r["bound"],
                     "yes" if ratio <= r["bound"] else "**no**"]
            if before:
                old = r["ms"][f"before_{name[7:]}"]
                cells += [f"{old:.2f}", f"{old / r['ms'][name]:.2f}x", f"{old / r['ms']['manual']:.2f}"]
            cells += [f"{r['peak_mb']['manual']:.1f}", f"{r['peak_mb'][name]:.1f}"]
            lines.append("| " + " | ".join(map(str, cells)) + " |")
    return "\n".join(lines) + "\n"


def _load_note(report: dict) -> str:
    """Whether other work ran alongside, judged from the load average (this process itself adds about 1)."""
    load = max(report["machine"]["load_average"][0], report["load_end"])
    if load < 1.5:
        return "The machine was otherwise idle (load average below 1.5)."
    return (f"**The machine was loaded** (load average up to {load:.1f} on {report['machine']['logical_cpus']} CPUs: "
            "other jobs, e.g. a model training, ran alongside): absolute times are noisy; the medians of "
            "interleaved repeats keep the ratios, and before vs after, comparable.")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shapes", type=lambda s: tuple(int(x) for x in s.split(",")), nargs="+", default=SHAPES,
                   help="B,H,N,d (default: %(default)s)")
    p.add_argument("--ks", type=int, nargs="+", default=[1, 3])
    p.add_argument("--estimators", nargs="+", default=list(ESTIMATORS), choices=list(ESTIMATORS))
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--no-before", dest="before", action="store_false",
                   help="leave out the frozen pre-speed-up implementation")
    p.add_argument("--out", type=Path, default=Path("results/bench_attention.json"))
    p.add_argument("--render", action="store_true", help="only rewrite OUT's .md from OUT (no measuring)")
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.render:
        args.out.with_suffix(".md").write_text(markdown(json.loads(args.out.read_text())))
        return
    torch.manual_seed(0)
    report = {"command": " ".join(["benchmarks/attention.py", *(argv if argv is not None else sys.argv[1:])]),
              "commit": git_commit(), "machine": machine_info("cpu")}
    report["rows"] = measure(args)
    report["load_end"] = os.getloadavg()[0]
    save_report(args.out, report, markdown)


if __name__ == "__main__":
    main()
