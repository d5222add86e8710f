"""Issue 22's smaller items: each answer that was plausible and misleading now says what it is."""

import json

import pytest
import torch

from cli_helpers import assert_usage_error, run

FACTORY = "from torch import nn\n\ndef tiny():\n    return nn.Sequential(nn.Flatten(), nn.Linear(16, 3))\n"


@pytest.fixture
def byo(tmp_path):
    (tmp_path / "tiny.py").write_text(FACTORY)
    g = torch.Generator().manual_seed(0)
    torch.save({"x": torch.rand(12, 1, 4, 4, generator=g), "y": torch.randint(0, 3, (12,), generator=g)},
               tmp_path / "data.pt")
    return tmp_path


def test_a_factory_model_without_checkpoint_is_asked_for_its_weights(byo, capsys):
    code, _, err = run(["eval", "--model", f"{byo / 'tiny.py'}:tiny", "--data", f"tensors:{byo / 'data.pt'}"],
                       capsys)
    assert_usage_error(code, err, "eval", "needs its weights", "--checkpoint PATH", "--checkpoint none")
    assert "pretrained" not in err  # a flag the user never typed


def test_too_many_samples_names_the_fix(capsys, shared_dir):
    code, _, err = run(["eval", "--model", "lenet", "--n-samples", "20000", "--no-progress"], capsys)
    assert_usage_error(code, err, "eval", "cannot take 20000 samples", "pass --n-samples 10000 or fewer")


def test_repeated_lams_and_budgets_are_one_row_and_the_table_has_a_title(byo, capsys):
    code, out, err = run(["eval", "--model", f"{byo / 'tiny.py'}:tiny", "--checkpoint", "none", "--data",
                          f"tensors:{byo / 'data.pt'}", "--lam", "1", "1", "--budgets", "0", "0", "--no-progress",
                          "--out", str(byo / "out")], capsys)
    assert code == 0, err
    assert out.startswith("# Accuracy (%) of ") and "rows lam" in out
    rows = [line for line in out.splitlines() if line.startswith("| 1 ")]
    assert len(rows) == 1 and out.count("clean") == 2  # title and one column
    assert len(json.loads((byo / "out" / "results.json").read_text())["cells"]) == 1


def test_an_audit_into_an_eval_folder_is_refused(byo, capsys):
    model = ["--model", f"{byo / 'tiny.py'}:tiny", "--checkpoint", "none", "--data", f"tensors:{byo / 'data.pt'}"]
    code, _, err = run(["eval", *model, "--budgets", "0", "--no-progress", "--out", str(byo / "out")], capsys)
    assert code == 0, err
    code, _, err = run(["audit", *model, "--n-samples", "12", "--budgets", "0.1", "--no-progress",
                        "--out", str(byo / "out")], capsys)
    assert_usage_error(code, err, "audit", "holds the results of nrpm eval, not of nrpm audit", "--out")
    code, _, err = run(["certify", *model, "--n-samples", "12", "--no-progress", "--out", str(byo / "out")], capsys)
    assert_usage_error(code, err, "certify", "holds the results of nrpm eval, not of nrpm certify")


def test_certify_resume_is_keyed_on_the_checkpoint_contents(byo, capsys):
    torch.manual_seed(0)
    weights = byo / "w.pt"
    from torch import nn
    torch.save(nn.Sequential(nn.Flatten(), nn.Linear(16, 3)).state_dict(), weights)
    argv = ["certify", "--model", f"{byo / 'tiny.py'}:tiny", "--checkpoint", str(weights), "--data",
            f"tensors:{byo / 'data.pt'}", "--n-samples", "2", "--n0", "5", "--noise-samples", "20", "--sigma",
            "0.25", "--no-progress", "--out", str(byo / "cert")]
    code, _, err = run(argv, capsys)
    assert code == 0, err
    torch.save(nn.Sequential(nn.Flatten(), nn.Linear(16, 3)).state_dict(), weights)  # retrained in place
    code, _, err = run(argv, capsys)
    assert_usage_error(code, err, "certify", "other settings", "checkpoint_sha256")
