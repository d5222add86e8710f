"""Robust attention (nrpm.attention.robust_attention) against a naive float64 reference written from the formulas."""

import math

import pytest
import torch
import torch.nn.functional as F

from nrpm.attention import robust_attention
from nrpm.functional import robust_attention as reexported

NORMS = ("l1", "mcp", "huber", "hm")
# gamma / delta that put the test's distances (about 1 to 3) on both sides of the clamps
EST = dict(gamma=4.0, delta=1.5)
B, H, N, S, D, DV = 2, 2, 3, 4, 2, 3


def _phi_reference(dist, eps, norm, gamma, delta):
    """phi straight from the issue's formulas."""
    if norm == "l1":
        return 1 / (dist + eps)
    if norm == "mcp":
        return torch.maximum(1 / (dist + eps) - 1 / gamma, torch.full_like(dist, eps))
    if norm == "huber":
        return torch.minimum(delta / (dist + eps), torch.ones_like(dist))
    raw = delta / (gamma - delta) * (gamma / (dist + eps) - 1)
    return torch.minimum(torch.maximum(raw, torch.full_like(dist, eps)), torch.ones_like(dist))


def reference(q, k, v, mask=None, lam=0.5, K=3, eps=1e-3, norm="l1", gamma=4.0, delta=3.0, detach=False,
              relative=False):
    """Naive robust attention: explicit (..., N, S, dv) differences; ``mask`` bool (True = masked) or float."""
    logits = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if mask is not None:
        logits = logits.masked_fill(mask, -math.inf) if mask.dtype == torch.bool else logits + mask
    a = torch.softmax(logits, -1)
    m0 = a @ v
    m, spread = m0, None
    for _ in range(K):
        dist = (m.unsqueeze(-2) - v.unsqueeze(-3)).norm(dim=-1)  # (..., N, S)
        if relative and spread is None:
            spread = (a * dist).sum(-1, keepdim=True).detach() + eps
        g, dl = (gamma * spread, delta * spread) if relative else (gamma, delta)
        w = a * _phi_reference(dist.detach() if detach else dist, eps, norm, g, dl)
        m = (w @ v) / w.sum(-1, keepdim=True)
    return lam * m0 + (1 - lam) * m


def _qkv(seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    shapes = ((B, H, N, D), (B, H, S, D), (B, H, S, DV))
    return [torch.randn(*s, generator=g, dtype=dtype).requires_grad_() for s in shapes]


def _mask(kind):
    g = torch.Generator().manual_seed(1)
    if kind is None:
        return None
    if kind == "bool":  # (N, S), at least one allowed key per row
        m = torch.rand(N, S, generator=g) < 0.4
        m[:, 0] = False
        return m
    if kind == "float":  # additive, with some -inf
        m = torch.randn(N, S, generator=g, dtype=torch.float64)
        m[0, 1] = -math.inf
        return m
    m = torch.zeros(B, 1, 1, S, dtype=torch.bool)  # key padding: the last keys of batch 0 are padding
    m[0, ..., -2:] = True
    return m


def _grads(out, inputs):
    return torch.autograd.grad(out, inputs, torch.ones_like(out))


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("mask_kind", [None, "bool", "float", "key_padding"])
@pytest.mark.parametrize("K", [0, 1, 3])
@pytest.mark.parametrize("lam", [0.0, 0.5, 1.0])
def test_values_and_gradients_match_reference(norm, mask_kind, K, lam):
    q, k, v = _qkv()
    mask = _mask(mask_kind)
    ours = robust_attention(q, k, v, attn_mask=mask, lam=lam, K=K, norm=norm, **EST)
    ref = reference(q, k, v, mask, lam=lam, K=K, norm=norm, **EST)
    torch.testing.assert_close(ours, ref, rtol=1e-9, atol=1e-10)
    for g_ours, g_ref in zip(_grads(ours, (q, k, v)), _grads(ref, (q, k, v))):
        torch.testing.assert_close(g_ours, g_ref, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("mask_kind", [None, "bool", "float", "key_padding"])
@pytest.mark.parametrize("K", [1, 3])
def test_gradcheck(norm, mask_kind, K):
    q, k, v = _qkv(seed=2)
    q, k, v = (t[:1].detach().requires_grad_() for t in (q, k, v))  # batch 1: fewer numerical derivatives
    mask = _mask(mask_kind)
    mask = mask[:1] if mask_kind == "key_padding" else mask
    lam = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda *t: robust_attention(*t[:3], attn_mask=mask, lam=t[3], K=K, norm=norm, **EST), (q, k, v, lam))


def test_default_estimator_parameters_and_relative_scale_match_reference():
    q, k, v = _qkv(seed=3)
    for norm in NORMS:
        torch.testing.assert_close(robust_attention(q, k, v, norm=norm), reference(q, k, v, norm=norm))
        ours = robust_attention(q, k, v, norm=norm, scale="relative", gamma=2.0, delta=1.0)
        ref = reference(q, k, v, norm=norm, relative=True, gamma=2.0, delta=1.0)
        torch.testing.assert_close(ours, ref)
        for g_ours, g_ref in zip(_grads(ours, (q, k, v)), _grads(ref, (q, k, v))):
            torch.testing.assert_close(g_ours, g_ref)


@pytest.mark.parametrize("mask_kind", [None, "bool", "float", "key_padding"])
def test_lam_one_is_scaled_dot_product_attention(mask_kind):
    q, k, v = _qkv(dtype=torch.float32)
    mask = _mask(mask_kind)
    sdpa_mask = None if mask is None else (~mask if mask.dtype == torch.bool else mask.float())
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=sdpa_mask)
    torch.testing.assert_close(robust_attention(q, k, v, attn_mask=mask, lam=1.0), expected)
    torch.testing.assert_close(robust_attention(q, k, v, attn_mask=mask, lam=0.3, K=0), expected)


def test_detached_mode_treats_phi_as_constant():
    q, k, v = _qkv(seed=4)
    for norm in NORMS:
        ours = robust_attention(q, k, v, norm=norm, backward_mode="detached", **EST)
        ref = reference(q, k, v, norm=norm, detach=True, **EST)
        torch.testing.assert_close(ours, reference(q, k, v, norm=norm, **EST))  # the value does not change
        grads = _grads(ours, (q, k, v))
        for g_ours, g_ref in zip(grads, _grads(ref, (q, k, v))):
            torch.testing.assert_close(g_ours, g_ref)
        old = robust_attention(q, k, v, norm=norm, detach_weights=True, **EST)  # the older spelling
        assert all(torch.equal(a, b) for a, b in zip(_grads(old, (q, k, v)), grads))


def test_plain_mode_has_robust_value_and_plain_gradient():
    q, k, v = _qkv(seed=5)
    mask = _mask("bool")
    ours = robust_attention(q, k, v, attn_mask=mask, backward_mode="plain")
    torch.testing.assert_close(ours, reference(q, k, v, mask))
    plain = reference(q, k, v, mask, lam=1.0)
    for g_ours, g_ref in zip(_grads(ours, (q, k, v)), _grads(plain, (q, k, v))):
        torch.testing.assert_close(g_ours, g_ref)


def test_fully_masked_row_is_zero_with_zero_gradient_as_sdpa():
    q, k, v = _qkv(dtype=torch.float32)
    mask = torch.zeros(N, S, dtype=torch.bool)
    mask[1] = True
    out = robust_attention(q, k, v, attn_mask=mask, lam=0.0)
    assert torch.isfinite(out).all() and torch.equal(out[..., 1, :], torch.zeros_like(out[..., 1, :]))
    sdpa = F.scaled_dot_product_attention(q, k, v, attn_mask=~mask)
    torch.testing.assert_close(robust_attention(q, k, v, attn_mask=mask, lam=1.0), sdpa)
    grads = _grads(out, (q, k, v))
    assert all(torch.isfinite(g).all() for g in grads) and torch.equal(grads[0][..., 1, :], torch.zeros(B, H, D))


def test_other_shapes_and_dtypes():
    q, k, v = torch.randn(5, 4), torch.randn(7, 4), torch.randn(7, 6)  # no batch dims; S != N, dv != d
    assert robust_attention(q, k, v).shape == (5, 6)
    out = robust_attention(q.half(), k.half(), v.half(), norm="hm")
    assert out.dtype == torch.float16 and torch.isfinite(out).all()
    torch.testing.assert_close(out.float(), robust_attention(q, k, v, norm="hm"), atol=1e-2, rtol=1e-2)
    assert reexported is robust_attention


def test_learnable_lam_gets_a_gradient():
    q, k, v = _qkv(dtype=torch.float32)
    logit = torch.tensor(0.0, requires_grad=True)
    robust_attention(q, k, v, lam=torch.sigmoid(logit)).sum().backward()
    assert logit.grad is not None and logit.grad != 0


@pytest.mark.parametrize("kwargs, match", [
    (dict(attn_mask=torch.zeros(N, S, dtype=torch.int64)), "bool tensor"),
    (dict(attn_mask=torch.zeros(N + 1, S, dtype=torch.bool)), "does not broadcast"),
    (dict(backward_mode="bpda"), "backward_mode"),
    (dict(lam=1.5), "lam"),
    (dict(K=-1), "K"),
    (dict(norm="l2"), "estimator"),
])
def test_bad_arguments_raise_value_error(kwargs, match):
    q, k, v = _qkv(dtype=torch.float32)
    with pytest.raises(ValueError, match=match):
        robust_attention(q, k, v, **kwargs)


def test_mismatched_shapes_raise_value_error():
    q, k, v = _qkv(dtype=torch.float32)
    with pytest.raises(ValueError, match="same last dim"):
        robust_attention(q, k[..., :1], v)
    with pytest.raises(ValueError, match="same length"):
        robust_attention(q, k, v[..., :2, :])


# ---------------------------------------------------------------------------- RobustMultiheadAttention, reprogram
import copy  # noqa: E402
import warnings  # noqa: E402

from torch import nn  # noqa: E402

import nrpm  # noqa: E402
from nrpm import ReprogramConfig, RobustMultiheadAttention, UnreprogrammedWeightsWarning  # noqa: E402
from nrpm.nn_attention import RobustAggregation, RobustProjection  # noqa: E402

PART_NAMES = ("q_proj", "k_proj", "v_proj", "out_proj", "aggregation")


def _encoder_layer():
    torch.manual_seed(0)
    return nn.TransformerEncoderLayer(d_model=16, nhead=2, batch_first=True, dropout=0.0).eval()


def _mha_inputs(batch_first, kdim=None, L=5, S=6, B=2, E=8):
    g = torch.Generator().manual_seed(3)
    shape = (lambda n, e: (B, n, e)) if batch_first else (lambda n, e: (n, B, e))
    q = torch.randn(*shape(L, E), generator=g)
    k = torch.randn(*shape(S, kdim or E), generator=g)
    v = torch.randn(*shape(S, kdim or E), generator=g)
    padding = torch.zeros(B, S, dtype=torch.bool)
    padding[0, -2:] = True
    attn = torch.rand(L, S, generator=g) < 0.3
    attn[:, 0] = False
    return q, k, v, padding, attn


def test_encoder_layer_reprograms_and_lam_one_is_the_original():
    layer, x = _encoder_layer(), torch.randn(2, 5, 16)
    with torch.no_grad():  # eval + no_grad: torch's fused encoder fast path, which must not bypass the robust one
        expected = layer(x)
        robust = nrpm.reprogram(copy.deepcopy(layer), ReprogramConfig(lam=0.5))
        assert type(robust.self_attn) is RobustMultiheadAttention
        assert (robust(x) - expected).abs().max() > 1e-3
        plain = nrpm.reprogram(copy.deepcopy(layer), ReprogramConfig(lam=1.0))
        torch.testing.assert_close(plain(x), expected, atol=1e-6, rtol=0)
    assert list(robust.state_dict()) == list(layer.state_dict())
    assert robust.nrpm_unreprogrammed == {}


def test_undo_gives_back_the_same_tensors():
    layer = _encoder_layer()
    params = dict(layer.named_parameters())
    nrpm.reprogram(layer, ReprogramConfig(lam=0.5))
    nrpm.undo_reprogramming(layer)
    assert type(layer.self_attn) is nn.MultiheadAttention
    assert type(layer.self_attn.out_proj) is nn.modules.linear.NonDynamicallyQuantizableLinear
    assert all(p is params[n] for n, p in layer.named_parameters()) and len(params) == len(list(layer.parameters()))
    assert not hasattr(layer, "nrpm_unreprogrammed")


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("kdim", [None, 6])
@pytest.mark.parametrize("bias", [True, False])
def test_module_at_lam_one_equals_multihead_attention(batch_first, kdim, bias):
    torch.manual_seed(1)
    mha = nn.MultiheadAttention(8, 2, bias=bias, kdim=kdim, vdim=kdim, batch_first=batch_first).eval()
    q, k, v, padding, attn = _mha_inputs(batch_first, kdim)
    float_attn = torch.randn(2 * 2, 5, 6)  # (B * heads, L, S), additive
    learnable = RobustMultiheadAttention.from_module(mha, learnable_lam=True)  # the module's own path
    for masks in (dict(), dict(key_padding_mask=padding, attn_mask=attn), dict(attn_mask=float_attn)):
        expected, expected_weights = mha(q, k, v, **masks)
        with nrpm.lam_override(learnable, 1.0):
            out, weights = learnable(q, k, v, **masks)
        torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)
        torch.testing.assert_close(weights, expected_weights, atol=1e-6, rtol=0)
        fixed = RobustMultiheadAttention.from_module(mha, lam=1.0)
        assert torch.equal(fixed(q, k, v, need_weights=False, **masks)[0], mha(q, k, v, need_weights=False,
                                                                               **masks)[0])


def test_unbatched_input_and_per_head_weights():
    torch.manual_seed(1)
    mha = nn.MultiheadAttention(8, 2).eval()
    robust = RobustMultiheadAttention.from_module(mha, learnable_lam=True)
    x = torch.randn(5, 8)
    with nrpm.lam_override(robust, 1.0):
        out, weights = robust(x, x, x, average_attn_weights=False)
    expected, expected_weights = mha(x, x, x, average_attn_weights=False)
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(weights, expected_weights, atol=1e-6, rtol=0)
    assert robust(x, x, x)[0].shape == (5, 8)


def test_key_padding_mask_removes_the_padded_keys():
    torch.manual_seed(2)
    robust = RobustMultiheadAttention(8, 2, batch_first=True, lam=0.2).eval()
    q, k, v, padding, _ = _mha_inputs(True)
    out = robust(q, k, v, key_padding_mask=padding, need_weights=False)[0]
    alone = robust(q[:1], k[:1, :-2], v[:1, :-2], need_weights=False)[0]  # batch 0 without its padded keys
    torch.testing.assert_close(out[:1], alone, atol=1e-5, rtol=1e-5)


def test_batch_first_false_matches_batch_first_true():
    torch.manual_seed(2)
    first = RobustMultiheadAttention(8, 2, batch_first=True, lam=0.3, norm="huber", delta=0.5).eval()
    second = RobustMultiheadAttention(8, 2, batch_first=False, lam=0.3, norm="huber", delta=0.5).eval()
    second.load_state_dict(first.state_dict())
    q, k, v, padding, attn = _mha_inputs(True)
    out = first(q, k, v, key_padding_mask=padding, attn_mask=attn)
    out_t = second(q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), key_padding_mask=padding,
                   attn_mask=attn)
    torch.testing.assert_close(out_t[0].transpose(0, 1), out[0])
    torch.testing.assert_close(out_t[1], out[1])


def test_lams_are_visible_to_the_lam_helpers():
    layer = nrpm.reprogram(_encoder_layer(), ReprogramConfig(lam=0.5, paradigm=2,
                                                             lam_per_layer={"self_attn.q_proj": 0.25}))
    table = nrpm.lam_table(layer)
    assert set(table) == {"linear1", "linear2"} | {f"self_attn.{p}" for p in PART_NAMES}
    assert table["self_attn.q_proj"] == pytest.approx(0.25) and table["self_attn.k_proj"] == pytest.approx(0.5)
    assert len(nrpm.lam_parameters(layer)) == 2 + len(PART_NAMES)  # linear1, linear2 and the attention's five
    nrpm.set_lam(layer, {"self_attn.aggregation": 0.75})
    assert nrpm.lam_table(layer)["self_attn.aggregation"] == pytest.approx(0.75)
    x = torch.randn(2, 5, 16)
    with nrpm.lam_override(layer, 1.0):
        torch.testing.assert_close(layer(x), _encoder_layer()(x), atol=1e-6, rtol=0)
    assert nrpm.lam_table(layer)["self_attn.aggregation"] == pytest.approx(0.75)
    layer(x).sum().backward()
    assert all(p.grad is not None for p in nrpm.lam_parameters(layer))
    assert layer.self_attn.in_proj_weight.grad is None  # paradigm 2: only the lams learn
    assert {k for k in layer.state_dict() if not k.endswith("lam_logit")} == set(_encoder_layer().state_dict())


@pytest.mark.filterwarnings("ignore::nrpm.UnreprogrammedWeightsWarning")  # linear1/2 left plain on purpose
def test_target_types_select_the_parts():
    layer = nrpm.reprogram(_encoder_layer(), target_types=["attention_projections"])
    attn = layer.self_attn
    assert isinstance(attn.q_proj, RobustProjection) and attn.aggregation is None
    assert set(nrpm.lam_table(layer)) == {f"self_attn.{p}" for p in PART_NAMES[:4]}
    layer = nrpm.reprogram(_encoder_layer(), target_types=["attention_aggregation"])
    assert isinstance(layer.self_attn.aggregation, RobustAggregation) and layer.self_attn.q_proj is None
    assert type(layer.self_attn.out_proj) is nn.modules.linear.NonDynamicallyQuantizableLinear
    assert set(nrpm.lam_table(layer)) == {"self_attn.aggregation"}
    layer = nrpm.reprogram(_encoder_layer(), target_types=[nn.MultiheadAttention])
    assert set(nrpm.lam_table(layer)) == {f"self_attn.{p}" for p in PART_NAMES}


def test_untargeted_attention_and_other_weights_are_reported():
    with pytest.warns(UnreprogrammedWeightsWarning, match="self_attn: MultiheadAttention is not in target_types"):
        layer = nrpm.reprogram(_encoder_layer(), target_types=["linear"])
    assert layer.nrpm_unreprogrammed == {"self_attn": "MultiheadAttention is not in target_types"}
    model = nn.Sequential(nn.Embedding(10, 8), nn.Conv1d(8, 8, 3), nn.LayerNorm(6), nn.Linear(6, 4))
    with pytest.warns(UnreprogrammedWeightsWarning) as record:
        nrpm.reprogram(model)
    assert model.nrpm_unreprogrammed == {"0": "nrpm does not reprogram Embedding",
                                         "1": "nrpm does not reprogram Conv1d"}
    assert len(record) == 1 and "0: nrpm does not reprogram Embedding" in str(record[0].message)
    with warnings.catch_warnings():  # a deliberate skip by name is a choice, not reported
        warnings.simplefilter("error")
        nrpm.reprogram(_encoder_layer(), skip=["linear2"])


def test_unsupported_attention_options_are_refused():
    model = nn.Sequential(nn.MultiheadAttention(8, 2, add_bias_kv=True))
    with pytest.raises(ValueError, match="add_bias_kv=False only"):
        nrpm.reprogram(model)
    with pytest.raises(ValueError, match="parts must be"):
        RobustMultiheadAttention(8, 2, parts=("values",))
    with pytest.raises(ValueError, match="lam_per_part"):
        RobustMultiheadAttention(8, 2, parts=("aggregation",), lam_per_part={"q_proj": 0.1})
    with pytest.raises(ValueError, match="is_causal"):
        RobustMultiheadAttention(8, 2)(torch.randn(1, 3, 8), torch.randn(1, 3, 8), torch.randn(1, 3, 8),
                                       is_causal=True)
    with pytest.raises(ValueError, match="attn_mask must have shape"):
        RobustMultiheadAttention(8, 2, batch_first=True)(*([torch.randn(1, 3, 8)] * 3),
                                                         attn_mask=torch.zeros(2, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="unknown estimator"):
        nrpm.reprogram(_encoder_layer(), norm="l2")


def test_save_load_and_backward_modes_with_attention(tmp_path):
    layer = nrpm.reprogram(_encoder_layer(), lam_per_layer={"self_attn": 0.3, "self_attn.v_proj": 0.9}, K=1)
    assert nrpm.lam_table(layer)["self_attn.out_proj"] == pytest.approx(0.3)
    nrpm.save_reprogramming(layer, tmp_path / "lam.pt")
    fresh = nrpm.load_reprogramming(_encoder_layer(), tmp_path / "lam.pt")
    assert nrpm.lam_table(fresh) == pytest.approx(nrpm.lam_table(layer))
    x = torch.randn(2, 5, 16, requires_grad=True)
    torch.testing.assert_close(fresh(x), layer(x))
    for mode in ("exact", "detached", "plain"):
        with nrpm.backward_override(layer, mode):
            grad, = torch.autograd.grad(layer(x).sum(), x)
        assert torch.isfinite(grad).all()
    clone = copy.deepcopy(layer)
    nrpm.set_lam(clone, 1.0)
    assert nrpm.lam_table(layer)["self_attn.v_proj"] == pytest.approx(0.9)


def test_vit_reprograms_and_runs_forward_and_backward():
    from nrpm.models import create_model

    model = create_model("vit_tiny_cifar")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every weight-bearing module of the ViT is covered
        nrpm.reprogram(model, ReprogramConfig(lam=0.5, K=1, paradigm=3))
    assert all(type(b.attn) is RobustMultiheadAttention for b in model.blocks)
    x = torch.rand(2, 3, 32, 32)
    out = model(x)
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    out.sum().backward()
    assert model.blocks[0].attn.in_proj_weight.grad is not None
    assert all(p.grad is not None for p in nrpm.lam_parameters(model))


def test_transformer_encoder_nested_fast_path_is_refused_with_the_fix():
    torch.manual_seed(0)
    encoder = nn.TransformerEncoder(nn.TransformerEncoderLayer(16, 2, batch_first=True, dropout=0.0), 2).eval()
    x, padding = torch.randn(2, 5, 16), torch.zeros(2, 5, dtype=torch.bool)
    padding[0, -2:] = True
    nrpm.reprogram(encoder, lam=0.5, K=1)
    with torch.no_grad(), pytest.raises(ValueError, match="use_nested_tensor = False"):
        encoder(x, src_key_padding_mask=padding)  # the fast path packs the batch into nested tensors
    encoder.use_nested_tensor = False
    with torch.no_grad():
        out = encoder(x, src_key_padding_mask=padding)
    torch.testing.assert_close(out, encoder(x, src_key_padding_mask=padding))  # same as with autograd on


def test_part_lam_mode_switch_keeps_the_value():
    part = nrpm.reprogram(_encoder_layer(), lam=0.3).self_attn.aggregation
    part.set_learnable_lam(True)
    assert part.learnable_lam and part.lam_value() == pytest.approx(0.3)
    part.set_learnable_lam(False)
    assert not part.learnable_lam and part.lam_value() == pytest.approx(0.3)
    with pytest.raises(ValueError, match="part of RobustMultiheadAttention"):
        part.to_plain()
