"""Put the paper's paradigm-2/3 numbers next to ours; writes results/paradigm23/COMPARISON.md.

Reads the run.json files written by scripts/reproduce_paradigm23.sh (their final test tables and learned lam)
and, for the original model's row, the paradigm-1 tables of scripts/reproduce_paradigm1.sh. Missing runs are
reported as missing, never filled in.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parents[1] / "results"
OUT = RESULTS / "paradigm23"

MNIST_BUDGETS = [0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3]
CIFAR_BUDGETS = [0, 8 / 255, 16 / 255, 32 / 255]
# Published numbers (accuracy %) and lam, as quoted in the Paradigms issue.
PAPER = {
    ("mlp3", 2): ([81.5, 75.3, 61.2, 44.7, 33.7, 26.0, 20.1], (0.459, 0.033, 0.131)),
    ("mlp3", 3): ([86.1, 81.7, 75.8, 66.7, 58.7, 50.1, 39.8], (0.925, 0.119, 0.325)),
    ("resnet18_narrow", 2): ([69.08, 44.09, 24.94, 12.63], None),
    ("resnet18_narrow", 3): ([71.79, 50.89, 39.58, 30.03], None),
}


def read(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def cells_row(cells: list | None, budgets, lam: float | None = None) -> tuple[str, int | None]:
    """One markdown row of accuracies (%) per budget from result cells (those of ``lam`` when given), and the
    sample count; "missing" when there are no cells, "…" for a budget without one."""
    if not cells:
        return " | ".join("missing" for _ in budgets), None
    if lam is not None:
        cells = [c for c in cells if round(c["lam"], 6) == round(lam, 6)]
    acc = {round(c["budget"], 6): 100 * c["accuracy"] for c in cells}
    vals = [acc.get(round(b, 6)) for b in budgets]
    return " | ".join("…" if v is None else f"{v:.1f}" for v in vals), cells[0]["n"] if cells else None


def test_row(run: dict | None, label: str, budgets) -> tuple[str, int | None]:
    """A final test table of a paradigm-2/3 run."""
    return cells_row(((run or {}).get("tests") or {}).get(label, {}).get("cells"), budgets)


def grid_row(path: Path, lam: float, budgets) -> tuple[str, int | None]:
    """The ``lam`` row of an `nrpm eval` results.json."""
    res = read(path)
    return cells_row(res["cells"] if res else None, budgets, lam)


def p1_row(run: str, lam: float, budgets) -> str:
    return grid_row(RESULTS / "paradigm1" / run / "results.json", lam, budgets)[0]


def lam_text(run: dict | None) -> str:
    if not run or not run.get("lam"):
        return "–"
    return ", ".join(f"{v:.3f}" for v in run["lam"].values())


def run_facts(run: dict | None) -> str:
    if not run:
        return "not run"
    c = run["config"]
    subset = f" x {c['train_subset']} images" if c.get("train_subset") else " (full training set)"
    return (f"{run['epochs_done']} epoch(s){subset}, {run['train_seconds'] / 60:.1f} min of training, "
            f"attack {c['attack']} eps {c['attack_eps']:.4g} steps {c['attack_steps']}, clean weight "
            f"{c.get('clean_weight', 0)}, {c['optimizer']} lr {c['lr']:g}"
            + (f" (lam lr {c.get('lam_lr') or c['lr']:g})" if c.get("paradigm") else ""))


def mnist_section(model: str) -> list[str]:
    header = ["clean"] + [f"{b:g}" for b in MNIST_BUDGETS[1:]]
    lines = [f"## MNIST {model}", ""]
    runs = {p: read(OUT / f"{model}_p{p}" / "run.json") for p in (2, 3)}
    for p, run in runs.items():
        lines.append(f"* paradigm {p}: {run_facts(run)}")
    lines.append("")
    for attack, label, p1 in (("FGSM", "fgsm", "fgsm_K1"), ("PGD-40", "pgd_steps40", "pgd40_K1")):
        lines += [f"### {attack}", "", "| model | source | lam | n | " + " | ".join(header) + " |",
                  "|---|---|---|---|" + "---|" * len(header)]
        lines.append(f"| original (lam 1) | ours, paradigm 1 | 1 | 1000 | {p1_row(f'{model}_{p1}', 1.0, MNIST_BUDGETS)} |")
        lines.append(f"| paradigm 1 lam 0.5 | ours | 0.5 | 1000 | {p1_row(f'{model}_{p1}', 0.5, MNIST_BUDGETS)} |")
        for p, run in runs.items():
            paper = PAPER.get((model, p))
            if paper and attack == "FGSM":
                lam = ", ".join(f"{v:g}" for v in paper[1])
                lines.append(f"| paradigm {p} | paper | {lam} | ? | " + " | ".join(f"{v:g}" for v in paper[0]) + " |")
            row, n = test_row(run, label, MNIST_BUDGETS)
            lines.append(f"| paradigm {p} | ours | {lam_text(run)} | {n or '–'} | {row} |")
        lines.append("")
    return lines


def cifar_section() -> list[str]:
    header = ["clean", "8/255", "16/255", "32/255"]
    label = "pgd_alpha0.00784313725490196_steps20"
    lines = ["## CIFAR-10 resnet18_narrow, PGD-20 (step 2/255, random start)", ""]
    runs = {name: read(OUT / f"resnet18_narrow_{name}" / "run.json") for name in ("p2", "p3", "at_baseline")}
    original, n_original = grid_row(OUT / "resnet18_narrow_original" / "results.json", 1.0, CIFAR_BUDGETS)
    for name, run in runs.items():
        lines.append(f"* {name}: {run_facts(run)}")
    lines += ["", "| model | source | n | " + " | ".join(header) + " |", "|---|---|---|" + "---|" * len(header),
              f"| original (lam 1) | ours | {n_original or '–'} | {original} |"]
    for name, title, p in (("p2", "paradigm 2", 2), ("p3", "paradigm 3", 3), ("at_baseline", "plain PGD-AT", None)):
        if p is not None:
            lines.append(f"| {title} | paper | ? | " + " | ".join(f"{v:g}" for v in PAPER[("resnet18_narrow", p)][0])
                         + " |")
        row, n = test_row(runs[name], label, CIFAR_BUDGETS)
        lines.append(f"| {title} | ours | {n or '–'} | {row} |")
    lines.append("")
    for name in ("p2", "p3"):
        lines.append(f"Learned lam ({name}): {lam_text(runs[name])}")
    return lines + [""]


def main() -> int:
    text = ["# Paradigms 2 and 3 next to the paper", "",
            "Generated by `scripts/compare_paradigm23.py` from `results/paradigm23/*/run.json` (runs of "
            "`scripts/reproduce_paradigm23.sh`) and the paradigm-1 tables. Accuracy in %, first n test images; "
            "`?` = the paper does not say. These are white-box first-order numbers; see `results/audit/` for what "
            "stronger attacks leave.", ""]
    text += mnist_section("mlp3") + mnist_section("lenet") + cifar_section()
    tmp = OUT / "COMPARISON.md.tmp"
    OUT.mkdir(parents=True, exist_ok=True)
    tmp.write_text("\n".join(text), encoding="utf-8")
    tmp.replace(OUT / "COMPARISON.md")
    print("\n".join(text))
    return 0


if __name__ == "__main__":
    sys.exit(main())
