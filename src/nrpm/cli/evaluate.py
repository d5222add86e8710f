"""``nrpm eval``: clean and robust accuracy over a lam x budget grid, resumable, also of trained reprogramming.

A paradigm-3 ``model.pt`` given as ``--checkpoint``, or a ``reprogramming.pt`` given as ``--reprogramming``, is
evaluated with its stored per-layer lam, K, eps and layers (the row ``trained``); explicit ``--lam`` numbers,
``--K`` and ``--eps`` override them in every layer, and results.json records what was applied.

The model may be the user's own (``--model FILE.py:FACTORY`` with ``--model-arg``, ``--normalize``) and so may the
data (``--data tensors:FILE`` / ``imagefolder:PATH``); results.json's settings record both specs, the model's
description and what was detected in the data.
"""

from __future__ import annotations

import sys
from pathlib import Path

from .args import (TRAINED, HelpFormatter, add_model_args, attack_list, attack_name, attack_options, budget,
                   check_output_folder, download_if_asked, in_input_units, key_value, lam_or_trained, model_settings,
                   positive_float, refuse_linf_budgets_over_range, set_threads)

__all__ = ["add_eval_parser", "cmd_eval", "eval_settings"]

def add_eval_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "eval", help="clean and robust accuracy over a lam x budget grid (resumable)", formatter_class=HelpFormatter,
        description="Accuracy of a reprogrammed model for every (lam, budget). With --out the results are saved "
                    "after every cell and a rerun resumes. A stored reprogramming (a paradigm-3 model.pt as "
                    "--checkpoint, or --reprogramming FILE) is applied as trained: row 'trained'.")
    add_model_args(p, whole_tensors_file=True)
    p.add_argument("--lam", nargs="+", type=lam_or_trained, default=None,
                   help=f"lam rows: numbers in [0, 1] (1 = original model) set every robust layer to that value; "
                        f"'{TRAINED}' keeps each layer's lam of a stored reprogramming (default: 1, or "
                        f"'{TRAINED}' with a stored reprogramming; a number there overrides all its layers)")
    p.add_argument("--attack", default="fgsm", type=attack_name,
                   help=f"a registered attack: {attack_list()}")
    p.add_argument("--attack-arg", action="append", type=key_value, metavar="KEY=VALUE",
                   help="attack option, repeatable: steps=40, alpha=2, restarts=2, n_queries=1000; step sizes "
                        "(alpha; SPSA's lr, delta) in --budget-unit like the budgets, recorded in input units")
    p.add_argument("--budgets", nargs="+", type=budget, default=[0.0, 0.1], help="budgets in --budget-unit (0 = clean)")
    p.add_argument("--budget-unit", type=positive_float, default=1.0, help="e.g. 255 to give budgets as 8 16 32")
    p.add_argument("--out", default=None, help="output folder (results.json/.csv, table.md, accuracy.png)")
    p.add_argument("--overwrite", action="store_true", help="ignore earlier results in --out instead of resuming")
    p.set_defaults(func=cmd_eval, interrupt_hint="finished cells are saved in --out; rerun the same command "
                                                 "to resume")


def eval_settings(args):
    """The EvalSettings of parsed ``nrpm eval`` arguments (budgets in [0, 1] input units)."""
    from ..evaluation import EvalSettings

    from ..attacks import make_attack

    unit = args.budget_unit
    options = attack_options(args.attack_arg, args.attack, unit)
    budgets = in_input_units(args.budgets, unit)
    if make_attack(args.attack, 0.0, **options).norm == "Linf":  # also checks the name and options, before any work
        refuse_linf_budgets_over_range(budgets, unit)
    return EvalSettings(**model_settings(args), lams=args.lam, attack=args.attack, attack_kwargs=options,
                        budgets=budgets, budget_unit=unit)


def cmd_eval(args) -> int:
    from .. import distributed as dist
    from ..evaluation import run_eval
    from ..runs import RunContext

    download_if_asked(args, args.model, args.checkpoint)
    settings = eval_settings(args)
    if args.out:
        check_output_folder(args.out, command="eval")
    set_threads(args.threads)
    ctx = RunContext.create(args.out, "eval", overwrite=args.overwrite, progress=not args.no_progress,
                            log=lambda m: print(m, file=sys.stderr))
    try:
        result = run_eval(settings, ctx, device=args.device)
        if dist.is_main():
            print(f"{result['title']}\n\n{result['table']}")
            if args.out:
                print(f"\nresults: {Path(args.out) / 'results.json'} (+ results.csv, table.md, accuracy.png); "
                      f"{result['seconds_this_run']:.1f} s this run", file=sys.stderr)
    finally:
        dist.cleanup()
    return 0
