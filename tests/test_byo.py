"""Bring your own model and data: factory models (file, module, timm, torchvision), --model-arg, --normalize,
--data tensors:/imagefolder:, what results record, RobustBench-style entries, and the errors of each.

Models here are tiny (Flatten + Linear on 3x4x4 inputs) and data files are written by the tests; only the LeNet
comparison reads the staged MNIST and the paper's checkpoint (skipped without ../shared).
"""

import json
import sys
import types
from pathlib import Path

import pytest
import torch
from torch import nn

import nrpm.functional as RF
from nrpm import evaluation as E
from nrpm.audit import AuditReport
from nrpm.cli.audit import robustbench_entry
from nrpm.models import NormalizedModel, resolve_model_spec
from nrpm.reprogram import robust_layers

from cli_helpers import run, assert_usage_error

FACTORIES = '''
import torch
from torch import nn


def tiny(classes=4, channels=3, hidden=8, note="plain"):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(channels * 16, hidden), nn.ReLU(), nn.Linear(hidden, classes))
    model.note = note
    return model


def broken(**kwargs):
    raise RuntimeError("no weights for you")


def not_a_model():
    return {"weights": 1}


NOT_CALLABLE = 3
'''


@pytest.fixture(autouse=True)
def eager_kernels():
    """The eager NRPM core: compiling kernels would take longer than these tiny evaluations."""
    previous = RF.get_backend()
    RF.set_backend("eager")
    yield
    RF.set_backend(previous)


@pytest.fixture
def factories(tmp_path) -> Path:
    path = tmp_path / "nets.py"
    path.write_text(FACTORIES)
    return path


@pytest.fixture
def tiny_data(tmp_path) -> Path:
    generator = torch.Generator().manual_seed(0)
    path = tmp_path / "tiny.pt"
    torch.save({"x": torch.rand(8, 3, 4, 4, generator=generator), "y": torch.arange(8) % 4}, path)
    return path


def eval_argv(model, data, out, *extra):
    return ["eval", "--model", model, "--checkpoint", "none", "--data", data, "--n-samples", "8", "--budgets", "0",
            "0.1", "--lam", "1", "0.5", "--K", "1", "--no-progress", "--threads", "1", "--out", str(out), *extra]


# ------------------------------------------------------------------------------------------ model specs
def test_a_factory_file_gets_its_model_args_parsed_as_json(factories):
    model, info = resolve_model_spec(f"{factories}:tiny", {"hidden": 5, "note": "x"})
    assert model[1].out_features == 5 and model.note == "x"
    assert info["kind"] == "file" and info["factory"] == "tiny" and info["class"] == "torch.nn.modules.container.Sequential"


def test_a_module_factory_is_imported_by_name(factories, monkeypatch):
    package = factories.parent / "mypkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "nets.py").write_text(FACTORIES)
    monkeypatch.syspath_prepend(str(factories.parent))
    model, info = resolve_model_spec("mypkg.nets:tiny", {"classes": 3})
    assert model[3].out_features == 3 and info["kind"] == "module"


@pytest.mark.parametrize("spec,fragments", [
    ("{file}:broken", ["raised RuntimeError", "no weights for you", "--model-arg"]),
    ("{file}:not_a_model", ["returned a dict, not a torch.nn.Module"]),
    ("{file}:NOT_CALLABLE", ["is a int, not a function or class"]),
    ("{file}:missing", ["has no 'missing'", "callables there: broken, not_a_model, tiny"]),
    ("nowhere/nets.py:tiny", ["model file not found", "nowhere/nets.py"]),
    ("no_such_package_xyz.nets:tiny", ["cannot import module 'no_such_package_xyz.nets'", "PYTHONPATH"]),
    ("{file}:1bad", ["'1bad' is not a factory name"]),
    ("lenett", ["unknown model 'lenett'", "lenet", "FILE.py:FACTORY"]),
])
def test_bad_model_specs_exit_2_naming_the_spec_and_the_fix(spec, fragments, factories, tiny_data, capsys):
    spec = spec.format(file=factories)
    code, _, err = run(eval_argv(spec, f"tensors:{tiny_data}", factories.parent / "out"), capsys)
    assert_usage_error(code, err, "eval", *fragments)


def test_factory_args_the_factory_does_not_take_are_named(factories, tiny_data, capsys):
    code, _, err = run(eval_argv(f"{factories}:tiny", f"tensors:{tiny_data}", factories.parent / "o",
                                 "--model-arg", "depth=3"), capsys)
    assert_usage_error(code, err, "eval", "raised TypeError with --model-arg {'depth': 3}", "depth")


def test_pretrained_is_for_registry_models_and_factories_need_data(factories, tiny_data, capsys):
    argv = eval_argv(f"{factories}:tiny", f"tensors:{tiny_data}", factories.parent / "o")
    code, _, err = run([a if a != "none" else "pretrained" for a in argv], capsys)
    assert_usage_error(code, err, "eval", "--checkpoint pretrained exists only for registry models",
                       "--checkpoint none")
    code, _, err = run(["eval", "--model", f"{factories}:tiny", "--checkpoint", "none"], capsys)
    assert_usage_error(code, err, "eval", "not a registry model", "give --data")
    code, _, err = run(["eval", "--model", "lenet", "--model-arg", "num_classes=3"], capsys)
    assert_usage_error(code, err, "eval", "released checkpoint fits only the registered architecture")


def test_library_models_are_built_without_weights(monkeypatch):
    calls = []
    timm = types.SimpleNamespace(create_model=lambda name, **kw: calls.append((name, kw)) or nn.Linear(2, 2))
    tv_models = types.SimpleNamespace(resnet18=lambda **kw: calls.append(("resnet18", kw)) or nn.Linear(2, 2))
    monkeypatch.setitem(sys.modules, "timm", timm)
    monkeypatch.setitem(sys.modules, "torchvision", types.SimpleNamespace(models=tv_models))
    monkeypatch.setitem(sys.modules, "torchvision.models", tv_models)
    resolve_model_spec("timm:vit_tiny", {"num_classes": 3})
    resolve_model_spec("torchvision:resnet18", {"num_classes": 3})
    assert calls == [("vit_tiny", {"pretrained": False, "num_classes": 3}),
                     ("resnet18", {"weights": None, "num_classes": 3})]
    with pytest.raises(ValueError, match="torchvision.models has no model 'resnet_x'"):
        resolve_model_spec("torchvision:resnet_x")
    monkeypatch.setitem(sys.modules, "timm", None)  # as if timm were not installed
    with pytest.raises(ValueError, match="needs timm, which is not installed: pip install timm"):
        resolve_model_spec("timm:vit_tiny")


def test_real_timm_model():
    pytest.importorskip("timm")
    model, info = resolve_model_spec("timm:resnet18", {"num_classes": 5})
    assert isinstance(model, nn.Module) and info["kind"] == "timm"


def test_real_torchvision_model():
    pytest.importorskip("torchvision")
    model, info = resolve_model_spec("torchvision:resnet18", {"num_classes": 5})
    assert isinstance(model, nn.Module) and info["kind"] == "torchvision"


# ------------------------------------------------------------------------------------------ normalisation
def test_normalize_wraps_the_model_after_loading_and_reprogramming_it(factories, tmp_path):
    plain, _ = resolve_model_spec(f"{factories}:tiny")
    torch.nn.init.constant_(plain[3].bias, 0.25)  # weights that differ from the factory's own
    torch.save(plain.state_dict(), tmp_path / "weights.pt")  # a checkpoint of the bare model
    normalize = {"mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.3]}
    settings = E.EvalSettings(model=f"{factories}:tiny", checkpoint=str(tmp_path / "weights.pt"), lams=[1.0], K=1,
                              normalize=normalize, data="cifar10")
    prepared = E.prepare_model(settings)
    assert isinstance(prepared.model, NormalizedModel) and prepared.model.normalization == normalize
    assert sorted(robust_layers(prepared.network)) == ["1", "3"]  # the model's own names, not "1.1", "1.3"
    x = torch.rand(2, 3, 4, 4)
    mean, std = torch.tensor(normalize["mean"]).view(3, 1, 1), torch.tensor(normalize["std"]).view(3, 1, 1)
    torch.testing.assert_close(prepared.model(x), plain((x - mean) / std))  # lam 1: the loaded model, normalised
    assert prepared.model_info["normalize"] == normalize


@pytest.mark.parametrize("values,fragment", [
    (["0.5", "0.5", "0.2"], "as many stds as means"),
    (["0.5", "0"], "stds (the second half) must be > 0"),
    (["0.5", "nan"], "must be a finite number"),
])
def test_bad_normalize_values_are_a_parse_error(values, fragment, capsys):
    code, _, err = run(["eval", "--model", "lenet", "--normalize", *values], capsys)
    assert_usage_error(code, err, "eval", "argument --normalize", fragment)


# ------------------------------------------------------------------------------------------ eval end to end
def test_eval_records_the_model_and_data_specs_and_what_was_detected(factories, tiny_data, tmp_path, capsys):
    out = tmp_path / "run"
    code, _, err = run(eval_argv(f"{factories}:tiny", f"tensors:{tiny_data}", out, "--model-arg", "hidden=6",
                                 "--normalize", "0.5", "0.5", "0.5", "0.2", "0.2", "0.2"), capsys)
    assert code == 0, err
    assert "data: " in err and "8 samples 3x4x4, float NCHW" in err
    saved = json.loads((out / "results.json").read_text())
    settings = saved["settings"]
    assert settings["model"] == f"{factories}:tiny" and settings["model_args"] == {"hidden": 6}
    assert settings["normalize"] == {"mean": [0.5] * 3, "std": [0.2] * 3} and settings["data"] == f"tensors:{tiny_data}"
    assert settings["model_info"]["kind"] == "file" and "float NCHW" in settings["data_info"]["detected"]
    assert saved["robust_layers"] == ["1", "3"] and len(saved["cells"]) == 4
    assert "float NCHW" in (out / "table.md").read_text()
    code, _, err = run(eval_argv(f"{factories}:tiny", f"tensors:{tiny_data}", out, "--model-arg", "hidden=7"), capsys)
    assert_usage_error(code, err, "eval", "holds results of other settings")  # the model args are part of the key


def test_eval_on_an_image_folder(factories, tmp_path, capsys):
    image_module = pytest.importorskip("PIL.Image")
    import numpy as np

    for label in range(4):
        for i in range(2):
            (tmp_path / "images" / f"class{label}").mkdir(parents=True, exist_ok=True)
            image_module.fromarray(np.full((6, 5, 3), 40 * label + i, np.uint8)).save(
                tmp_path / "images" / f"class{label}" / f"{i}.png")
    code, _, err = run(eval_argv(f"{factories}:tiny", f"imagefolder:{tmp_path / 'images'}", tmp_path / "run",
                                 "--image-size", "4"), capsys)
    assert code == 0, err
    assert "4 classes (class0, class1, class2, class3), 8 images" in err and "to 4x4" in err


@pytest.mark.parametrize("shape,extra,fragment", [
    ((3, 4, 4), [], "gives 3x4x4 inputs, --model lenet takes 1x28x28"),
    ((1, 28, 28), ["--model-arg", "num_classes=5"], "has labels up to 7: the model must give one logit per class"),
    ((1, 28, 28), ["--normalize", "0.5", "0.5", "0.1", "0.1"], "--normalize 0.5 0.5 0.1 0.1 gives 2 means and stds"),
])
def test_data_that_does_not_fit_the_model_is_refused_in_words(shape, extra, fragment, tmp_path, capsys):
    torch.save({"x": torch.rand(8, *shape), "y": torch.arange(8)}, tmp_path / "d.pt")
    code, _, err = run(eval_argv("lenet", f"tensors:{tmp_path / 'd.pt'}", tmp_path / "run", *extra), capsys)
    assert_usage_error(code, err, "eval", fragment)
    assert not (tmp_path / "run" / "results.json").exists()


def test_download_refuses_datasets_it_cannot_fetch(capsys):
    code, _, err = run(["eval", "--model", "resnet18", "--checkpoint", "none", "--data", "cifar100", "--download"],
                       capsys)
    assert_usage_error(code, err, "eval", "--download fetches mnist and cifar10 only, not cifar100")


def test_factory_lenet_on_a_tensor_file_matches_the_registry_lenet(shared_dir, tmp_path, capsys):
    from nrpm.data import load_mnist

    factory = tmp_path / "my_lenet.py"
    factory.write_text("from nrpm.models.mnist import LeNet\n\n\ndef build():\n    return LeNet()\n")
    x, y = load_mnist(shared_dir / "data", train=False)
    torch.save({"x": x[:64].clone(), "y": y[:64].clone()}, tmp_path / "mnist64.pt")
    common = ["--n-samples", "64", "--lam", "1", "0.5", "--K", "1", "--budgets", "0", "0.1", "--no-progress",
              "--threads", "1", "--data-root", str(shared_dir / "data")]
    code, _, err = run(["eval", "--model", "lenet", "--out", str(tmp_path / "registry"), *common], capsys)
    assert code == 0, err
    code, _, err = run(["eval", "--model", f"{factory}:build", "--data", f"tensors:{tmp_path / 'mnist64.pt'}",
                        "--checkpoint", str(shared_dir / "pretrained" / "lenet_mnist_model.pth"),
                        "--out", str(tmp_path / "factory"), *common], capsys)
    assert code == 0, err
    cells = {name: {(c["lam"], c["budget"]): (c["accuracy"], c["correct"], c["n"]) for c in
                    json.loads((tmp_path / name / "results.json").read_text())["cells"]}
             for name in ("registry", "factory")}
    assert len(cells["registry"]) == 4 and cells["registry"] == cells["factory"]
    assert cells["registry"][(0.5, 0.1)][0] < cells["registry"][(0.5, 0.0)][0]  # the attack did something


# ------------------------------------------------------------------------------------------ RobustBench entries
def audit_argv(factories, tiny_data, *extra):
    return ["audit", "--model", f"{factories}:tiny", "--checkpoint", "none", "--data", f"tensors:{tiny_data}",
            "--n-samples", "8", "--lam", "0.5", "--K", "1", "--budgets", "0.2", "0.1", "--steps", "2",
            "--apgd-steps", "2", "--square-queries", "10", "--no-autoattack", "--no-progress", "--threads", "1",
            *extra]


def test_audit_writes_a_robustbench_entry(factories, tiny_data, tmp_path, capsys):
    entry_path = tmp_path / "entries" / "mine.json"
    entry_path.parent.mkdir()
    code, _, err = run(audit_argv(factories, tiny_data, "--out", str(tmp_path / "audit"), "--robustbench-json",
                                  str(entry_path), "--robustbench-field", "name=\"My tiny net\"",
                                  "--robustbench-field", "additional_data=true"), capsys)
    assert code in (0, 1), err
    entry = json.loads(entry_path.read_text())
    audit = json.loads((tmp_path / "audit" / "audit.json").read_text())
    for field in ("link", "name", "authors", "additional_data", "number_forward_passes", "dataset", "venue",
                  "architecture", "eps", "clean_acc", "reported", "autoattack_acc", "external", "footnote"):
        assert field in entry, field
    assert entry["name"] == "My tiny net" and entry["additional_data"] is True
    assert entry["eps"] == "0.1" and entry["autoattack_acc"] is None  # the smallest budget; AutoAttack did not run
    assert entry["number_forward_passes"] == 1 and "the one forward pass" in entry["footnote"]
    worst = next(w["accuracy"] for w in audit["worst_case"]["nrpm"] if w["budget"] == 0.1)
    assert entry["worst_case_acc"] == f"{100 * worst:.2f}" and entry["audit_verdict"] == audit["verdict"]
    assert entry["clean_acc"] == f"{100 * audit['settings']['clean_accuracy']['nrpm']:.2f}"
    assert entry["architecture"] == "Sequential" and entry["dataset"] == f"tensors:{tiny_data}"
    assert audit["settings"]["data_info"]["kind"] == "tensors" and audit["settings"]["model_info"]["kind"] == "file"


def test_robustbench_eps_must_be_an_audited_budget(factories, tiny_data, tmp_path, capsys):
    code, _, err = run(audit_argv(factories, tiny_data, "--robustbench-json", str(tmp_path / "e.json"),
                                  "--robustbench-eps", "0.3"), capsys)
    assert_usage_error(code, err, "audit", "--robustbench-eps 0.3 is not one of the audited budgets", "--budgets")
    assert not (tmp_path / "e.json").exists()
    code, _, err = run(audit_argv(factories, tiny_data, "--robustbench-eps", "0.1"), capsys)
    assert_usage_error(code, err, "audit", "need --robustbench-json FILE")


def test_robustbench_entry_takes_autoattack_where_it_ran():
    cells = [{"model": "nrpm", "attack": attack, "budget": 8 / 255, "accuracy": acc, "label": attack}
             for attack, acc in (("pgd", 0.5), ("autoattack", 0.4375))]
    report = AuditReport(settings={"title": "t", "n": 16, "norm": "Linf", "budget_unit": 255.0,
                                   "clean_accuracy": {"nrpm": 0.9}, "budgets": [8 / 255]},
                         checks=[], cells=cells, worst_case={"nrpm": {8 / 255: 0.375}}, notes=[], errors=[],
                         seconds=1.0)
    entry = robustbench_entry(report, 8 / 255, dataset="cifar10", architecture="ResNet", nrpm={"lam": 0.9, "K": 3})
    assert entry["eps"] == "8/255" and entry["clean_acc"] == "90.00" and entry["autoattack_acc"] == "43.75"
    assert entry["worst_case_acc"] == "37.50" and entry["audit_verdict"] == "pass" and entry["unreliable"] is False
