"""Randomized smoothing (nrpm.certify, nrpm certify): the Clopper-Pearson bound, PREDICT and CERTIFY on models
whose answer is known, determinism, resuming, the result files and the refusal of bad input.

Tiny models and a few dozen noise samples: every test takes well under a second or two on one CPU thread.
"""

import csv
import json
import math
from pathlib import Path

import pytest
import torch
from scipy import stats
from torch import nn

import nrpm
import nrpm.functional as RF
from nrpm.certify import (ABSTAIN, CertifySettings, certify, lower_confidence_bound, max_certifiable_radius, predict,
                          run_certify,
                          sample_generator)
from nrpm.cli.args import Parser
from nrpm.cli.certify import add_certify_parser, cmd_certify
from nrpm.runs import RunContext

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


class Constant(nn.Module):
    """Always predicts ``label`` (of ``classes``), whatever the input and its noise."""

    def __init__(self, label: int = 0, classes: int = 3):
        super().__init__()
        self.logits = nn.Parameter(torch.zeros(classes))
        with torch.no_grad():
            self.logits[label] = 1.0

    def forward(self, x):
        return self.logits.expand(len(x), -1)


class CoinFlip(nn.Module):
    """Class 0 or 1 by the sign of the first input value: at an input of zeros, a fair coin under the noise."""

    def forward(self, x):
        first = x.flatten(1)[:, :1]
        return torch.cat([first, -first], dim=1)


def tiny_reprogrammed_model() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))
    return nrpm.reprogram(model, nrpm.ReprogramConfig(lam=1.0))


def tiny_data(count: int = 5):
    generator = torch.Generator().manual_seed(1)
    return torch.rand(count, 1, 2, 2, generator=generator), torch.randint(0, 3, (count,), generator=generator)


def small_run(out, **overrides):
    x, y = tiny_data()
    on_sample = overrides.pop("on_sample", None)
    return run_certify(tiny_reprogrammed_model(), x, y, *settings_and_context(out, **overrides), on_sample=on_sample)


def settings_and_context(out=None, **overrides):
    """CertifySettings and a quiet RunContext from keyword arguments (the run's defaults for this file)."""
    run_fields = {"overwrite", "progress", "log"}
    options = dict(lams=[1.0, 0.5], sigmas=[0.25], n0=10, n=50, alpha=0.01, batch_size=20, seed=3)
    options.update({k: v for k, v in overrides.items() if k not in run_fields})
    run = dict(progress=False, log=lambda message: None)
    run.update({k: v for k, v in overrides.items() if k in run_fields})
    return CertifySettings(**options), RunContext(Path(out) if out is not None else None, "certify", **run)


# ------------------------------------------------------------------------------------------ the bound
def test_the_clopper_pearson_bound_matches_known_values():
    # 5 of 10 at one-sided 95% = the lower end of the exact two-sided 90% interval (0.2224, 0.7776)
    assert lower_confidence_bound(5, 10, 0.05) == pytest.approx(0.222441, abs=1e-6)
    for n, alpha in [(100, 0.001), (1000, 0.001), (7, 0.05)]:
        assert lower_confidence_bound(n, n, alpha) == pytest.approx(alpha ** (1 / n), rel=1e-12)  # all successes
        assert lower_confidence_bound(1, n, alpha) == pytest.approx(1 - (1 - alpha) ** (1 / n), rel=1e-9)
        assert lower_confidence_bound(0, n, alpha) == 0.0
    for k, n, alpha in [(3, 20, 0.01), (480, 500, 0.001), (51, 100, 0.1)]:
        exact = stats.binomtest(k, n).proportion_ci(confidence_level=1 - 2 * alpha, method="exact").low
        assert lower_confidence_bound(k, n, alpha) == pytest.approx(exact, rel=1e-9)


# ------------------------------------------------------------------------------------------ PREDICT and CERTIFY
def test_a_constant_model_certifies_its_class_with_the_largest_radius():
    sigma, n, alpha = 0.5, 200, 0.001
    result = certify(Constant(0), torch.zeros(1, 2, 2), sigma, 10, n, alpha, batch_size=64,
                     generator=torch.Generator().manual_seed(0))
    assert result.prediction == 0 and result.counts_top == n
    assert result.pA_lower == pytest.approx(alpha ** (1 / n))
    assert result.radius == pytest.approx(sigma * stats.norm.ppf(alpha ** (1 / n)))
    assert predict(Constant(2), torch.zeros(1, 2, 2), sigma, 20, alpha, batch_size=7) == 2


def test_the_runner_marks_a_certified_wrong_class_as_not_correct():
    x, y = torch.zeros(2, 1, 2, 2), torch.tensor([0, 1])
    result = run_certify(Constant(0), x, y, *settings_and_context(lams=[1.0], sigmas=[0.25], n0=5, n=100,
                                                                  alpha=0.001, batch_size=50, seed=0))
    right, wrong = result["cells"]["lam=1|sigma=0.25"]["samples"]
    expected = 0.25 * stats.norm.ppf(0.001 ** (1 / 100))
    assert (right["prediction"], right["correct"], right["radius"]) == (0, True, pytest.approx(expected))
    assert (wrong["prediction"], wrong["correct"], wrong["radius"]) == (0, False, pytest.approx(expected))
    assert "| 1 | 0.25 | 2 | 50.0 | 0.0 | 50.0 |" in result["table"]  # half certified, half wrong


def test_too_few_samples_make_even_a_constant_model_abstain():
    # 3 of 3: the bound 0.1 ** (1/3) = 0.46 < 1/2, and a binomial test of 3 vs 0 has p = 0.25 > 0.1
    result = certify(Constant(1), torch.zeros(1, 2, 2), 0.25, 1, 3, 0.1)
    assert (result.prediction, result.radius, result.counts_top) == (ABSTAIN, 0.0, 3)
    assert predict(Constant(1), torch.zeros(1, 2, 2), 0.25, 3, 0.1) == ABSTAIN


def test_an_uncertain_model_abstains():
    x = torch.zeros(1, 2, 2)
    result = certify(CoinFlip(), x, 1.0, 20, 400, 0.001, batch_size=100, generator=torch.Generator().manual_seed(0))
    assert result.prediction == ABSTAIN and result.radius == 0.0 and result.pA_lower < 0.5
    assert 120 < result.counts_top < 280  # about half of 400
    assert predict(CoinFlip(), x, 1.0, 400, 0.001, generator=torch.Generator().manual_seed(0)) == ABSTAIN


def test_noise_comes_from_the_generator_and_never_from_the_global_rng():
    x = torch.rand(1, 2, 2)
    state = torch.get_rng_state()
    first = certify(CoinFlip(), x - 0.5, 0.5, 10, 100, 0.01, generator=sample_generator(7, 2))
    again = certify(CoinFlip(), x - 0.5, 0.5, 10, 100, 0.01, generator=sample_generator(7, 2))
    assert first == again
    assert torch.equal(torch.get_rng_state(), state)


def test_the_model_comes_back_in_its_mode_with_its_gradient_flags():
    model = tiny_reprogrammed_model().train()
    flags = [p.requires_grad for p in model.parameters()]
    certify(model, torch.rand(1, 2, 2), 0.25, 5, 20, 0.01)
    assert model.training and [p.requires_grad for p in model.parameters()] == flags


# ------------------------------------------------------------------------------------------ the runner
def test_the_same_seed_gives_the_same_results_and_another_seed_other_noise():
    first, again, other = small_run(None), small_run(None), small_run(None, seed=4)
    assert first["cells"] == again["cells"]
    counts = lambda result: [s["counts_top"] for c in result["cells"].values() for s in c["samples"]]
    assert counts(first) != counts(other)


class Stop(Exception):
    pass


def test_an_interrupted_run_resumes_and_ends_as_an_uninterrupted_one(tmp_path):
    whole = small_run(tmp_path / "whole")
    seen = []

    def stop_after_three(sample):
        seen.append(sample["index"])
        # save_every_s=0: results.json already holds every sample finished so far (a kill -9 loses none)
        on_file = json.loads((tmp_path / "cut" / "results.json").read_text())
        assert sum(len(c["samples"]) for c in on_file["cells"].values()) == len(seen)
        if len(seen) == 3:
            raise Stop

    with pytest.raises(Stop):
        small_run(tmp_path / "cut", on_sample=stop_after_three, save_every_s=0)
    rest = []
    resumed = small_run(tmp_path / "cut", on_sample=lambda sample: rest.append(sample), save_every_s=1e9)
    assert len(rest) == 2 * 5 - 3  # only the unfinished samples
    assert resumed["cells"] == whole["cells"]
    assert json.loads((tmp_path / "cut" / "results.json").read_text())["cells"] == whole["cells"]


def test_an_interruption_saves_what_it_finished_even_between_timed_saves(tmp_path):
    def stop_after_two(sample, seen=[]):
        seen.append(sample)
        if len(seen) == 2:
            raise Stop

    with pytest.raises(Stop):
        small_run(tmp_path, on_sample=stop_after_two, save_every_s=1e9)
    on_file = json.loads((tmp_path / "results.json").read_text())
    assert [len(c["samples"]) for c in on_file["cells"].values()] == [2]
    assert not (tmp_path / ".nrpm.lock").exists()


def test_results_of_other_settings_are_refused_naming_the_file_and_the_fix(tmp_path):
    small_run(tmp_path)
    with pytest.raises(ValueError, match=r"results\.json holds results of other settings.*n: 50 on file, 60 now"
                                         r".*--overwrite"):
        small_run(tmp_path, n=60)
    assert small_run(tmp_path, n=60, overwrite=True)["key"]["n"] == 60


def test_the_result_files_show_certified_accuracy_falling_with_the_radius(tmp_path):
    result = small_run(tmp_path, sigmas=[0.25, 0.5])
    for name in ("results.json", "results.csv", "table.md", "certified.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    on_file = json.loads((tmp_path / "results.json").read_text())
    assert on_file["format"] == "nrpm-certify/1" and on_file["versions"]["scipy"]
    assert sorted(on_file["cells"]) == ["lam=0.5|sigma=0.25", "lam=0.5|sigma=0.5", "lam=1|sigma=0.25",
                                        "lam=1|sigma=0.5"]
    rows = list(csv.DictReader((tmp_path / "results.csv").open()))
    assert len(rows) == 4
    for row in rows:
        radii = sorted((float(k[2:]), float(v)) for k, v in row.items() if k.startswith("r="))
        assert radii[0][0] == 0 and radii[-1][0] >= 1.0
        accuracies = [acc for _, acc in radii]
        assert accuracies == sorted(accuracies, reverse=True)
        assert float(row["smoothed_accuracy"]) == accuracies[0]
    table = (tmp_path / "table.md").read_text()
    assert "not clipped" in table and "| lam | sigma | n | base clean | abstain | r=0 | r=0.25 |" in table
    assert result["table"] in table


@pytest.mark.parametrize("change, fragment", [
    ({"sigmas": [0.0]}, "sigma"), ({"sigmas": [-1.0]}, "sigma"), ({"sigmas": [math.nan]}, "sigma"),
    ({"sigmas": []}, "sigma"), ({"n": 0}, "n"), ({"n0": 0}, "n0"), ({"alpha": 0.0}, "alpha"),
    ({"alpha": 1.0}, "alpha"), ({"batch_size": 0}, "batch_size"), ({"lams": [1.5]}, "lam"),
    ({"lams": []}, "lam"), ({"seed": 1.5}, "seed"),
])
def test_bad_runner_input_raises_a_clear_value_error(change, fragment):
    with pytest.raises(ValueError, match=fragment):
        small_run(None, **change)


def test_bad_certify_input_and_lam_on_a_plain_model_raise():
    x = torch.zeros(1, 2, 2)
    for args in [(0.0, 10, 10, 0.01), (0.25, 0, 10, 0.01), (0.25, 10, 0, 0.01), (0.25, 10, 10, 1.0)]:
        with pytest.raises(ValueError):
            certify(Constant(), x, *args)
    with pytest.raises(ValueError, match="alpha"):
        predict(Constant(), x, 0.25, 10, 0.0)
    with pytest.raises(ValueError, match="no robust layers"):
        run_certify(Constant(), x.unsqueeze(0), torch.tensor([0]), CertifySettings(lams=[0.5]))


# ------------------------------------------------------------------------------------------ the command
def certify_parser() -> Parser:
    parser = Parser(prog="nrpm")
    add_certify_parser(parser.add_subparsers(dest="command", required=True))
    return parser


def test_the_command_has_the_documented_defaults():
    args = certify_parser().parse_args(["certify", "--model", "mlp3"])
    assert (args.sigma, args.n0, args.n, args.alpha, args.lam) == ([0.25, 0.5], 100, 1000, 0.001, None)
    assert args.func is cmd_certify and args.n_samples == 100 and not args.overwrite


@pytest.mark.parametrize("flag, value", [("--sigma", "0"), ("--sigma", "-1"), ("--n", "0"), ("--n0", "0"),
                                         ("--alpha", "0"), ("--alpha", "1"), ("--lam", "2")])
def test_bad_command_values_exit_2_with_one_line(flag, value, capsys):
    with pytest.raises(SystemExit) as exit_:
        certify_parser().parse_args(["certify", "--model", "mlp3", flag, value])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.startswith(f"nrpm certify: error: argument {flag}") and err.count("\n") == 1


def test_a_namespace_with_bad_values_raises_before_any_work():
    args = certify_parser().parse_args(["certify", "--model", "mlp3"])
    args.sigma = [0.0]
    with pytest.raises(ValueError, match="sigma"):
        cmd_certify(args)


@pytest.fixture
def eager_kernels():
    """The eager NRPM kernels: compiling them would take longer than this test's few forward passes."""
    previous = RF.get_backend()
    RF.set_backend("eager")
    yield
    RF.set_backend(previous)


def test_the_command_certifies_the_paper_mlp_and_resumes(tmp_path, capsys, eager_kernels):
    if not SHARED.is_dir():
        pytest.skip("../shared not present")
    argv = ["certify", "--model", "mlp3", "--n-samples", "3", "--n0", "5", "--n", "20", "--sigma", "0.25",
            "--lam", "1", "0.5", "--batch-size", "25", "--no-progress", "--threads", "1", "--out", str(tmp_path)]
    args = certify_parser().parse_args(argv)
    assert cmd_certify(args) == 0
    out, err = capsys.readouterr()
    assert "| 1 | 0.25 | 3 |" in out and "| 0.5 | 0.25 | 3 |" in out
    first = json.loads((tmp_path / "results.json").read_text())
    assert cmd_certify(certify_parser().parse_args(argv)) == 0
    assert "resuming: 6 of 6 samples" in capsys.readouterr().err
    assert json.loads((tmp_path / "results.json").read_text())["cells"] == first["cells"]


FACTORY = '''
import torch
from torch import nn


def tiny(classes=4, hidden=8):
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 16, hidden), nn.ReLU(), nn.Linear(hidden, classes))
'''


def test_the_command_certifies_a_normalised_factory_model_on_a_tensors_file(tmp_path, capsys, eager_kernels):
    (tmp_path / "nets.py").write_text(FACTORY)
    torch.manual_seed(1)
    weights = nn.Sequential(nn.Flatten(), nn.Linear(48, 6), nn.ReLU(), nn.Linear(6, 4)).state_dict()
    torch.save(weights, tmp_path / "w.pt")
    generator = torch.Generator().manual_seed(0)
    torch.save({"x": torch.rand(4, 3, 4, 4, generator=generator), "y": torch.arange(4)}, tmp_path / "d.pt")
    argv = ["certify", "--model", f"{tmp_path / 'nets.py'}:tiny", "--model-arg", "hidden=6", "--checkpoint",
            str(tmp_path / "w.pt"), "--data", f"tensors:{tmp_path / 'd.pt'}", "--normalize", "0.5", "0.25",
            "--n-samples", "2", "--n0", "4", "--n", "10", "--sigma", "0.25", "--lam", "0.5", "--no-progress",
            "--threads", "1", "--out", str(tmp_path / "out")]
    assert cmd_certify(certify_parser().parse_args(argv)) == 0
    assert "| 0.5 | 0.25 | 2 |" in capsys.readouterr().out
    info = json.loads((tmp_path / "out" / "results.json").read_text())["info"]
    assert info["model_info"]["kind"] == "file" and info["model_info"]["normalize"] == {"mean": [0.5], "std": [0.25]}
    assert info["data_info"]["kind"] == "tensors" and info["robust_layers"] == ["1", "3"]


def test_a_factory_model_without_data_is_refused_before_any_work(tmp_path):
    from nrpm.cli.args import UsageError

    (tmp_path / "nets.py").write_text(FACTORY)
    args = certify_parser().parse_args(["certify", "--model", f"{tmp_path / 'nets.py'}:tiny", "--checkpoint", "none"])
    with pytest.raises(UsageError, match="give --data"):
        cmd_certify(args)


def test_the_table_states_the_largest_radius_n_noise_samples_can_certify(tmp_path):
    result = small_run(tmp_path)
    limit = max_certifiable_radius(0.25, 50, 0.01)
    assert f"Largest radius n=50 noise samples can certify (alpha 0.01): sigma 0.25: {limit:.2f}" in result["table"]
    assert f"sigma 0.25: {limit:.2f}" in (tmp_path / "table.md").read_text()


def test_certify_seed_help_speaks_of_noise():
    parser = Parser(prog="nrpm")
    add_certify_parser(parser.add_subparsers())
    assert "Gaussian noise" in parser._subparsers._group_actions[0].choices["certify"].format_help()
