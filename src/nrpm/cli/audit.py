"""``nrpm audit`` (the adaptive-attack audit of one reprogrammed model), ``nrpm audit-table`` (collate runs) and
``nrpm audit-compare`` (two audits' worst cases on the same images, sample by sample).

Exit status 1 means the audit ran and a check failed (with --strict: or warned); bad input is status 2, as
everywhere in the CLI.

``--robustbench-json FILE`` also writes the result as a RobustBench-style model_info entry (its fields: name,
dataset, eps, clean_acc, autoattack_acc, number_forward_passes, architecture, ...) with nrpm's worst-case
accuracy at that eps and the audit's verdict, so a reprogrammed model can be compared with the leaderboard.
"""

from __future__ import annotations

import math
import sys
from dataclasses import asdict
from pathlib import Path

from ..audit.plan import optional_keys
from ..audit.protocol import DATASET_STEPS
from .args import (EXIT_CHECK_FAILED, EXIT_OK, TRAINED, HelpFormatter, UsageError, add_model_args,
                   budget, check_output_folder, download_if_asked, in_input_units, key_value, lam_or_trained,
                   model_settings, nonneg_float, positive_float, positive_int, refuse_linf_budgets_over_range,
                   set_threads)

__all__ = ["add_audit_parser", "cmd_audit", "cmd_audit_table", "cmd_audit_compare", "robustbench_entry"]

# The paper's budgets per dataset: (budgets, unit, PGD steps); CIFAR-100 and SVHN (not in the paper) take
# CIFAR-10's, whose 8/255 is also RobustBench's Linf budget for CIFAR-100. The steps are the protocol's
# (nrpm.audit.protocol), against which a run with fewer is labelled a reduced audit.
DATASET_DEFAULTS = {
    "mnist": ([0.05, 0.1, 0.15, 0.2, 0.25, 0.3], 1.0, DATASET_STEPS["mnist"]),
    "cifar10": ([8.0, 16.0, 32.0], 255.0, DATASET_STEPS["cifar10"]),
    "cifar100": ([8.0, 16.0, 32.0], 255.0, DATASET_STEPS["cifar100"]),
    "svhn": ([8.0, 16.0, 32.0], 255.0, DATASET_STEPS["svhn"]),
}
RECORDED_NRPM_FORWARD = ("NRPM needs no extra forward passes: its IRLS steps run inside each reprogrammed layer "
                         "during the one forward pass, so number_forward_passes is 1, as for the plain model")
TOLERANCE_CHECKS = ("monotone", "unbounded", "steps", "blackbox", "transfer", "autoattack")

_DESCRIPTION = (
    "Seven checks, each with numbers and a pass/warn/fail verdict: lam=1 reproduces the base model and the model "
    "is deterministic; input gradients are finite and non-zero; accuracy falls with the budget and reaches ~0 "
    "unbounded; more PGD steps/restarts and a finer step find nothing more; Square and noise are not stronger than "
    "white-box attacks; transfer from lam=1, BPDA (plain backward) and PGD with detached IRLS weights are not "
    "stronger than direct PGD; AutoAttack agrees with the strongest attack. Prints markdown; --out writes "
    "audit.json, audit.md, audit.png (and cache.json, kept after every batch, so a rerun resumes). A run with fewer "
    "samples (< 100), steps, queries or attacks than the defaults is labelled a reduced protocol in its verdict. "
    "Exit status 1 when a check fails (--strict: also on a warning), 2 on bad input.")


def add_audit_parser(subparsers) -> None:
    """Add the ``audit`` and ``audit-table`` subcommands to an argparse subparsers object."""
    p = subparsers.add_parser(
        "audit", help="adaptive-attack audit (gradient masking checks), pass/warn/fail; exit 1 on a fail",
        description=_DESCRIPTION, formatter_class=HelpFormatter)
    add_model_args(p)
    p.add_argument("--lam", type=lam_or_trained, default=None,
                   help=f"one value: the lam audited, in [0, 1], set in every robust layer (default: 1, or "
                        f"'{TRAINED}' = each layer's lam of a stored reprogramming, which a number overrides)")
    p.add_argument("--budgets", nargs="+", type=budget, default=None,
                   help="budgets in --budget-unit (default: the paper's; MNIST 0.05 .. 0.3, CIFAR-10 8 16 32 /255)")
    p.add_argument("--budget-unit", type=positive_float, default=None,
                   help="e.g. 255 to give budgets as 8 16 32 (default 1; 255 with CIFAR-10's default budgets)")
    p.add_argument("--norm", choices=["Linf", "L2"], default="Linf", help="threat model of the budgets")
    p.add_argument("--steps", type=positive_int, default=None, help="PGD steps (default: 40 MNIST, 20 CIFAR-10)")
    p.add_argument("--alpha", type=positive_float, default=None,
                   help="PGD step in --budget-unit (default 2.5 * budget / steps)")
    p.add_argument("--restarts", type=positive_int, default=1, help="PGD random restarts")
    p.add_argument("--apgd-steps", type=positive_int, default=100, help="APGD-CE / APGD-DLR iterations")
    p.add_argument("--square-queries", type=positive_int, default=5000, help="Square Attack queries")
    p.add_argument("--no-autoattack", action="store_true", help="skip check 7 (AutoAttack), for quick runs")
    p.add_argument("--spsa-steps", type=positive_int, default=50, help="SPSA (check 5, black-box) Adam steps")
    p.add_argument("--spsa-samples", type=positive_int, default=64,
                   help="SPSA queries per step (antithetic pairs; a sample costs at most steps x (samples + 1))")
    p.add_argument("--skip-attacks", nargs="+", default=[], choices=list(optional_keys()),
                   help="leave out optional attacks for a quick run (the C&W, SPSA and smoothed-gradient cells)")
    p.add_argument("--every-sample", action="store_true",
                   help="run every attack on every clean-correct sample (default: black-box, adaptive and "
                        "AutoAttack cells only on what their reference attack left; slower, same worst case)")
    p.add_argument("--no-plain", action="store_true",
                   help="do not evaluate the plain (lam=1) model next to the reprogrammed one")
    p.add_argument("--check-budget", type=budget, default=None,
                   help="budget (in --budget-unit) for check 4 (default: where PGD accuracy is nearest half "
                        "the clean accuracy)")
    p.add_argument("--unbounded-eps", type=positive_float, default=None,
                   help="the 'unbounded' budget of check 3, in input units (default Linf 1.0, L2 sqrt(d))")
    p.add_argument("--tol", type=nonneg_float, default=2.0,
                   help="accuracy tolerance of checks 3-7 in percentage points (warn up to 2x)")
    for name in TOLERANCE_CHECKS:
        p.add_argument(f"--tol-{name}", type=nonneg_float, default=None, help=f"override --tol for the {name} check")
    p.add_argument("--plain-checkpoint", default=None,
                   help="checkpoint of the plain model shown next to the audited one ('pretrained' or a path; "
                        "default: the audited weights at lam=1), e.g. the original model for a paradigm-3 run")
    p.add_argument("--title", default=None, help="report title (default: model and checkpoint)")
    p.add_argument("--out", default=None, help="output folder: audit.json, audit.md, audit.png, cache.json")
    p.add_argument("--overwrite", action="store_true", help="ignore cache.json in --out instead of resuming")
    p.add_argument("--strict", action="store_true", help="exit 1 on a warning too")
    r = p.add_argument_group("RobustBench-style entry")
    r.add_argument("--robustbench-json", default=None, metavar="FILE",
                   help="also write the result as a RobustBench model_info entry (clean_acc, autoattack_acc, eps, "
                        "...) plus nrpm's worst-case accuracy and the verdict, atomically")
    r.add_argument("--robustbench-eps", type=budget, default=None,
                   help="the entry's eps, in --budget-unit, one of the audited budgets (default: the smallest)")
    r.add_argument("--robustbench-field", action="append", type=key_value, metavar="KEY=VALUE",
                   help="set an entry field, repeatable (JSON values): name=..., link=..., authors=..., venue=..., "
                        "reported=..., additional_data=true, footnote=...")
    p.set_defaults(func=cmd_audit, interrupt_hint="finished attacks are cached in --out/cache.json; rerun the "
                                                  "same command to resume")

    t = subparsers.add_parser("audit-table", help="collate audit.json files into one markdown document",
                              formatter_class=HelpFormatter)
    t.add_argument("runs", nargs="+", help="audit.json files or folders holding one")
    t.add_argument("--out", default=None, help="write the markdown here (atomically) as well as to stdout")
    t.set_defaults(func=cmd_audit_table)

    c = subparsers.add_parser(
        "audit-compare", formatter_class=HelpFormatter,
        help="is a gain real? two finished audits' worst cases on the same images, compared sample by sample",
        description="The worst case of A minus that of B at every budget both audited, with its paired 95% "
                    "interval and the exact McNemar p-value (the noise of a difference on the same images, far "
                    "smaller than two separate intervals suggest). A side is FOLDER (its NRPM model) or "
                    "FOLDER:plain / FOLDER:nrpm; with one side, B is that folder's plain model.")
    c.add_argument("a", metavar="A", help="an audit folder, optionally :nrpm or :plain (default :nrpm)")
    c.add_argument("b", metavar="B", nargs="?", default=None, help="the other side (default: A's folder:plain)")
    c.add_argument("--out", default=None, help="write the markdown here (atomically) as well as to stdout")
    c.set_defaults(func=cmd_audit_compare)


def _settings(args):
    from ..evaluation import EvalSettings

    return EvalSettings(**model_settings(args), lams=None if args.lam is None else [args.lam], attack="audit")


def _plain_model(args, settings, device):
    """The model shown next to the audited one: --plain-checkpoint's weights, not reprogrammed (or None)."""
    from ..evaluation import load_plain_model

    if args.no_plain or not args.plain_checkpoint:
        return None, "plain (lam=1)"
    label = ("plain (paper checkpoint)" if args.plain_checkpoint == "pretrained"
             else f"plain ({Path(args.plain_checkpoint).name})")
    return load_plain_model(settings, args.plain_checkpoint, device), label


def _budgets_and_steps(args, dataset: str | None, data: str) -> tuple[list[float], float, int]:
    """(budgets > 0 in input units, the display unit, PGD steps), the paper's per dataset unless given."""
    default_budgets, default_unit, default_steps = DATASET_DEFAULTS.get(dataset, (None, 1.0, 40))
    if args.budgets is None and default_budgets is None:
        raise UsageError(f"give --budgets: there are no default budgets for --data {data}")
    unit = args.budget_unit if args.budget_unit is not None else (default_unit if args.budgets is None else 1.0)
    budgets = [b for b in in_input_units(args.budgets or default_budgets, unit) if b > 0]
    if not budgets:
        raise UsageError("give at least one budget > 0 in --budgets (clean accuracy is always reported)")
    if args.norm == "Linf":  # an L2 budget may exceed 1; an Linf one of 1 covers every image
        refuse_linf_budgets_over_range(budgets, unit)
        for flag in ("--check-budget", "--robustbench-eps"):
            value = getattr(args, flag[2:].replace("-", "_"))
            if value is not None:
                refuse_linf_budgets_over_range([value / unit], unit, flag)
    return budgets, unit, args.steps or default_steps


def _tolerances(args):
    from .. import audit as AU

    overrides = {n: getattr(args, f"tol_{n}") / 100 for n in TOLERANCE_CHECKS if getattr(args, f"tol_{n}") is not None}
    return AU.Tolerances.uniform(args.tol / 100, **overrides)


# ------------------------------------------------------------------------------------------ RobustBench entry
def _robustbench_eps(args, budgets: list[float], unit: float) -> float | None:
    """The entry's eps in input units: --robustbench-eps (one of the audited budgets), else the smallest budget."""
    if args.robustbench_json is None:
        if args.robustbench_eps is not None or args.robustbench_field:
            raise UsageError("--robustbench-eps and --robustbench-field need --robustbench-json FILE")
        return None
    if args.robustbench_eps is None:
        return min(budgets)
    eps = args.robustbench_eps / unit
    match = next((b for b in budgets if math.isclose(b, eps, rel_tol=1e-9, abs_tol=1e-12)), None)
    if match is None:
        raise UsageError(f"--robustbench-eps {args.robustbench_eps:g} is not one of the audited budgets "
                         f"({', '.join(f'{b * unit:g}' for b in budgets)} in --budget-unit {unit:g}): add it to "
                         f"--budgets")
    return match


def _at_budget(per_budget: dict, eps: float) -> float | None:
    return next((v for b, v in per_budget.items() if math.isclose(float(b), eps, rel_tol=1e-9, abs_tol=1e-12)), None)


def robustbench_entry(report, eps: float, *, dataset: str, architecture: str, nrpm: dict,
                      fields: dict | None = None) -> dict:
    """A RobustBench model_info entry (accuracies as percent strings with 2 decimals, as RobustBench writes them)
    of ``report`` at budget ``eps`` (input units), with nrpm's worst case and verdict; ``fields`` override any."""
    from .. import audit as AU
    from .. import reports
    from ..audit.protocol import verdict_text
    from ..audit.report import worst_case_attacks

    pct = lambda value: None if value is None else f"{100 * value:.2f}"
    settings, unit = report.settings, report.settings.get("budget_unit", 1.0)
    autoattack = report.accuracy("autoattack", eps, "nrpm")
    attacks = worst_case_attacks(report.cells, "nrpm", eps)  # the count audit.md's worst-case row gives at eps
    footnote = (f"Robustness reprogramming (NRPM, Hou et al., ICLR 2025) of the model's layers at lam="
                f"{nrpm.get('lam')}, K={nrpm.get('K')}, weights unchanged. {RECORDED_NRPM_FORWARD}. nrpm audit on "
                f"{settings['n']} samples (RobustBench uses 10000; worst-case accuracy "
                f"±{100 * report.half_width():.1f} pts, 95% Wilson interval); worst case over {len(attacks)} attacks"
                f"{'' if autoattack is not None else '; AutoAttack not run'}; audit verdict "
                f"{verdict_text(report.verdict, report.protocol)}.")
    protocol = report.protocol or {}
    entry = {"link": None, "name": settings.get("title"), "authors": "", "additional_data": False,
             "number_forward_passes": 1, "dataset": dataset, "venue": "N/A", "architecture": architecture,
             "eps": reports.format_budget(eps, unit), "clean_acc": pct(settings["clean_accuracy"]["nrpm"]),
             "reported": None, "autoattack_acc": pct(autoattack), "external": None, "footnote": footnote,
             # a reduced audit cannot vouch for its number any more than a failed one
             "unreliable": report.verdict == AU.FAIL or protocol.get("full") is False,
             "threat_model": settings["norm"],
             "worst_case_acc": pct(_at_budget(report.worst_case.get("nrpm", {}), eps)),
             "audit_verdict": report.verdict, "audit_protocol": _protocol_name(protocol),
             "audit_reductions": protocol.get("reductions"), "audit_attacks": len(attacks), "nrpm": nrpm}
    return {**entry, **(fields or {})}


def _protocol_name(protocol: dict) -> str:
    """'full', 'reduced' or 'unknown' (a report saved before the protocol was recorded)."""
    if "full" not in protocol:
        return "unknown"
    return "full" if protocol["full"] else "reduced"


def _write_robustbench(args, report, eps, prepared, samples, audit_json) -> None:
    from .. import reports

    settings = prepared.settings
    applied = prepared.reprogramming
    nrpm = {"model": settings.model, "model_args": settings.model_args, "checkpoint": settings.checkpoint,
            "normalize": settings.normalize, "data": samples.info["spec"], "split": settings.split,
            "n_samples": samples.info["n"], "lam": settings.lams[0], "K": applied["K"] if applied else settings.K,
            "eps_input_units": eps, "audit_json": None if audit_json is None else str(audit_json),
            "number_forward_passes": RECORDED_NRPM_FORWARD}
    entry = robustbench_entry(report, eps, dataset=samples.info["dataset"] or samples.info["spec"],
                              architecture=prepared.model_info.get("class", "").rsplit(".", 1)[-1],
                              nrpm=reports.jsonable(nrpm), fields=dict(args.robustbench_field or []))
    reports.write_json(args.robustbench_json, entry)
    print(f"robustbench entry: {args.robustbench_json}", file=sys.stderr)


def _audit_config(args, prepared, samples, plain_label):
    """The AuditConfig of parsed ``nrpm audit`` arguments, with what the CLI loaded recorded as provenance."""
    from .. import audit as AU
    from .. import reports

    budgets, unit, steps = _budgets_and_steps(args, samples.info["dataset"], samples.info["spec"])
    # the resolved setting, not the flag: a registry model without --checkpoint runs its paper checkpoint
    checkpoint = prepared.settings.checkpoint
    source = "paper checkpoint" if checkpoint == "pretrained" else checkpoint
    provenance = {"eval_settings": asdict(prepared.settings), "reprogramming_file": args.reprogramming,
                  "reprogramming": prepared.reprogramming,
                  "cli_args": {k: v for k, v in vars(args).items() if k != "func"},
                  "checkpoint_info": prepared.checkpoint_info, "model_info": prepared.model_info,
                  "data_info": samples.info}
    return AU.AuditConfig(
        budgets=budgets, norm=args.norm, compare_plain=not args.no_plain, plain_label=plain_label, steps=steps,
        alpha=None if args.alpha is None else args.alpha / unit, restarts=args.restarts, apgd_steps=args.apgd_steps,
        square_queries=args.square_queries, spsa_steps=args.spsa_steps, spsa_samples=args.spsa_samples,
        skip_attacks=tuple(args.skip_attacks), autoattack=not args.no_autoattack, unbounded_eps=args.unbounded_eps,
        check_budget=None if args.check_budget is None else args.check_budget / unit, tolerances=_tolerances(args),
        seed=args.seed, batch_size=args.batch_size, survivors_only=not args.every_sample,
        title=args.title or f"{args.model} ({source})", budget_unit=unit, dataset=samples.info["dataset"],
        provenance={k: reports.jsonable(v) for k, v in provenance.items()})


def cmd_audit(args) -> int:
    import torch

    from .. import distributed as dist
    from .. import audit as AU
    from .. import evaluation as E
    from ..runs import RunContext

    out = Path(args.out) if args.out else None
    if out is not None:
        check_output_folder(out, command="audit")
    if args.robustbench_json is not None:
        check_output_folder(Path(args.robustbench_json).parent, "--robustbench-json")
    download_if_asked(args, args.model, args.checkpoint)
    set_threads(args.threads)
    device = dist.init_from_env(args.device).device  # torchrun: joins the group, one GPU per local rank
    torch.manual_seed(args.seed)
    prepared = E.prepare_model(_settings(args), device)
    model, settings = prepared.model, prepared.settings
    say = (lambda m: print(m, file=sys.stderr)) if dist.is_main() else (lambda m: None)
    for note in prepared.notes:
        say(f"note: {note}")
    samples = E.load_eval_data(prepared)
    budgets, unit, steps = _budgets_and_steps(args, samples.info["dataset"], samples.info["spec"])
    robustbench_eps = _robustbench_eps(args, budgets, unit)
    plain, plain_label = _plain_model(args, settings, device)
    ctx = RunContext.create(out, "audit", overwrite=args.overwrite, progress=not args.no_progress, log=say)
    try:
        report = AU.run_audit(model, samples.x, samples.y, _audit_config(args, prepared, samples, plain_label),
                              ctx, plain_model=plain, on_start=lambda: say(f"data: {samples.info['detected']}"))
    finally:
        dist.cleanup()
    failed = report.verdict == AU.FAIL or (args.strict and report.verdict == AU.WARN)
    if not ctx.is_main:  # every rank holds the same report: the main rank alone writes and prints it
        return EXIT_CHECK_FAILED if failed else EXIT_OK
    if robustbench_eps is not None:
        _write_robustbench(args, report, robustbench_eps, prepared, samples,
                           None if out is None else out / "audit.json")
    print(report.to_markdown())
    if out is not None:
        print(f"audit: {out / 'audit.json'} (+ audit.md, audit.png, cache.json); {report.seconds:.0f} s",
              file=sys.stderr)
    return EXIT_CHECK_FAILED if failed else EXIT_OK


def cmd_audit_table(args) -> int:
    from .. import audit as AU

    return _write_then_print(AU.collate_reports(args.runs), args.out)


def cmd_audit_compare(args) -> int:
    from ..audit import compare

    a = compare.load_side(args.a)
    b = compare.load_side(args.b if args.b is not None else f"{a.folder}:plain")
    return _write_then_print(compare.comparison_markdown(a, b, compare.compare_sides(a, b)), args.out)


def _write_then_print(text: str, out: str | None) -> int:
    from .. import reports

    if out:  # written before printing: `nrpm audit-table ... --out T.md | head` still writes T.md
        reports.atomic_write_text(out, text + "\n")
    print(text)
    return 0
