"""nrpm eval of trained reprogramming: a paradigm-3 model.pt or a paradigm-2 reprogramming.pt is evaluated with
its stored per-layer lam, K, eps and layers; explicit --lam/--K/--eps override it visibly; layer options and
misplaced run files are refused with exit 2.

The runs: the paper's MNIST MLP, one epoch on 96 random images (fast; what matters is that lam, K and eps
differ from eval's defaults and the weights from the checkpoint's).
"""

import json
from pathlib import Path

import pytest
import torch

import nrpm
import nrpm.attacks as A
import nrpm.train
from nrpm import cli
from nrpm import data as D
from nrpm import evaluation as E

from cli_helpers import run

STORED_K, STORED_EPS = 2, 1e-2
N = 20
SHARED = Path(__file__).resolve().parents[2].parent / "shared"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """{2: folder of a paradigm-2 run, 3: of a paradigm-3 run}, both on the paper's mlp3 checkpoint."""
    from nrpm.runs import RunContext
    from nrpm.train import TrainConfig, run_training

    if not SHARED.is_dir():
        pytest.skip("../shared not present")
    root = tmp_path_factory.mktemp("runs")
    generator = torch.Generator().manual_seed(0)
    data = torch.rand(96, 1, 28, 28, generator=generator), torch.randint(0, 10, (96,), generator=generator)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for paradigm in (2, 3):
            config = TrainConfig(model="mlp3", paradigm=paradigm, checkpoint="pretrained", lam=0.4, K=STORED_K,
                                 eps=STORED_EPS, epochs=1, batch_size=32, val_size=0, optimizer="adam", lr=0.05)
            run_training(config, RunContext(root / f"p{paradigm}", "reprogram", progress=False,
                                            log=lambda message: None), data=data)
    finally:
        torch.set_num_threads(threads)
    return {2: root / "p2", 3: root / "p3"}


def eval_argv(out, *extra):
    return ["eval", "--model", "mlp3", "--budgets", "0", "0.1", "--n-samples", str(N), "--no-progress",
            "--threads", "1", "--out", str(out), *extra]


def samples():
    return D.subset(*D.load_mnist(train=False), N)


def accuracies(model) -> dict[float, float]:
    """Clean and FGSM-0.1 accuracy of ``model`` on the evaluated samples, computed here, not by nrpm eval."""
    x, y = samples()
    return {0.0: A.clean_accuracy(model, x, y), 0.1: A.robust_accuracy(model, A.FGSM(0.1), x, y)}


def cells(results: dict) -> dict:
    return {(c["lam"], c["budget"]): c["accuracy"] for c in results["cells"]}


def test_a_paradigm3_model_is_evaluated_with_its_trained_reprogramming(runs, tmp_path, capsys):
    model_file = runs[3] / "model.pt"
    code, out, err = run(eval_argv(tmp_path, "--checkpoint", str(model_file)), capsys)
    assert code == 0, err
    assert "| trained |" in out
    results = json.loads((tmp_path / "results.json").read_text())
    trained, _ = nrpm.train.load_trained(model_file)
    applied = results["reprogramming"]
    assert applied["source"] == str(model_file)
    assert applied["lam"] == pytest.approx(nrpm.lam_table(trained), abs=1e-6)
    assert set(applied["lam"]) == {"fc1", "fc2", "fc3"} and all(v != 1.0 for v in applied["lam"].values())
    assert (applied["K"], applied["eps"], applied["overrides"]) == (STORED_K, STORED_EPS, {})
    assert results["settings"]["lams"] == ["trained"]
    expected = accuracies(trained)
    assert cells(results) == {("trained", 0.0): expected[0.0], ("trained", 0.1): expected[0.1]}


def test_the_model_audit_and_eval_build_carries_the_stored_state(runs):
    prepared = E.prepare_model(E.EvalSettings(model="mlp3", checkpoint=str(runs[3] / "model.pt")))
    trained, _ = nrpm.train.load_trained(runs[3] / "model.pt")
    assert nrpm.lam_table(prepared.model) == pytest.approx(nrpm.lam_table(trained), abs=1e-6)
    assert all(layer.K == STORED_K and layer.eps == STORED_EPS for layer in nrpm.robust_layers(prepared.model).values())
    for name, tensor in trained.state_dict().items():
        assert torch.equal(prepared.model.state_dict()[name], tensor), name  # the trained weights, not the base


def test_explicit_lam_K_and_eps_override_the_stored_values_visibly(runs, tmp_path, capsys):
    model_file = runs[3] / "model.pt"
    code, _, err = run(eval_argv(tmp_path, "--checkpoint", str(model_file), "--lam", "trained", "0.5",
                                 "--K", "1", "--eps", "0.001"), capsys)
    assert code == 0, err
    results = json.loads((tmp_path / "results.json").read_text())
    applied = results["reprogramming"]
    assert applied["overrides"] == {"K": 1, "eps": 0.001} and (applied["K"], applied["eps"]) == (1, 0.001)
    assert applied["stored"] == {"K": STORED_K, "eps": STORED_EPS, "estimator": "l1"}  # the run trained with L1
    model, _ = nrpm.train.load_trained(model_file)
    for layer in nrpm.robust_layers(model).values():
        layer.K, layer.eps = 1, 0.001
    trained_row = accuracies(model)
    nrpm.set_lam(model, 0.5)  # a number sets every layer
    half_row = accuracies(model)
    assert cells(results) == {("trained", 0.0): trained_row[0.0], ("trained", 0.1): trained_row[0.1],
                              (0.5, 0.0): half_row[0.0], (0.5, 0.1): half_row[0.1]}
    table = (tmp_path / "table.md").read_text()
    assert "| trained |" in table and "| 0.5 |" in table and "overridden" in table


def test_a_paradigm2_reprogramming_file_is_applied_to_the_checkpoint(runs, tmp_path, capsys):
    state_file = runs[2] / "reprogramming.pt"
    code, _, err = run(eval_argv(tmp_path, "--reprogramming", str(state_file)), capsys)
    assert code == 0, err
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["reprogramming"]["source"] == str(state_file)
    assert results["reprogramming"]["base_checkpoint"] == "pretrained" and results["notes"] == []
    trained, _ = nrpm.train.load_trained(state_file)
    assert results["reprogramming"]["lam"] == pytest.approx(nrpm.lam_table(trained), abs=1e-6)
    expected = accuracies(trained)
    assert cells(results) == {("trained", 0.0): expected[0.0], ("trained", 0.1): expected[0.1]}


def test_resuming_refuses_an_artifact_retrained_in_place(runs, tmp_path, capsys):
    model_file = tmp_path / "model.pt"
    artifact = torch.load(runs[3] / "model.pt", weights_only=True)
    torch.save(artifact, model_file)
    argv = eval_argv(tmp_path / "out", "--checkpoint", str(model_file), "--budgets", "0")
    assert run(argv, capsys)[0] == 0
    artifact["reprogramming"]["lam"] = {name: 0.9 for name in artifact["reprogramming"]["lam"]}
    torch.save(artifact, model_file)  # same path, other lam: the cells on file are not its cells
    code, _, err = run(argv, capsys)
    assert code == 2 and "holds results of other settings" in err


@pytest.mark.parametrize("extra,fragment", [
    (["--layers", "fc1"], "--layers fc1 cannot be combined with the reprogramming stored in"),
    (["--layer-types", "linear"], "--layer-types linear cannot be combined"),
    (["--skip", "fc3"], "--skip fc3 cannot be combined"),
])
def test_layer_options_are_refused_next_to_a_stored_reprogramming(runs, extra, fragment, tmp_path, capsys):
    code, _, err = run(eval_argv(tmp_path, "--checkpoint", str(runs[3] / "model.pt"), *extra), capsys)
    assert code == 2 and err.startswith("nrpm eval: error: ") and fragment in err


def test_the_trained_row_needs_a_stored_reprogramming(shared_dir, tmp_path, capsys):
    code, _, err = run(eval_argv(tmp_path, "--lam", "trained"), capsys)
    assert code == 2 and "there is none" in err and "--reprogramming" in err


@pytest.mark.parametrize("which,flag,model,fragment", [
    ("p2/reprogramming.pt", "--checkpoint", "mlp3", "pass it as --reprogramming"),
    ("p3/checkpoint.pt", "--checkpoint", "mlp3", "is a training checkpoint"),
    ("p3/model.pt", "--reprogramming", "mlp3", "pass it as --checkpoint"),
    ("p3/model.pt", "--checkpoint", "lenet", "holds a trained 'mlp3', not 'lenet'"),
    ("p2/reprogramming.pt", "--reprogramming", "lenet", "reprograms model 'mlp3', not 'lenet'"),
])
def test_a_run_file_in_the_wrong_place_says_where_it_goes(runs, which, flag, model, fragment, tmp_path, capsys):
    path = runs[int(which[1])] / which.split("/")[1]
    code, _, err = run(["eval", "--model", model, flag, str(path), "--no-progress", "--out", str(tmp_path)], capsys)
    assert code == 2 and err.startswith("nrpm eval: error: ") and str(path) in err and fragment in err


def test_a_trained_row_after_a_numeric_row_keeps_the_stored_lam(tmp_path, capsys):
    """--lam 0.5 trained: the 'trained' row is the stored per-layer lam, not the 0.5 of the row before it."""
    import torch
    from torch import nn

    import nrpm
    from nrpm import cli

    model = nrpm.models.create_model("mlp3")
    nrpm.reprogram(model, nrpm.ReprogramConfig(lam=0.9, K=1, paradigm=2))
    nrpm.save_reprogramming(model, tmp_path / "rp.pt")
    x = torch.rand(16, 1, 28, 28)
    torch.save({"x": x, "y": torch.randint(0, 10, (16,))}, tmp_path / "data.pt")
    args = ["eval", "--model", "mlp3", "--checkpoint", "none", "--reprogramming", str(tmp_path / "rp.pt"),
            "--data", f"tensors:{tmp_path / 'data.pt'}", "--n-samples", "16", "--budgets", "0", "--no-progress"]
    seen = []
    import nrpm.evaluation.runner as runner

    real = runner.evaluate_grid

    def spy(model, *a, **k):
        seen.append(nrpm.lam_table(model))
        return real(model, *a, **k)

    runner.evaluate_grid = spy
    try:
        assert cli.main(args + ["--lam", "0.5", "trained"]) == 0
    finally:
        runner.evaluate_grid = real
    assert all(v == pytest.approx(0.9, abs=1e-4) for v in seen[0].values())
