"""Command-line interface: ``nrpm demo``, ``nrpm eval`` (and more subcommands as they land)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from ._io import OutputFolderInUse

__all__ = ["main"]


def _floats(text_values) -> list[float]:
    out = []
    for v in text_values:
        try:
            out.append(float(v))
        except ValueError:
            raise SystemExit(f"error: not a number: {v!r}") from None
    return out


def _budgets(values, unit: float) -> list[float]:
    budgets = _floats(values)
    bad = [b for b in budgets if not b >= 0]
    if bad:
        raise SystemExit(f"error: budgets must be >= 0, got {bad}")
    return [b / unit for b in budgets]


def parse_key_values(items, flag: str = "--attack-arg") -> dict:
    """['steps=40', 'alpha=0.01'] -> {'steps': 40, 'alpha': 0.01} (values parsed as JSON when they can be)."""
    kwargs = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"{flag} wants KEY=VALUE, got {item!r}")
        try:
            kwargs[key] = json.loads(value)
        except json.JSONDecodeError:
            kwargs[key] = value
    return kwargs


def set_threads(threads: int | None) -> None:
    """--threads: torch's CPU threads (None keeps torch's default)."""
    if threads is None:
        return
    if threads < 1:
        raise SystemExit(f"error: --threads must be >= 1, got {threads}")
    import torch

    torch.set_num_threads(threads)


# ------------------------------------------------------------------------------------------------- demo
def cmd_demo(args) -> int:
    import torch

    from . import attacks as A
    from . import data as D
    from . import reports
    from .evaluation import evaluate_grid
    from .models import load_pretrained
    from .reprogram import ReprogramConfig, reprogram

    start = time.perf_counter()
    model, info = load_pretrained("mlp3", path=args.checkpoint)
    reprogram(model, ReprogramConfig(lam=1.0, K=args.K, eps=args.eps))
    x, y = D.subset(*D.load_mnist(root=args.data_root, train=False), args.n_samples)
    lams, budgets = _floats(args.lam), _budgets(args.budgets, 1.0)
    print(f"nrpm demo: the paper's MNIST MLP (784-256-64-10, no activations) from {info['source']}")
    print(f"paradigm 1 (frozen weights, lam by hand), K={args.K}, eps={args.eps:g}; FGSM on the first "
          f"{len(x)} MNIST test images; accuracy in %, rows lam (1 = original model)\n")
    torch.manual_seed(0)
    cells = evaluate_grid(model, x, y, lams, budgets, lambda e: A.FGSM(e), batch_size=args.batch_size,
                          progress=not args.no_progress, attack_name="fgsm")
    print(reports.markdown_grid(cells, lams, budgets))
    print("\nsingle-step FGSM overstates robustness; run `nrpm audit` before trusting a robust number")
    print(f"time: {time.perf_counter() - start:.1f} s on {torch.get_num_threads()} threads "
          f"(torch {torch.__version__})")
    return 0


# ------------------------------------------------------------------------------------------------- eval
def _eval_settings(args):
    from .evaluation import EvalSettings

    if args.n_samples < 1:
        raise SystemExit(f"error: --n-samples must be >= 1, got {args.n_samples}")
    if args.budget_unit <= 0:
        raise SystemExit(f"error: --budget-unit must be > 0, got {args.budget_unit}")
    lams = _floats(args.lam)
    bad = [v for v in lams if not 0 <= v <= 1]
    if bad:
        raise SystemExit(f"error: lam values must lie in [0, 1], got {bad}")
    return EvalSettings(model=args.model, checkpoint=args.checkpoint, lams=lams, K=args.K, eps=args.eps,
                        layers=args.layers, skip=args.skip or [], layer_types=args.layer_types,
                        attack=args.attack, attack_kwargs=parse_key_values(args.attack_arg),
                        budgets=_budgets(args.budgets, args.budget_unit), budget_unit=args.budget_unit,
                        n_samples=args.n_samples, batch_size=args.batch_size, seed=args.seed,
                        data_root=args.data_root, split=args.split)


def cmd_eval(args) -> int:
    from . import distributed as dist
    from .evaluation import run_eval

    settings = _eval_settings(args)
    set_threads(args.threads)
    try:
        result = run_eval(settings, args.out, device=args.device, progress=not args.no_progress,
                          overwrite=args.overwrite, log=lambda m: print(m, file=sys.stderr))
        if dist.is_main():
            print(result["table"])
            if args.out:
                print(f"\nresults: {Path(args.out) / 'results.json'} (+ results.csv, table.md, accuracy.png); "
                      f"{result['seconds_this_run']:.1f} s this run", file=sys.stderr)
    finally:
        dist.cleanup()
    return 0


def _add_common_model_args(p) -> None:
    p.add_argument("--model", required=True, help="registry name: linear, mlp2, mlp3, lenet, resnet18_narrow, ...")
    p.add_argument("--checkpoint", default="pretrained",
                   help="'pretrained' (the paper's released file), a checkpoint path, or 'none'")
    p.add_argument("--lam", nargs="+", default=["1.0"], help="one lam or a list for a sweep (1 = original)")
    p.add_argument("--K", type=int, default=3, help="IRLS steps (default 3)")
    p.add_argument("--eps", type=float, default=1e-3, help="IRLS eps (default 1e-3)")
    p.add_argument("--layers", nargs="+", default=None,
                   help="module names/globs to reprogram (default: all Linear/Conv2d; ResNets: 3x3 block convs)")
    p.add_argument("--skip", nargs="+", default=None, help="module names/globs never reprogrammed")
    p.add_argument("--layer-types", nargs="+", default=["linear", "conv2d"], help="linear and/or conv2d")
    p.add_argument("--data-root", default=None, help="data folder (default $NRPM_DATA or ../shared/data)")
    p.add_argument("--n-samples", type=int, default=1000, help="first N test images (default 1000)")
    p.add_argument("--split", choices=["test", "val"], default="test",
                   help="test: first N test images; val: last N training images (to choose lam without the test set)")
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nrpm", description="Robustness reprogramming (NRPM) for PyTorch models")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="paper's MNIST MLP, paradigm 1, FGSM table for a few lam values")
    demo.add_argument("--checkpoint", default=None, help="path of mlp3_mnist_model.pth (default: ../shared/pretrained)")
    demo.add_argument("--data-root", default=None, help="data folder (default $NRPM_DATA or ../shared/data)")
    demo.add_argument("--lam", nargs="+", default=["1.0", "0.9", "0.7", "0.5", "0.3"])
    demo.add_argument("--budgets", nargs="+", default=["0", "0.05", "0.1", "0.15", "0.2", "0.25", "0.3"])
    # K=1, eps=5e-5 is the setting that reproduces the paper's Table 1 (see results/README.md)
    demo.add_argument("--K", type=int, default=1, help="IRLS steps (default 1, the paper's Table 1 setting)")
    demo.add_argument("--eps", type=float, default=5e-5, help="IRLS eps (default 5e-5)")
    demo.add_argument("--n-samples", type=int, default=1000)
    demo.add_argument("--batch-size", type=int, default=500)
    demo.add_argument("--no-progress", action="store_true")
    demo.set_defaults(func=cmd_demo)

    ev = sub.add_parser("eval", help="clean and robust accuracy over a lam x budget grid (resumable)")
    _add_common_model_args(ev)
    ev.add_argument("--attack", default="fgsm",
                    help="fgsm, pgd, pgd_l2, fgm_l1, fgm_l2, l0, apgd-ce, apgd-dlr, square, autoattack, "
                         "autoattack-l2, noise")
    ev.add_argument("--attack-arg", action="append", metavar="KEY=VALUE",
                    help="attack option, repeatable: steps=40, alpha=0.01, restarts=2, n_queries=1000")
    ev.add_argument("--budgets", nargs="+", default=["0", "0.1"], help="budgets in --budget-unit (0 = clean)")
    ev.add_argument("--budget-unit", type=float, default=1.0, help="e.g. 255 to give budgets as 8 16 32")
    ev.add_argument("--out", default=None, help="output folder (results.json/.csv, table.md, accuracy.png)")
    ev.add_argument("--overwrite", action="store_true", help="ignore earlier results in --out instead of resuming")
    ev.add_argument("--threads", type=int, default=None, help="torch CPU threads (1 is fastest on a busy CPU)")
    ev.set_defaults(func=cmd_eval)

    from .cli_audit import add_audit_parser
    from .cli_train import add_train_parsers

    add_train_parsers(sub)
    add_audit_parser(sub)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, TypeError, OutputFolderInUse) as error:
        print(f"nrpm {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if args.command in ("train", "reprogram"):
            hint = "the last finished epoch is in OUT/checkpoint.pt; rerun with --resume"
        else:
            hint = "finished cells are saved; rerun the same command to resume"
        print(f"nrpm {args.command}: interrupted; {hint}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
