"""Budgets and step sizes mean one thing on every command: budgets and step sizes are in --budget-unit (divided by
it, and the values used are recorded); an Linf budget of the whole image range or more is a missing
``--budget-unit 255``; the budget is never an --attack-arg option; K = 0 is refused wherever reprogramming is set.
Each bad value: exit 2, one line naming it and the fix."""

import json
import math
from pathlib import Path

import pytest

from nrpm.attacks import make_attack
from nrpm.cli.evaluate import eval_settings
from nrpm.cli import train as train_cli
from nrpm.cli.main import parse_args
from nrpm.reprogram import ReprogramConfig

from cli_helpers import assert_usage_error, run

SHARED = Path(__file__).resolve().parents[2].parent / "shared"
QUICK = ["--n-samples", "4", "--no-progress", "--threads", "1"]


# ------------------------------------------------------------------------------------------ Linf budgets >= 1
@pytest.mark.parametrize("argv,flag", [
    (["eval", "--model", "mlp3", "--budgets", "0", "8", "16"], "--budgets 8"),
    (["eval", "--model", "mlp3", "--attack", "pgd", "--budgets", "0", "1"], "--budgets 1"),
    (["eval", "--model", "mlp3", "--budgets", "0", "255", "--budget-unit", "255"], "--budgets 255"),
    (["audit", "--model", "mlp3", "--budgets", "8", "16"], "--budgets 8"),
    (["audit", "--model", "mlp3", "--budgets", "0.1", "--check-budget", "4"], "--check-budget 4"),
    (["train", "--model", "mlp3", "--attack", "pgd", "--attack-eps", "8"], "--attack-eps 8"),
    (["train", "--model", "mlp3", "--attack", "pgd", "--attack-eps", "0.3", "--val-eps", "2"], "--val-eps 2"),
    (["reprogram", "--model", "mlp3", "--paradigm", "2", "--attack", "fgsm", "--attack-eps", "8"], "--attack-eps 8"),
    (["train", "--model", "mlp3", "--test-attack", "pgd", "--test-budgets", "0", "8"], "--test-budgets 8"),
    (["demo", "--budgets", "0", "8"], "--budgets 8"),
])
def test_an_linf_budget_of_the_whole_range_asks_for_the_unit(argv, flag, tmp_path, capsys):
    if argv[0] == "audit" and not SHARED.is_dir():
        pytest.skip("../shared not present")  # the audit refuses after loading the model's data
    extra = ["--out", str(tmp_path / "run")] if argv[0] in ("train", "reprogram") else []
    extra += QUICK if argv[0] in ("eval", "audit") else []
    code, _, err = run(argv + extra, capsys)
    assert_usage_error(code, err, argv[0], flag, "--budget-unit 255")


def test_l2_and_l0_budgets_may_exceed_one():
    args = parse_args(["eval", "--model", "mlp3", "--attack", "pgd_l2", "--budgets", "0", "3"])
    assert eval_settings(args).budgets == [0.0, 3.0]
    args = parse_args(["eval", "--model", "mlp3", "--attack", "l0", "--budgets", "0", "20"])
    assert eval_settings(args).budgets == [0.0, 20.0]


# ------------------------------------------------------------------------------------------ step sizes
def test_attack_arg_step_sizes_are_in_budget_units():
    args = parse_args(["eval", "--model", "mlp3", "--attack", "pgd", "--attack-arg", "alpha=2",
                           "--attack-arg", "steps=3", "--budgets", "0", "8", "--budget-unit", "255"])
    settings = eval_settings(args)
    assert math.isclose(settings.attack_kwargs["alpha"], 2 / 255) and settings.attack_kwargs["steps"] == 3
    args = parse_args(["eval", "--model", "mlp3", "--attack", "spsa", "--attack-arg", "lr=2",
                           "--attack-arg", "delta=1", "--budgets", "0", "8", "--budget-unit", "255"])
    kwargs = eval_settings(args).attack_kwargs
    assert math.isclose(kwargs["lr"], 2 / 255) and math.isclose(kwargs["delta"], 1 / 255)


def test_train_test_attack_step_sizes_are_in_budget_units(tmp_path):
    args = parse_args(["train", "--model", "mlp3", "--out", str(tmp_path), "--test-attack", "pgd",
                           "--test-attack-arg", "alpha=2", "--test-budgets", "0", "8", "--budget-unit", "255"])
    (test,) = train_cli.tests_from_args(args)
    assert math.isclose(test.attack_kwargs["alpha"], 2 / 255)


def test_results_json_records_the_step_size_used(tmp_path, capsys):
    if not SHARED.is_dir():
        pytest.skip("../shared not present")
    argv = ["eval", "--model", "mlp3", "--attack", "pgd", "--attack-arg", "alpha=2", "--attack-arg", "steps=2",
            "--budgets", "0", "8", "--budget-unit", "255", "--out", str(tmp_path), *QUICK]
    code, _, err = run(argv, capsys)
    assert code == 0, err
    settings = json.loads((tmp_path / "results.json").read_text())["settings"]
    assert math.isclose(settings["attack_kwargs"]["alpha"], 2 / 255) and settings["budget_unit"] == 255


# ------------------------------------------------------------------------------------------ eps as an option
def test_the_budget_is_not_an_attack_option(capsys):
    argv = ["eval", "--model", "mlp3", "--attack", "pgd", "--attack-arg", "eps=0.3"]
    code, _, err = run(argv, capsys)
    assert_usage_error(code, err, "eval", "--attack-arg eps=0.3", "budgets come from --budgets")
    with pytest.raises(TypeError) as error:
        make_attack("pgd", 0.1, nonsense=1)
    options = str(error.value).split("options: ")[1].split(", ")
    assert "steps" in options and "eps" not in options
    with pytest.raises(TypeError, match="takes its budget as make_attack's eps"):
        make_attack("l0", 5, k=3)


# ------------------------------------------------------------------------------------------ K >= 1
@pytest.mark.parametrize("argv", [
    ["eval", "--model", "mlp3"],
    ["audit", "--model", "mlp3"],
    ["certify", "--model", "mlp3"],
    ["reprogram", "--model", "mlp3", "--paradigm", "2", "--out", "unused"],
    ["demo"],
])
def test_k_zero_is_refused(argv, capsys):
    code, _, err = run(argv + ["--K", "0"], capsys)
    assert_usage_error(code, err, argv[0], "--K 0", "plain")


def test_a_reprogram_config_with_k_zero_is_refused():
    with pytest.raises(ValueError, match="K 0"):
        ReprogramConfig(lam=0.5, K=0)
