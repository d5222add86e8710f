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


# ------------------------------------------------------------------------------------------- gradient modes
def _input_grad(layer, x):
    x = x.clone().requires_grad_(True)
    out = layer(x)
    (g,) = torch.autograd.grad((out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum(), x)
    return out.detach(), g


@pytest.mark.parametrize("make", [lambda: RobustLinear(12, 4, lam=0.3, K=2, eps=1e-2),
                                  lambda: RobustConv2d(2, 3, 3, padding=1, lam=0.3, K=2, eps=1e-2)])
def test_backward_modes_keep_the_forward_and_change_only_the_gradient(make):
    torch.manual_seed(1)
    layer = make()
    x = torch.rand(5, 12) if isinstance(layer, RobustLinear) else torch.rand(2, 2, 5, 5)
    out_exact, g_exact = _input_grad(layer, x)
    layer.backward_mode = "plain"
    out_plain, g_plain = _input_grad(layer, x)
    layer.backward_mode = "detached"
    out_det, g_det = _input_grad(layer, x)
    assert layer.detach_weights and "backward_mode='detached'" in repr(layer)
    torch.testing.assert_close(out_plain, out_exact, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(out_det, out_exact)
    plain = layer.to_plain()
    _, g_lpm = _input_grad(plain, x)
    torch.testing.assert_close(g_plain, g_lpm)  # BPDA: exactly the plain layer's gradient
    want = RF.robust_linear if isinstance(layer, RobustLinear) else None
    if want is not None:
        xg = x.clone().requires_grad_(True)
        ref = RF.robust_linear(xg, layer.weight, layer.bias, lam=0.3, K=2, eps=1e-2, detach_weights=True)
        (g_ref,) = torch.autograd.grad((ref * torch.linspace(-1, 1, ref.numel()).view_as(ref)).sum(), xg)
        torch.testing.assert_close(g_det, g_ref)
    assert not torch.allclose(g_exact, g_lpm)


def test_backward_mode_is_validated():
    layer = RobustLinear(3, 2)
    with pytest.raises(ValueError, match="backward_mode must be one of"):
        layer.backward_mode = "bpda"
    with pytest.raises(ValueError, match="backward_mode must be one of"):
        RobustLinear(3, 2, backward_mode="nope")


def test_lam_override_is_exact_and_restores_fixed_and_learnable_lams():
    import nrpm

    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
    plain_out = model(torch.rand(4, 6))
    x = torch.rand(4, 6)
    plain_out = model(x)
    nrpm.reprogram(model, nrpm.ReprogramConfig(lam=0.3, K=2, paradigm=2))
    logits_before = [m.lam_logit.detach().clone() for m in nrpm.robust_layers(model).values()]
    with nrpm.lam_override(model, 1.0):
        assert all(m.lam_value() == 1.0 for m in nrpm.robust_layers(model).values())  # not clamped to 0.9999
        torch.testing.assert_close(model(x), plain_out)
    assert all(torch.equal(m.lam_logit, b) for m, b in zip(nrpm.robust_layers(model).values(), logits_before))
    nrpm.undo_reprogramming(model)
    nrpm.reprogram(model, nrpm.ReprogramConfig(lam=0.3, K=2))
    with nrpm.lam_override(model, {"0": 0.0}):
        assert nrpm.lam_table(model) == {"0": 0.0, "2": pytest.approx(0.3)}
    assert nrpm.lam_table(model) == {"0": pytest.approx(0.3), "2": pytest.approx(0.3)}
    with pytest.raises(ValueError, match="no robust layer named"):
        with nrpm.lam_override(model, {"fc9": 0.5}):
            pass


def test_backward_override_restores_each_layer():
    import nrpm

    model = nn.Sequential(nn.Linear(6, 5), nn.Linear(5, 3))
    nrpm.reprogram(model, nrpm.ReprogramConfig(lam=0.3, K=1))
    nrpm.robust_layers(model)["1"].backward_mode = "detached"
    with nrpm.backward_override(model, "plain"):
        assert {m.backward_mode for m in nrpm.robust_layers(model).values()} == {"plain"}
    assert [m.backward_mode for m in nrpm.robust_layers(model).values()] == ["exact", "detached"]


# ------------------------------------------------------------------------------------------- edge cases
@pytest.mark.parametrize("layer, x, shape", [
    (RobustLinear(5, 3, lam=0.5), torch.rand(0, 5), (0, 3)),
    (RobustConv2d(3, 4, 3, lam=0.5), torch.rand(0, 3, 8, 8), (0, 4, 6, 6)),
    (RobustConv2d(3, 4, 3, lam=0.5, padding=1, padding_mode="reflect"), torch.rand(0, 3, 8, 8), (0, 4, 8, 8)),
    (RobustConv2d(3, 4, 3, lam=0.5, stride=2, padding=1), torch.rand(0, 3, 8, 8), (0, 4, 4, 4)),
])
def test_empty_batches_give_empty_outputs_of_the_right_shape(layer, x, shape):
    assert layer(x).shape == shape
    assert layer(x.requires_grad_(True)).shape == shape


def _small_reprogrammed(paradigm):
    import nrpm

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5))
    return nrpm.reprogram(model, nrpm.ReprogramConfig(lam=0.5, K=2, paradigm=paradigm)).eval()


@pytest.mark.parametrize("paradigm", [1, 2])
def test_torch_compile_fullgraph_traces_a_reprogrammed_model(paradigm):
    model = _small_reprogrammed(paradigm)
    x = torch.rand(4, 1, 8, 8, requires_grad=True)
    want = model(x)
    (g_want,) = torch.autograd.grad(want.sum(), x)
    compiled = torch.compile(model, fullgraph=True, backend="eager")  # fullgraph: any graph break is an error
    got = compiled(x)
    (g_got,) = torch.autograd.grad(got.sum(), x)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(g_got, g_want)


def test_torch_export_of_a_reprogrammed_model():
    model = _small_reprogrammed(1)
    x = torch.rand(4, 1, 8, 8)
    exported = torch.export.export(model, (x,))
    torch.testing.assert_close(exported.module()(x), model(x))


def test_set_lam_after_compile_is_seen_by_the_compiled_model():
    import nrpm

    model = _small_reprogrammed(1)
    x = torch.rand(4, 1, 8, 8)
    compiled = torch.compile(model, fullgraph=True, backend="eager")
    compiled(x)
    nrpm.set_lam(model, 1.0)
    plain = nrpm.undo_reprogramming(_small_reprogrammed(1))
    torch.testing.assert_close(compiled(x), plain(x))


def test_layers_carry_their_estimator():
    import nrpm

    layer = RobustConv2d(2, 3, 3, lam=0.2, K=2, norm="huber", delta=0.05, scale="absolute")
    assert layer.estimator() == {"norm": "huber", "gamma": 4.0, "delta": 0.05, "scale": "absolute"}
    assert "norm='huber'" in repr(layer) and "norm=" not in repr(RobustLinear(3, 2))
    x = torch.rand(2, 2, 5, 5)
    want = RF.robust_conv2d(x, layer.weight, layer.bias, lam=0.2, K=2, norm="huber", delta=0.05)
    torch.testing.assert_close(layer(x), want)
    with pytest.raises(ValueError, match="HM estimator needs gamma > delta"):
        RobustLinear(3, 2, norm="hm", gamma=1.0, delta=2.0)
    model = nn.Sequential(nn.Linear(4, 3))
    nrpm.reprogram(model, nrpm.ReprogramConfig(norm="mcp", gamma=0.5, scale="relative"))
    state = __import__("nrpm.reprogram", fromlist=["reprogramming_state"]).reprogramming_state(model)
    fresh = nn.Sequential(nn.Linear(4, 3))
    nrpm.load_reprogramming(fresh, state)
    assert fresh[0].estimator() == {"norm": "mcp", "gamma": 0.5, "delta": 3.0, "scale": "relative"}


def test_lam_override_restores_the_exact_python_lam():
    import nrpm

    model = nn.Sequential(nn.Linear(3, 2))
    nrpm.reprogram(model, nrpm.ReprogramConfig(lam=0.8))
    with nrpm.lam_override(model, 1.0):
        pass
    assert nrpm.lam_table(model) == {"0": 0.8}  # not 0.800000011920929 read back from float32


def test_irls_override_smooths_and_restores():
    import nrpm

    model = nn.Sequential(nn.Linear(6, 3))
    nrpm.reprogram(model, nrpm.ReprogramConfig(lam=0.3, K=3, eps=1e-3))
    x = torch.rand(4, 6)
    with nrpm.nn.irls_override(model, eps_scale=10, K=1):
        layer = model[0]
        assert (layer.eps, layer.K) == (pytest.approx(1e-2), 1)
        smooth = model(x)
    assert (model[0].eps, model[0].K) == (1e-3, 3)
    torch.testing.assert_close(smooth, RF.robust_linear(x, layer.weight, layer.bias, lam=0.3, K=1, eps=1e-2))


def test_layers_take_a_settings_value():
    settings = RF.IRLSSettings.create(K=2, eps=1e-2, detach_weights=True, norm="mcp", gamma=0.5)
    layer = RobustConv2d(2, 3, 3, lam=0.2, settings=settings)
    assert (layer.K, layer.eps, layer.backward_mode) == (2, 1e-2, "detached")
    assert layer.estimator() == {"norm": "mcp", "gamma": 0.5, "delta": 3.0, "scale": "absolute"}
    assert layer.irls_settings() == settings
    x = torch.rand(2, 2, 5, 5)
    assert torch.equal(layer(x), RF.robust_conv2d(x, layer.weight, layer.bias, lam=0.2, settings=settings))
    linear = RobustLinear(4, 3, settings=RF.IRLSSettings(K=1))
    assert linear.irls_settings() == RF.IRLSSettings(K=1) and linear.norm == "l1"
    with pytest.raises(ValueError, match="not both"):
        RobustLinear(4, 3, eps=0.1, settings=settings)
