"""``nrpm demo``: the paper's MNIST MLP, paradigm 1 (frozen weights, lam by hand), an FGSM table in a minute."""

from __future__ import annotations

import time

from .args import (HelpFormatter, add_download_arg, add_threads_arg, budget, download_if_asked, in_input_units,
                   irls_steps, lam_number, positive_float, positive_int, refuse_linf_budgets_over_range, set_threads)

__all__ = ["add_demo_parser", "cmd_demo"]

DEMO_LAMS = [1.0, 0.9, 0.7, 0.5, 0.3]
DEMO_BUDGETS = [0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3]


def add_demo_parser(subparsers) -> None:
    p = subparsers.add_parser("demo", help="paper's MNIST MLP, paradigm 1, FGSM table for a few lam values",
                              formatter_class=HelpFormatter)
    p.add_argument("--checkpoint", default=None,
                   help="path of mlp3_mnist_model.pth (default: the released file, ../shared/pretrained)")
    p.add_argument("--data-root", default=None, help="data folder (default $NRPM_DATA or ../shared/data)")
    p.add_argument("--lam", nargs="+", type=lam_number, default=DEMO_LAMS, help="lam rows (1 = original model)")
    p.add_argument("--budgets", nargs="+", type=budget, default=DEMO_BUDGETS, help="FGSM budgets (0 = clean)")
    # K=1, eps=5e-5 is the setting that reproduces the paper's Table 1 (see results/README.md)
    p.add_argument("--K", type=irls_steps, default=1, help="IRLS steps (the paper's Table 1 setting)")
    p.add_argument("--eps", type=positive_float, default=5e-5, help="IRLS eps")
    p.add_argument("--n-samples", type=positive_int, default=1000, help="the first N MNIST test images")
    p.add_argument("--batch-size", type=positive_int, default=500, help="images per batch")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_threads_arg(p)
    add_download_arg(p)
    p.set_defaults(func=cmd_demo)


def cmd_demo(args) -> int:
    import torch

    from .. import attacks as A
    from .. import data as D
    from ..evaluation.grid import evaluate_grid, markdown_grid
    from ..models import load_pretrained
    from ..reprogram import ReprogramConfig, reprogram

    set_threads(args.threads)
    start = time.perf_counter()
    refuse_linf_budgets_over_range(args.budgets, 1.0)  # FGSM is Linf, on [0, 1] images
    download_if_asked(args, "mlp3", "pretrained" if args.checkpoint is None else args.checkpoint)
    model, info = load_pretrained("mlp3", path=args.checkpoint)
    reprogram(model, ReprogramConfig(lam=1.0, K=args.K, eps=args.eps))
    x, y = D.subset(*D.load_mnist(root=args.data_root, train=False), args.n_samples)
    budgets = in_input_units(args.budgets, 1.0)
    print(f"nrpm demo: the paper's MNIST MLP (784-256-64-10, no activations) from {info['source']}")
    print(f"paradigm 1 (frozen weights, lam by hand), K={args.K}, eps={args.eps:g}; FGSM on the first "
          f"{len(x)} MNIST test images; accuracy in %, rows lam (1 = original model)\n")
    torch.manual_seed(0)
    cells = evaluate_grid(model, x, y, args.lam, budgets, lambda e: A.FGSM(e), batch_size=args.batch_size,
                          progress=not args.no_progress, attack_name="fgsm")
    print(markdown_grid(cells, args.lam, budgets))
    print("\nsingle-step FGSM overstates robustness; run `nrpm audit` before trusting a robust number")
    print(f"time: {time.perf_counter() - start:.1f} s on {torch.get_num_threads()} threads "
          f"(torch {torch.__version__})")
    return 0
