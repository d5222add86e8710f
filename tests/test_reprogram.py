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
