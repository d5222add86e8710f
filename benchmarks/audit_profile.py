"""Where an `nrpm audit` spends its time: seconds per (model, attack, budget) cell, from the ``seconds`` every cell
records in audit.json (and cache.json), with how many samples each cell attacked and what it ran on.

    .venv/bin/python benchmarks/audit_profile.py results/audit/lenet_p1_lam0.8_K1_n100_reaudit \\
        --out results/audit_profile            # writes results/audit_profile.md and .json

Each argument is an audit's --out folder (or its audit.json / cache.json). A cell read from an earlier run's cache
keeps the seconds it took then (the audit reuses it without running it again).
"""
from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

from nrpm.audit.cells import parse_cache_key


def write_report(out: str, text: str, data) -> None:
    """OUT.md (the markdown) and OUT.json (the numbers behind it): how every audit benchmark saves its result."""
    Path(out + ".md").write_text(text)
    Path(out + ".json").write_text(json.dumps(data, indent=1))


def load_cells(folder: Path) -> list[dict]:
    """The cells of one audit: audit.json's (label, ran_on, attacked when recorded), else cache.json's keys."""
    folder = Path(folder)
    if folder.is_file():
        folder, name = folder.parent, folder.name
    else:
        name = "audit.json" if (folder / "audit.json").exists() else "cache.json"
    data = json.loads((folder / name).read_text())
    if name == "audit.json":
        return [dict(c) for c in data["cells"]]
    cells = []
    for key, cell in data["cells"].items():
        tag, attack, _params, budget, on = parse_cache_key(key)
        cells.append({"model": tag, "attack": attack, "label": attack, "budget": float(budget),
                      "seconds": cell["seconds"], "correct": cell["mask"].count("1"), "n": len(cell["mask"]),
                      "ran_on": f"survivors of {on}" if on else "clean-correct"})
    return cells


def profile(cells: list[dict]) -> dict:
    """{"total": s, "rows": [{model, attack, budgets: {budget: {seconds, attacked, correct, ran_on}}, seconds}]}"""
    rows: dict[tuple, dict] = defaultdict(lambda: {"budgets": {}, "seconds": 0.0})
    for c in cells:
        row = rows[(c["model"], c["attack"])]
        row["budgets"][f"{c['budget']:.6g}"] = {k: c.get(k) for k in ("seconds", "attacked", "correct", "ran_on")}
        row["seconds"] += c["seconds"]
    total = sum(r["seconds"] for r in rows.values())
    ordered = sorted(rows.items(), key=lambda kv: -kv[1]["seconds"])
    return {"total": round(total, 2),
            "rows": [{"model": m, "attack": a, **r, "seconds": round(r["seconds"], 2),
                      "share": round(r["seconds"] / total, 4) if total else 0.0} for (m, a), r in ordered]}


def markdown(name: str, prof: dict) -> str:
    budgets = sorted({b for r in prof["rows"] for b in r["budgets"]}, key=float)
    head = "| model | attack | " + " | ".join(f"@{b}: s (attacked, ran on)" for b in budgets) + " | total s | share |"
    out = [f"### {name}: {prof['total']:.0f} s of cells", "", head, "|" + "---|" * (len(budgets) + 4)]
    for r in prof["rows"]:
        cols = []
        for b in budgets:
            cell = r["budgets"].get(b)
            if cell is None:
                cols.append("")
                continue
            on = cell.get("ran_on") or "clean-correct"
            attacked = "" if cell.get("attacked") is None else f"{cell['attacked']}, "
            cols.append(f"{cell['seconds']:.1f} ({attacked}{on})")
        out.append(f"| {r['model']} | {r['attack']} | " + " | ".join(cols) + f" | {r['seconds']:.1f} | "
                   f"{100 * r['share']:.1f}% |")
    return "\n".join(out) + "\n"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folders", nargs="+", help="audit --out folders (or audit.json / cache.json files)")
    p.add_argument("--out", default=None, help="write OUT.md and OUT.json (default: print the markdown)")
    args = p.parse_args(argv)
    profiles = {str(f): profile(load_cells(Path(f))) for f in args.folders}
    text = "# Audit profile (seconds per cell)\n\n" + "\n".join(markdown(n, pr) for n, pr in profiles.items())
    if args.out:
        write_report(args.out, text, profiles)
    print(text)


if __name__ == "__main__":
    main()
