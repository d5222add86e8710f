"""Time a PGD-20 evaluation of the reprogrammed narrow ResNet-18 (K=3) on CIFAR-10 test images.

    python benchmarks/pgd_time.py --images 1000 --batch 250          # the full measurement
    python benchmarks/pgd_time.py --images 250 --out results/pgd_time.json

A deliberately minimal L-inf PGD (eps 8/255, step 2/255, 20 steps, random start) written here, so the timing does
not depend on the library's attack module: per batch one clean forward, 20 x (forward + input gradient), one
final forward. Reports wall time, clean and robust accuracy (the accuracies are a sanity check, not a result).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import nrpm
from nrpm.data import load_cifar10
from nrpm.models import load_pretrained


def pgd(model, x, y, eps=8 / 255, step=2 / 255, steps=20, generator=None):
    delta = (torch.rand(x.shape, generator=generator) * 2 - 1) * eps
    for _ in range(steps):
        delta.requires_grad_(True)
        loss = F.cross_entropy(model((x + delta).clamp(0, 1)), y)
        (grad,) = torch.autograd.grad(loss, delta)
        delta = (delta.detach() + step * grad.sign()).clamp(-eps, eps)
    return (x + delta).clamp(0, 1)


def evaluate(model, images, labels, batch, steps, log):
    generator = torch.Generator().manual_seed(0)
    clean = robust = 0
    for start in range(0, len(images), batch):
        x, y = images[start:start + batch], labels[start:start + batch]
        with torch.no_grad():
            clean += (model(x).argmax(1) == y).sum().item()
        x_adv = pgd(model, x, y, steps=steps, generator=generator)
        with torch.no_grad():
            robust += (model(x_adv).argmax(1) == y).sum().item()
        log(f"  {start + len(x)}/{len(images)} images")
    return clean / len(images), robust / len(images)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=1000)
    p.add_argument("--batch", type=int, default=250)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--K", type=int, default=3)
    p.add_argument("--lam", type=float, default=0.5)
    p.add_argument("--out", default=None, help="write the result as JSON here")
    args = p.parse_args(argv)
    started = time.perf_counter()
    log = lambda msg: print(f"[{time.perf_counter() - started:6.1f}s] {msg}", flush=True)  # noqa: E731

    model, _ = load_pretrained("resnet18_narrow")
    nrpm.reprogram(model, nrpm.ReprogramConfig(lam=args.lam, K=args.K))
    images, labels = load_cifar10(train=False)
    images, labels = images[:args.images], labels[:args.images]
    log("warm-up (compiles the kernels on first use)")
    t0 = time.perf_counter()
    pgd(model, images[:32], labels[:32], steps=1)
    warmup = time.perf_counter() - t0
    log(f"warm-up {warmup:.1f} s; PGD-{args.steps} on {len(images)} images, batch {args.batch}")
    t0 = time.perf_counter()
    clean, robust = evaluate(model, images, labels, args.batch, args.steps, log)
    seconds = time.perf_counter() - t0
    result = {"images": len(images), "batch": args.batch, "steps": args.steps, "K": args.K, "lam": args.lam,
              "seconds": seconds, "warmup_seconds": warmup, "clean_acc": clean, "robust_acc": robust,
              "threads": torch.get_num_threads(), "backend": nrpm.functional.get_backend(),
              "load_average_end": os.getloadavg()}
    log(f"PGD-{args.steps}: {seconds:.0f} s ({seconds / 60:.1f} min) + warm-up {warmup:.0f} s; "
        f"clean acc {clean:.3f}, robust acc {robust:.3f}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
