"""The input-gradient pass of one robust convolution, timed against the forward (see README, "The input-gradient
pass and its bound").

    OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/grad_pass.py --K 1 3 --repeats 7
    OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/grad_pass.py --model resnet18 --repeats 5

One ``RobustConv2d(64, 64, 3, padding=1, lam=0.9, K=K)`` (the ``conv64`` case: full-width ResNet-18, 32x32,
batch 32) on the compiled backend. Per repeat, interleaved, it times:

* ``plain fwd`` / ``plain fwd+gx``: the plain convolution, inference and forward + input gradient;
* ``fwd``: the robust layer's inference forward (the bar every ratio is taken against);
* ``fwd+gx``: its forward + input gradient (what an attack step runs);
* ``core fwd``, ``core fwd+stats``, ``core grad_x``, ``core grad_w``: the kernels alone, in the kernels' layout
  (the forward without and with the statistics the backward needs, the input-gradient kernel, the per-block
  weight-gradient kernel).

With ``--model NAME`` (e.g. ``resnet18``: full width, CIFAR input) the whole model reprogrammed with
``nrpm.reprogram(lam, K)`` instead, backend ``auto`` as in ``benchmarks/run.py``: plain and robust ``fwd`` and
``fwd+gx`` only.

Ratios to ``fwd`` are printed with the medians (each the median over repeats of the per-repeat ratio); ratios are
what to compare across runs on a loaded machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

import nrpm
from nrpm import _kernels
from nrpm._weightings import runtime_estimator
from nrpm import functional as RF


BUDGET = 1 << 28  # the eager kernels' working memory (bytes); the parts timed here run compiled


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def steps_on(x):
    """(forward + input gradient, inference forward) of a model on x."""
    def fwdgx(model):
        xg = x.detach().requires_grad_()
        torch.autograd.grad(model(xg).sum(), xg)

    def infer(model):
        with torch.no_grad():
            model(x)

    return fwdgx, infer


def core_inputs(layer, x):
    """The kernels' layout of the layer's problem: (xb, w, z0b, geom) as _conv_direct builds them."""
    w = layer.weight.detach()
    O, Cg, kh, kw = w.shape
    L = _kernels.LANES
    z = torch.nn.functional.conv2d(x, w, None, 1, 1)
    xb = RF._image_to_lanes(x, 1, 1, 1)
    z0b = z.view(-1, L, 1, O, *z.shape[2:]).permute(0, 4, 5, 2, 3, 1).contiguous()
    return xb, w.view(1, O, Cg, kh, kw), z0b, (kh, kw, 1, 1, 1, 1)


def backward_stats(xb, w, z0b, geom, settings):
    """The stats run_backward receives, from a forward with statistics and a random output gradient."""
    zs, ss, qs, scale = _kernels.run_forward(xb, w, z0b, geom, settings, with_stats=True, budget_bytes=BUDGET)
    return _kernels.step_statistics([z0b] + zs, ss, qs, scale, torch.randn_like(z0b), w[0, 0].numel(), False)[0]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--K", type=int, nargs="+", default=[1, 3])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--lam", type=float, default=0.9)
    p.add_argument("--model", default=None, help="time a whole model from nrpm.models instead (e.g. resnet18)")
    p.add_argument("--norm", default="l1")
    p.add_argument("--scale", default="absolute")
    p.add_argument("--parts", nargs="+", default=["plain fwd", "plain fwd+gx", "fwd", "fwd+gx", "core fwd",
                                                  "core fwd+stats", "core grad_x", "core grad_w"])
    args = p.parse_args(argv)
    if args.model:
        return run_model(args)
    RF.set_backend("compiled")
    torch.manual_seed(0)
    x = torch.randn(args.batch, 64, 32, 32)
    plain = torch.nn.Conv2d(64, 64, 3, padding=1, bias=False)
    eps = RF.DEFAULT_EPS
    est_kw = {} if args.norm == "l1" else dict(norm=args.norm, gamma=4.0, delta=3.0, scale=args.scale)
    for K in args.K:
        layer = nrpm.RobustConv2d(64, 64, 3, padding=1, bias=False, lam=args.lam, K=K, **est_kw)
        with torch.no_grad():
            layer.weight.copy_(plain.weight)
        for q in list(plain.parameters()) + list(layer.parameters()):
            q.requires_grad_(False)
        settings = RF.IRLSSettings.create(K=K, eps=eps, **est_kw)
        settings = settings._replace(estimator=runtime_estimator(settings.estimator, x, eps)[0])
        xb, w, z0b, geom = core_inputs(layer, x)
        stats = backward_stats(xb, w, z0b, geom, settings)

        fwdgx, infer = steps_on(x)

        parts = {
            "plain fwd": lambda: infer(plain),
            "plain fwd+gx": lambda: fwdgx(plain),
            "fwd": lambda: infer(layer),
            "fwd+gx": lambda: fwdgx(layer),
            "core fwd": lambda: _kernels.run_forward(xb, w, z0b, geom, settings, budget_bytes=BUDGET),
            "core fwd+stats": lambda: _kernels.run_forward(xb, w, z0b, geom, settings, with_stats=True,
                                                           budget_bytes=BUDGET),
            "core grad_x": lambda: _kernels.run_backward(xb, w, stats, geom, settings, True, False,
                                                         budget_bytes=BUDGET),
            "core grad_w": lambda: _kernels.run_backward(xb, w, stats, geom, settings, False, True,
                                                         budget_bytes=BUDGET),
        }
        parts = {k: v for k, v in parts.items() if k in args.parts}
        measure(parts, args.repeats, f"K={K}, conv64, batch {args.batch}, norm {args.norm}/{args.scale}")
    return 0


def measure(parts: dict, repeats: int, title: str) -> dict:
    for name, fn in parts.items():  # warm-up (compiles)
        t = timed(fn)
        print(f"{title}: warm-up {name}: {t:.1f} s", file=sys.stderr, flush=True)
    load = os.getloadavg()[0]
    times = {name: [] for name in parts}
    for _ in range(repeats):
        for name, fn in parts.items():
            times[name].append(timed(fn))
    print(f"\n{title}, threads {torch.get_num_threads()}, load {load:.2f} -> {os.getloadavg()[0]:.2f}")
    for name, ts in times.items():
        med = statistics.median(ts)
        # per-repeat ratio to fwd, then median: robust to load drifting between repeats
        ratio = statistics.median(a / b for a, b in zip(ts, times["fwd"])) if "fwd" in times else float("nan")
        print(f"  {name:16s} {1000 * med:9.1f} ms   x fwd {ratio:5.2f}", flush=True)
    return times


def run_model(args) -> int:
    from nrpm.models import create_model

    torch.manual_seed(0)
    plain = create_model(args.model).eval()
    for q in plain.parameters():
        q.requires_grad_(False)
    x = torch.rand(args.batch, 3, 32, 32, generator=torch.Generator().manual_seed(1))

    fwdgx, infer = steps_on(x)

    import copy

    for K in args.K:
        robust = nrpm.reprogram(copy.deepcopy(plain), nrpm.ReprogramConfig(lam=args.lam, K=K)).eval()
        parts = {"plain fwd": lambda: infer(plain), "plain fwd+gx": lambda: fwdgx(plain),
                 "fwd": lambda: infer(robust), "fwd+gx": lambda: fwdgx(robust)}
        measure(parts, args.repeats, f"K={K}, {args.model}, batch {args.batch}, lam {args.lam}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
