"""The CUDA benchmark of ``benchmarks/gpu_check.sh``: plain against NRPM on one GPU, narrow and full-width
ResNet-18, batch 128, K = 1 and 3, inference (``forward``) and one attack step (``fwd+bwd``: the input gradient).

    .venv/bin/python benchmarks/bench_cuda.py --out results/bench_cuda.json --repeats 10

Uses the case builders of ``benchmarks/run.py`` (same models, lam 0.5, random weights, eval mode, frozen
parameters); times are medians of CUDA-synchronised steps after a warm-up that compiles the Triton kernels.
Writes <out>.json and <out>.md. Without CUDA it writes nothing and exits 0 with a line saying so.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import Case, build_plain, build_robust, make_input, machine_info, save_report, step, timed  # noqa: E402

CASES = {
    "resnet18_narrow": Case("resnet18_narrow", "resnet18_narrow", 128, (3, 32, 32)),
    "resnet18": Case("resnet18", "resnet18", 128, (3, 32, 32)),
}
MODES = ("forward", "fwd+bwd")


def time_pair(case: Case, K: int, mode: str, repeats: int, device) -> dict:
    plain = build_plain(case).to(device)
    robust = build_robust(plain, K).to(device)
    x = make_input(case, case.batch, device)
    first = timed(lambda: step(robust, x, mode), device)  # compiles
    timed(lambda: step(plain, x, mode), device)
    times = {"plain": [], "nrpm": []}
    for _ in range(repeats):
        times["plain"].append(timed(lambda: step(plain, x, mode), device))
        times["nrpm"].append(timed(lambda: step(robust, x, mode), device))
    plain_ms, nrpm_ms = (1000 * statistics.median(times[k]) for k in ("plain", "nrpm"))
    return {"case": case.name, "batch": case.batch, "K": K, "mode": mode, "plain_ms": round(plain_ms, 3),
            "nrpm_ms": round(nrpm_ms, 3), "ratio": round(nrpm_ms / plain_ms, 2), "first_call_s": round(first, 1),
            "peak_mem_mb": round(torch.cuda.max_memory_allocated(device) / 2**20, 1)}


def markdown(report: dict) -> str:
    lines = ["# NRPM on CUDA", "", f"Device: {report['device']}. Command: `benchmarks/gpu_check.sh` "
             "(`benchmarks/bench_cuda.py`); medians of CUDA-synchronised steps, lam 0.5, random weights. The paper's "
             "authors report NRPM inference at 3-4x LPM on a GPU.", "",
             "| case | batch | K | mode | plain ms | NRPM ms | NRPM / plain | first call s |",
             "|---|---:|---:|---|---:|---:|---:|---:|"]
    for r in report["rows"]:
        lines.append(f"| {r['case']} | {r['batch']} | {r['K']} | {r['mode']} | {r['plain_ms']:.2f} | "
                     f"{r['nrpm_ms']:.2f} | {r['ratio']:.2f} | {r['first_call_s']:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="results/bench_cuda.json")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    p.add_argument("--ks", nargs="+", type=int, default=[1, 3])
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("benchmarks/bench_cuda.py: no CUDA device here; nothing measured, nothing written")
        return 0
    device = torch.device("cuda")
    rows = []
    for name in args.cases:
        for K in args.ks:
            for mode in MODES:
                torch.cuda.reset_peak_memory_stats(device)
                rows.append(time_pair(CASES[name], K, mode, args.repeats, device))
                print(rows[-1], flush=True)
                # saved after every row: a run cut short by its time limit keeps what it measured
                report = {"device": torch.cuda.get_device_name(device), "machine": machine_info(str(device)),
                          "rows": rows}
                save_report(args.out, report, markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
