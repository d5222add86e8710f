"""Print the lam with the highest robust accuracy at the largest budget of an `nrpm eval` results.json.

Used to choose lam on held-out (val split) data; ties go to the larger lam (closer to the original model).
"""
import json
import sys


def best_lam(results: dict) -> float:
    cells = results["cells"]
    top_budget = max(c["budget"] for c in cells)
    scored = [(c["accuracy"], c["lam"]) for c in cells if c["budget"] == top_budget]
    return max(scored)[1]


if __name__ == "__main__":
    with open(sys.argv[1], encoding="utf-8") as f:
        print(f"{best_lam(json.load(f)):g}")
