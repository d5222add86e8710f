"""``nrpm certify``: certified L2 robustness by randomized smoothing (Cohen et al. 2019) over lam x sigma, resumable.

The model and data arguments are those of ``nrpm eval``: a stored reprogramming (row ``trained``), a user's own
model (``--model FILE.py:FACTORY``, ``--model-arg``, ``--normalize``) and data (``--data tensors:FILE``). For every
(lam, sigma) every sample is certified with n0 selection and n estimation noise samples; results.json is saved
as it goes and a rerun with the same settings resumes. The noisy inputs are not clipped to [0, 1], as in Cohen
et al.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .args import (TRAINED, HelpFormatter, add_model_args, check_output_folder, download_if_asked, lam_or_trained,
                   model_settings, positive_float, positive_int, set_threads)

__all__ = ["add_certify_parser", "cmd_certify"]

# per sample n0 + n forward passes of the (robust, K-step) model: 100 samples is what a CPU does in minutes
DEFAULT_N_SAMPLES = 100


def probability(text: str) -> float:
    """A number strictly between 0 and 1 (alpha)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number in (0, 1), got {text!r}") from None
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must lie strictly between 0 and 1, got {text!r}")
    return value


def add_certify_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "certify", help="certified L2 robustness by randomized smoothing over lam x sigma (resumable)",
        formatter_class=HelpFormatter,
        description="Certified accuracy against the L2 radius of the Gaussian-smoothed model (Cohen, Rosenfeld, "
                    "Kolter 2019: CERTIFY with n0 selection and n estimation samples), for every (lam, sigma). "
                    "Noise is added to inputs in [0, 1] and not clipped. With --out the results are saved as "
                    "samples finish and a rerun resumes.")
    add_model_args(p, seed_help="seed of the Gaussian noise, drawn per sample from (seed, sample index)")
    p.set_defaults(n_samples=DEFAULT_N_SAMPLES)
    p.add_argument("--lam", nargs="+", type=lam_or_trained, default=None,
                   help=f"lam rows: numbers in [0, 1] (1 = original model) set every robust layer to that value; "
                        f"'{TRAINED}' keeps each layer's lam of a stored reprogramming (default: 1, or "
                        f"'{TRAINED}' with a stored reprogramming)")
    p.add_argument("--sigma", nargs="+", type=positive_float, default=[0.25, 0.5],
                   help="noise levels (standard deviation, in [0, 1] input units)")
    p.add_argument("--n0", type=positive_int, default=100, help="noise samples that select the top class")
    p.add_argument("--noise-samples", "--n", dest="n", type=positive_int, default=1000,
                   help="noise samples that bound its probability (the paper's 100000 does not fit a CPU; the "
                        "largest certifiable radius grows with n). --n is the short form in one process; under "
                        "torchrun write --noise-samples (torchrun reads --n as one of its own options)")
    p.add_argument("--alpha", type=probability, default=0.001,
                   help="failure probability of each certificate")
    p.add_argument("--out", default=None, help="output folder (results.json/.csv, table.md, certified.png)")
    p.add_argument("--overwrite", action="store_true", help="ignore earlier results in --out instead of resuming")
    p.set_defaults(func=cmd_certify, interrupt_hint="finished samples are saved in --out; rerun the same command "
                                                    "to resume")


def _check_values(args) -> None:
    """The checks argparse's types make, again for a Namespace built by hand (ValueError, exit 2 in nrpm)."""
    from ..certify.smoothing import check_alpha, check_count, check_sigma

    for sigma in args.sigma:
        check_sigma(sigma)
    check_count(args.n0, "--n0")
    check_count(args.n, "--noise-samples")
    check_alpha(args.alpha)
    check_count(args.batch_size, "--batch-size")


def _eval_settings(args):
    """The model part of ``nrpm eval``'s settings (model and data specs included), from which nrpm.evaluation
    builds the same model and reads the same samples."""
    from ..evaluation import EvalSettings

    return EvalSettings(**model_settings(args), lams=args.lam)


def _model_description(prepared) -> dict:
    """What defines the model (resuming must find the same): eval's model identity (file contents included)
    without its attack and sample count."""
    from ..evaluation import model_identity

    key = model_identity(prepared)
    for name in ("attack", "attack_kwargs", "n_samples", "seed"):
        key.pop(name, None)
    return key


def _recorded_info(prepared, samples) -> dict:
    """What results.json records of the model and the samples (not part of the resume key)."""
    from ..reprogram import robust_layers

    return {"checkpoint_info": prepared.checkpoint_info, "reprogramming": prepared.reprogramming,
            "notes": prepared.notes, "robust_layers": sorted(robust_layers(prepared.network)),
            "model_info": prepared.model_info, "data_info": samples.info,
            "split": prepared.settings.split, "data_root": prepared.settings.data_root}


def cmd_certify(args) -> int:
    from .. import distributed as dist
    from ..certify import CertifySettings, run_certify
    from ..evaluation import load_eval_data, prepare_model
    from ..runs import RunContext
    from ..reprogram import set_lam

    _check_values(args)
    download_if_asked(args, args.model, args.checkpoint)
    settings = _eval_settings(args)
    if args.out:
        check_output_folder(args.out, command="certify")
    set_threads(args.threads)
    log = lambda message: print(message, file=sys.stderr)
    device = dist.init_from_env(args.device).device  # torchrun: joins the group, one GPU per local rank
    if not dist.is_main():
        log = lambda message: None
    prepared = prepare_model(settings, device)
    for note in prepared.notes:
        log(f"note: {note}")
    if prepared.reprogramming is not None:
        set_lam(prepared.model, prepared.reprogramming["lam"])  # row 'trained' = the stored per-layer lam
    # read and checked against the model as nrpm eval does (a factory or normalised model has no .dataset)
    samples = load_eval_data(prepared)
    K = prepared.reprogramming["K"] if prepared.reprogramming is not None else prepared.settings.K
    certify_settings = CertifySettings(lams=prepared.settings.lams, sigmas=args.sigma, n0=args.n0, n=args.n,
                                       alpha=args.alpha, batch_size=args.batch_size, seed=args.seed,
                                       describe=_model_description(prepared),
                                       info=_recorded_info(prepared, samples),
                                       title=f"{args.model}: randomized smoothing, K={K}")
    ctx = RunContext.create(args.out, "certify", overwrite=args.overwrite, progress=not args.no_progress, log=log)
    try:
        result = run_certify(prepared.model, samples.x, samples.y, certify_settings, ctx,
                             on_start=lambda: log(f"data: {samples.info['detected']}"))
    finally:
        dist.cleanup()
    if not ctx.is_main:
        return 0
    print(result["table"])
    if args.out:
        print(f"\nresults: {Path(args.out) / 'results.json'} (+ results.csv, table.md, certified.png); "
              f"{result['seconds_this_run']:.1f} s this run", file=sys.stderr)
    return 0
