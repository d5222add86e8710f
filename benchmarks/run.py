"""NRPM benchmark: the plain model vs the naive NRPM formulation vs the library, in one run.

    python benchmarks/run.py --out results/bench.json          # everything (~20-25 min on 2 cores)
    python benchmarks/run.py --cases mlp3 lenet --repeats 3 --no-scaling --no-checks

For every case, K and mode (``forward`` = inference under no_grad; ``fwd+bwd`` = forward and the gradient w.r.t.
the input only, as an attack step needs; parameters frozen) the three implementations run interleaved, repeat after
repeat, and the median time is reported. Peak memory comes from a fresh process per (case, implementation): the
peak resident memory of one step minus the resident memory just before it (after the model is built and, for the
library, its kernels compiled on a small batch). The naive formulation is first sized: when its estimated memory
or time exceeds the limits it is recorded as skipped with the estimate, and the case is also run at the largest
batch where it fits so that a ratio can still be measured.

Writes <out>.json, <out>.md and <out>_scaling.png (cost vs batch size and vs K for one case).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import nrpm  # noqa: E402
from nrpm._backend import STATE as BACKEND  # noqa: E402
from nrpm.models import create_model  # noqa: E402
from naive import naive_forward, naive_memory_estimate, vote_counts  # noqa: E402

IMPLS = ("plain", "naive", "nrpm")
MODES = ("forward", "fwd+bwd")
LAM = 0.5


@dataclass(frozen=True)
class Case:
    name: str
    model: str
    batch: int
    input_shape: tuple
    repeats: int | None = None  # cap for expensive cases


CASES = {
    "mlp3": Case("mlp3", "mlp3", 256, (1, 28, 28)),
    "lenet": Case("lenet", "lenet", 256, (1, 28, 28), repeats=3),
    "resnet18_narrow": Case("resnet18_narrow", "resnet18_narrow", 128, (3, 32, 32), repeats=3),
    "conv64": Case("conv64", "conv64", 32, (64, 32, 32), repeats=3),
    "resnet18": Case("resnet18", "resnet18", 32, (3, 32, 32), repeats=2),
}


# ----------------------------------------------------------------------------------------------- models
def build_plain(case: Case) -> nn.Module:
    torch.manual_seed(0)
    if case.model == "conv64":  # one full-width ResNet-18 3x3 conv, 64 -> 64 channels
        model = nn.Sequential(nn.Conv2d(64, 64, 3, padding=1, bias=False))
    else:
        model = create_model(case.model)
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


def build_robust(plain: nn.Module, K: int) -> nn.Module:
    return nrpm.reprogram(copy.deepcopy(plain), nrpm.ReprogramConfig(lam=LAM, K=K)).eval()


def set_K(robust: nn.Module, K: int) -> None:
    for layer in nrpm.robust_layers(robust).values():
        layer.K = K


def make_input(case: Case, batch: int, device) -> torch.Tensor:
    return torch.rand(batch, *case.input_shape, generator=torch.Generator().manual_seed(1)).to(device)


# --------------------------------------------------------------------------------------------- one step
def step(model: nn.Module, x: torch.Tensor, mode: str) -> None:
    if mode == "forward":
        with torch.no_grad():
            model(x)
        return
    xg = x.detach().requires_grad_()
    torch.autograd.grad(model(xg).float().sum(), xg)


def run_impl(impl: str, plain, robust, x, mode) -> None:
    if impl == "plain":
        step(plain, x, mode)
    elif impl == "naive":
        with naive_forward(robust):
            step(robust, x, mode)
    else:
        step(robust, x, mode)


def timed(fn, device) -> float:
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


# ------------------------------------------------------------------------------------- naive feasibility
class NaiveSizer:
    """Predicts the naive formulation's memory and time before it runs (time calibrated by earlier runs)."""

    def __init__(self, max_gb: float, max_seconds: float):
        self.max_bytes, self.max_seconds = max_gb * 2**30, max_seconds
        self.ns_per_vote_step = {"forward": 2.0, "fwd+bwd": 6.0}  # conservative until measured

    def estimate(self, counts_per_sample, batch, K, mode) -> dict:
        counts = [c * batch for c in counts_per_sample]
        mem = naive_memory_estimate(counts, K, backward=(mode == "fwd+bwd"))
        seconds = sum(counts) * max(K, 1) * self.ns_per_vote_step[mode] * 1e-9
        return {"est_bytes": mem, "est_seconds": seconds, "largest_vote_tensor_bytes": max(counts) * 4,
                "votes": sum(counts)}

    def why_not(self, est) -> str | None:
        if est["est_bytes"] > self.max_bytes:
            return (f"estimated peak {est['est_bytes'] / 2**30:.1f} GiB > {self.max_bytes / 2**30:.0f} GiB limit "
                    f"(largest vote tensor {est['largest_vote_tensor_bytes'] / 2**30:.2f} GiB)")
        if est["est_seconds"] > self.max_seconds:
            return f"estimated {est['est_seconds']:.0f} s per step > {self.max_seconds:.0f} s limit"
        return None

    def calibrate(self, votes, K, mode, seconds) -> None:
        self.ns_per_vote_step[mode] = max(0.5, seconds / (votes * max(K, 1)) * 1e9)

    def feasible_batch(self, counts, batch, K, mode) -> int | None:
        b = batch // 2
        while b >= 1:
            if self.why_not(self.estimate(counts, b, K, mode)) is None:
                return b
            b //= 2
        return None


# ------------------------------------------------------------------------------------------ timing runs
def time_case(case: Case, batch: int, K: int, modes, impls, repeats: int, device, log) -> dict:
    """Median times of every (impl, mode) at one batch size, interleaved repeat after repeat."""
    plain = build_plain(case).to(device)
    robust = build_robust(plain, K).to(device)
    x = make_input(case, batch, device)
    first, times = {}, {(i, m): [] for i in impls for m in modes}
    for impl in impls:  # warm-up (the library compiles its kernels here); the naive one needs none and is slow
        for mode in modes:
            if impl != "naive":
                first[(impl, mode)] = timed(lambda: run_impl(impl, plain, robust, x, mode), device)
    for r in range(repeats):
        for mode in modes:
            for impl in impls:
                times[(impl, mode)].append(timed(lambda: run_impl(impl, plain, robust, x, mode), device))
        log(f"    {case.name} B={batch} K={K} repeat {r + 1}/{repeats}: " + ", ".join(
            f"{i}/{m} {times[(i, m)][-1] * 1e3:.0f} ms" for m in modes for i in impls))
    out = {}
    for (impl, mode), ts in times.items():
        median = statistics.median(ts)
        out.setdefault(mode, {})[impl] = {"median_s": median, "times_s": ts, "first_call_s": first.get((impl, mode))}
    return out


# ------------------------------------------------------------------------------------------ memory probes
MEMORY_PROBE_ENV = {
    # every allocation >= 64 KiB gets its own mmap and goes back to the OS when freed, so resident memory follows
    # live memory (glibc's adaptive threshold would otherwise keep freed warm-up memory and hide later peaks)
    "MALLOC_MMAP_THRESHOLD_": "65536",
}


def _rss_bytes(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM (peak RSS) to the current RSS
        return True
    except OSError:
        return False


def memory_probe(case_name: str, impl: str, K: int, mode: str, batch: int, device: str) -> dict:
    """Runs in a fresh process: extra peak memory of one step beyond the memory just before it."""
    case = CASES[case_name]
    plain = build_plain(case).to(device)
    robust = build_robust(plain, K).to(device)
    x = make_input(case, batch, device)
    if impl != "naive":  # a first step compiles (library) / initialises (plain); the naive one needs none
        # batch 32 shares the compiled kernels of any larger multiple of 16 (two or more blocks of 16 lanes)
        warm = 32 if batch > 32 and batch % 16 == 0 else batch
        run_impl(impl, plain, robust, make_input(case, warm, device), mode)
    gc.collect()
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        seconds = timed(lambda: run_impl(impl, plain, robust, x, mode), device)
        return {"peak_extra_bytes": torch.cuda.max_memory_allocated() - base, "method": "cuda max_memory_allocated",
                "step_seconds": seconds}
    base = _rss_bytes("VmRSS")
    exact = _reset_peak_rss()
    seconds = timed(lambda: run_impl(impl, plain, robust, x, mode), device)
    if exact:
        peak, method = _rss_bytes("VmHWM"), "VmHWM after clear_refs"
    else:
        peak, method = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "ru_maxrss"
    return {"peak_extra_bytes": max(0, peak - base), "method": method, "baseline_rss_bytes": base,
            "step_seconds": seconds}


def measure_memory(case: Case, impl, K, mode, batch, device, timeout=1800) -> dict:
    cmd = [sys.executable, __file__, "--memory-probe", case.name, impl, str(K), mode, str(batch), device]
    env = {**os.environ, **MEMORY_PROBE_ENV}
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout} s"}
    if out.returncode != 0:
        return {"error": (out.stderr.strip().splitlines() or ["?"])[-1][:300], "returncode": out.returncode}
    return json.loads(out.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------------------------- the suite
def run_suite(args, log) -> dict:
    sizer = NaiveSizer(args.naive_max_gb, args.naive_max_seconds)
    results = []
    for name in args.cases:
        case = CASES[name]
        plain = build_plain(case)
        counts = vote_counts(build_robust(plain, 1), make_input(case, 1, "cpu"))
        for K in args.ks:
            results += run_case_K(case, counts, K, args, sizer, log)
    return {"results": results}


def run_case_K(case, counts, K, args, sizer, log) -> list[dict]:
    repeats = min(args.repeats, case.repeats or args.repeats)
    rows = []
    skipped = {m: sizer.why_not(sizer.estimate(counts, case.batch, K, m)) for m in args.modes}
    impls = [i for i in IMPLS if i != "naive" or not all(skipped.values())]
    log(f"  {case.name} K={K} B={case.batch}: naive " + ", ".join(f"{m}: {skipped[m] or 'runs'}" for m in args.modes))
    timing = time_case_with_skips(case, case.batch, K, args.modes, impls, skipped, repeats, args.device, log)
    rows += make_rows(case, case.batch, K, timing, counts, sizer, skipped, args, None)
    calibrate(sizer, rows)
    for mode in args.modes:  # the naive formulation does not fit: measure the ratio where it does
        if not skipped[mode]:
            continue
        b = sizer.feasible_batch(counts, case.batch, K, mode)
        if b is None:
            log(f"  {case.name} K={K} {mode}: naive fits at no batch size")
            continue
        log(f"  {case.name} K={K} {mode}: naive at reduced batch {b}")
        small = time_case(case, b, K, [mode], IMPLS, repeats, args.device, log)
        rows += make_rows(case, b, K, small, counts, sizer, {mode: None}, args, case.batch)
    return rows


def time_case_with_skips(case, batch, K, modes, impls, skipped, repeats, device, log):
    timing = {}
    for mode in modes:
        run = [i for i in impls if i != "naive" or not skipped[mode]]
        timing.update(time_case(case, batch, K, [mode], run, repeats, device, log))
    return timing


def make_rows(case, batch, K, timing, counts, sizer, skipped, args, reduced_from) -> list[dict]:
    rows = []
    for mode, by_impl in timing.items():
        row = {"case": case.name, "batch": batch, "K": K, "mode": mode, "reduced_from": reduced_from,
               "votes": sum(counts) * batch, "times": by_impl, "load_average": list(os.getloadavg()),
               "naive_estimate": sizer.estimate(counts, batch, K, mode)}
        if skipped.get(mode):
            row["naive_skipped"] = skipped[mode]
        if args.memory and (mode, K) in args.memory_points:
            row["memory"] = {impl: measure_memory(case, impl, K, mode, batch, args.device)
                             for impl in by_impl}
        add_ratios(row)
        rows.append(row)
    return rows


def calibrate(sizer, rows) -> None:
    for row in rows:
        naive = row["times"].get("naive")
        if naive:
            sizer.calibrate(row["votes"], row["K"], row["mode"], naive["median_s"])


def add_ratios(row) -> None:
    t = {impl: v["median_s"] for impl, v in row["times"].items()}
    row["speedup_vs_naive"] = t["naive"] / t["nrpm"] if "naive" in t else None
    row["slowdown_vs_plain"] = t["nrpm"] / t["plain"]
    mem = row.get("memory", {})
    ok = lambda impl: "peak_extra_bytes" in mem.get(impl, {})  # noqa: E731
    row["memory_ratio_naive_over_nrpm"] = (mem["naive"]["peak_extra_bytes"] / max(1, mem["nrpm"]["peak_extra_bytes"])
                                           if ok("naive") and ok("nrpm") else None)


# -------------------------------------------------------------------------------------------- scaling
def run_scaling(args, log) -> dict:
    """fwd+bwd cost vs batch size (at K=3) and vs K (at a fixed batch) for one case."""
    case = CASES[args.scaling_case]
    sizer = NaiveSizer(args.naive_max_gb, args.naive_max_seconds)
    counts = vote_counts(build_robust(build_plain(case), 1), make_input(case, 1, "cpu"))
    out = {"case": case.name, "mode": "fwd+bwd", "batch": [], "K": []}
    for b in args.scaling_batches:
        out["batch"].append(scaling_point(case, b, 3, counts, sizer, args, log))
    for K in args.scaling_ks:
        out["K"].append(scaling_point(case, args.scaling_batch, K, counts, sizer, args, log))
    return out


def scaling_point(case, batch, K, counts, sizer, args, log) -> dict:
    fits = sizer.why_not(sizer.estimate(counts, batch, K, "fwd+bwd")) is None
    impls = IMPLS if fits else ("plain", "nrpm")
    t = time_case(case, batch, K, ["fwd+bwd"], impls, args.scaling_repeats, args.device, log)["fwd+bwd"]
    return {"batch": batch, "K": K, **{impl: t[impl]["median_s"] for impl in impls}}


def plot_scaling(scaling: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, key, xlabel in ((axes[0], "batch", "batch size (K=3)"), (axes[1], "K", "K (IRLS steps)")):
        pts = scaling[key]
        for impl, style in (("plain", "k--"), ("naive", "r-o"), ("nrpm", "b-s")):
            xs = [p[key] for p in pts if impl in p]
            ys = [p[impl] * 1e3 for p in pts if impl in p]
            if xs:
                ax.plot(xs, ys, style, label=impl)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("fwd+bwd time per step (ms)")
        ax.set_yscale("log")
        if key == "batch":
            ax.set_xscale("log", base=2)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.suptitle(f"{scaling['case']}: forward + input-gradient cost")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


# ---------------------------------------------------------------------------------------------- checks
def check_full_resnet18_b128(args, log) -> dict:
    """Full-width ResNet-18, K=3, batch 128, forward + input gradient: does it run; time and peak (fresh process)."""
    case = CASES["resnet18"]
    log("  full-width ResNet-18, B=128, K=3, fwd+bwd (fresh process)")
    t0 = time.perf_counter()
    mem = measure_memory(case, "nrpm", 3, "fwd+bwd", 128, args.device)
    log(f"  {mem}")
    return {"case": "resnet18", "batch": 128, "K": 3, "mode": "fwd+bwd", "memory": mem,
            "process_wall_s": time.perf_counter() - t0}


def compile_probe(args, log) -> dict:
    """Library start-up in fresh processes: with an empty compile cache (cold) and with it filled (warm)."""
    import tempfile

    out = {}
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache}
        for label in ("cold", "warm"):
            cmd = [sys.executable, __file__, "--startup-probe", args.device]
            res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
            out[label] = (json.loads(res.stdout.strip().splitlines()[-1]) if res.returncode == 0
                          else {"error": (res.stderr.strip().splitlines() or ["?"])[-1][:300]})
            log(f"  start-up ({label} cache): {out[label]}")
    return out


def startup_probe(device: str) -> dict:
    """First-call times of narrow ResNet-18 (K=3): inference, then an attack step, then a steady attack step."""
    case = CASES["resnet18_narrow"]
    robust = build_robust(build_plain(case), 3).to(device)
    x = make_input(case, 32, device)
    res = {"first_forward_s": timed(lambda: step(robust, x, "forward"), device),
           "first_fwd+bwd_s": timed(lambda: step(robust, x, "fwd+bwd"), device),
           "steady_fwd+bwd_s": timed(lambda: step(robust, x, "fwd+bwd"), device)}
    from torch._dynamo.utils import counters

    res["inductor_counters"] = dict(counters["inductor"])
    return res


# ------------------------------------------------------------------------------------------------ report
def wait_for_idle(max_seconds: float, log, threshold: float = 0.7) -> list[float]:
    """Wait (up to max_seconds) until the 1-minute load average drops below threshold: the timings of an
    OpenMP program on a shared 2-core machine mean little while other processes run."""
    waited = 0.0
    while os.getloadavg()[0] >= threshold and waited < max_seconds:
        if waited == 0:
            log(f"waiting for the machine to go idle (load {os.getloadavg()[0]:.2f})")
        time.sleep(10)
        waited += 10
    return list(os.getloadavg())


def save_report(out, report: dict, markdown) -> None:
    """``out`` (JSON) and its .md twin rendered by ``markdown(report)``; the markdown is printed too."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(report))
    print(markdown(report))


def machine_info(device) -> dict:
    cpu = platform.processor()
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    info = {"cpu": cpu, "logical_cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(), "platform": platform.platform(),
            "device": device, "nrpm_backend": nrpm.functional.get_backend(),
            "compiled_kernels_failed": BACKEND.compiled.failure,
            "env": {k: v for k, v in os.environ.items() if k.startswith(("OMP_", "GOMP_", "NRPM_", "TORCHINDUCTOR_"))}}
    if torch.device(device).type == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
    with contextlib.suppress(OSError):
        info["load_average"] = os.getloadavg()
    return info


def pgd_estimate(results) -> dict | None:
    """PGD-20 on 1000 CIFAR-10 images with narrow ResNet-18 (K=3), from the measured per-batch step times."""
    rows = {r["mode"]: r for r in results if r["case"] == "resnet18_narrow" and r["K"] == 3
            and r["reduced_from"] is None}
    if "fwd+bwd" not in rows:
        return None
    batch = rows["fwd+bwd"]["batch"]
    step_s = rows["fwd+bwd"]["times"]["nrpm"]["median_s"]
    fwd_s = rows.get("forward", rows["fwd+bwd"])["times"]["nrpm"]["median_s"]
    batches = -(-1000 // batch)
    total = batches * (20 * step_s + 2 * fwd_s)  # 20 attack steps, a clean pass and a final adversarial pass
    return {"batch": batch, "attack_step_s": step_s, "forward_s": fwd_s, "batches": batches,
            "estimated_total_s": total, "note": "1000 images, 20 steps x (forward + input gradient) + 2 forwards"}


def fmt_ms(v) -> str:
    return "-" if v is None else f"{v * 1e3:,.0f}" if v >= 0.1 else f"{v * 1e3:.1f}"


def fmt_mb(mem: dict | None, impl: str) -> str:
    if not mem or impl not in mem:
        return "-"
    m = mem[impl]
    return f"{m['peak_extra_bytes'] / 2**20:,.0f}" if "peak_extra_bytes" in m else "err"


def markdown(report: dict) -> str:
    info = report["machine"]
    lines = [
        "# NRPM benchmark", "",
        f"{info['cpu']}, {info['torch_threads']} threads, torch {info['torch']}, device {info['device']}, "
        f"nrpm backend `{info['nrpm_backend']}`"
        + (f" (compiled kernels FAILED: {info['compiled_kernels_failed']})" if info["compiled_kernels_failed"] else "")
        + f"; load average at start {report.get('load_average_start')}, at end {info.get('load_average')}.", "",
        "Times are medians (ms) of interleaved repeats; peak MB is the extra resident memory of one step, "
        "measured in a fresh process. Speed-up = naive / nrpm; slow-down = nrpm / plain.", "",
        "| case | batch | K | mode | plain ms | naive ms | nrpm ms | speed-up vs naive | slow-down vs plain "
        "| peak MB plain | peak MB naive | peak MB nrpm | naive/nrpm memory |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["results"]:
        t = {i: v["median_s"] for i, v in r["times"].items()}
        naive = fmt_ms(t.get("naive")) if "naive" in t else "skipped*" if r.get("naive_skipped") else "-"
        case = r["case"] + (f" (reduced from {r['reduced_from']})" if r["reduced_from"] else "")
        sp = f"{r['speedup_vs_naive']:.1f}x" if r["speedup_vs_naive"] else "-"
        mr = f"{r['memory_ratio_naive_over_nrpm']:.0f}x" if r["memory_ratio_naive_over_nrpm"] else "-"
        mem = r.get("memory")
        lines.append(f"| {case} | {r['batch']} | {r['K']} | {r['mode']} | {fmt_ms(t['plain'])} | {naive} | "
                     f"{fmt_ms(t['nrpm'])} | {sp} | {r['slowdown_vs_plain']:.1f}x | {fmt_mb(mem, 'plain')} | "
                     f"{fmt_mb(mem, 'naive')} | {fmt_mb(mem, 'nrpm')} | {mr} |")
    skipped = [r for r in report["results"] if r.get("naive_skipped")]
    if skipped:
        lines += ["", "\\* naive formulation not run:"]
        lines += [f"- {r['case']} B={r['batch']} K={r['K']} {r['mode']}: {r['naive_skipped']}" for r in skipped]
    lines += markdown_extras(report)
    return "\n".join(lines) + "\n"


def markdown_extras(report) -> list[str]:
    lines = []
    if report.get("pgd20_estimate"):
        p = report["pgd20_estimate"]
        lines += ["", f"PGD-20 estimate, narrow ResNet-18 K=3, 1000 images: {p['batches']} batches of {p['batch']} "
                      f"x (20 x {p['attack_step_s']:.2f} s + 2 x {p['forward_s']:.2f} s) = "
                      f"**{p['estimated_total_s'] / 60:.1f} min**."]
    if report.get("full_resnet18_b128"):
        c = report["full_resnet18_b128"]
        m = c["memory"]
        lines += ["", "Full-width ResNet-18, batch 128, K=3, forward + input gradient (fresh process): "
                  + (f"one step {m['step_seconds']:.0f} s, peak extra memory {m['peak_extra_bytes'] / 2**30:.2f} "
                     f"GiB (process wall time {c['process_wall_s']:.0f} s: build, a first step that compiles, the "
                     "measured step)." if "peak_extra_bytes" in m else f"FAILED: {m}")]
    if report.get("startup"):
        lines += ["", "Library start-up (narrow ResNet-18, K=3, batch 32, fresh process; first call includes "
                      "compilation):", "", "| compile cache | first forward s | first fwd+bwd s | steady fwd+bwd s |",
                  "|---|---:|---:|---:|"]
        for label, s in report["startup"].items():
            if "error" in s:
                lines.append(f"| {label} | error: {s['error']} | | |")
            else:
                lines.append(f"| {label} | {s['first_forward_s']:.1f} | {s['first_fwd+bwd_s']:.1f} | "
                             f"{s['steady_fwd+bwd_s']:.2f} |")
    if report.get("scaling"):
        lines += ["", f"Scaling study ({report['scaling']['case']}, fwd+bwd): see `bench_scaling.png`."]
    return lines


# -------------------------------------------------------------------------------------------------- main
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="results/bench.json", help="JSON path; .md and _scaling.png go beside it")
    p.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    p.add_argument("--ks", nargs="+", type=int, default=[1, 3])
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--wait-idle", type=float, default=0, metavar="SECONDS",
                   help="first wait up to this long for the load average to drop below 0.7")
    p.add_argument("--naive-max-gb", type=float, default=8.0, help="skip the naive run above this estimate")
    p.add_argument("--naive-max-seconds", type=float, default=30.0, help="... or above this time per step")
    p.add_argument("--no-memory", dest="memory", action="store_false", help="skip the fresh-process memory probes")
    p.add_argument("--no-scaling", dest="scaling", action="store_false")
    p.add_argument("--no-checks", dest="checks", action="store_false",
                   help="skip the full-width ResNet-18 batch-128 check and the start-up probe")
    p.add_argument("--scaling-case", default="lenet", choices=list(CASES))
    p.add_argument("--scaling-batches", nargs="+", type=int, default=[16, 32, 64, 128, 256])
    p.add_argument("--scaling-ks", nargs="+", type=int, default=[1, 2, 3, 5, 8])
    p.add_argument("--scaling-batch", type=int, default=64)
    p.add_argument("--scaling-repeats", type=int, default=3)
    p.add_argument("--memory-probe", nargs=6, metavar=("CASE", "IMPL", "K", "MODE", "BATCH", "DEVICE"),
                   help=argparse.SUPPRESS)
    p.add_argument("--startup-probe", metavar="DEVICE", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    # memory is probed for the two points the targets are about: inference K=1 and an attack step K=3
    args.memory_points = {("forward", 1), ("fwd+bwd", 3)}
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_probe:
        case, impl, K, mode, batch, device = args.memory_probe
        print(json.dumps(memory_probe(case, impl, int(K), mode, int(batch), device)))
        return
    if args.startup_probe:
        print(json.dumps(startup_probe(args.startup_probe)))
        return
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    log = lambda msg: print(f"[{time.perf_counter() - started:7.1f}s] {msg}", flush=True)  # noqa: E731
    report = {"load_average_start": wait_for_idle(args.wait_idle, log),
              "args": {k: v for k, v in vars(args).items() if k not in ("memory_probe", "startup_probe")}}
    report["args"]["memory_points"] = sorted(args.memory_points)
    log("timing cases")
    report.update(run_suite(args, log))
    report["pgd20_estimate"] = pgd_estimate(report["results"])
    if args.checks:
        log("checks")
        report["full_resnet18_b128"] = check_full_resnet18_b128(args, log)
        report["startup"] = compile_probe(args, log)
    if args.scaling:
        log("scaling study")
        report["scaling"] = run_scaling(args, log)
        plot_scaling(report["scaling"], out.with_name(out.stem + "_scaling.png"))
    report["machine"] = machine_info(args.device)
    report["total_wall_s"] = time.perf_counter() - started
    out.write_text(json.dumps(report, indent=1))
    out.with_suffix(".md").write_text(markdown(report))
    log(f"wrote {out}, {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
