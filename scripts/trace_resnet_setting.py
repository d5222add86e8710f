"""Which (K, eps) did the paper's narrow-ResNet-18 paradigm-1 table use? It does not say.

Clean accuracy needs no attack, so it is cheap to compare: for lam 0.9 and 0.7 (the paper's published rows) and a
grid of K and eps, print the clean accuracy of the reprogrammed paper checkpoint on the first N test images next to
the published value. This diagnoses a reproduction (the comparison is with the paper's test-set numbers); it does not
choose a defense setting for any robustness claim. Writes results/paradigm1/resnet18_narrow_setting_trace.md.

    .venv/bin/python scripts/trace_resnet_setting.py [--n 500] [--threads 1]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from nrpm import ReprogramConfig, reprogram
from nrpm.attacks import clean_accuracy
from nrpm.data import load_dataset, subset
from nrpm.models import default_robust_layers
from nrpm.models import load_pretrained
from nrpm.reports import atomic_write_text

PAPER_CLEAN = {0.9: 59.23, 0.7: 24.69}
GRID_K = (1, 3, 5)
GRID_EPS = (1e-3, 1e-2, 1e-1)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=500, help="first N test images")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "results" / "paradigm1"
                                        / "resnet18_narrow_setting_trace.md"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    x, y = subset(*load_dataset("cifar10", train=False), args.n)
    lines = ["# Narrow ResNet-18: which K and eps match the paper's clean accuracy?", "",
             f"Command: `.venv/bin/python scripts/trace_resnet_setting.py --n {args.n}`. Clean accuracy (%) of the "
             f"paper checkpoint with robust 3x3 block convs on the first {args.n} CIFAR-10 test images.", "",
             "| lam | paper | " + " | ".join(f"K={k} eps={e:g}" for k in GRID_K for e in GRID_EPS) + " |",
             "|---|---|" + "---|" * (len(GRID_K) * len(GRID_EPS))]
    start = time.perf_counter()
    for lam, published in PAPER_CLEAN.items():
        row = []
        for K in GRID_K:
            for eps in GRID_EPS:
                model, _ = load_pretrained("resnet18_narrow")
                reprogram(model, ReprogramConfig(lam=lam, K=K, eps=eps,
                                                 target_modules=default_robust_layers("resnet18_narrow")))
                acc = 100 * clean_accuracy(model, x, y, batch_size=250)
                print(f"lam {lam} K {K} eps {eps:g}: {acc:.1f}", flush=True)
                row.append(f"{acc:.1f}")
        lines.append(f"| {lam:g} | {published:g} | " + " | ".join(row) + " |")
    lines += ["", f"{time.perf_counter() - start:.0f} s on {args.threads} CPU thread(s)."]
    atomic_write_text(args.out, "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
