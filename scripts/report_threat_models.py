"""results/threat_models/TABLES.md from the runs of scripts/reproduce_threat_models.sh (corruptions, certified
accuracy, the ResNet table): `.venv/bin/python scripts/report_threat_models.py`."""

from __future__ import annotations

import json
from pathlib import Path

from nrpm.certify import certified_accuracy
from nrpm.reports import atomic_write_text

OUT = Path(__file__).resolve().parents[1] / "results" / "threat_models"
KINDS = ["gaussian_blur", "defocus_blur", "impulse_noise", "shot_noise", "gaussian_noise", "contrast", "brightness"]
RADII = (0.0, 0.25, 0.5, 0.75, 1.0)
TABLE_COLUMNS = [("pgd20", 8 / 255, "PGD-20"), ("fgsm", 8 / 255, "FGSM"), ("cw", 8 / 255, "C&W (PGD-20)"),
                 ("autoattack", 8 / 255, "AutoAttack"), ("deepfool_l2", 0.5, "DeepFool L2 0.5"),
                 ("spsa", 8 / 255, "SPSA")]
TABLE_ROWS = [("original", "original (lam 1)"), ("p1_lam0.9", "paradigm 1, lam 0.9"),
              ("p2", "paradigm 2 (results/paradigm23)"), ("p3", "paradigm 3 (results/paradigm23)")]


def _cells(path: Path) -> list[dict]:
    return json.loads(path.read_text())["cells"] if path.exists() else []


def corruption_table() -> list[str]:
    lines = ["## Common corruptions, narrow ResNet-18 (first 500 CIFAR-10 test images)", "",
             "| corruption | model | clean | s1 | s2 | s3 | s4 | s5 |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for kind in KINDS:
        by_lam: dict = {}
        for c in _cells(OUT / "corruptions" / kind / "results.json"):
            by_lam.setdefault(c["lam"], {})[c["budget"]] = c["accuracy"]
        for lam, label in ((1.0, "LPM (lam 1)"), (0.9, "NRPM lam 0.9")):
            if lam in by_lam:
                row = by_lam[lam]
                lines.append(f"| {kind} | {label} | " + " | ".join(f"{100 * row[b]:.1f}" for b in sorted(row)) + " |")
    return lines + [""]


def certify_table() -> list[str]:
    lines = ["## Certified accuracy (%) by randomized smoothing (n0 = 100, n = 1000, alpha = 0.001)", "",
             "| model | images | lam | sigma | abstain | " + " | ".join(f"r={r:g}" for r in RADII) + " |",
             "|---|---:|---:|---:|---:|" + "---:|" * len(RADII)]
    for model in ("mlp3", "lenet", "resnet18_narrow"):
        path = OUT / "certify" / model / "results.json"
        if not path.exists():
            continue
        for cell in json.loads(path.read_text())["cells"].values():
            samples = cell["samples"]
            abstain = sum(s["prediction"] == -1 for s in samples) / len(samples)
            accs = " | ".join(f"{100 * certified_accuracy(samples, r):.0f}" for r in RADII)
            lines.append(f"| {model} | {len(samples)} | {cell['lam']:g} | {cell['sigma']:g} | {100 * abstain:.0f} | "
                         f"{accs} |")
    return lines + [""]


def _accuracy(folder: Path, budget: float):
    for c in _cells(folder / "results.json"):
        if abs(c["budget"] - budget) < 1e-9:
            return c["accuracy"]
    return None


def resnet_table() -> list[str]:
    head = ["model", "clean"] + [label for _, _, label in TABLE_COLUMNS]
    lines = ["## The paper's ResNet table columns, narrow ResNet-18, Linf 8/255 (first 100 CIFAR-10 test images)", "",
             "| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for name, label in TABLE_ROWS:
        base = OUT / "resnet_table" / name
        values = [_accuracy(base / "pgd20", 0.0)] + [_accuracy(base / run, b) for run, b, _ in TABLE_COLUMNS]
        lines.append(f"| {label} | " + " | ".join("…" if v is None else f"{100 * v:.0f}" for v in values) + " |")
    return lines + [""]


def main() -> None:
    lines = ["# Threat-model tables", "", "Written by `scripts/report_threat_models.py` from the runs of "
             "`scripts/reproduce_threat_models.sh`; '…' = not run (yet). Accuracy in %.", ""]
    lines += corruption_table() + certify_table() + resnet_table()
    atomic_write_text(OUT / "TABLES.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
