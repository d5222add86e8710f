"""CUDA correctness (run by benchmarks/gpu_check.sh on a GPU; skipped without CUDA): the compiled Triton kernels
against the eager ones and the naive reference, forward and gradients, linear and conv, every estimator.

The kernel comparisons run in float64: MCP, Huber and HM have kinks (a clamp of the IRLS weight), and in float32 the
compiled and eager kernels' different summation orders put a vote on either side of a kink now and then (seen on an
H100: 1 of 1152 weight-gradient entries off by 8e-5 for MCP), a true difference of rounding, not of the kernels.
The ViT check runs in float32 with TF32 off, as the CPU computes."""

import pytest
import torch

from nrpm.functional import robust_conv2d, robust_linear
from nrpm.reference import naive_conv2d, naive_linear

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

ESTIMATORS = [dict(norm="l1"), dict(norm="mcp", gamma=0.06), dict(norm="huber", delta=0.03),
              dict(norm="hm", gamma=2.0, delta=0.5, scale="relative")]
IDS = [e["norm"] for e in ESTIMATORS]


def _outputs_and_grads(fn, inputs):
    inputs = [t.detach().clone().requires_grad_(True) for t in inputs]
    out = fn(*inputs)
    probe = torch.linspace(-1, 1, out.numel(), device=out.device, dtype=out.dtype).view_as(out)
    return [out.detach(), *torch.autograd.grad((out * probe).sum(), inputs)]


def _close(a, b, rtol=1e-9, atol=1e-11):
    for x, y in zip(a, b):
        torch.testing.assert_close(x.double().cpu(), y.double().cpu(), rtol=rtol, atol=atol)


@pytest.mark.parametrize("est", ESTIMATORS, ids=IDS)
def test_linear_compiled_eager_and_naive_agree_on_cuda(backend, est):
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.rand(64, 96, device="cuda", generator=g, dtype=torch.float64)
    w = torch.randn(32, 96, device="cuda", generator=g, dtype=torch.float64) / 10
    fn = lambda a, b: robust_linear(a, b, None, lam=0.3, K=3, eps=1e-3, **est)  # noqa: E731
    backend("compiled")
    compiled = _outputs_and_grads(fn, (x, w))
    backend("eager")
    eager = _outputs_and_grads(fn, (x, w))
    naive = _outputs_and_grads(lambda a, b: naive_linear(a, b, None, 0.3, 3, 1e-3, **est), (x, w))
    _close(compiled, eager)
    _close(compiled, naive)


@pytest.mark.parametrize("est", ESTIMATORS, ids=IDS)
def test_conv_compiled_eager_and_naive_agree_on_cuda(backend, est):
    g = torch.Generator(device="cuda").manual_seed(1)
    x = torch.rand(32, 8, 12, 12, device="cuda", generator=g, dtype=torch.float64)
    w = torch.randn(16, 8, 3, 3, device="cuda", generator=g, dtype=torch.float64) / 10
    fn = lambda a, b: robust_conv2d(a, b, None, 1, 1, lam=0.3, K=2, eps=1e-3, **est)  # noqa: E731
    backend("compiled")
    compiled = _outputs_and_grads(fn, (x, w))
    backend("eager")
    eager = _outputs_and_grads(fn, (x, w))
    naive = _outputs_and_grads(lambda a, b: naive_conv2d(a, b, None, 1, 1, 1, 1, 0.3, 2, 1e-3, **est), (x, w))
    _close(compiled, eager)
    _close(compiled, naive)


@pytest.mark.parametrize("norm", ["l1", "mcp", "huber", "hm"])
def test_robust_attention_on_cuda_matches_the_float64_reference(norm):
    from test_attention import reference

    from nrpm.attention import robust_attention

    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(2, 3, 17, 8, generator=g, dtype=torch.float64) for _ in range(3))
    mask = torch.rand(17, 17, generator=g) < 0.3
    mask[:, 0] = False
    est = dict(norm=norm, gamma=4.0, delta=1.5)
    ref = _outputs_and_grads(lambda a, b, c: reference(a, b, c, mask, lam=0.3, K=3, **est), (q, k, v))
    ours = _outputs_and_grads(lambda a, b, c: robust_attention(a, b, c, attn_mask=mask.cuda(), lam=0.3, K=3, **est),
                              [t.float().cuda() for t in (q, k, v)])
    _close(ours, ref, rtol=2e-4, atol=2e-5)


def test_reprogrammed_vit_on_cuda_matches_cpu(backend, monkeypatch):
    """The registry's ViT with every attention part reprogrammed: the same logits and input gradient on CUDA as on
    the CPU (float32; the compiled kernels on CUDA)."""
    from nrpm import ReprogramConfig, reprogram
    from nrpm.models import create_model

    torch.manual_seed(0)
    model = create_model("vit_tiny_cifar").eval()
    model = reprogram(model, ReprogramConfig(lam=0.5, K=2, target_types=("linear", "conv2d", "attention")))
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    backend("eager")
    on_cpu = _outputs_and_grads(model, (x,))
    backend("compiled")
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    on_cuda = _outputs_and_grads(model.cuda(), (x.cuda(),))
    for a, b in zip(on_cuda, on_cpu):
        torch.testing.assert_close(a.float().cpu(), b, rtol=1e-3, atol=1e-4)
