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
