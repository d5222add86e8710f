"""The ViT through the command line: the untrained registry ViT (``--checkpoint none`` or a saved random
state_dict) with robust attention and projections through eval, audit, certify and reprogram --paradigm 2, and
timm- / Hugging Face-style ViTs of a factory file, whose own attention nrpm cannot make robust and must say so.

Tiny settings (a few images, 1-2 attack steps, K=1): these check that every command runs and writes its files,
not the numbers.
"""

import json
from pathlib import Path

import pytest
import torch

from cli_helpers import run
from nrpm.models import create_model

pytestmark = pytest.mark.usefixtures("single_thread")

FACTORIES = Path(__file__).with_name("vit_factories.py")
ROBUST = ["--lam", "0.5", "--K", "1", "--layer-types", "linear", "attention"]


def common(shared, out):
    return ["--data-root", str(shared / "data"), "--no-progress", "--threads", "1", "--out", str(out)]


@pytest.fixture(scope="module")
def random_state(tmp_path_factory):
    """A saved state_dict of the untrained registry ViT (the file form a trained one will have)."""
    path = tmp_path_factory.mktemp("vit") / "random_vit.pt"
    torch.manual_seed(0)
    torch.save(create_model("vit_tiny_cifar").state_dict(), path)
    return path


@pytest.mark.parametrize("attack", [["fgsm"], ["pgd", "--attack-arg", "steps=2"]], ids=["fgsm", "pgd2"])
def test_eval_untrained_vit_with_robust_attention(attack, shared_dir, tmp_path, capsys):
    code, out, err = run(["eval", "--model", "vit_tiny_cifar", "--checkpoint", "none", *ROBUST, "--attack", *attack,
                          "--budgets", "0", "8", "--budget-unit", "255",
                          "--n-samples", "4", *common(shared_dir, tmp_path)], capsys)
    assert code == 0, err
    results = json.loads((tmp_path / "results.json").read_text())
    assert (tmp_path / "table.md").is_file() and results["settings"]["layer_types"] == ["linear", "attention"]


def test_audit_untrained_vit_quick_protocol(random_state, shared_dir, tmp_path, capsys):
    code, out, err = run(["audit", "--model", "vit_tiny_cifar", "--checkpoint", str(random_state), *ROBUST,
                          "--n-samples", "4", "--budgets", "8", "--budget-unit", "255", "--steps", "2",
                          "--apgd-steps", "2", "--square-queries", "10", "--no-autoattack",
                          "--skip-attacks", "cw", "spsa", "smoothed-eps10", "smoothed-eps100", "smoothed-k1",
                          *common(shared_dir, tmp_path)], capsys)
    assert code in (0, 1), err  # 1: a check failed, which an untrained model may well do
    assert (tmp_path / "audit.json").is_file() and (tmp_path / "audit.md").is_file()


def test_certify_untrained_vit(random_state, shared_dir, tmp_path, capsys):
    code, out, err = run(["certify", "--model", "vit_tiny_cifar", "--checkpoint", str(random_state), *ROBUST,
                          "--n-samples", "2", "--noise-samples", "20", "--n0", "5", "--sigma", "0.25",
                          *common(shared_dir, tmp_path)], capsys)
    assert code == 0, err
    assert any(tmp_path.glob("results.json")), sorted(p.name for p in tmp_path.iterdir())


def test_reprogram_paradigm2_untrained_vit(shared_dir, tmp_path, capsys):
    code, out, err = run(["reprogram", "--paradigm", "2", "--model", "vit_tiny_cifar", "--checkpoint", "none",
                          *ROBUST, "--epochs", "1", "--train-subset", "32", "--val-size", "16", "--batch-size", "16",
                          "--test-samples", "4", *common(shared_dir, tmp_path)], capsys)
    assert code == 0, err
    assert (tmp_path / "reprogramming.pt").is_file(), sorted(p.name for p in tmp_path.iterdir())
    # the patch embedding (a Conv2d, not a chosen type) is reported as a note line, not as a Python warning
    assert "note: reprogramming left 1 weight-bearing module(s) plain: patch_embed" in err
    assert "UnreprogrammedWeightsWarning" not in err


def _eval_factory(factory, shared, out, capsys):
    code, stdout, err = run(["eval", "--model", f"{FACTORIES}:{factory}", "--checkpoint", "none", "--data",
                             "cifar10", *ROBUST, "--budgets", "0", "--n-samples", "4", *common(shared, out)], capsys)
    assert code == 0, err
    return err, json.loads((out / "results.json").read_text())["notes"]


def test_timm_style_attention_is_reported_not_made_robust(shared_dir, tmp_path, capsys):
    err, notes = _eval_factory("timm_vit", shared_dir, tmp_path, capsys)
    note = next(n for n in notes if "nn.MultiheadAttention only" in n)
    assert "blocks.0.attn (Attention)" in note and "blocks.1.attn (Attention)" in note
    assert f"note: {note}" in err


def test_hf_style_attention_weights_are_reported_plain(shared_dir, tmp_path, capsys):
    err, notes = _eval_factory("hf_vit", shared_dir, tmp_path, capsys)
    plain = [n for n in notes if "stays plain" in n]
    assert any(n.startswith("blocks.0.attn stays plain: nrpm does not reprogram ViTSelfAttention") for n in plain)
    assert all(f"note: {n}" in err for n in plain) and "UnreprogrammedWeightsWarning" not in err
