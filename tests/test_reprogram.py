"""reprogram(): selection, paradigms, helpers, saving/loading the small state, undo."""

import pytest
import torch
from torch import nn

import nrpm
from nrpm import ReprogramConfig, reprogram
from nrpm.nn import RobustConv2d, RobustLinear


class SmallNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.act = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc = nn.Linear(16, 3)

    def forward(self, x):
        x = self.act(self.conv2(self.act(self.conv1(x))))
        return self.fc(self.pool(x).flatten(1))


@pytest.fixture
def net():
    torch.manual_seed(0)
    return SmallNet().eval()


X = torch.rand(5, 1, 8, 8)


def test_lam_one_reproduces_the_original_and_leaves_parameters_untouched(net):
    ref = net(X)
    before = {n: (p, p.detach().clone()) for n, p in net.named_parameters()}
    reprogram(net, ReprogramConfig(lam=1.0))
    out = net(X)
    assert out.dtype == ref.dtype and torch.equal(out, ref)
    nrpm.set_lam(net, 0.3)
    net(X).sum()  # paradigm-1 use
    for name, p in net.named_parameters():
        tensor, value = before[name]
        assert p is tensor and torch.equal(p, value)


def test_selection_by_type_name_glob_skip_and_predicate(net):
    assert set(nrpm.robust_layers(reprogram(SmallNet(), target_types=["conv2d"]))) == {"conv1", "conv2"}
    assert set(nrpm.robust_layers(reprogram(SmallNet(), target_modules=["conv*"], skip=["conv1"]))) == {"conv2"}
    assert set(nrpm.robust_layers(reprogram(SmallNet(), target_modules=["fc"]))) == {"fc"}
    pred = reprogram(SmallNet(), predicate=lambda name, m: isinstance(m, nn.Conv2d) and m.in_channels > 1)
    assert set(nrpm.robust_layers(pred)) == {"conv2"}
    assert isinstance(net, SmallNet)
    reprogram(net)
    assert isinstance(net.conv1, RobustConv2d) and isinstance(net.fc, RobustLinear)


@pytest.mark.parametrize("paradigm,expected", [(1, 0), (2, 3), (3, None)])
def test_paradigm_sets_trainable_parameters(net, paradigm, expected):
    n_weights = sum(p.numel() for p in net.parameters())
    reprogram(net, ReprogramConfig(paradigm=paradigm))
    count = nrpm.count_trainable_parameters(net)
    assert count == (n_weights + 3 if expected is None else expected)
    assert len(nrpm.lam_parameters(net)) == (0 if paradigm == 1 else 3)


def test_paradigm_two_trains_only_lam(net):
    reprogram(net, ReprogramConfig(paradigm=2, lam=0.5))
    weights = {n: p.detach().clone() for n, p in net.named_parameters() if "lam" not in n}
    opt = torch.optim.SGD(nrpm.lam_parameters(net), lr=100.0)
    loss = nn.functional.cross_entropy(net(X), torch.tensor([0, 1, 2, 0, 1]))
    loss.backward()
    assert all(p.grad is not None and p.grad.abs() > 0 for p in nrpm.lam_parameters(net))
    opt.step()
    assert any(abs(v - 0.5) > 1e-4 for v in nrpm.lam_table(net).values())
    for n, p in net.named_parameters():
        if n in weights:
            assert torch.equal(p, weights[n]) and p.grad is None


def test_set_lam_all_and_per_layer(net):
    reprogram(net)
    nrpm.set_lam(net, 0.2)
    assert all(v == pytest.approx(0.2) for v in nrpm.lam_table(net).values())
    nrpm.set_lam(net, {"fc": 0.9})
    assert nrpm.lam_table(net)["fc"] == pytest.approx(0.9) and nrpm.lam_table(net)["conv1"] == pytest.approx(0.2)
    with pytest.raises(ValueError, match="no robust layer"):
        nrpm.set_lam(net, {"nope": 0.1})


def test_lam_per_layer_in_config(net):
    reprogram(net, ReprogramConfig(lam=0.5, lam_per_layer={"conv1": 1.0}))
    assert nrpm.lam_table(net) == pytest.approx({"conv1": 1.0, "conv2": 0.5, "fc": 0.5})


def test_save_and_load_reprogramming_state_round_trip(net, tmp_path):
    reprogram(net, ReprogramConfig(lam=0.5, K=2, eps=1e-2, target_types=["conv2d"]))
    nrpm.set_lam(net, {"conv1": 0.1, "conv2": 0.7})
    expected = net(X)
    path = tmp_path / "lam.pt"
    nrpm.save_reprogramming(net, path)
    assert path.stat().st_size < 5000
    fresh = SmallNet().eval()
    fresh.load_state_dict(nrpm.undo_reprogramming(net).state_dict())
    nrpm.load_reprogramming(fresh, path)
    assert nrpm.lam_table(fresh) == pytest.approx({"conv1": 0.1, "conv2": 0.7})
    assert fresh.conv1.K == 2 and fresh.conv1.eps == 1e-2
    torch.testing.assert_close(fresh(X), expected)


def test_load_reprogramming_errors(net, tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        nrpm.load_reprogramming(net, tmp_path / "missing.pt")
    torch.save({"something": 1}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not an nrpm"):
        nrpm.load_reprogramming(net, tmp_path / "other.pt")


def test_undo_restores_plain_layers_and_flags(net):
    ref = net(X)
    flags = {n: p.requires_grad for n, p in net.named_parameters()}
    reprogram(net, ReprogramConfig(paradigm=1, lam=0.3))
    nrpm.undo_reprogramming(net)
    assert type(net.conv1) is nn.Conv2d and type(net.fc) is nn.Linear
    assert {n: p.requires_grad for n, p in net.named_parameters()} == flags
    assert torch.equal(net(X), ref)


def test_bad_configs_raise(net):
    with pytest.raises(ValueError, match="paradigm"):
        ReprogramConfig(paradigm=4)
    with pytest.raises(ValueError, match="K"):
        ReprogramConfig(K=-1)
    with pytest.raises(ValueError, match="eps"):
        ReprogramConfig(eps=0)
    with pytest.raises(ValueError, match="lam"):
        ReprogramConfig(lam=1.2)
    with pytest.raises(ValueError, match="unsupported module type Conv1d"):
        ReprogramConfig(target_types=[nn.Conv1d])
    with pytest.raises(ValueError, match="unsupported module type"):
        ReprogramConfig(target_types=["lstm"])
    with pytest.raises(ValueError, match="ReLU"):
        reprogram(net, target_modules=["act"])
    with pytest.raises(ValueError, match="matches no module"):
        reprogram(net, target_modules=["decoder.*"])
    with pytest.raises(ValueError, match="matches no"):
        reprogram(nn.Sequential(nn.ReLU()))
    reprogram(net)
    with pytest.raises(ValueError, match="already reprogrammed"):
        reprogram(net)


def test_helpers_on_plain_model_raise():
    with pytest.raises(ValueError, match="no robust layers"):
        nrpm.lam_table(nn.Linear(2, 2))


# ------------------------------------------------------------------------------------------- aliases, typos
def test_a_module_shared_under_two_names_gets_one_robust_module_and_undo_keeps_the_sharing():
    shared = nn.Linear(8, 8)
    model = nn.Sequential(shared, nn.ReLU(), shared)
    reprogram(model, ReprogramConfig(lam=0.4, K=1))
    assert model[0] is model[2] and isinstance(model[0], RobustLinear)
    assert nrpm.lam_table(model) == {"0": pytest.approx(0.4)}
    nrpm.undo_reprogramming(model)
    assert model[0] is model[2] and type(model[0]) is nn.Linear and model[0].weight is shared.weight


def test_skipping_one_alias_skips_the_shared_module():
    shared = nn.Linear(8, 8)
    model = nn.Sequential(shared, nn.ReLU(), shared, nn.Linear(8, 2))
    reprogram(model, ReprogramConfig(skip=["2"]))
    assert type(model[0]) is nn.Linear and model[0] is model[2] and isinstance(model[3], RobustLinear)


def test_misspelt_option_is_refused(net):
    with pytest.raises(ValueError, match="unknown reprogramming option 'lamda'.*did you mean 'lam'"):
        reprogram(net, ReprogramConfig(), lamda=0.1)
    with pytest.raises(ValueError, match="unknown reprogramming option 'lamda'"):
        reprogram(net, lamda=0.1)


def test_lam_per_layer_naming_no_reprogrammed_layer_is_refused(net):
    with pytest.raises(ValueError, match=r"lam_per_layer names \['conv9'\].*reprogrammed layers: \['conv1'"):
        reprogram(net, ReprogramConfig(lam_per_layer={"conv9": 0.2}))
    with pytest.raises(ValueError, match=r"lam_per_layer names \['fc'\]"):
        reprogram(net, ReprogramConfig(target_types=["conv2d"], lam_per_layer={"fc": 0.2}))


# ------------------------------------------------------------------------------------------- PEFT-style targets
class Headed(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = SmallNet()
        self.head = nn.Sequential()
        self.head.fc2 = nn.Linear(3, 2)

    def forward(self, x):
        return self.head.fc2(self.body(x))


def test_a_bare_name_matches_as_a_suffix_and_regexes_match_whole_names():
    import re

    assert list(robust_names(reprogram(Headed(), target_modules=["fc2"]))) == ["head.fc2"]
    assert list(robust_names(reprogram(Headed(), target_modules=["conv1"]))) == ["body.conv1"]
    assert list(robust_names(reprogram(Headed(), target_modules="re:body\\.conv\\d"))) == ["body.conv1", "body.conv2"]
    assert list(robust_names(reprogram(Headed(), target_modules=[re.compile(r".*fc2?")]))) == ["body.fc", "head.fc2"]
    assert list(robust_names(reprogram(Headed(), target_modules=["body.conv*"]))) == ["body.conv1", "body.conv2"]
    with pytest.raises(ValueError, match="invalid regular expression"):
        ReprogramConfig(target_modules=["re:conv(("])


def robust_names(model):
    return nrpm.robust_layers(model)


def test_print_trainable_parameters_prints_what_peft_prints(net, capsys):
    reprogram(net, ReprogramConfig(paradigm=2))
    nrpm.print_trainable_parameters(net)
    total = sum(p.numel() for p in net.parameters())
    assert capsys.readouterr().out == f"trainable params: 3 || all params: {total:,d} || trainable%: {300 / total:.4f}\n"


# ------------------------------------------------------------------------------------------- saved states
@pytest.mark.parametrize("prefix", ["module.", "_orig_mod."])
def test_a_saved_reprogramming_loads_across_wrappers(net, tmp_path, prefix):
    reprogram(net, ReprogramConfig(lam=0.3, K=2, eps=1e-2, lam_per_layer={"fc": 0.7}))
    path = tmp_path / "rp.pt"
    nrpm.save_reprogramming(net, path)
    torch.manual_seed(0)
    wrapped = nn.Module()
    wrapped.add_module(prefix.rstrip("."), SmallNet())
    nrpm.load_reprogramming(wrapped, path)
    assert nrpm.lam_table(wrapped) == {f"{prefix}conv1": pytest.approx(0.3), f"{prefix}conv2": pytest.approx(0.3),
                                       f"{prefix}fc": pytest.approx(0.7)}
    nrpm.save_reprogramming(wrapped, path)  # and back into the bare model
    bare = SmallNet()
    nrpm.load_reprogramming(bare, path)
    assert nrpm.lam_table(bare) == {"conv1": pytest.approx(0.3), "conv2": pytest.approx(0.3), "fc": pytest.approx(0.7)}


def test_loading_selects_exactly_the_saved_layers():
    model = Headed()
    reprogram(model, target_modules=["body.conv1"])
    from nrpm.reprogram import reprogramming_state

    state = reprogramming_state(model)
    state["config"]["target_modules"] = ["conv1"]  # a bare name would also match other convs as a suffix
    state["lam"] = {"body.conv1": 0.5}
    fresh = Headed()
    nrpm.load_reprogramming(fresh, state)
    assert list(nrpm.robust_layers(fresh)) == ["body.conv1"]


def test_the_saved_learnable_flag_is_honoured(net, tmp_path):
    reprogram(net, ReprogramConfig(lam=0.3, paradigm=1))
    nrpm.robust_layers(net)["fc"].set_learnable_lam(True)
    nrpm.save_reprogramming(net, tmp_path / "rp.pt")
    fresh = SmallNet()
    nrpm.load_reprogramming(fresh, tmp_path / "rp.pt")
    assert {n: m.learnable_lam for n, m in nrpm.robust_layers(fresh).items()} == \
        {"conv1": False, "conv2": False, "fc": True}
    assert nrpm.lam_table(fresh)["fc"] == pytest.approx(0.3)


def test_a_corrupt_reprogramming_file_is_a_clear_error(tmp_path):
    bad = tmp_path / "rp.pt"
    bad.write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match=r"reprogramming state .*rp\.pt is not readable by torch\.load"):
        nrpm.load_reprogramming(SmallNet(), bad)


def test_warnings_as_notes_logs_coverage_warnings_and_shows_the_rest():
    import warnings

    from nrpm.coverage import UnreprogrammedWeightsWarning, warnings_as_notes

    logged = []
    with warnings.catch_warnings(record=True) as others, warnings_as_notes(logged.append):
        warnings.simplefilter("always")
        warnings.warn("conv1 stays plain", UnreprogrammedWeightsWarning)
        warnings.warn("something else", UserWarning)
    assert logged == ["note: conv1 stays plain"]
    assert [str(w.message) for w in others] == ["something else"]
