"""Bring your own model and data to ``nrpm train`` / ``nrpm reprogram``: a factory MLP (with --model-arg and
--normalize) trained on a tensors file (--train-data), its artifacts rebuilt by load_trained and evaluated by
nrpm eval. Tiny: 3x4x4 inputs, 4 classes, 40 training samples, one epoch."""

import json

import pytest
import torch
from torch import nn

import nrpm
import nrpm.functional as RF
from nrpm.models import NormalizedModel
from nrpm.train import load_trained

from cli_helpers import run

FACTORY = '''
import torch
from torch import nn


def tiny(classes=4, hidden=8):
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 16, hidden), nn.ReLU(), nn.Linear(hidden, classes))
'''
NORMALIZE = ["--normalize", "0.5", "0.25"]
QUICK = ["--epochs", "1", "--batch-size", "8", "--val-size", "8", "--no-progress", "--threads", "1"]


@pytest.fixture(autouse=True)
def in_tmp_path_with_eager_kernels(tmp_path, monkeypatch):
    """Run in tmp_path (so the factory spec is the relative nets.py:tiny) with the eager NRPM core: compiling
    kernels would take longer than these tiny runs."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "nets.py").write_text(FACTORY)
    generator = torch.Generator().manual_seed(0)
    for name, count in (("train.pt", 40), ("test.pt", 8)):
        torch.save({"x": torch.rand(count, 3, 4, 4, generator=generator), "y": torch.arange(count) % 4}, name)
    previous = RF.get_backend()
    RF.set_backend("eager")
    yield
    RF.set_backend(previous)


def train_plain(capsys, out="plain"):
    argv = ["train", "--model", "nets.py:tiny", "--model-arg", "hidden=6", *NORMALIZE, "--train-data",
            "tensors:train.pt", "--data", "tensors:test.pt", "--lr", "0.1", "--test-attack", "fgsm",
            "--test-budgets", "0", "0.1", "--test-samples", "8", "--out", out, *QUICK]
    code, stdout, err = run(argv, capsys)
    assert code == 0, err
    return stdout


def test_paradigm0_trains_a_normalised_factory_model_that_load_trained_and_nrpm_eval_rebuild(tmp_path, capsys,
                                                                                             monkeypatch):
    stdout = train_plain(capsys)
    assert "| nets.py:tiny trained |" in stdout
    saved = torch.load("plain/model.pt", weights_only=True)
    assert (saved["model"], saved["model_args"], saved["normalize"]) == ("nets.py:tiny", {"hidden": 6},
                                                                          {"mean": [0.5], "std": [0.25]})
    assert set(saved["state_dict"]) == {"1.weight", "1.bias", "3.weight", "3.bias"}  # the factory's own names
    run_json = json.loads((tmp_path / "plain" / "run.json").read_text())
    assert run_json["model_info"]["kind"] == "file" and run_json["config"]["train_data"] == "tensors:train.pt"

    code, _, err = run(["eval", "--model", "nets.py:tiny", "--model-arg", "hidden=6", *NORMALIZE, "--checkpoint",
                        "plain/model.pt", "--data", "tensors:test.pt", "--n-samples", "8", "--budgets", "0",
                        "--no-progress", "--threads", "1", "--out", "eval"], capsys)
    assert code == 0, err
    evaluated = json.loads((tmp_path / "eval" / "results.json").read_text())["cells"][0]["accuracy"]

    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")  # a run loads from any folder: model.pt keeps the factory's full path
    model, info = load_trained(tmp_path / "plain")
    assert isinstance(model, NormalizedModel) and model.inner[1].out_features == 6 and info["paradigm"] == 0
    test = torch.load(tmp_path / "test.pt", weights_only=True)
    with torch.no_grad():
        accuracy = (model(test["x"]).argmax(1) == test["y"]).float().mean().item()
    assert evaluated == pytest.approx(accuracy)
    from_checkpoint, _ = load_trained(tmp_path / "plain" / "checkpoint.pt")  # the training state rebuilds too
    assert torch.equal(from_checkpoint(test["x"]), model(test["x"]))


def test_paradigm2_learns_lam_of_a_factory_model_on_the_trained_weights(tmp_path, capsys):
    train_plain(capsys)
    argv = ["reprogram", "--paradigm", "2", "--model", "nets.py:tiny", "--model-arg", "hidden=6", *NORMALIZE,
            "--checkpoint", "plain/model.pt", "--train-data", "tensors:train.pt", "--K", "1", "--lr", "0.1",
            "--out", "p2", *QUICK]
    code, stdout, err = run(argv, capsys)
    assert code == 0, err
    summary = json.loads(stdout.splitlines()[0])
    assert summary["epochs_done"] == 1 and set(summary["lam"]) == {"1", "3"}  # names without the normalisation's
    state = torch.load("p2/reprogramming.pt", weights_only=True)
    assert (state["base_model"], state["base_model_args"], state["base_checkpoint"]) == (
        "nets.py:tiny", {"hidden": 6}, "plain/model.pt")
    model, info = load_trained("p2")
    assert isinstance(model, NormalizedModel) and info["paradigm"] == 2
    assert nrpm.lam_table(model.inner) == pytest.approx(summary["lam"], abs=1e-6)
    plain, _ = load_trained("plain")
    assert torch.equal(model.inner[1].weight, plain.inner[1].weight)  # paradigm 2 keeps the weights


@pytest.mark.parametrize("data, message", [(["--data", "tensors:test.pt"], "give the training samples as "
                                                                           "--train-data tensors:FILE"),
                                           ([], "give --data")])
def test_training_without_training_data_exits_2_naming_the_fix(data, message, capsys):
    code, _, err = run(["train", "--model", "nets.py:tiny", *data, "--out", "run", *QUICK], capsys)
    assert code == 2 and message in err and err.count("\n") == 1
