"""Robust attention on the trained CIFAR-10 ViT (vit_tiny_cifar): the "Transformers" study, resumable.

    PYTHONPATH=src .venv/bin/python scripts/transformers_study.py --checkpoint runs/vit_tiny_cifar/model.pt
    # smoke test (minutes, any weights, outputs NOT for results/):
    PYTHONPATH=src .venv/bin/python scripts/transformers_study.py --checkpoint /tmp/vit_random.pt --quick \
        --fixed-lam 0.5 --out /tmp/ts

Steps, each a command of the nrpm CLI, each skipped once its folder holds a ``.done`` marker (and each command
itself resumes a half-finished run), then the report ``OUT/README.md`` (scripts/transformers_report.py):

1. ``val/<variant>``: paradigm 1 for every lam of ``--lams`` under PGD at ``--budgets`` (/255) on the last
   ``--val-n`` training images (``--split val``; the ViT's training held out its last 1000 images).
2. ``choice.json``: per variant the lam chosen on those images (rule below).
3. ``test/plain`` and ``test/<variant>``: the plain ViT and each chosen setting on the first ``--test-n`` test images.
4. ``paradigm2``: ``nrpm reprogram --paradigm 2`` (lam learnt per layer, weights frozen) of the "both" variant.
5. ``audit/<name>``: ``nrpm audit`` of the plain ViT and of each chosen setting.

Variants (which parts are robust; the patch-embedding convolution stays plain in all of them, so that they differ
only in the transformer's own parts):

* ``projections``: every linear map, i.e. the attention's q/k/v/out projections AND the MLP and head linears
  (``--layer-types linear attention_projections``). Chosen over "the attention's projections only" because robust
  linear maps are nrpm's established tool: the question is what the robust *aggregation* adds beyond them.
* ``attention``: only the robust aggregation, every linear map plain (``--layer-types attention_aggregation``).
* ``both``: both (``--layer-types linear attention``).

Lam rule: among the lams whose clean accuracy is at most ``--max-drop`` points below the plain ViT's (lam 1) on the
same held-out images, the one with the highest PGD accuracy at ``--choice-budget`` (/255); ties go to the larger
lam (closer to the original). lam 1 can win, which then says the variant gives nothing at that clean cost.

CPU time: `scripts/transformers_study.sh` (these steps at 200 / 500 images, 100-image audits at a reduced
protocol, beside an exploratory setting and the paradigm-2 audit) took about an hour on the 2-core development
machine, one thread per chain. Every step resumes after a kill.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import transformers_report  # noqa: E402

from nrpm._io import atomic_write  # noqa: E402

VARIANTS = {"projections": ["linear", "attention_projections"], "attention": ["attention_aggregation"],
            "both": ["linear", "attention"]}
MODEL = "vit_tiny_cifar"
SETTINGS_FILE = "study.json"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", required=True, help="the trained ViT: nrpm train's model.pt or a state_dict")
    p.add_argument("--out", type=Path, default=Path("results/transformers"))
    p.add_argument("--lams", type=float, nargs="+", default=[1.0, 0.9, 0.8, 0.7, 0.5])
    p.add_argument("--budgets", type=float, nargs="+", default=[0, 2, 4, 8], help="PGD Linf budgets in /255")
    p.add_argument("--choice-budget", type=float, default=4, help="/255: the budget lam is chosen at")
    p.add_argument("--max-drop", type=float, default=5.0, help="largest clean-accuracy drop (points) allowed")
    p.add_argument("--fixed-lam", type=float, default=None,
                   help="skip the rule and use this lam for every variant (smoke tests of the later steps)")
    # K 1: the repo's CIFAR paradigm-1 setting (scripts/reproduce_paradigm23.sh); K 3 costs ~3x in the projections
    p.add_argument("--K", type=int, default=1, help="IRLS steps of every robust part")
    p.add_argument("--steps", type=int, default=10, help="PGD steps of the evaluations")
    p.add_argument("--val-n", type=int, default=200)
    p.add_argument("--test-n", type=int, default=500)
    p.add_argument("--p2-epochs", type=int, default=2)
    p.add_argument("--p2-subset", type=int, default=2560, help="random training images per paradigm-2 epoch")
    p.add_argument("--p2-batch", type=int, default=64)
    p.add_argument("--p2-val-size", type=int, default=1000, help="held out by paradigm 2 (as by the ViT's training)")
    p.add_argument("--audit-n", type=int, default=100)
    # the smoothed-gradient variants (EOT over noise) cost tens of PGD runs each: left out on a CPU budget
    p.add_argument("--audit-args", default="--steps 20 --apgd-steps 25 --square-queries 500 --no-autoattack "
                                           "--skip-attacks smoothed-eps10 smoothed-eps100 smoothed-k1",
                   help="the audit's attack strength (one string of flags)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--data-root", default=None)
    p.add_argument("--quick", action="store_true",
                   help="smoke-test sizes: 20 images, lams 1 0.5, one budget (4/255), PGD-2, K 1, tiny paradigm 2 "
                        "and audit")
    p.add_argument("--report-only", action="store_true", help="only (re)write OUT/README.md from what is there")
    args = p.parse_args(argv)
    return _quick(args) if args.quick else args


def _quick(args: argparse.Namespace) -> argparse.Namespace:
    """Sizes that run end to end in minutes on one core (a smoke test, not a result)."""
    args.lams, args.budgets, args.choice_budget, args.K, args.steps = [1.0, 0.5], [0, 4], 4, 1, 2
    args.val_n = args.test_n = 20
    args.p2_epochs, args.p2_subset, args.p2_batch, args.p2_val_size, args.audit_n = 1, 32, 16, 16, 8
    args.audit_args = ("--steps 2 --apgd-steps 2 --square-queries 10 --no-autoattack --skip-attacks cw spsa "
                       "smoothed-eps10 smoothed-eps100 smoothed-k1")
    return args


# ------------------------------------------------------------------------------------------------ running
def nrpm(args: argparse.Namespace, argv: list[str], folder: Path) -> None:
    """Run ``nrpm argv`` into ``folder`` unless it is marked done; mark it done on success (exit 1 of an audit,
    a failed check, is a finished audit too)."""
    marker = folder / ".done"
    if marker.exists():
        print(f"[skip] {folder} (done)", flush=True)
        return
    folder.mkdir(parents=True, exist_ok=True)
    common = ["--threads", str(args.threads), "--no-progress"]
    if args.data_root:
        common += ["--data-root", args.data_root]
    command = [sys.executable, "-m", "nrpm.cli", *argv, *common]
    print(f"[run] {' '.join(command[1:])}", flush=True)
    start = time.time()
    code = subprocess.run(command, env={**os.environ, "OMP_NUM_THREADS": str(args.threads)}).returncode
    if code not in ((0, 1) if argv[0] == "audit" else (0,)):
        raise SystemExit(f"step {folder} failed with exit status {code}")
    (folder / "command.txt").write_text(" ".join(["nrpm", *argv, *common]) + "\n")
    marker.write_text(f"{time.time() - start:.0f} s\n")


def model_args(args) -> list[str]:
    return ["--model", MODEL, "--checkpoint", str(args.checkpoint)]


def budget_args(args) -> list[str]:
    return ["--budgets", *map(_fmt, args.budgets), "--budget-unit", "255"]


def pgd_args(args) -> list[str]:
    return ["--attack", "pgd", "--attack-arg", f"steps={args.steps}", *budget_args(args),
            "--batch-size", str(args.batch_size)]


def _fmt(x: float) -> str:
    return f"{x:g}"


def run_validation(args) -> None:
    for variant, types in VARIANTS.items():
        nrpm(args, ["eval", *model_args(args), "--layer-types", *types, "--K", str(args.K), "--lam",
                    *map(_fmt, args.lams), *pgd_args(args), "--split", "val", "--n-samples", str(args.val_n),
                    "--out", str(args.out / "val" / variant)], args.out / "val" / variant)


def choose(args) -> dict:
    """{variant: {lam, clean, robust, plain_clean, plain_robust}} by the rule of the module docstring."""
    path = args.out / "choice.json"
    choices = {}
    for variant in VARIANTS:
        cells = transformers_report.cells(args.out / "val" / variant / "results.json")
        choices[variant] = choose_lam(cells, args.choice_budget / 255, args.max_drop, args.fixed_lam)
    rule = (f"highest PGD accuracy at {_fmt(args.choice_budget)}/255 among lams whose clean accuracy is at most "
            f"{_fmt(args.max_drop)} points below lam 1's; ties to the larger lam")
    if args.fixed_lam is not None:
        rule = f"none: lam {_fmt(args.fixed_lam)} fixed by --fixed-lam (a smoke test, not a choice)"
    record = {"rule": rule,
              "split": f"val (last {args.val_n} training images)", "choices": choices}
    path.write_text(json.dumps(record, indent=2) + "\n")
    return choices


def choose_lam(cells: dict, budget: float, max_drop: float, fixed: float | None = None) -> dict:
    """The rule on one variant's {(lam, budget): accuracy %} grid (``fixed``: that lam, no rule)."""
    lams = sorted({lam for lam, _ in cells}, reverse=True)
    plain_clean = cells[(1.0, 0.0)]
    allowed = [lam for lam in lams if cells[(lam, 0.0)] >= plain_clean - max_drop]
    at = transformers_report.nearest_budget(cells, budget)
    best = fixed if fixed is not None else max(allowed, key=lambda lam: (cells[(lam, at)], lam))
    return {"lam": best, "clean": cells[(best, 0.0)], "robust": cells[(best, at)], "plain_clean": plain_clean,
            "plain_robust": cells[(1.0, at)], "budget": at}


def run_test(args, choices: dict) -> None:
    test_args = [*pgd_args(args), "--n-samples", str(args.test_n)]
    nrpm(args, ["eval", *model_args(args), "--lam", "1", *test_args, "--out", str(args.out / "test" / "plain")],
         args.out / "test" / "plain")
    for variant, choice in choices.items():
        if choice["lam"] == 1.0:
            continue  # the plain ViT, already evaluated
        folder = args.out / "test" / variant
        nrpm(args, ["eval", *model_args(args), "--layer-types", *VARIANTS[variant], "--K", str(args.K), "--lam",
                    _fmt(choice["lam"]), *test_args, "--out", str(folder)], folder)


def run_paradigm2(args) -> None:
    """lam learnt per layer on PGD examples (half clean loss, as the CIFAR paradigm-2 recipe of
    scripts/reproduce_paradigm23.sh), weights frozen; tested like the paradigm-1 settings."""
    folder = args.out / "paradigm2"
    nrpm(args, ["reprogram", "--paradigm", "2", *model_args(args), "--layer-types", *VARIANTS["both"],
                "--K", str(args.K), "--lam", "0.5", "--attack", "pgd", "--attack-eps", _fmt(args.choice_budget),
                "--attack-steps", "3", "--budget-unit", "255", "--clean-weight", "0.5",
                "--epochs", str(args.p2_epochs), "--train-subset", str(args.p2_subset), "--batch-size", str(args.p2_batch),
                "--val-size", str(args.p2_val_size), "--val-attack", "none", "--optimizer", "adam", "--lr", "0.01",
                "--test-attack", "pgd", "--test-attack-arg", f"steps={args.steps}",
                "--test-budgets", *map(_fmt, args.budgets), "--test-samples", str(args.test_n),
                "--resume", "auto", "--out", str(folder)], folder)


def run_audits(args, choices: dict) -> None:
    audited = {"plain": (VARIANTS["both"], 1.0)}  # lam 1: the original ViT, whatever is reprogrammed
    audited.update({v: (VARIANTS[v], c["lam"]) for v, c in choices.items() if c["lam"] != 1.0})
    for name, (types, lam) in audited.items():
        folder = args.out / "audit" / name
        nrpm(args, ["audit", *model_args(args), "--layer-types", *types, "--K", str(args.K), "--lam", _fmt(lam),
                    "--n-samples", str(args.audit_n), *_attacked_budget_args(args),
                    *args.audit_args.split(), "--out", str(folder)], folder)


def study_settings(args) -> dict:
    """The settings that produce the numbers (saved by a study run; a --report-only call reuses them, so the
    report never shows the report call's own defaults as the study's)."""
    path = args.out / SETTINGS_FILE
    if args.report_only:
        return json.loads(path.read_text()) if path.exists() else {"note": "no study.json: settings unknown"}
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != "report_only"}
    text = json.dumps(settings, indent=1) + "\n"
    atomic_write(path, lambda f: f.write(text), binary=False)
    return settings


def _attacked_budget_args(args) -> list[str]:
    """Every attacked budget of the study: a setting's gain can be at any of them (at 2/255 here), and a gain is
    only audited where the audit ran."""
    return ["--budgets", *[_fmt(b) for b in args.budgets if b > 0], "--budget-unit", "255"]


def main(argv=None) -> None:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    settings = study_settings(args)
    if not args.report_only:
        run_validation(args)
        choices = choose(args)
        run_test(args, choices)
        run_paradigm2(args)
        run_audits(args, choices)
    transformers_report.write(args.out, settings)
    print(f"report: {args.out / 'README.md'}")


if __name__ == "__main__":
    main()
