"""Tables of the estimator study: results/estimators/TABLES.md from each model's cells.json, chosen.json and
audit folders (called by ``scripts/estimator_study.py report``)."""

from __future__ import annotations

import json
from pathlib import Path

from nrpm.reports import atomic_write_text, format_budget


def _pct(cell) -> str:
    return "…" if cell is None else f"{100 * cell['accuracy']:.1f}"


def _worst(data: dict, model: str, budgets) -> str:
    wc = {round(w["budget"], 9): w["accuracy"] for w in data["worst_case"].get(model, [])}
    return " / ".join(f"{100 * wc[round(b, 9)]:.0f}" if round(b, 9) in wc else "…" for b in budgets)


def _audit_row(folder: Path, budgets, unit) -> tuple[str, str]:
    path = folder / "audit.json"
    if not path.exists():
        return "not run", ""
    data = json.loads(path.read_text())
    worst = _worst(data, "nrpm", budgets)
    failed = [str(c["id"]) for c in data["checks"] if c["verdict"] == "fail"]
    verdict = data["verdict"].upper() + (f" (checks {', '.join(failed)})" if failed else "")
    return worst, verdict


def _model_section(folder: Path, proto: dict, config_label) -> list[str]:
    cells = json.loads((folder / "cells.json").read_text())["cells"]
    selection = json.loads((folder / "chosen.json").read_text()) if (folder / "chosen.json").exists() else {}
    chosen = selection.get("chosen", {})
    unit, budgets, sel = proto["unit"], proto["budgets"], proto["select"]
    head = (["configuration", "held-out clean", f"held-out PGD {format_budget(sel, unit)}", "test clean"]
            + [f"test PGD {format_budget(b, unit)}" for b in budgets]
            + [f"audit worst case {' / '.join(format_budget(b, unit) for b in budgets)}", "audit verdict"])
    lines = [f"## {folder.name}", "",
             f"K={proto['K']}, eps={proto['eps']:g}, PGD-{proto['steps']}; held-out = last {proto['val_n']} "
             f"training images, test = first {proto['test_n']} test images, audit = first {proto['audit_n']} "
             "(quick protocol). Accuracy in %. Rows in bold are the configurations chosen on held-out data.", "",
             "| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    chosen_labels = {c["label"] for c in chosen.values()}
    # every audit attacks the plain model too, on the same images: the first finished one gives its row
    plain_audit = next((path for path in (audit_folder(folder, label) / "audit.json" for label in sorted(chosen_labels))
                        if path.exists()), None)
    if chosen:
        lines[2] += (f" Chosen: the best held-out PGD within {selection['max_clean_drop_points']:g} points of the"
                     " plain model's held-out clean accuracy.")
    labels = sorted({k.split("|")[1] for k in cells if k.startswith("val|")},
                    key=lambda s: (s != "plain", s not in chosen_labels, s))
    for label in labels:
        row = [f"**{label}**" if label in chosen_labels or label == "plain" else label,
               _pct(cells.get(f"val|{label}|clean")), _pct(cells.get(f"val|{label}|pgd|{sel:.6g}"))]
        row += [_pct(cells.get(f"test|{label}|clean"))] + [_pct(cells.get(f"test|{label}|pgd|{b:.6g}"))
                                                            for b in budgets]
        if label in chosen_labels:
            row += list(_audit_row(audit_folder(folder, label), budgets, unit))
        elif label == "plain" and plain_audit is not None:
            row += [_worst(json.loads(plain_audit.read_text()), "plain", budgets) + " (in every audit)", ""]
        else:
            row += ["", ""]
        lines.append("| " + " | ".join(row) + " |")
    return lines + [""]


def audit_folder(folder: Path, label: str) -> Path:
    """The audit folder of a configuration in a model's results folder (scripts/estimator_study.py writes it)."""
    return folder / ("audit_" + label.replace(" ", "_").replace("(", "_").replace(")", "").replace(",", "_")
                     .replace("=", ""))


def write_report(out: Path, protocols: dict, config_label) -> None:
    lines = ["# Estimator study: tables", "",
             "Produced by `.venv/bin/python scripts/estimator_study.py run mnist|cifar` then "
             "`... report` (see the script's docstring for the protocol). Plain = the paper's checkpoint "
             "unchanged (lam = 1).", ""]
    for model, proto in protocols.items():
        if (out / model / "cells.json").exists():
            lines += _model_section(out / model, proto, config_label)
    atomic_write_text(out / "TABLES.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
