"""A reduced audit protocol is labelled as one: in the verdict line (stdout, audit.md), audit.json's ``protocol``,
``nrpm audit-table`` and the RobustBench entry; the attack count behind a worst case is one number everywhere; an
audit.json saved before the protocol was recorded still collates, as 'protocol unknown'."""

import json
import re
import shutil
from pathlib import Path

import pytest
from scipy import stats

from nrpm import audit as AU
from nrpm.audit import protocol as P
from nrpm.cli.audit import robustbench_entry

from cli_helpers import assert_usage_error, run

pytestmark = pytest.mark.usefixtures("single_thread")  # tiny models (conftest.py)

REPO = Path(__file__).resolve().parents[1]
OLD_REPORT = REPO / "results" / "audit" / "resnet18_narrow_p1_lam0.9_K1_n100_quick" / "audit.json"


def _full_settings(**changes) -> dict:
    """The settings of a full-protocol audit of an MNIST model on 100 samples, with ``changes``."""
    config = AU.AuditConfig(budgets=[0.1])
    settings = {"n": 100, "dataset": "mnist", "steps": 40, "restarts": 1, "apgd_steps": 100,
                "square_queries": 5000, "spsa_steps": 50, "spsa_samples": 64, "skip_attacks": [], "autoattack": True,
                "tolerances": vars(config.tolerances)}
    return {**settings, **changes}


# ------------------------------------------------------------------------------------------ the decision
def test_full_protocol_and_each_reduction_named():
    full = P.assess_protocol(_full_settings())
    assert full["full"] and full["reductions"] == [] and P.describe(full) == "full protocol, 100 samples"
    assert P.verdict_text("fail", full) == "FAIL (full protocol, 100 samples)"
    assert P.assess_protocol(_full_settings(dataset="cifar10", steps=20))["full"]  # CIFAR-10's protocol: 20 steps
    assert P.assess_protocol(_full_settings(n=5000, steps=80))["full"]  # more than the protocol is no reduction

    quick = P.assess_protocol(_full_settings(n=20, steps=5, autoattack=False, skip_attacks=["spsa"], spsa_steps=2,
                                             apgd_steps=10))
    assert not quick["full"]
    assert quick["reductions"] == ["no AutoAttack", "skipped spsa", "5 PGD steps instead of 40",
                                   "10 APGD steps instead of 100", "20 samples (< 100)"]  # SPSA's steps: skipped
    assert P.verdict_text("pass", quick) == ("PASS (reduced protocol: no AutoAttack, skipped spsa, 5 PGD steps "
                                             "instead of 40, 10 APGD steps instead of 100, 20 samples (< 100)) "
                                             "— not a full audit")
    loose = P.assess_protocol(_full_settings(tolerances={**_full_settings()["tolerances"], "transfer": 0.1}))
    assert loose["reductions"] == ["looser tolerances (transfer)"]
    assert P.describe(None).startswith("protocol unknown")


def test_the_interval_is_wilsons():
    for correct, n in ((50, 100), (3, 20), (0, 20), (100, 100)):
        low, high = stats.binomtest(correct, n).proportion_ci(0.95, method="wilson")
        assert P.wilson_half_width(correct / n, n) == pytest.approx((high - low) / 2, rel=1e-6)
    assert P.assess_protocol(_full_settings(n=20), {"nrpm": {0.1: 0.5}})["worst_case_ci95"] > 0.19


# ------------------------------------------------------------------------------------------ a quick audit
def _md_attack_count(md: str, budget_text: str) -> int:
    """The number of attacks audit.md's worst-case row gives at ``budget_text``."""
    label = re.search(r"\*\*worst case \((\d+) attacks((?:; \d+ at [^;)]+)*)\)\*\*", md)
    at = dict((b, int(n)) for n, b in re.findall(r"; (\d+) at ([^;)]+)", label.group(2)))
    return at.get(budget_text, int(label.group(1)))


def test_a_quick_audit_is_labelled_reduced_everywhere(shared_dir, tmp_path, capsys):
    out, entry_path = tmp_path / "quick", tmp_path / "entry.json"
    code, stdout, err = run(["audit", "--model", "mlp3", "--lam", "0.8", "--K", "1", "--n-samples", "20",
                             "--budgets", "0.1", "0.2", "--steps", "2", "--apgd-steps", "2", "--square-queries", "5",
                             "--no-autoattack", "--skip-attacks", "spsa", "--no-plain", "--no-progress", "--threads",
                             "1", "--out", str(out), "--robustbench-json", str(entry_path)], capsys)
    assert code in (0, 1), err
    data = json.loads((out / "audit.json").read_text())
    expected = ["no AutoAttack", "skipped spsa", "2 PGD steps instead of 40", "2 APGD steps instead of 100",
                "5 Square queries instead of 5000", "20 samples (< 100)"]
    assert data["protocol"]["full"] is False and data["protocol"]["reductions"] == expected
    worst = [w["accuracy"] for w in data["worst_case"]["nrpm"]]
    assert data["protocol"]["n"] == 20
    assert data["protocol"]["worst_case_ci95"] == round(P.widest_half_width(worst, 20), 4) > 0.05
    line = f"**Verdict: {data['verdict'].upper()} (reduced protocol: {', '.join(expected)}) — not a full audit**"
    md = (out / "audit.md").read_text()
    assert line in stdout and line in md and "20 samples (worst-case accuracy ±" in md

    code, table, err = run(["audit-table", str(out)], capsys)
    assert code == 0, err
    row = next(r for r in table.splitlines() if r.startswith("| quick |"))
    assert f"reduced protocol: {', '.join(expected)}" in row and "| 20 (±" in row
    assert "PGD 2 steps" in row and "AutoAttack off" in row and "skipped spsa" in row  # the settings stay
    assert "— not a full audit" in table

    entry = json.loads(entry_path.read_text())
    assert entry["audit_protocol"] == "reduced" and entry["audit_reductions"] == expected
    assert entry["unreliable"] is True and "— not a full audit" in entry["footnote"]
    ran = {c["attack"] for c in data["cells"] if c["model"] == "nrpm" and c["budget"] == 0.1}
    assert entry["audit_attacks"] == _md_attack_count(md, "0.1") == len(ran)
    assert f"worst case over {len(ran)} attacks" in entry["footnote"]


def test_the_attack_count_is_one_number_at_every_budget():
    """At the check budget the check-4 variants join the worst case: audit.md says so, and the entry agrees."""
    data = json.loads(OLD_REPORT.read_text())
    report = AU.AuditReport.from_dict(data)
    md = report.to_markdown()
    unit = data["settings"]["budget_unit"]
    for budget in data["settings"]["budgets"]:
        entry = robustbench_entry(report, budget, dataset="cifar10", architecture="ResNet", nrpm={})
        ran = {c["attack"] for c in data["cells"] if c["model"] == "nrpm" and c["budget"] == budget}
        assert entry["audit_attacks"] == _md_attack_count(md, f"{round(budget * unit):d}/255") == len(ran)
        assert f"worst case over {len(ran)} attacks" in entry["footnote"]


# ------------------------------------------------------------------------------------------ older reports
def test_an_audit_json_from_before_the_protocol_still_collates(tmp_path):
    old = tmp_path / "old_run"
    old.mkdir()
    shutil.copy(OLD_REPORT, old / "audit.json")
    assert "protocol" not in json.loads((old / "audit.json").read_text())
    text = AU.collate_reports([old])
    row = next(r for r in text.splitlines() if r.startswith("| old_run |"))
    assert "| unknown |" in row and "| 100 (±" in row and "AutoAttack off" in row
    assert "Protocol unknown" in text and "`old_run`" in text
    report = AU.AuditReport.from_dict(json.loads((old / "audit.json").read_text()))
    assert "protocol unknown" in report.to_markdown()
    entry = robustbench_entry(report, report.settings["budgets"][0], dataset="cifar10", architecture="ResNet", nrpm={})
    assert entry["audit_protocol"] == "unknown" and entry["audit_reductions"] is None


def test_a_damaged_protocol_entry_is_one_line_exit_2(tmp_path, capsys):
    data = json.loads(OLD_REPORT.read_text())
    (tmp_path / "audit.json").write_text(json.dumps({**data, "protocol": "full"}))
    code, _, err = run(["audit-table", str(tmp_path)], capsys)
    assert_usage_error(code, err, "audit-table", "damaged 'protocol' entry", "audit.json")
