"""``nrpm train`` (base models, standard or adversarial) and ``nrpm reprogram --paradigm 2|3`` (fine-tuning).

The model and data are given as for ``nrpm eval``: ``--model`` a registry name or a user's own
(``FILE.py:FACTORY``, ``package.module:FACTORY``, ``timm:NAME``, ``torchvision:NAME``, with ``--model-arg`` and
``--normalize``), ``--data`` a dataset name, ``imagefolder:PATH`` or ``tensors:FILE``. Training reads the training
split of ``--data`` (a tensors file has none: ``--train-data tensors:FILE`` gives it, and ``--data`` is then the
test set); the held-out check is the last ``--val-size`` training images. ``model.pt`` / ``reprogramming.pt``
record the model spec, ``--model-arg`` and ``--normalize``, so ``nrpm.train.load_trained`` rebuilds the model.

Wired into ``nrpm.cli.main`` by ``add_train_parsers(subparsers)``. Both run unchanged under
``torchrun --nproc_per_node=N -m nrpm.cli ...`` (or ``torchrun --nproc_per_node=N $(which nrpm) ...``).
"""

from __future__ import annotations

import argparse
import json
import sys

from ..reprogram import DEFAULT_TARGET_TYPES, TARGET_TYPE_NAMES
from .args import (HelpFormatter, add_data_spec_args, add_download_arg, add_estimator_args, add_model_spec_args,
                   attack_options, budget, data_spec, device_spec, download_if_asked, estimator_from_args,
                   in_input_units, irls_steps, key_value, lam_number, positive_float, positive_int,
                   refuse_linf_budgets_over_range, set_threads)

__all__ = ["add_train_parsers", "cmd_train", "cmd_reprogram", "config_from_args", "tests_from_args", "paradigm"]

_INTERRUPTED = "the last finished epoch is in OUT/checkpoint.pt; rerun with --resume"


def _per_unit(value, unit: float):
    return None if value is None else value / unit


def _refuse_budgets_over_range(args, unit: float) -> None:
    """The training and held-out attacks (fgsm, pgd) are Linf: a budget of 1 or more means a missing unit."""
    refuse_linf_budgets_over_range([args.attack_eps / unit], unit, "--attack-eps")
    if args.val_eps is not None:
        refuse_linf_budgets_over_range([args.val_eps / unit], unit, "--val-eps")


def config_from_args(args, paradigm: int):
    """A TrainConfig from parsed ``train`` / ``reprogram`` arguments (budgets divided by --budget-unit)."""
    from ..train import TrainConfig

    if args.budget_unit <= 0:
        raise ValueError(f"--budget-unit must be > 0, got {args.budget_unit}")
    unit = args.budget_unit
    _refuse_budgets_over_range(args, unit)
    kwargs = dict(
        model=args.model, paradigm=paradigm, checkpoint=None if args.checkpoint in (None, "none") else args.checkpoint,
        attack=args.attack, attack_eps=args.attack_eps / unit, attack_steps=args.attack_steps,
        attack_alpha=_per_unit(args.attack_alpha, unit), random_start=args.random_start,
        clean_weight=args.clean_weight,
        epochs=args.epochs, batch_size=args.batch_size, optimizer=args.optimizer, lr=args.lr,
        momentum=args.momentum, nesterov=args.nesterov, weight_decay=args.weight_decay, schedule=args.schedule,
        milestones=args.milestones or (), lr_gamma=args.lr_gamma, augment=args.augment, train_subset=args.train_subset,
        val_size=args.val_size, val_attack=args.val_attack, val_eps=_per_unit(args.val_eps, unit),
        val_steps=args.val_steps, seed=args.seed, data_root=args.data_root,
        model_args=dict(args.model_arg or []), normalize=args.normalize, data=args.data, train_data=args.train_data,
        image_size=args.image_size,
    )
    if paradigm:
        kwargs.update(lam=args.lam, K=args.K, eps=args.eps, layers=args.layers, skip=args.skip or (),
                      layer_types=args.layer_types, lam_lr=args.lam_lr, bn_mode=args.bn_mode,
                      estimator=estimator_from_args(args))
    else:
        kwargs.update(bn_mode=args.bn_mode)
    return TrainConfig(**kwargs)


def tests_from_args(args) -> list:
    from ..train import TestSettings

    if not args.test_attack:
        return []
    from ..attacks import make_attack

    unit = args.budget_unit
    budgets = in_input_units(args.test_budgets, unit)
    options = attack_options(args.test_attack_arg, args.test_attack, unit, "--test-attack-arg", "--test-budgets")
    if make_attack(args.test_attack, 0.0, **options).norm == "Linf":
        refuse_linf_budgets_over_range(budgets, unit, "--test-budgets")
    return [TestSettings(attack=args.test_attack, attack_kwargs=options, budgets=budgets,
                         n_samples=args.test_samples, batch_size=args.test_batch_size, budget_unit=unit)]


def _run(args, paradigm: int) -> int:
    from .. import distributed as dist
    from ..coverage import warnings_as_notes
    from ..runs import RunContext
    from ..train import TrainOptions, run_training

    from ..train.sources import training_spec

    download_if_asked(args, args.model, args.checkpoint)
    config = config_from_args(args, paradigm)
    training_spec(config)  # no training data (a factory model without --data, a tensors --data): fail now
    tests = tests_from_args(args)
    set_threads(args.threads)
    ctx = RunContext.create(args.out, "reprogram" if paradigm else "train", overwrite=args.overwrite,
                            progress=not args.no_progress, log=lambda m: print(m, file=sys.stderr, flush=True))
    options = TrainOptions(device=args.device, resume=args.resume, max_minutes=args.max_minutes,
                           tensorboard=args.tensorboard, tests=tests)
    with warnings_as_notes(ctx.log):
        summary = run_training(config, ctx, options=options)
    if dist.is_main():
        print(json.dumps({k: summary[k] for k in ("epochs_done", "stopped", "train_seconds", "lam", "artifacts")}))
        for label, res in summary["tests"].items():
            print(f"\n{label}:\n{res['table']}")
    dist.cleanup()
    return 0


def cmd_train(args) -> int:
    return _run(args, 0)


def _paradigm_message(paradigm) -> str:
    hint = " (paradigm 1 trains nothing: use nrpm eval --lam)" if paradigm == 1 else ""
    return (f"unknown paradigm {paradigm}: nrpm reprogram trains paradigm 2 (lam only) or 3 (weights and "
            f"lam){hint}")


def paradigm(text: str) -> int:
    """--paradigm: 2 or 3, refused at parse time with a hint for 1 (argparse's choices alone would not say)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value not in (2, 3):
        raise argparse.ArgumentTypeError(_paradigm_message(value))
    return value


def cmd_reprogram(args) -> int:
    if args.paradigm not in (2, 3):  # for callers that build the namespace themselves
        raise ValueError(_paradigm_message(args.paradigm))
    return _run(args, args.paradigm)


def _common(p: argparse.ArgumentParser, *, checkpoint_default: str, lr: float, optimizer: str, wd: float) -> None:
    add_model_spec_args(p)
    p.add_argument("--checkpoint", default=checkpoint_default,
                   help="'pretrained' (the paper's file, registry models only), a checkpoint path (a state_dict of "
                        "the model, or a run's model.pt), or 'none' (the factory's own weights)")
    p.add_argument("--out", required=True, help="output folder: checkpoint.pt, logs, artifacts, run.json")
    add_data_spec_args(p)
    p.add_argument("--train-data", type=data_spec, default=None,
                   help="train on this data's training split instead of --data's (a tensors:FILE: all of it; "
                        "the held-out check is its last --val-size); needed where --data is a tensors:FILE, which "
                        "has no training part and is then the --test-attack set")
    g = p.add_argument_group("adversarial examples")
    g.add_argument("--attack", default="none", choices=["none", "fgsm", "pgd"], help="training attack")
    g.add_argument("--attack-eps", type=float, default=0.0, help="budget, in --budget-unit (e.g. 0.3, or 8 with 255)")
    g.add_argument("--attack-steps", type=int, default=None, help="PGD steps (default 7; fgsm: 1)")
    g.add_argument("--attack-alpha", type=float, default=None,
                   help="step size in --budget-unit (default fgsm: eps, pgd: 2.5 eps / steps)")
    g.add_argument("--random-start", action=argparse.BooleanOptionalAction, default=None,
                   help="uniform random start in the eps ball (default: on for pgd, off for fgsm)")
    g.add_argument("--clean-weight", type=float, default=0.0, metavar="W",
                   help="loss = W * clean CE + (1 - W) * adversarial CE (default 0: adversarial only)")
    g.add_argument("--budget-unit", type=positive_float, default=1.0,
                   help="divide every budget and step size by this (255: give 8 for 8/255)")
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=positive_int, default=10, help="epochs in all (a resumed run continues to it)")
    g.add_argument("--batch-size", type=positive_int, default=128, help="global batch (split evenly over processes)")
    g.add_argument("--optimizer", default=optimizer, choices=["sgd", "adam", "adamw"], help="optimiser")
    g.add_argument("--lr", type=positive_float, default=lr, help="learning rate")
    g.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    g.add_argument("--nesterov", action="store_true", help="Nesterov momentum (SGD)")
    g.add_argument("--weight-decay", type=float, default=wd, help="never applied to lam logits")
    g.add_argument("--schedule", default="cosine", choices=["constant", "step", "cosine"], help="per epoch")
    g.add_argument("--milestones", type=int, nargs="+", default=None, help="epochs where step decays the lr")
    g.add_argument("--lr-gamma", dest="lr_gamma", type=float, default=0.1,
                   help="step decay factor of the learning rate (--gamma is the robust estimator's parameter)")
    g.add_argument("--augment", action=argparse.BooleanOptionalAction, default=None,
                   help="random crop + flip (default: on for CIFAR-10 and CIFAR-100, off for other data)")
    g.add_argument("--train-subset", type=int, default=None, help="a random subset of N training images per epoch")
    g.add_argument("--seed", type=int, default=0, help="seed of initialisation, data order and attacks")
    g = p.add_argument_group("held-out check (last --val-size training images)")
    g.add_argument("--val-size", type=int, default=1000, help="held-out training images checked each epoch")
    g.add_argument("--val-attack", default=None, choices=["none", "fgsm", "pgd"], help="default: the training attack")
    g.add_argument("--val-eps", type=float, default=None, help="default: --attack-eps (in --budget-unit)")
    g.add_argument("--val-steps", type=int, default=None, help="PGD steps of the held-out check (default: training's)")
    g = p.add_argument_group("final test evaluation (first --test-samples test images of --data)")
    g.add_argument("--test-attack", default=None, help="fgsm, pgd, ... (nrpm.attacks names); none by default")
    g.add_argument("--test-attack-arg", action="append", type=key_value, metavar="KEY=VALUE",
                   help="e.g. steps=40, alpha=2 (repeatable; step sizes (alpha; SPSA's lr, delta) in --budget-unit, "
                        "like the budgets)")
    g.add_argument("--test-budgets", type=budget, nargs="+", default=[0.0], help="in --budget-unit; 0 = clean")
    g.add_argument("--test-samples", type=positive_int, default=1000, help="the first N test images")
    g.add_argument("--test-batch-size", type=positive_int, default=250, help="images per test batch")
    g = p.add_argument_group("run control")
    g.add_argument("--resume", nargs="?", const=True, default=None, metavar="CHECKPOINT",
                   help="continue from --out/checkpoint.pt (or the given file; 'auto': resume if it exists, else "
                        "start); the settings must match. A resumed run continues to --epochs: a finished constant- or "
                        "step-schedule run is extended, a cosine one (planned for its --epochs) only runs the "
                        "--test-* evaluation")
    g.add_argument("--overwrite", action="store_true", help="start again even if --out has a checkpoint")
    g.add_argument("--max-minutes", type=float, default=None,
                   help="budget of optimisation time; stops at an epoch boundary")
    g.add_argument("--device", type=device_spec, default="auto",
                   help="auto, cpu, cuda (under torchrun: one GPU per process)")
    g.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads per process")
    g.add_argument("--data-root", default=None, help="data folder (default $NRPM_DATA or ../shared/data)")
    g.add_argument("--tensorboard", action="store_true", help="also write TensorBoard scalars (if installed)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_download_arg(p)


def add_train_parsers(subparsers) -> None:
    """Add ``train`` and ``reprogram`` to an argparse subparsers object (handlers in ``func``)."""
    tr = subparsers.add_parser("train", help="train a plain model, standard or adversarial (FGSM / PGD-k)",
                               formatter_class=HelpFormatter,
                               description="Train a plain (not reprogrammed) model: standard or adversarial "
                                           "training, resumable, data-parallel under torchrun.")
    _common(tr, checkpoint_default="none", lr=0.1, optimizer="sgd", wd=5e-4)
    tr.add_argument("--bn-mode", default="auto", choices=["auto", "train", "eval"],
                    help="BatchNorm mode while training (auto: train)")
    tr.set_defaults(func=cmd_train, interrupt_hint=_INTERRUPTED)

    rp = subparsers.add_parser("reprogram", help="fine-tune a reprogrammed model: paradigm 2 (lam) or 3 (all)",
                               formatter_class=HelpFormatter,
                               description="Paradigm 2: only the per-layer lam learns (weights and BatchNorm "
                                           "statistics frozen; saves reprogramming.pt). Paradigm 3: weights and "
                                           "lam learn (saves model.pt + reprogramming.pt).")
    rp.add_argument("--paradigm", type=paradigm, choices=[2, 3], required=True,
                    help="2 (lam only) or 3 (weights and lam)")
    _common(rp, checkpoint_default="pretrained", lr=0.01, optimizer="adam", wd=0.0)
    add_estimator_args(rp)
    g = rp.add_argument_group("reprogramming")
    g.add_argument("--lam", type=lam_number, default=0.5, help="initial lam of every robust layer")
    g.add_argument("--lam-lr", type=positive_float, default=None,
                   help="learning rate of the lam logits (default --lr)")
    g.add_argument("--K", type=irls_steps, default=3, help="IRLS steps (>= 1)")
    g.add_argument("--eps", type=positive_float, default=1e-3, help="IRLS eps")
    g.add_argument("--layers", nargs="+", default=None,
                   help="module names/globs (default: all Linear/Conv2d; ResNets: 3x3 block convs)")
    g.add_argument("--skip", nargs="+", default=None, help="module names/globs never reprogrammed")
    g.add_argument("--layer-types", nargs="+", default=list(DEFAULT_TARGET_TYPES), choices=TARGET_TYPE_NAMES,
                   help="module types reprogrammed: attention = an nn.MultiheadAttention's projections and "
                        "aggregation, attention_projections / attention_aggregation one of the two")
    g.add_argument("--bn-mode", default="auto", choices=["auto", "train", "eval"],
                   help="auto: eval (frozen statistics) for paradigm 2, train for paradigm 3")
    rp.set_defaults(func=cmd_reprogram, interrupt_hint=_INTERRUPTED)
