"""``nrpm audit`` (the adaptive-attack audit of one reprogrammed model) and ``nrpm audit-table`` (collate runs).

Wired into ``nrpm.cli`` by ``add_audit_parser(subparsers)``.
"""

from __future__ import annotations

import sys
from dataclasses import asdict, fields, replace
from pathlib import Path

from ._io import output_dir_lock

__all__ = ["add_audit_parser", "cmd_audit", "cmd_audit_table"]

# The paper's budgets per dataset: (budgets, unit, PGD steps)
_DATASET_DEFAULTS = {
    "mnist": (["0.05", "0.1", "0.15", "0.2", "0.25", "0.3"], 1.0, 40),
    "cifar10": (["8", "16", "32"], 255.0, 20),
}


def add_audit_parser(subparsers) -> None:
    """Add the ``audit`` and ``audit-table`` subcommands to an argparse subparsers object."""
    from .cli import _add_common_model_args  # here, not at import time: nrpm.cli imports this module

    p = subparsers.add_parser(
        "audit", help="adaptive-attack audit (gradient masking checks), pass/warn/fail; exit 1 on a fail",
        description="Seven checks, each with numbers and a pass/warn/fail verdict: lam=1 reproduces the base "
                    "model and the model is deterministic; input gradients are finite and non-zero; accuracy "
                    "falls with the budget and reaches ~0 unbounded; more PGD steps/restarts and a finer step "
                    "find nothing more; Square and noise are not stronger than white-box attacks; transfer "
                    "from lam=1, BPDA (plain backward) and PGD with detached IRLS weights are not stronger than "
                    "direct PGD; AutoAttack agrees with the strongest "
                    "attack. Prints markdown; --out writes audit.json, audit.md, audit.png (and cache.json, so "
                    "a rerun resumes). Exit status 1 when a check fails (--strict: also on a warning).")
    _add_common_model_args(p)
    p.add_argument("--budgets", nargs="+", default=None,
                   help="budgets in --budget-unit (default: the paper's; MNIST 0.05 .. 0.3, CIFAR-10 8 16 32 /255)")
    p.add_argument("--budget-unit", type=float, default=None,
                   help="e.g. 255 to give budgets as 8 16 32 (default 1; 255 with CIFAR-10's default budgets)")
    p.add_argument("--norm", choices=["Linf", "L2"], default="Linf")
    p.add_argument("--steps", type=int, default=None, help="PGD steps (default: 40 MNIST, 20 CIFAR-10)")
    p.add_argument("--alpha", type=float, default=None,
                   help="PGD step in --budget-unit (default 2.5 * budget / steps)")
    p.add_argument("--restarts", type=int, default=1, help="PGD random restarts (default 1)")
    p.add_argument("--apgd-steps", type=int, default=100, help="APGD-CE / APGD-DLR iterations (default 100)")
    p.add_argument("--square-queries", type=int, default=5000, help="Square Attack queries (default 5000)")
    p.add_argument("--no-autoattack", action="store_true", help="skip check 7 (AutoAttack), for quick runs")
    p.add_argument("--no-plain", action="store_true",
                   help="do not evaluate the plain (lam=1) model next to the reprogrammed one")
    p.add_argument("--check-budget", type=float, default=None,
                   help="budget (in --budget-unit) for check 4 (default: where PGD accuracy is nearest half "
                        "the clean accuracy)")
    p.add_argument("--unbounded-eps", type=float, default=None,
                   help="the 'unbounded' budget of check 3, in input units (default Linf 1.0, L2 sqrt(d))")
    p.add_argument("--tol", type=float, default=2.0,
                   help="accuracy tolerance of checks 3-7 in percentage points (default 2; warn up to 2x)")
    for name in ("monotone", "unbounded", "steps", "blackbox", "transfer", "autoattack"):
        p.add_argument(f"--tol-{name}", type=float, default=None, help=f"override --tol for the {name} check")
    p.add_argument("--plain-checkpoint", default=None,
                   help="checkpoint of the plain model shown next to the audited one ('pretrained' or a path; "
                        "default: the audited weights at lam=1), e.g. the original model for a paradigm-3 run")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (1 is fastest on a busy CPU)")
    p.add_argument("--reprogramming", default=None,
                   help="a saved reprogramming state (nrpm.save_reprogramming, e.g. paradigm 2/3 lam values) "
                        "applied instead of --lam/--K/--eps")
    p.add_argument("--title", default=None, help="report title (default: model and checkpoint)")
    p.add_argument("--out", default=None, help="output folder: audit.json, audit.md, audit.png, cache.json")
    p.add_argument("--overwrite", action="store_true", help="ignore cache.json in --out instead of resuming")
    p.add_argument("--strict", action="store_true", help="exit 1 on a warning too")
    p.set_defaults(func=cmd_audit)

    t = subparsers.add_parser("audit-table", help="collate audit.json files into one markdown document")
    t.add_argument("runs", nargs="+", help="audit.json files or folders holding one")
    t.add_argument("--out", default=None, help="write the markdown here (atomically) as well as to stdout")
    t.set_defaults(func=cmd_audit_table)


def _settings(args, lam: float):
    from .evaluation import EvalSettings

    known = {f.name for f in fields(EvalSettings)}
    values = dict(model=args.model, checkpoint=args.checkpoint, lams=[lam], K=args.K, eps=args.eps,
                  layers=args.layers, skip=args.skip or [], layer_types=args.layer_types, attack="audit",
                  n_samples=args.n_samples, batch_size=args.batch_size, seed=args.seed, data_root=args.data_root,
                  split=getattr(args, "split", "test"))
    return EvalSettings(**{k: v for k, v in values.items() if k in known})


def _load_samples(settings, dataset: str):
    from . import data as D
    from . import evaluation as E

    loader = getattr(E, "load_eval_samples", None)
    if loader is not None:
        return loader(dataset, settings)
    return D.subset(*D.load_dataset(dataset, root=settings.data_root, train=False), settings.n_samples)


def cmd_audit(args) -> int:
    import torch

    from . import audit as AU
    from . import reports
    from . import evaluation as E
    from .cli import _budgets, _floats, set_threads
    from .reprogram import load_reprogramming, undo_reprogramming

    lams = _floats(args.lam)
    if len(lams) != 1:
        raise SystemExit(f"error: nrpm audit audits one model: give one --lam value, got {lams}")
    if not 0 <= lams[0] <= 1:
        raise SystemExit(f"error: lam must lie in [0, 1], got {lams[0]}")
    for name in ("n_samples", "batch_size", "restarts", "apgd_steps", "square_queries"):
        if getattr(args, name) < 1:
            raise SystemExit(f"error: --{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.steps is not None and args.steps < 1:
        raise SystemExit(f"error: --steps must be >= 1, got {args.steps}")
    settings = _settings(args, lams[0])
    set_threads(args.threads)
    device = E.resolve_device(args.device)
    torch.manual_seed(args.seed)
    model, info = E.build_model(settings, device)
    if args.reprogramming:
        undo_reprogramming(model)
        load_reprogramming(model, args.reprogramming)
        model.to(device)
    plain, plain_label = None, "plain (lam=1)"
    if args.plain_checkpoint:
        plain, _ = E.build_model(replace(settings, checkpoint=args.plain_checkpoint, lams=[1.0]), device)
        undo_reprogramming(plain)
        plain_label = ("plain (paper checkpoint)" if args.plain_checkpoint == "pretrained"
                       else f"plain ({Path(args.plain_checkpoint).name})")
    dataset = getattr(model, "dataset", None)
    if dataset is None:
        raise ValueError(f"model {args.model!r} does not say which dataset it is for (no .dataset attribute)")
    key = dataset.lower().replace("-", "").replace("_", "")
    default_budgets, default_unit, default_steps = _DATASET_DEFAULTS.get(key, (None, 1.0, 40))
    if args.budgets is None and default_budgets is None:
        raise SystemExit("error: give --budgets (no default budgets for this dataset)")
    unit = args.budget_unit if args.budget_unit is not None else (default_unit if args.budgets is None else 1.0)
    if unit <= 0:
        raise SystemExit(f"error: --budget-unit must be > 0, got {unit}")
    budgets = [b for b in _budgets(args.budgets or default_budgets, unit) if b > 0]
    if not budgets:
        raise SystemExit("error: give at least one budget > 0 (clean accuracy is always reported)")
    steps = args.steps or default_steps
    x, y = _load_samples(settings, dataset)

    tol = args.tol / 100
    overrides = {n: getattr(args, f"tol_{n}") / 100 for n in
                 ("monotone", "unbounded", "steps", "blackbox", "transfer", "autoattack")
                 if getattr(args, f"tol_{n}") is not None}
    tolerances = AU.Tolerances.uniform(tol, **overrides)
    out = Path(args.out) if args.out else None
    cache = out / "cache.json" if out is not None else None
    with output_dir_lock(out, "audit", enabled=out is not None):
        if cache is not None and args.overwrite and cache.exists():
            cache.unlink()
        source = "paper checkpoint" if args.checkpoint == "pretrained" else args.checkpoint
        title = args.title or f"{args.model} ({source})"
        report = AU.run_audit(
            model, x, y, budgets=budgets, norm=args.norm, compare_plain=not args.no_plain,
            plain_model=None if args.no_plain else plain, plain_label=plain_label, steps=steps,
            alpha=None if args.alpha is None else args.alpha / unit, restarts=args.restarts,
            apgd_steps=args.apgd_steps, square_queries=args.square_queries, autoattack=not args.no_autoattack,
            unbounded_eps=args.unbounded_eps,
            check_budget=None if args.check_budget is None else args.check_budget / unit,
            tolerances=tolerances, seed=args.seed, batch_size=args.batch_size, cache_path=cache, title=title,
            budget_unit=unit, progress=not args.no_progress, log=lambda m: print(m, file=sys.stderr))
        report.settings["eval_settings"] = reports.jsonable(asdict(settings))
        report.settings["reprogramming_file"] = args.reprogramming
        report.settings["cli_args"] = reports.jsonable({k: v for k, v in vars(args).items() if k != "func"})
        report.settings["checkpoint_info"] = reports.jsonable(info or {})
        print(report.to_markdown())
        if out is not None:
            paths = report.save(out)
            print(f"audit: {paths['json']} (+ audit.md, audit.png, cache.json); {report.seconds:.0f} s",
                  file=sys.stderr)
    if report.verdict == AU.FAIL or (args.strict and report.verdict == AU.WARN):
        return 1
    return 0




def cmd_audit_table(args) -> int:
    from . import audit as AU
    from . import reports

    text = AU.collate_reports(args.runs)
    print(text)
    if args.out:
        reports.atomic_write_text(args.out, text + "\n")
    return 0
