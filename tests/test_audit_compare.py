"""Tests for nrpm.audit.compare and ``nrpm audit-compare``: two finished audits' worst cases compared sample by
sample, with the paired interval and McNemar's p-value; every folder that cannot be compared is refused in one
line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cli_helpers import assert_usage_error, run
from nrpm.audit.compare import load_side, paired_difference

REPO = Path(__file__).resolve().parents[1]
B8 = 8 / 255


def test_paired_difference_counts_interval_and_exact_p():
    a = [True] * 12 + [False] * 1 + [True] * 5 + [False] * 82
    b = [False] * 12 + [True] * 1 + [True] * 5 + [False] * 82
    d = paired_difference(a, b)
    assert (d.n, d.a, d.b, d.a_only, d.b_only) == (100, 17, 6, 12, 1)
    assert d.difference == pytest.approx(0.11)
    # Agresti-Min by hand: n' = 102, p_a = 12.5/102, p_b = 1.5/102
    pa, pb = 12.5 / 102, 1.5 / 102
    half = 1.959963984540054 * ((pa + pb - (pa - pb) ** 2) / 102) ** 0.5
    assert d.interval == pytest.approx((pa - pb - half, pa - pb + half))
    assert d.p_value == pytest.approx(2 * 14 / 2 ** 13)  # exact binomial: P(X <= 1 or X >= 12), X ~ B(13, 1/2)


def test_no_disagreement_gives_p_one_and_an_interval_around_zero():
    d = paired_difference([True, False] * 50, [True, False] * 50)
    lo, hi = d.interval
    assert d.p_value == 1.0 and d.difference == 0 and lo < 0 < hi


def test_masks_of_different_lengths_are_refused():
    with pytest.raises(ValueError, match="same non-zero length"):
        paired_difference([True], [True, False])


def _audit(folder: Path, masks: dict[str, dict[str, str]], data="d1", budgets=(B8,)):
    """A minimal finished audit: cache.json cells {tag: {attack: mask}} at every budget, audit.json's worst case
    their AND."""
    folder.mkdir(parents=True)
    cells, worst = {}, {}
    for tag, attacks in masks.items():
        for b in budgets:
            for attack, mask in attacks.items():
                cells[f"{tag}|{attack}|seed=0|{b:.10g}"] = {"mask": mask, "seconds": 1.0}
            n = len(next(iter(attacks.values())))
            robust = sum(all(m[i] == "1" for m in attacks.values()) for i in range(n))
            worst.setdefault(tag, []).append({"budget": b, "accuracy": robust / n})
    n = len(next(iter(next(iter(masks.values())).values())))
    settings = {"title": "toy", "n": n, "budget_unit": 255.0, "clean_accuracy": {t: 0.9 for t in masks},
                "model_labels": {"nrpm": "NRPM lam=0.9 K=1", "plain": "plain (lam=1)"}}
    (folder / "cache.json").write_text(json.dumps({"format": "nrpm-audit-cache/1", "fingerprint": {"data": data},
                                                   "cells": cells}))
    (folder / "audit.json").write_text(json.dumps({"format": "nrpm-audit/1", "settings": settings,
                                                   "worst_case": worst}))
    return folder


def test_one_folder_compares_its_nrpm_with_its_plain_rows(tmp_path, capsys):
    folder = _audit(tmp_path / "run", {"nrpm": {"pgd": "1111100000", "square": "1111000000"},
                                       "plain": {"pgd": "1100000000", "square": "1110000000"}})
    code, out, err = run(["audit-compare", str(folder), "--out", str(tmp_path / "cmp.md")], capsys)
    assert code == 0, err
    # worst cases: nrpm 1111000000 (40 %), plain 1100000000 (20 %): 2 samples only under A, none only under B
    assert "| 8/255 | 40.0 ± " in out and "| +20.0 | [" in out and "| 2 | 0 | 0.5 |" in out
    assert (tmp_path / "cmp.md").read_text() == out


def test_two_folders_on_the_same_images_compare_across_folders(tmp_path, capsys):
    base = _audit(tmp_path / "p1", {"nrpm": {"pgd": "1111000000"}, "plain": {"pgd": "1000000000"}})
    other = _audit(tmp_path / "mcp", {"nrpm": {"pgd": "0111100000"}})
    code, out, err = run(["audit-compare", str(other), f"{base}:plain"], capsys)
    assert code == 0, err
    assert "mcp:nrpm vs p1:plain" in out and "| +30.0 |" in out and "| 4 | 1 |" in out
    assert load_side(f"{other}:nrpm").worst_case[B8] == [c == "1" for c in "0111100000"]


@pytest.mark.parametrize("case, fragments", [
    ("unfinished", ["not finished", "rerun its `nrpm audit` command"]),
    ("no_plain", ["has no 'plain' rows", "FOLDER:plain"]),
    ("other_images", ["audited different images", "needs the same images"]),
    ("mismatch", ["cache.json gives 1 robust", "audit.json reports 2", "rerun the audit"]),
    ("no_common_budget", ["share no budget"]),
    ("not_an_audit", ["not an audit folder", "nrpm audit --out FOLDER"]),
    ("damaged", ["is damaged", "KeyError", "rerun its `nrpm audit` command"]),
    ("short_mask", ["has 3 samples, the audit 4", "rerun the audit"]),
])
def test_folders_that_cannot_be_compared_are_refused_in_one_line(tmp_path, capsys, case, fragments):
    a = _audit(tmp_path / "a", {"nrpm": {"pgd": "1100"}, "plain": {"pgd": "1000"}})
    if case == "unfinished":
        (a / "audit.json").unlink()
        argv = [str(a)]
    elif case == "not_an_audit":
        argv = [str(tmp_path / "nowhere")]
    elif case == "no_plain":
        argv = [str(_audit(tmp_path / "b", {"nrpm": {"pgd": "1100"}}))]
    elif case == "other_images":
        argv = [str(a), f"{_audit(tmp_path / 'b', {'plain': {'pgd': '1000'}}, data='d2')}:plain"]
    elif case == "mismatch":
        cache = json.loads((a / "cache.json").read_text())
        cache["cells"][f"nrpm|square|seed=0|{B8:.10g}"] = {"mask": "1000", "seconds": 1.0}
        (a / "cache.json").write_text(json.dumps(cache))
        argv = [str(a)]
    elif case in ("damaged", "short_mask"):
        cache = json.loads((a / "cache.json").read_text())
        cell = cache["cells"][f"nrpm|pgd|seed=0|{B8:.10g}"]
        if case == "damaged":
            del cell["mask"]
        else:
            cell["mask"] = "110"
        (a / "cache.json").write_text(json.dumps(cache))
        argv = [str(a)]
    else:
        argv = [str(a), f"{_audit(tmp_path / 'b', {'plain': {'pgd': '1000'}}, budgets=(16 / 255,))}:plain"]
    code, _, err = run(["audit-compare", *argv], capsys)
    assert_usage_error(code, err, "audit-compare", *fragments)


def test_the_committed_resnet_audit_rebuilds_its_worst_case_from_its_cache():
    """The 100-image re-audit: the per-sample worst cases rebuilt from cache.json give audit.json's numbers (else
    load_side refuses), and the 16/255 gain over the plain model is outside the paired noise."""
    folder = REPO / "results/audit/resnet18_narrow_p1_lam0.9_K1_n100_reaudit"
    nrpm, plain = load_side(str(folder)), load_side(f"{folder}:plain")
    d = paired_difference(nrpm.worst_case[16 / 255], plain.worst_case[16 / 255])
    assert (d.a, d.b) == (17, 6) and d.interval[0] > 0 and d.p_value < 0.01
