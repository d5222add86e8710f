"""CUDA correctness (run by benchmarks/gpu_check.sh on a GPU; skipped without CUDA): the compiled Triton kernels
against the eager ones and the naive reference, forward and gradients, linear and conv, every estimator."""

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


def _close(a, b):
    for x, y in zip(a, b):
        torch.testing.assert_close(x.float().cpu(), y.float().cpu(), rtol=2e-4, atol=2e-5)


@pytest.mark.parametrize("est", ESTIMATORS, ids=IDS)
def test_linear_compiled_eager_and_naive_agree_on_cuda(backend, est):
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.rand(64, 96, device="cuda", generator=g)
    w = torch.randn(32, 96, device="cuda", generator=g) / 10
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
    x = torch.rand(32, 8, 12, 12, device="cuda", generator=g)
    w = torch.randn(16, 8, 3, 3, device="cuda", generator=g) / 10
    fn = lambda a, b: robust_conv2d(a, b, None, 1, 1, lam=0.3, K=2, eps=1e-3, **est)  # noqa: E731
    backend("compiled")
    compiled = _outputs_and_grads(fn, (x, w))
    backend("eager")
    eager = _outputs_and_grads(fn, (x, w))
    naive = _outputs_and_grads(lambda a, b: naive_conv2d(a, b, None, 1, 1, 1, 1, 0.3, 2, 1e-3, **est), (x, w))
    _close(compiled, eager)
    _close(compiled, naive)
