"""The compiled NRPM kernels against the eager ones and against a naive reference that materialises every vote.

Compilation is slow (seconds per kernel, cached on disk afterwards), so only a few small tests compile, and they
share their kernels: linear layers with K=3 (both detach modes), one convolution geometry with K=1; every problem
has at least two blocks of lanes, so no size-1 specialisation is compiled. The other layouts and geometries run
the same kernel functions eagerly.
"""

import warnings

import pytest
import torch
import torch.nn.functional as F

from nrpm import functional as RF
from nrpm._backend import AUTO_MIN_VOTE_STEPS, BACKENDS, STATE, CompiledKernels
from nrpm.functional import robust_conv2d, robust_linear
from nrpm.reference import naive_conv2d, naive_linear

EPS = 1e-2


# ------------------------------------------------------------------------------------------------ helpers
def outputs_and_grads(fn, inputs):
    out = fn(*inputs)
    grads = torch.autograd.grad((out * torch.linspace(-1, 2, out.numel()).view(out.shape)).sum(), inputs)
    return [out.detach(), *grads]


def assert_all_close(got, want, **tol):
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, **tol)


def leaf(*shape, scale=1.0):
    return (torch.randn(*shape) * scale).requires_grad_()


TOL = dict(rtol=2e-4, atol=2e-4)


# ------------------------------------------------------------------------------------------------ tests
@pytest.mark.parametrize("K,detach", [(3, False), (3, True)])
def test_linear_compiled_matches_eager_and_naive(backend, K, detach):
    x, w, b, lam = leaf(20, 37), leaf(6, 37, scale=0.3), leaf(6), torch.tensor(0.3).requires_grad_()
    fn = lambda x, w, b, lam: robust_linear(x, w, b, lam=lam, K=K, eps=EPS, detach_weights=detach)  # noqa: E731
    naive = lambda x, w, b, lam: naive_linear(x, w, b, lam, K, EPS, detach)  # noqa: E731
    check_against_eager_and_naive(backend, fn, naive, (x, w, b, lam))


def test_conv2d_compiled_matches_eager_and_naive(backend):
    """Batch in the lanes, directly on the image (K=1: the configuration of test_functional's memory test)."""
    x, w, b, lam = leaf(32, 4, 9, 8), leaf(6, 4, 3, 3, scale=0.3), leaf(6), torch.tensor(0.6).requires_grad_()
    fn = lambda x, w, b, lam: robust_conv2d(x, w, b, 1, 1, lam=lam, K=1, eps=EPS)  # noqa: E731
    naive = lambda x, w, b, lam: naive_conv2d(x, w, b, 1, 1, 1, 1, lam, 1, EPS, False)  # noqa: E731
    check_against_eager_and_naive(backend, fn, naive, (x, w, b, lam))


@pytest.mark.parametrize("batch,stride,padding,dilation,groups", [
    (32, 1, 2, 2, 2),  # batch in the lanes, directly on the image
    (3, 2, 1, 1, 1),  # output positions in the lanes, on unfold's columns
])
def test_conv2d_layouts_on_eager_kernels(backend, monkeypatch, batch, stride, padding, dilation, groups):
    """Each layout, run by the eager kernels (the compiled ones are the same functions, checked above)."""
    monkeypatch.setattr(STATE, "will_compile", lambda device, steps: True)  # pick the layout of compiled runs
    monkeypatch.setattr(STATE, "call_compiled", eager_instead)
    x, w = leaf(batch, 4, 9, 8), leaf(6, 4 // groups, 3, 3, scale=0.3)
    b, lam = leaf(6), torch.tensor(0.6).requires_grad_()
    args = (stride, padding, dilation, groups)
    got = outputs_and_grads(lambda x, w, b, lam: robust_conv2d(x, w, b, *args, lam=lam, K=3, eps=EPS), (x, w, b, lam))
    want = outputs_and_grads(lambda x, w, b, lam: naive_conv2d(x, w, b, *args, lam, 3, EPS, False), (x, w, b, lam))
    assert_all_close(got, want, **TOL)


def test_eager_chunks_of_output_rows(backend):
    """A tiny memory budget splits unfold's columns into single lane blocks: same values and gradients."""
    backend("eager")
    x, w = leaf(2, 3, 11, 9), leaf(4, 3, 3, 3, scale=0.3)
    fn = lambda x, w: robust_conv2d(x, w, None, 2, 1, lam=0.2, K=2, eps=EPS)  # noqa: E731
    whole = outputs_and_grads(fn, (x, w))
    RF.set_memory_budget(0.0005)
    try:
        chunked = outputs_and_grads(fn, (x, w))
    finally:
        RF.set_memory_budget(256)
    assert_all_close(chunked, whole)
    assert_all_close(whole, outputs_and_grads(lambda x, w: naive_conv2d(x, w, torch.zeros(4), 2, 1, 1, 1, 0.2, 2, EPS,
                                                                        False), (x, w)), **TOL)


def eager_instead(kernel, key, args, dynamic):
    return kernel(*args)


def check_against_eager_and_naive(backend, fn, naive, inputs):
    backend("compiled")
    compiled = outputs_and_grads(fn, inputs)
    backend("eager")
    eager = outputs_and_grads(fn, inputs)
    assert_all_close(compiled, eager, **TOL)
    assert_all_close(compiled, outputs_and_grads(naive, inputs), **TOL)


def test_inference_and_input_only_gradient(backend):
    """No grad: the statistics-free forward; frozen weight and float lam (an attack step): grad_x only."""
    x, w = torch.rand(32, 3, 8, 8), torch.randn(5, 3, 3, 3) * 0.3
    fn = lambda x: robust_conv2d(x, w, None, 1, 1, lam=0.5, K=1, eps=EPS)  # noqa: E731
    backend("compiled")
    with torch.no_grad():
        infer = fn(x)
    attack = outputs_and_grads(fn, (x.clone().requires_grad_(),))
    backend("eager")
    torch.testing.assert_close(infer, fn(x), **TOL)
    assert_all_close(attack, outputs_and_grads(fn, (x.clone().requires_grad_(),)), **TOL)


# ------------------------------------------------------------------------------------ backend selection
def test_backend_switch_validates_and_reports():
    assert RF.get_backend() in BACKENDS
    with pytest.raises(ValueError, match="backend"):
        RF.set_backend("fast")


def test_auto_compiles_only_large_problems(backend, monkeypatch):
    monkeypatch.setattr(STATE.compiled, "failure", None)
    cpu = torch.device("cpu")
    backend("auto")
    assert not STATE.will_compile(cpu, 1000)
    assert STATE.will_compile(cpu, AUTO_MIN_VOTE_STEPS)
    backend("eager")
    assert not STATE.will_compile(cpu, 10**12)
    backend("compiled")
    assert STATE.will_compile(cpu, 1)


def test_compile_failure_warns_once_and_falls_back(backend, monkeypatch):
    def broken(kernel, key):
        raise RuntimeError("no C++ compiler")

    monkeypatch.setattr(STATE.compiled, "get", broken)
    monkeypatch.setattr(STATE.compiled, "failure", None)
    monkeypatch.setattr(STATE, "auto_min_vote_steps", 0)  # make a small problem "large"
    x, w = leaf(5, 12), leaf(3, 12)
    backend("auto")
    with pytest.warns(RuntimeWarning, match="falling back"):
        got = outputs_and_grads(lambda x, w: robust_linear(x, w, lam=0.2, K=2), (x, w))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the second call neither retries nor warns again
        again = outputs_and_grads(lambda x, w: robust_linear(x, w, lam=0.2, K=2), (x, w))
    backend("eager")
    want = outputs_and_grads(lambda x, w: robust_linear(x, w, lam=0.2, K=2), (x, w))
    assert_all_close(got, want)
    assert_all_close(again, want)
    backend("compiled")  # forced: the failure is raised, not hidden
    monkeypatch.setattr(STATE.compiled, "failure", None)
    with pytest.raises(RuntimeError, match="no C"):
        robust_linear(x, w, lam=0.2, K=2)


def test_the_first_compilation_of_a_geometry_is_announced_once(capsys):
    kernels = CompiledKernels()
    for key in (("forward", (3, 3, 1, 1, 1, 1), 1), ("grad_x", (3, 3, 1, 1, 1, 1), 1), ("forward", (5, 5, 1, 1, 1, 1))):
        kernels.announce(key)
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and all(line.startswith("nrpm: compiling the NRPM kernels") for line in err)


def test_a_compilation_is_announced_only_when_it_takes_long(capsys, monkeypatch):
    import time

    from nrpm import _backend

    kernels = CompiledKernels()
    monkeypatch.setattr(kernels, "get", lambda kernel, key: kernel)
    monkeypatch.setattr(_backend, "ANNOUNCE_AFTER_S", 0.05)
    kernels.run(lambda: None, ("quick", (1, 1, 1, 1, 1, 1)), ())  # the disk cache serves: no line
    kernels.run(lambda: time.sleep(0.3), ("slow", (3, 3, 1, 1, 1, 1)), ())
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "(3, 3, 1, 1, 1, 1)" in err[0]


def test_sustained_work_compiles_every_size_under_auto_only(backend, monkeypatch):
    monkeypatch.setattr(STATE.compiled, "failure", None)
    monkeypatch.setattr(STATE, "sustained_min_vote_steps", 0)  # the suite sets NRPM_SUSTAINED=0 (conftest)
    cpu = torch.device("cpu")
    backend("auto")
    assert not STATE.will_compile(cpu, 1000)
    with RF.sustained_work():
        assert STATE.will_compile(cpu, 1000)
        with RF.sustained_work():  # nests
            assert STATE.will_compile(cpu, 1)
        assert STATE.will_compile(cpu, 1)
        backend("eager")
        assert not STATE.will_compile(cpu, 10**12)  # the eager setting stays eager
        backend("auto")
    assert not STATE.will_compile(cpu, 1000)
    with pytest.raises(RuntimeError), RF.sustained_work():
        raise RuntimeError("left early")
    assert STATE.sustained_depth == 0 and not STATE.will_compile(cpu, 1000)


def test_sustained_work_can_be_switched_off_by_the_environment(monkeypatch):
    from nrpm import _backend

    monkeypatch.setenv("NRPM_SUSTAINED", "0")
    assert _backend._from_environment().sustained_min_vote_steps == AUTO_MIN_VOTE_STEPS
    monkeypatch.setenv("NRPM_SUSTAINED", "1")
    assert _backend._from_environment().sustained_min_vote_steps == 0


class _DepthProbe(torch.nn.Module):
    """A classifier that records whether each forward ran inside sustained_work."""

    def __init__(self):
        super().__init__()
        self.fc, self.seen = torch.nn.Linear(12, 3), []

    def forward(self, x):
        self.seen.append(STATE.sustained_depth > 0)
        return self.fc(x.flatten(1))


def test_attacks_and_certification_run_inside_sustained_work():
    from nrpm.attacks import PGD
    from nrpm.certify import CertifySettings, run_certify

    model, x, y = _DepthProbe(), torch.rand(4, 12), torch.tensor([0, 1, 2, 0])
    PGD(0.1, steps=2)(model, x, y)
    assert model.seen and all(model.seen)
    model.seen.clear()
    run_certify(model, x[:1], y[:1], CertifySettings(sigmas=(0.25,), n0=4, n=8))
    assert model.seen and all(model.seen)
    model.seen.clear()
    model(x)  # outside: the size rule
    assert model.seen == [False]


def test_compiled_unfolded_conv_at_a_small_batch_matches_eager_and_naive(backend):
    """The layout sustained_work compiles for a few surviving samples: batch 3, output positions in the lanes."""
    x, w, b, lam = leaf(3, 4, 9, 8), leaf(6, 4, 3, 3, scale=0.3), leaf(6), torch.tensor(0.6).requires_grad_()
    fn = lambda x, w, b, lam: robust_conv2d(x, w, b, 1, 1, lam=lam, K=1, eps=EPS)  # noqa: E731
    naive = lambda x, w, b, lam: naive_conv2d(x, w, b, 1, 1, 1, 1, lam, 1, EPS, False)  # noqa: E731
    check_against_eager_and_naive(backend, fn, naive, (x, w, b, lam))
