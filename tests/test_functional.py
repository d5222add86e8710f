"""nrpm.functional against an independent, deliberately naive reference that materialises every vote."""

import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F

from nrpm import functional as RF
from nrpm.functional import robust_conv2d, robust_linear, robust_sum
from nrpm.reference import naive_conv2d, naive_irls, naive_linear


def _tol(dtype):
    return dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else dict(rtol=1e-9, atol=1e-9)


# ------------------------------------------------------------------------------------------ equivalence
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("K", [1, 3, 5])
@pytest.mark.parametrize("eps", [1e-3, 1e-1])
@pytest.mark.parametrize("lam", [0.0, 0.3, 0.9])
def test_linear_matches_naive(dtype, K, eps, lam):
    x = torch.randn(6, 11, dtype=dtype)
    w = torch.randn(5, 11, dtype=dtype)
    b = torch.randn(5, dtype=dtype)
    torch.testing.assert_close(robust_linear(x, w, b, lam=lam, K=K, eps=eps), naive_linear(x, w, b, lam, K, eps),
                               **_tol(dtype))


@pytest.mark.parametrize("shape", [(11,), (2, 3, 11), (4, 1, 2, 11)])
def test_linear_any_batch_shape(shape):
    x = torch.randn(*shape, dtype=torch.float64)
    w = torch.randn(3, 11, dtype=torch.float64)
    out = robust_linear(x, w, None, lam=0.2, K=2, eps=1e-3)
    assert out.shape == shape[:-1] + (3,)
    torch.testing.assert_close(out, naive_linear(x, w, None, 0.2, 2, 1e-3))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("stride,padding,dilation,groups", [
    (1, 0, 1, 1), (1, 1, 1, 1), (2, 1, 1, 1), (1, 2, 2, 1), (2, 1, 1, 2), (1, 1, 1, 4),
])
@pytest.mark.parametrize("K,lam", [(1, 0.0), (3, 0.5)])
def test_conv2d_matches_naive(dtype, stride, padding, dilation, groups, K, lam):
    x = torch.randn(2, 4, 7, 6, dtype=dtype)
    w = torch.randn(8, 4 // groups, 3, 3, dtype=dtype)
    b = torch.randn(8, dtype=dtype)
    got = robust_conv2d(x, w, b, stride, padding, dilation, groups, lam=lam, K=K, eps=1e-2)
    want = naive_conv2d(x, w, b, stride, padding, dilation, groups, lam, K, 1e-2)
    torch.testing.assert_close(got, want, **_tol(dtype))


def test_conv2d_unbatched_and_same_padding():
    x = torch.randn(3, 6, 6, dtype=torch.float64)
    w = torch.randn(2, 3, 3, 3, dtype=torch.float64)
    got = robust_conv2d(x, w, None, 1, "same", lam=0.0, K=2)
    assert got.shape == (2, 6, 6)
    torch.testing.assert_close(got, naive_conv2d(x[None], w, None, 1, 1, 1, 1, 0.0, 2, RF.DEFAULT_EPS)[0])


def test_chunking_gives_same_values_and_gradients():
    x = torch.randn(9, 13, dtype=torch.float64, requires_grad=True)
    w = torch.randn(7, 13, dtype=torch.float64, requires_grad=True)
    outs, grads = [], []
    for budget in (256, 0.0005):  # the tiny budget forces chunks of a single vote row
        RF.set_memory_budget(budget)
        try:
            y = robust_linear(x, w, None, lam=0.1, K=3)
            outs.append(y)
            grads.append(torch.autograd.grad((y * torch.arange(7.0, dtype=y.dtype)).sum(), [x, w]))
        finally:
            RF.set_memory_budget(256)
    torch.testing.assert_close(outs[0], outs[1])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)


def test_gradients_match_naive_autograd():
    x = torch.randn(4, 10, requires_grad=True, dtype=torch.float64)
    w = torch.randn(3, 10, requires_grad=True, dtype=torch.float64)
    lam = torch.tensor(0.4, dtype=torch.float64, requires_grad=True)
    for detach in (False, True):
        got = torch.autograd.grad(robust_linear(x, w, None, lam=lam, K=3, eps=1e-2, detach_weights=detach).sum(),
                                  [x, w, lam])
        want = torch.autograd.grad(naive_linear(x, w, None, lam, 3, 1e-2, detach).sum(), [x, w, lam])
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b)


# -------------------------------------------------------------------------------------------- gradcheck
def test_gradcheck_linear():
    x = torch.randn(3, 6, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, dtype=torch.float64, requires_grad=True)
    lam = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w, b, lam: robust_linear(x, w, b, lam=lam, K=3, eps=1e-2),
                                    (x, w, b, lam))


def test_gradcheck_conv2d():
    x = torch.randn(2, 4, 5, 5, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    lam = torch.tensor(0.6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda x, w, lam: robust_conv2d(x, w, None, 2, 1, 1, 2, lam=lam, K=2, eps=1e-2), (x, w, lam))


# ------------------------------------------------------------------------------------ special cases
def test_lam_one_is_exactly_the_plain_layers():
    x = torch.randn(5, 20)
    w, b = torch.randn(7, 20), torch.randn(7)
    assert torch.equal(robust_linear(x, w, b, lam=1.0, K=3), F.linear(x, w, b))
    xc, wc, bc = torch.randn(2, 3, 9, 9), torch.randn(4, 3, 3, 3), torch.randn(4)
    assert torch.equal(robust_conv2d(xc, wc, bc, 2, 1, lam=1.0, K=3), F.conv2d(xc, wc, bc, 2, 1))


@pytest.mark.parametrize("lam", [0.0, 0.5, 1.0])
def test_K_zero_is_lpm(lam):
    x, w, b = torch.randn(5, 20), torch.randn(7, 20), torch.randn(7)
    torch.testing.assert_close(robust_linear(x, w, b, lam=lam, K=0), F.linear(x, w, b))
    xc, wc = torch.randn(2, 3, 9, 9), torch.randn(4, 3, 3, 3)
    torch.testing.assert_close(robust_conv2d(xc, wc, None, 1, 1, lam=lam, K=0), F.conv2d(xc, wc, None, 1, 1))


def test_one_outlier_vote_moves_nrpm_far_less_than_lpm():
    gen = torch.Generator().manual_seed(1)
    D = 64
    x = torch.rand(1, D, generator=gen, dtype=torch.float64)
    w = torch.rand(1, D, generator=gen, dtype=torch.float64) + 0.5  # positive weights: votes of one sign
    x_bad = x.clone()
    x_bad[0, 7] += 1000.0
    shift_lpm = (F.linear(x_bad, w) - F.linear(x, w)).abs().item()
    shift_nrpm = (robust_linear(x_bad, w, lam=0.0, K=3) - robust_linear(x, w, lam=0.0, K=3)).abs().item()
    assert shift_lpm > 500.0  # the mean moves by w_7 * 1000
    assert shift_nrpm < shift_lpm / 50, (shift_nrpm, shift_lpm)


def test_half_precision_keeps_dtype():
    x, w = torch.randn(3, 16), torch.randn(4, 16)
    out = robust_linear(x.bfloat16(), w.bfloat16(), lam=0.0, K=2)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), robust_linear(x, w, lam=0.0, K=2), rtol=0.05, atol=0.1)


def test_nan_and_inf_propagate_without_hanging():
    x, w = torch.randn(3, 8), torch.randn(2, 8)
    x[1, 2] = float("nan")
    x[2, 3] = float("inf")
    out = robust_linear(x, w, lam=0.0, K=3)
    assert torch.isfinite(out[0]).all()
    assert not torch.isfinite(out[1]).any() and not torch.isfinite(out[2]).any()


def test_robust_sum_on_materialised_votes():
    votes = torch.randn(4, 3, 9, dtype=torch.float64)
    torch.testing.assert_close(robust_sum(votes, -1, lam=0.2, K=3, eps=1e-3), naive_irls(votes, 0.2, 3, 1e-3))
    torch.testing.assert_close(robust_sum(votes.transpose(1, 2), 1, lam=0.2, K=3, eps=1e-3),
                               naive_irls(votes, 0.2, 3, 1e-3))


# ------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("kwargs,match", [
    (dict(K=-1), "K"), (dict(K=1.5), "K"), (dict(K=True), "K"),
    (dict(eps=0.0), "eps"), (dict(eps=-1e-3), "eps"), (dict(eps=float("nan")), "eps"),
    (dict(lam=1.5), "lam"), (dict(lam=-0.1), "lam"), (dict(lam=torch.ones(2)), "lam"),
    (dict(lam=torch.tensor(1)), "lam"),
])
def test_bad_hyperparameters_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        robust_linear(torch.randn(2, 3), torch.randn(4, 3), **kwargs)
    with pytest.raises(ValueError, match=match):
        robust_conv2d(torch.randn(1, 2, 5, 5), torch.randn(3, 2, 3, 3), **kwargs)


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="in_features"):
        robust_linear(torch.randn(2, 5), torch.randn(4, 3))
    with pytest.raises(ValueError, match="floating"):
        robust_linear(torch.ones(2, 3, dtype=torch.int64), torch.randn(4, 3))
    with pytest.raises(ValueError, match="4-D"):
        robust_conv2d(torch.randn(2, 5), torch.randn(3, 2, 3, 3))
    with pytest.raises(ValueError, match="channels"):
        robust_conv2d(torch.randn(1, 3, 5, 5), torch.randn(3, 2, 3, 3))
    with pytest.raises(ValueError, match="floating"):
        robust_conv2d(torch.ones(1, 2, 5, 5, dtype=torch.uint8), torch.randn(3, 2, 3, 3))
    with pytest.raises(ValueError, match="padding"):
        robust_conv2d(torch.randn(1, 2, 5, 5), torch.randn(3, 2, 3, 3), padding="full")
    with pytest.raises(ValueError, match="bias"):
        robust_linear(torch.randn(2, 3), torch.randn(4, 3), torch.randn(5))
    with pytest.raises(ValueError, match="memory budget"):
        RF.set_memory_budget(0)


# ------------------------------------------------------------------------------------------ memory bound
MEMORY_LIMIT_MB = 1500  # naive votes alone for this layer would be 32*64*576*1024*4 B = 4.8 GB


def test_full_width_conv_forward_backward_stays_under_memory_bound():
    """Full-width ResNet-18 conv 64->64 3x3 at 32x32, batch 32, in a fresh process: peak RSS < 1.5 GB."""
    script = textwrap.dedent("""
        import resource, torch
        from nrpm.functional import robust_conv2d
        torch.manual_seed(0)
        x = torch.rand(32, 64, 32, 32, requires_grad=True)
        w = (torch.randn(64, 64, 3, 3) * 0.05).requires_grad_()
        robust_conv2d(x, w, None, 1, 1, lam=0.0, K=1).square().sum().backward()
        assert torch.isfinite(x.grad).all() and torch.isfinite(w.grad).all()
        # VmHWM: this program's own peak. ru_maxrss also keeps the RSS of the pytest process it was forked from
        # (Linux carries the high-water mark across exec), which a long test session makes large
        try:
            peak = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
        except (OSError, StopIteration):
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(peak // 1024)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    peak_mb = int(out.stdout.strip().splitlines()[-1])
    assert peak_mb < MEMORY_LIMIT_MB, f"peak RSS {peak_mb} MB >= {MEMORY_LIMIT_MB} MB"


# ---------------------------------------------------------------------------------------------- settings
def test_settings_value_equals_the_keyword_arguments():
    """IRLSSettings in place of K/eps/detach_weights/estimator: the same numbers, bit for bit; hashable."""
    x, w = torch.randn(5, 9, requires_grad=True), torch.randn(4, 9)
    xc, wc = torch.randn(2, 3, 6, 6), torch.randn(4, 3, 3, 3)
    options = dict(K=2, eps=1e-2, detach_weights=True, norm="hm", gamma=2.0, delta=0.5, scale="relative")
    settings = RF.IRLSSettings.create(**options)
    assert hash(settings) == hash(RF.IRLSSettings.create(**options)) and settings.options() == options
    assert torch.equal(robust_linear(x, w, lam=0.3, settings=settings), robust_linear(x, w, lam=0.3, **options))
    assert torch.equal(robust_conv2d(xc, wc, None, 1, 1, lam=0.3, settings=settings),
                       robust_conv2d(xc, wc, None, 1, 1, lam=0.3, **options))
    votes = torch.randn(3, 7)
    assert torch.equal(robust_sum(votes, settings=settings), robust_sum(votes, **options))


def test_settings_are_validated_and_exclusive_with_the_options():
    x, w = torch.randn(5, 9), torch.randn(4, 9)
    with pytest.raises(ValueError, match="not both"):
        robust_linear(x, w, K=2, settings=RF.IRLSSettings(K=3))
    with pytest.raises(ValueError, match="eps must be"):
        robust_linear(x, w, settings=RF.IRLSSettings(eps=0.0))
    with pytest.raises(ValueError, match="HM estimator needs gamma > delta"):
        robust_linear(x, w, settings=RF.IRLSSettings(estimator=RF.Estimator("hm", 1.0, 2.0, False)))
