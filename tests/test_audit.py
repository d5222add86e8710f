"""Tests for nrpm.audit (the adaptive-attack audit) and the `nrpm audit` / `nrpm audit-table` commands.

Tiny models on a synthetic 5-class problem (audit_helpers), small budgets and step counts: a plain reprogrammed
model must pass, deliberately gradient-masked ones must fail. The cells' cache (resume, fingerprint, keys):
test_audit_cells.py.
"""

import argparse
import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

import nrpm
from nrpm import audit as AU
from nrpm.audit import FAIL, PASS, SKIP, WARN, lam_one, run_audit, straight_through

from audit_helpers import (BUDGETS, D, FAST, N_CLASSES, QUICK, make_data, reprogrammed, trained_linear,
                           writing_to)

pytestmark = pytest.mark.usefixtures("single_thread")  # tiny models (conftest.py)


class Round(nn.Module):
    """Quantises the input: zero gradient everywhere (the textbook gradient-masking defense)."""

    def forward(self, x):
        return torch.round(x * 4) / 4


class _ZeroGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, t):
        return t.clone()

    @staticmethod
    def backward(ctx, grad):
        return torch.zeros_like(grad)


class MaskedRobustLinear(nrpm.RobustLinear):
    """A robust layer whose robust computation has a broken backward (returns zero): BPDA and transfer must
    expose it. The masking sits inside the robust path, where an NRPM layer's own would be: BPDA
    (``backward_mode="plain"``) replaces exactly that backward with the plain layer's."""

    def _robust_forward(self, x, detach_weights):
        return _ZeroGrad.apply(super()._robust_forward(x, detach_weights))


class Noisy(nn.Module):
    def forward(self, x):
        return x + 0.05 * torch.randn_like(x)


@pytest.fixture(scope="module")
def samples():
    return make_data(100, 7)


@pytest.fixture(scope="module")
def good_report(samples):
    model = reprogrammed(trained_linear())
    return run_audit(model, *samples, budgets=BUDGETS, compare_plain=False, autoattack=True,
                     **{**FAST, "apgd_steps": 50})


@pytest.fixture(scope="module")
def masked_report(samples):
    model = reprogrammed(nn.Sequential(Round(), trained_linear()))
    return run_audit(model, *samples, budgets=BUDGETS, compare_plain=True, autoattack=False, **FAST)


# ------------------------------------------------------------------------------------------ the two verdicts
def test_plain_small_model_passes(good_report):
    verdicts = {c.id: c.verdict for c in good_report.checks}
    assert sorted(verdicts) == [1, 2, 3, 4, 5, 6, 7]
    assert good_report.passed and good_report.verdict in (PASS, WARN), good_report.to_markdown()
    assert all(v in (PASS, WARN) for v in verdicts.values()), verdicts
    assert verdicts[1] == verdicts[2] == verdicts[3] == PASS
    assert not good_report.errors
    # the unbounded budget breaks everything; the worst case is below every single attack
    assert good_report.check(3).numbers["unbounded_accuracy"] == 0.0
    for b in BUDGETS:
        singles = [c["accuracy"] for c in good_report.cells if c["budget"] == b and not c.get("extra")]
        assert good_report.worst_case["nrpm"][b] <= min(singles)
    assert good_report.accuracy("autoattack", BUDGETS[-1]) is not None


def test_gradient_masked_model_fails(masked_report):
    verdicts = {c.id: c.verdict for c in masked_report.checks}
    assert masked_report.verdict == FAIL and not masked_report.passed
    assert verdicts[2] == FAIL                     # zero input gradients
    assert verdicts[3] == FAIL                     # accuracy stays up at Linf 1.0
    assert verdicts[5] == FAIL                     # Square beats every white-box attack
    assert verdicts[7] == SKIP                     # autoattack=False
    assert masked_report.check(2).numbers["fraction_margin"] == 0.0
    md = masked_report.to_markdown()
    assert "**Verdict: FAIL (reduced protocol: no AutoAttack" in md and "plain (lam=1)" in md  # plain rows in the table


def test_bpda_and_transfer_expose_a_robust_layer_with_a_broken_backward(samples):
    torch.manual_seed(0)
    plain = trained_linear()
    model = nn.Sequential(MaskedRobustLinear.from_module(plain[0], lam=0.8, K=1))
    report = run_audit(model, *samples, budgets=[0.2], compare_plain=False, autoattack=False,
                       **{**FAST, "steps": 10, "square_queries": 50})
    check6 = report.check(6)
    assert check6.verdict == FAIL, check6
    assert check6.numbers["bpda"]["largest_lead"] > 0.2
    assert check6.numbers["transfer"]["largest_lead"] > 0.2
    assert report.check(2).verdict == FAIL


def test_under_converged_pgd_fails_the_steps_check(samples):
    model = reprogrammed(trained_linear())
    report = run_audit(model, *samples, budgets=[0.2], compare_plain=False, autoattack=False,
                       steps=2, alpha=0.2 / 10, apgd_steps=10, square_queries=20, seed=0)
    check4 = report.check(4)
    assert check4.verdict == FAIL, check4
    assert check4.numbers["pgd-x4-steps"]["drop"] > 0.04


# ------------------------------------------------------------------------------------------ check 1 pieces
def test_check1_flags_randomness_and_a_wrong_base(samples):
    x, _ = samples
    layers = nrpm.robust_layers
    good = reprogrammed(trained_linear())
    base = nrpm.undo_reprogramming(reprogrammed(trained_linear()))

    def check1(model, reference):
        probe = AU.probe_forward(model, reference, layers(model), x, 64, torch.device("cpu"))
        return AU.check_lam_and_determinism(AU.Evidence(forward=probe))

    ok = check1(good, base)
    assert ok.verdict == PASS and ok.numbers["lam1_max_abs_diff"] == 0.0

    noisy = reprogrammed(nn.Sequential(Noisy(), trained_linear()))
    assert check1(noisy, None).verdict == FAIL

    other = nn.Sequential(nn.Linear(D, N_CLASSES))  # different weights: lam = 1 cannot reproduce it
    assert check1(good, other).verdict == FAIL


def test_lam_one_is_exact_for_a_learnable_lam_and_restores_it(samples):
    x, _ = samples
    model = nrpm.reprogram(trained_linear(), nrpm.ReprogramConfig(lam=0.3, K=2, paradigm=2))
    base = nrpm.undo_reprogramming(nrpm.reprogram(trained_linear(), nrpm.ReprogramConfig(lam=0.3, K=2)))
    before = [p.detach().clone() for p in nrpm.lam_parameters(model)]
    with torch.no_grad():
        robust = model(x)
        with lam_one(model):
            at_one = model(x)
        after = model(x)
    assert torch.allclose(at_one, base(x), atol=1e-5)
    assert not torch.allclose(robust, at_one, atol=1e-3)
    assert torch.equal(robust, after)
    assert all(torch.equal(a, b) for a, b in zip(before, nrpm.lam_parameters(model)))


def test_straight_through_forward_value_plain_gradient_and_restore(samples):
    x, y = samples
    model = reprogrammed(trained_linear(), lam=0.3)
    layer = nrpm.robust_layers(model)["0"]
    xg = x[:8].clone().requires_grad_(True)
    with torch.no_grad():
        robust_out = model(x[:8])
    with straight_through(model):
        out = model(xg)
        (grad,) = torch.autograd.grad(out[:, 0].sum(), xg)
    assert torch.allclose(out, robust_out, atol=1e-6)
    assert torch.allclose(grad, layer.weight[0].expand_as(grad))  # the plain linear layer's gradient
    assert "forward" not in layer.__dict__


def test_audit_leaves_the_model_as_it_found_it(samples):
    model = reprogrammed(trained_linear(), lam=0.8)
    model.train()
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    lams = nrpm.lam_table(model)
    report = run_audit(model, *samples, budgets=[0.2], lam=0.5, compare_plain=False, autoattack=False,
                       steps=3, apgd_steps=3, square_queries=10, seed=0)
    assert report.settings["robust_layers"]["0"]["lam"] == 0.5
    assert nrpm.lam_table(model) == lams
    assert model.training and flags == {n: p.requires_grad for n, p in model.named_parameters()}
    assert all("forward" not in m.__dict__ for m in model.modules())
    assert not any(m.detach_weights for m in nrpm.robust_layers(model).values())


# ------------------------------------------------------------------------------------------ files and cache
def test_report_files_and_resume(samples, tmp_path, monkeypatch):
    model = reprogrammed(trained_linear())
    kwargs = dict(budgets=[0.2], compare_plain=True, autoattack=False, steps=3, apgd_steps=3, square_queries=10,
                  seed=0)
    first = run_audit(model, *samples, AU.AuditConfig(**kwargs), writing_to(tmp_path))
    paths = {kind: tmp_path / f"audit.{kind}" for kind in ("json", "md", "png")}  # written by the run
    data = json.loads(paths["json"].read_text())
    assert data["format"] == "nrpm-audit/1" and data["verdict"] == first.verdict
    assert [c["id"] for c in data["checks"]] == [1, 2, 3, 4, 5, 6, 7]
    assert paths["md"].read_text().startswith("# nrpm audit")
    assert paths["png"].stat().st_size > 0

    def no_attacks(*args, **kwargs):
        raise AssertionError("a cached cell was recomputed")

    monkeypatch.setattr(AU.cells.CellRunner, "attack_candidates", no_attacks)
    second = run_audit(model, *samples, AU.AuditConfig(**kwargs), writing_to(tmp_path))
    assert [(c["attack"], c["accuracy"]) for c in second.cells] == [(c["attack"], c["accuracy"]) for c in first.cells]
    assert [c.verdict for c in second.checks] == [c.verdict for c in first.checks]
    other = reprogrammed(nn.Sequential(nn.Linear(D, N_CLASSES)))
    with pytest.raises(ValueError, match="results of other settings.*model:"):
        run_audit(other, *samples, AU.AuditConfig(**kwargs), writing_to(tmp_path))


def test_bad_arguments(samples):
    model = reprogrammed(trained_linear())
    with pytest.raises(ValueError, match="budget"):
        run_audit(model, *samples, budgets=[0])
    with pytest.raises(ValueError, match="norm"):
        run_audit(model, *samples, budgets=[0.1], norm="L1")
    with pytest.raises(ValueError, match="steps"):
        run_audit(model, *samples, budgets=[0.1], steps=0)
    with pytest.raises(ValueError, match="no robust layers"):
        run_audit(trained_linear(), *samples, budgets=[0.1], lam=0.5)


# ------------------------------------------------------------------------------------------ CLI
def _cli(argv):
    from nrpm.cli.audit import add_audit_parser

    parser = argparse.ArgumentParser(prog="nrpm")
    add_audit_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


@pytest.fixture
def no_spsa(monkeypatch):
    """``nrpm audit`` has no SPSA options (yet), so its tests leave SPSA out: even 2 steps of 4 queries push the
    NRPM MLP's batches past the size at which the kernels compile (~10 s here; the rest of the audit takes 3 s).
    SPSA in the audit is tested above."""
    run = AU.run_audit
    monkeypatch.setattr(AU, "run_audit", lambda *a, **k: run(*a, **{"skip_attacks": ("spsa",), **k}))


def test_cli_audit_and_table(shared_dir, tmp_path, capsys, no_spsa):
    out = tmp_path / "mlp3"
    rc = _cli(["audit", "--model", "mlp3", "--lam", "0.8", "--K", "1", "--n-samples", "12", "--budgets", "0.1",
               "--steps", "2", "--apgd-steps", "2", "--square-queries", "5", "--no-autoattack", "--no-progress",
               "--out", str(out)])
    data = json.loads((out / "audit.json").read_text())
    assert rc == (1 if data["verdict"] == FAIL else 0)
    assert (out / "audit.md").exists() and (out / "audit.png").exists() and (out / "cache.json").exists()
    assert data["settings"]["eval_settings"]["model"] == "mlp3"
    assert "plain" in data["worst_case"] and data["settings"]["n"] == 12
    assert "# nrpm audit: mlp3 (paper checkpoint)" in capsys.readouterr().out  # no --checkpoint: the paper's
    assert data["settings"]["title"] == "mlp3 (paper checkpoint)"

    assert _cli(["audit-table", str(out), "--out", str(tmp_path / "TABLES.md")]) == 0
    table = (tmp_path / "TABLES.md").read_text()
    assert "mlp3" in table and "worst case" in table
    running = tmp_path / "running"  # an audit in progress has only its cache: listed as unfinished
    running.mkdir()
    (running / "cache.json").write_text("{}")
    assert _cli(["audit-table", str(out), str(running)]) == 0
    assert "Not finished" in capsys.readouterr().out
    with pytest.raises(FileNotFoundError, match="no audit report"):
        _cli(["audit-table", str(tmp_path / "nowhere")])

    with pytest.raises(SystemExit):
        _cli(["audit", "--model", "mlp3", "--lam", "0.8", "0.7", "--n-samples", "4"])


# ------------------------------------------------------------------------------------------ verdict rules
def _evidence(accuracies, n=100, **fields):
    """Made-up evidence: {(attack, budget): accuracy} -> per-sample masks of the audited model's sweep."""
    masks = {("nrpm", key, round(b, 10)): torch.arange(n) < round(acc * n) for (key, b), acc in accuracies.items()}
    swept = {("nrpm", key): key for key, _b in accuracies}
    budgets = tuple(sorted({b for _key, b in accuracies}))
    return AU.Evidence(budgets=budgets, n=n, masks=masks, swept=swept, clean_accuracy={"nrpm": 0.9}, **fields)


def test_verdict_rules_for_the_budget_curve_and_autoattack():
    zero = torch.zeros(100, dtype=torch.bool)
    rising = _evidence({("pgd", 0.1): 0.3, ("pgd", 0.2): 0.5}, unbounded_mask=zero)
    assert AU.check_budget_curve(rising).verdict == FAIL
    falling = _evidence({("pgd", 0.1): 0.5, ("pgd", 0.2): 0.3}, unbounded_mask=zero)
    assert AU.check_budget_curve(falling).verdict == PASS

    def check7(aa_acc, flags=()):
        ev = _evidence({("pgd", 0.1): 0.40, ("apgd-ce", 0.1): 0.38, ("autoattack", 0.1): aa_acc},
                       autoattack_flags=tuple(flags))
        return AU.check_autoattack(ev).verdict

    assert check7(0.37) == PASS      # within 2 points of the strongest (APGD-CE 38%)
    assert check7(0.35) == WARN      # 3 points lower: within twice the tolerance
    assert check7(0.30) == FAIL      # AutoAttack finds much more: the other attacks were weak
    assert check7(0.45) == WARN      # AutoAttack much weaker than our attacks: disagreement, not a failure
    assert check7(0.38, ["there are 3 points with zero gradient!"]) == WARN


def test_cli_audit_refuses_a_folder_another_run_writes(shared_dir, tmp_path):
    from nrpm._io import output_dir_lock

    with output_dir_lock(tmp_path, "audit"):
        with pytest.raises(RuntimeError, match="in use by nrpm audit"):
            _cli(["audit", "--model", "mlp3", "--lam", "0.8", "--n-samples", "4", "--budgets", "0.1",
                  "--no-autoattack", "--no-progress", "--out", str(tmp_path)])
    assert not any(tmp_path.iterdir())  # nothing written, and the holder's lock is gone with it


def test_cli_audit_of_a_saved_reprogramming_next_to_the_paper_checkpoint(shared_dir, tmp_path, no_spsa):
    from nrpm.models import load_pretrained

    model, _ = load_pretrained("mlp3")
    nrpm.reprogram(model, nrpm.ReprogramConfig(lam=0.6, K=1, eps=5e-5, paradigm=2))  # a learnable lam
    nrpm.set_lam(model, {"fc1": 0.7})
    nrpm.save_reprogramming(model, tmp_path / "reprogramming.pt")
    out = tmp_path / "p2"
    _cli(["audit", "--model", "mlp3", "--reprogramming", str(tmp_path / "reprogramming.pt"), "--plain-checkpoint",
          "pretrained", "--threads", "1", "--n-samples", "8", "--budgets", "0.1", "--steps", "2", "--apgd-steps",
          "2", "--square-queries", "5", "--no-autoattack", "--no-progress", "--out", str(out)])
    data = json.loads((out / "audit.json").read_text())
    layers = data["settings"]["robust_layers"]
    assert layers["fc1"]["learnable"] and abs(layers["fc1"]["lam"] - 0.7) < 1e-6 and layers["fc1"]["K"] == 1
    assert data["settings"]["model_labels"]["plain"] == "plain (paper checkpoint)"
    assert data["checks"][0]["verdict"] == PASS  # lam = 1 (infinite logit) reproduces the base model


# ------------------------------------------------------------------------------------------ configuration


def test_audit_config_validates_and_keywords_override_it(samples):
    config = AU.AuditConfig(budgets=[0.2, 0.1, 0], steps=3)
    assert config.budgets == [0.1, 0.2] and config.tolerances == AU.Tolerances()
    with pytest.raises(ValueError, match="alpha must be a number > 0"):
        AU.AuditConfig(budgets=[0.1], alpha=-1.0)
    with pytest.raises(ValueError, match="steps must be an integer"):
        AU.AuditConfig(budgets=[0.1], steps=True)
    with pytest.raises(TypeError):
        run_audit(reprogrammed(trained_linear()), *samples, budgets=[0.1], stpes=3)  # misspelt: refused

    model = reprogrammed(trained_linear())
    x, y = samples[0][:30], samples[1][:30]
    by_config = run_audit(model, x, y, AU.AuditConfig(budgets=[0.2], steps=2, **QUICK))
    by_override = run_audit(model, x, y, AU.AuditConfig(budgets=[0.2], steps=7, **QUICK), steps=2)
    assert by_override.settings["steps"] == 2
    assert [(c["attack"], c["correct"]) for c in by_override.cells] == [(c["attack"], c["correct"])
                                                                        for c in by_config.cells]


# ------------------------------------------------------------------------------------------ public layer APIs only
_PRIVATE_LAYER_STATE = ("_buffers", "lam_logit.fill_", ".forward =", "_lam_storage", "_set_lam_storage",
                        "_robust_forward", "_forward_with_mode", "_fixed_lam", "detach_weights")


def test_the_audit_uses_no_private_layer_state(samples):
    for path in Path(AU.__file__).parent.glob("*.py"):
        text = path.read_text()
        for needle in _PRIVATE_LAYER_STATE:
            assert needle not in text, f"nrpm/audit/{path.name} uses {needle!r}"

    # a learnable lam (paradigm 2): lam_one and the audit's lam override go through nrpm.nn.lam_override
    model = nrpm.reprogram(trained_linear(), nrpm.ReprogramConfig(lam=0.3, K=1, paradigm=2))
    (logit,) = nrpm.lam_parameters(model)
    before = logit.detach().clone()
    with lam_one(model):
        assert logit.item() == math.inf and nrpm.robust_layers(model)["0"].lam_value() == 1.0
    assert torch.equal(logit.detach(), before)
    x, y = samples[0][:30], samples[1][:30]
    report = run_audit(model, x, y, budgets=[0.2], lam=0.6, steps=2, **QUICK)
    assert torch.equal(logit.detach(), before) and logit.requires_grad
    layer = report.settings["robust_layers"]["0"]
    assert layer["learnable"] and abs(layer["lam"] - 0.6) < 1e-6
    assert report.check(1).verdict == PASS, report.check(1)  # lam = 1 (an infinite logit) is the base model
    assert not report.errors


# ------------------------------------------------------------------------------------------ damaged cache


# ------------------------------------------------------------------------------------------ plot
def _rgb(colour):
    return tuple(int(colour[i:i + 2], 16) for i in (1, 3, 5))


def test_plot_styles_one_colour_family_per_attack_family(good_report, tmp_path):
    from nrpm.audit.report import WORST_CASE, attack_family

    attacks = ["pgd", "fgsm", "apgd-ce", "apgd-dlr", "square", "noise", "transfer", "bpda", "detached", "autoattack"]
    styles = AU.curve_styles(attacks + [WORST_CASE, f"plain {WORST_CASE}"])
    families = {}
    for key in attacks:
        families.setdefault(attack_family(key), []).append(styles[key])
    assert set(families) == {"pgd", "apgd", "blackbox", "adaptive", "fgsm", "autoattack"}
    colours = [s["color"] for s in styles.values() if s["color"] != "black"]
    assert len(set(colours)) == len(colours)                    # every curve its own shade
    for family, members in families.items():
        assert len({s["marker"] for s in members}) == 1         # one marker per family
    hue_rules = {"pgd": lambda r, g, b: b > r and b > g, "apgd": lambda r, g, b: g > r and g > b,
                 "blackbox": lambda r, g, b: r > g > b, "adaptive": lambda r, g, b: b > g and r > g,
                 "fgsm": lambda r, g, b: r == g == b, "autoattack": lambda r, g, b: r > 2 * g and r > 2 * b}
    for family, members in families.items():
        assert all(hue_rules[family](*_rgb(s["color"])) for s in members), (family, members)
    bold = styles[WORST_CASE]
    assert bold["color"] == "black" and bold["linewidth"] > max(styles[k]["linewidth"] for k in attacks)
    assert styles[f"plain {WORST_CASE}"]["linestyle"] == "--"

    curves = good_report.curve_data()
    assert list(curves)[-1] == WORST_CASE and {"pgd", "autoattack", "transfer"} <= set(curves)
    path = tmp_path / "audit.png"
    good_report.plot(path)
    assert path.stat().st_size > 0


# ------------------------------------------------------------------------------------------ shattered gradients
class SharpInputMap(nn.Module):
    """x -> x + 0.02 sin(1000 x): moves inputs by at most 0.02, but its derivative 1 + 20 cos(1000 x) flips sign
    every ~3e-3, so input gradients are finite, non-zero and useless (shattered, Athalye et al. 2018)."""

    def forward(self, x):
        return x + 0.02 * torch.sin(1000 * x)


class EpsSharpRobustLinear(nrpm.RobustLinear):
    """A robust layer that is sharp at its own IRLS eps, as NRPM's weights 1 / (|r| + eps) can be: its output
    gains a ripple 0.01 sin(x R / eps) of period ~eps, which shatters the exact gradient at eps = 1e-3 but is
    smooth at eps x100, where the smoothed-IRLS attacks take their gradient."""

    def _robust_forward(self, x, detach_weights):
        return super()._robust_forward(x, detach_weights) + 0.01 * torch.sin(x @ self.ripple / self.eps)


def test_shattered_gradients_fail_the_audit_through_spsa(samples):
    model = nn.Sequential(SharpInputMap(), trained_linear())
    x, y = samples[0][:60], samples[1][:60]
    report = run_audit(model, x, y, budgets=[0.25], compare_plain=False, autoattack=False, steps=20, apgd_steps=10,
                       square_queries=50, spsa_steps=50, spsa_samples=32, seed=0)
    assert report.verdict == FAIL
    assert report.check(2).verdict == PASS            # the gradients look fine: finite and non-zero
    assert report.check(5).verdict == FAIL
    assert report.check(5).numbers["spsa"]["largest_lead"] > 0.5   # gradient-free SPSA breaks what PGD cannot
    assert report.accuracy("cw", 0.25) > 0.8          # the margin loss does not help a shattered gradient
    assert report.worst_case["nrpm"][0.25] <= report.accuracy("spsa", 0.25)


def test_smoothed_irls_attacks_expose_a_layer_sharp_at_its_eps(samples):
    plain = trained_linear()
    layer = EpsSharpRobustLinear.from_module(plain[0], lam=0.8, K=1)
    layer.ripple = torch.randn(D, N_CLASSES, generator=torch.Generator().manual_seed(5))
    x, y = samples[0][:60], samples[1][:60]
    report = run_audit(nn.Sequential(layer), x, y, budgets=[0.2], compare_plain=False, autoattack=False, steps=10,
                       apgd_steps=10, square_queries=20, skip_attacks=("cw", "spsa"), seed=0)
    check6 = report.check(6)
    assert check6.verdict == FAIL, check6
    assert check6.numbers["smoothed-eps100"]["largest_lead"] > 0.5
    assert check6.numbers["smoothed-eps10"]["largest_lead"] > 0.3
    assert abs(check6.numbers["smoothed-k1"]["largest_lead"]) < 0.05   # K=1 is this layer's own K: no smoothing
    assert report.accuracy("pgd", 0.2) > 0.9 and report.accuracy("smoothed-eps100", 0.2) < 0.4
    assert layer.eps == 1e-3 and layer.K == 1                         # irls_override restored the layer
    assert {"cw", "spsa"}.isdisjoint(c["attack"] for c in report.cells)
    assert "skipped spsa: switched off (skip_attacks)" in report.notes


# ------------------------------------------------------------------------------------------ new cells, old caches


def test_new_audit_options_are_validated(samples):
    with pytest.raises(ValueError, match="skip_attacks may only name"):  # checked against the plan, before any work
        AU.run_audit(reprogrammed(trained_linear()), *samples, AU.AuditConfig(budgets=[0.1], skip_attacks=("pgd",)))
    with pytest.raises(ValueError, match="spsa_samples must be even"):
        AU.AuditConfig(budgets=[0.1], spsa_samples=5)
    with pytest.raises(ValueError, match="spsa_steps must be an integer"):
        AU.AuditConfig(budgets=[0.1], spsa_steps=0)
    config = AU.AuditConfig(budgets=[0.1])
    assert (config.spsa_steps, config.spsa_samples, config.skip_attacks) == (50, 64, ())


def test_every_audit_attack_has_its_own_colour_in_its_family():
    from nrpm.audit.report import attack_family

    keys = ["pgd", "fgsm", "apgd-ce", "apgd-dlr", "square", "noise", "transfer", "bpda", "detached", "cw", "spsa",
            *AU.SMOOTHINGS, "autoattack"]
    assert attack_family("cw") == "pgd" and attack_family("spsa") == "blackbox"
    assert all(attack_family(k) == "adaptive" for k in AU.SMOOTHINGS)
    colours = [style["color"] for style in AU.curve_styles(keys).values()]
    assert len(set(colours)) == len(colours)


# ------------------------------------------------------------------------------------------ registered attacks
def test_a_registered_attack_with_a_role_joins_the_cli_and_the_audit(samples):
    """@register_attack(name, audit=role): a --attack choice, and in the audit's sweep, its optional attacks and
    its role's check, with no list of the audit to edit."""
    import nrpm.attacks as A
    from nrpm.cli.args import attack_name

    @A.register_attack("test-noise-bb", audit=A.BLACK_BOX)
    class Extra(A.NoiseAttack):
        """Random noise registered as a black-box attack."""

    try:
        assert attack_name("TEST_noise_bb") == "TEST_noise_bb"
        assert AU.plan.sweep_keys()[-1] == "test-noise-bb" and "test-noise-bb" in AU.optional_keys()
        assert "test-noise-bb" in AU.keys_with_role(A.BLACK_BOX)
        model = reprogrammed(trained_linear())
        x, y = samples[0][:20], samples[1][:20]
        report = run_audit(model, x, y, budgets=[0.2], steps=2, skip_attacks=("spsa",), **QUICK)
        assert report.accuracy("test-noise-bb", 0.2) is not None and "test-noise-bb" in report.check(5).numbers
        assert AU.report.attack_family("test-noise-bb") == "blackbox"
        skipped = run_audit(model, x, y, budgets=[0.2], steps=2, skip_attacks=("spsa", "test-noise-bb"), **QUICK)
        assert skipped.accuracy("test-noise-bb", 0.2) is None
    finally:
        A.unregister_attack("test-noise-bb")
    assert "test-noise-bb" not in AU.plan.sweep_keys()
    with pytest.raises(ValueError, match="role"):
        A.register_attack("x", audit="grey-box")


def test_survivors_only_keeps_the_worst_case_and_reads_checks_as_min(samples, tmp_path):
    """Survivors-only cells: the worst case is that of running every attack on every sample, each such cell's mask
    is its reference's mask AND the attack's own, and the cells seeded per sample equal the full run's there."""
    model = reprogrammed(trained_linear())
    x, y = samples[0][:40], samples[1][:40]
    kwargs = dict(budgets=[0.1, 0.2], compare_plain=True, autoattack=False, steps=3, apgd_steps=3,
                  square_queries=10, spsa_steps=2, spsa_samples=4, seed=0)
    full = run_audit(model, x, y, AU.AuditConfig(**kwargs, survivors_only=False))
    fast = run_audit(model, x, y, AU.AuditConfig(**kwargs))
    assert fast.worst_case["nrpm"] == full.worst_case["nrpm"]
    for cell in fast.cells:
        if cell["ran_on"] == "clean-correct" or cell["model"] != "nrpm" or cell.get("extra"):
            continue
        ref = cell["ran_on"].removeprefix("survivors of ")
        assert cell["correct"] <= fast.accuracy(ref, cell["budget"]) * len(x) + 1e-9
        if cell["attack"] in ("spsa", "transfer", "bpda", "detached", *AU.SMOOTHINGS):  # seeded per sample
            both = min(full.accuracy(ref, cell["budget"]), full.accuracy(cell["attack"], cell["budget"]))
            assert cell["correct"] <= both * len(x) + 1e-9
    assert [c.verdict for c in fast.checks][:4] == [c.verdict for c in full.checks][:4]


# ------------------------------------------------------------------------------------------ interrupted cells


def test_a_resumed_audits_run_time_also_gives_the_attacks_own_total():
    """A resumed audit ran for seconds, its cells for hours: the report's run time says both, never the seconds
    alone (the committed 100-image ResNet re-audit's cells, with a 21-second final run)."""
    data = json.loads(Path(__file__).resolve().parents[1].joinpath(
        "results/audit/resnet18_narrow_p1_lam0.9_K1_n100_reaudit/audit.json").read_text())
    cells = sum(c["seconds"] for c in data["cells"])
    resumed = AU.AuditReport.from_dict({**data, "seconds": 21.0})
    assert resumed.run_time_text() == (f"Run time 21 s on cpu (this run); the attack cells took {cells:.0f} s in "
                                       f"all, those resumed from cache.json at the time they took when they ran.")
    assert resumed.to_markdown().rstrip().endswith(resumed.run_time_text())
    whole = AU.AuditReport.from_dict({**data, "seconds": cells + 60})
    assert whole.run_time_text() == f"Run time {cells + 60:.0f} s on cpu."


def test_survivor_notes_give_budgets_in_the_reports_unit():
    from nrpm.audit.survivors import survivor_notes

    cells = [{"model": "nrpm", "label": "Square (1000 q.)", "budget": b / 255, "ran_on": "survivors of cw"}
             for b in (8, 16)]
    [note] = survivor_notes(cells, {"nrpm": "NRPM"}, unit=255.0)
    assert note.startswith("NRPM: Square (1000 q.) ran only on the samples the other attack left (cw at 8/255, "
                           "cw at 16/255)"), note


