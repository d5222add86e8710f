"""Robust layers: drop-in behaviour, shared weights, lam modes, state_dict compatibility."""

import pytest
import torch
from torch import nn

from nrpm import functional as RF
from nrpm.nn import RobustConv2d, RobustLinear


def test_from_module_shares_weight_and_bias():
    plain = nn.Linear(6, 3)
    robust = RobustLinear.from_module(plain, lam=0.2, K=2, eps=1e-2)
    assert robust.weight is plain.weight and robust.bias is plain.bias
    conv = nn.Conv2d(3, 4, 3, stride=2, padding=1, dilation=1, groups=1, bias=False)
    rconv = RobustConv2d.from_module(conv)
    assert rconv.weight is conv.weight and rconv.bias is None
    assert (rconv.stride, rconv.padding, rconv.groups) == ((2, 2), (1, 1), 1)


def test_lam_one_equals_plain_modules_exactly():
    lin = nn.Linear(10, 4)
    conv = nn.Conv2d(3, 5, 3, stride=2, padding=1)
    x, xc = torch.randn(7, 10), torch.randn(2, 3, 9, 9)
    assert torch.equal(RobustLinear.from_module(lin, lam=1.0)(x), lin(x))
    assert torch.equal(RobustConv2d.from_module(conv, lam=1.0)(xc), conv(xc))


def test_forward_matches_functional():
    lin = RobustLinear(8, 3, lam=0.3, K=2, eps=1e-2)
    x = torch.randn(4, 8)
    torch.testing.assert_close(lin(x), RF.robust_linear(x, lin.weight, lin.bias, lam=0.3, K=2, eps=1e-2))


@pytest.mark.parametrize("mode", ["reflect", "replicate", "circular"])
def test_padding_modes_pad_like_nn_conv2d(mode):
    conv = nn.Conv2d(2, 3, 3, padding=1, padding_mode=mode)
    x = torch.randn(1, 2, 6, 6)
    robust = RobustConv2d.from_module(conv, lam=0.0, K=2)
    assert torch.equal(RobustConv2d.from_module(conv, lam=1.0)(x), conv(x))
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1), mode=mode)
    want = RF.robust_conv2d(padded, conv.weight, conv.bias, 1, 0, lam=0.0, K=2)
    torch.testing.assert_close(robust(x), want)


def test_learnable_lam_is_sigmoid_of_a_parameter_and_gets_gradient():
    lin = RobustLinear(5, 2, lam=0.25, learnable_lam=True)
    assert isinstance(lin.lam_logit, nn.Parameter)
    assert lin.lam_value() == pytest.approx(0.25, abs=1e-6)
    lin(torch.randn(3, 5)).sum().backward()
    assert lin.lam_logit.grad is not None and lin.lam_logit.grad.abs() > 0


def test_switching_lam_mode_keeps_value_and_state_dict_keys():
    lin = RobustLinear(5, 2, lam=0.4)
    assert set(lin.state_dict()) == {"weight", "bias"}  # a fixed lam is not persistent: keys as nn.Linear
    lin.set_learnable_lam(True)
    assert lin.lam_value() == pytest.approx(0.4, abs=1e-6)
    assert set(lin.state_dict()) == {"weight", "bias", "lam_logit"}
    lin.set_learnable_lam(False)
    assert lin.lam_value() == pytest.approx(0.4, abs=1e-6)


def test_plain_state_dict_loads_into_robust_layer():
    plain = nn.Conv2d(3, 4, 3)
    robust = RobustConv2d(3, 4, 3, lam=0.5)
    robust.load_state_dict(plain.state_dict())
    assert torch.equal(robust.weight, plain.weight)


def test_extra_repr_shows_lam_K_eps():
    text = repr(RobustConv2d(3, 4, 3, lam=0.7, K=1, eps=5e-5))
    assert "lam=0.7" in text and "K=1" in text and "eps=5e-05" in text and "fixed" in text


def test_to_plain_shares_tensors():
    robust = RobustLinear(4, 2, lam=0.1)
    plain = robust.to_plain()
    assert type(plain) is nn.Linear and plain.weight is robust.weight


@pytest.mark.parametrize("kwargs,match", [(dict(K=-2), "K"), (dict(eps=0), "eps"), (dict(lam=2.0), "lam")])
def test_bad_layer_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RobustLinear(3, 2, **kwargs)
    with pytest.raises(ValueError, match=match):
        RobustConv2d(3, 2, 3, **kwargs)


def test_set_lam_out_of_range_raises():
    with pytest.raises(ValueError, match="lam"):
        RobustLinear(3, 2).set_lam(-0.5)


def test_from_module_rejects_wrong_type():
    with pytest.raises(ValueError, match="nn.Linear"):
        RobustLinear.from_module(nn.Conv2d(1, 1, 1))
    with pytest.raises(ValueError, match="nn.Conv2d"):
        RobustConv2d.from_module(nn.Linear(1, 1))


def test_wrong_input_shape_raises_value_error():
    with pytest.raises(ValueError, match="channels"):
        RobustConv2d(3, 2, 3)(torch.randn(1, 4, 8, 8))
    with pytest.raises(ValueError, match="in_features"):
        RobustLinear(3, 2)(torch.randn(5, 4))
