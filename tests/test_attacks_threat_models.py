"""Tests for the threat models beyond PGD: C&W (Linf margin PGD and L2), DeepFool, SPSA, the common corruptions
and the smoothed-IRLS gradient source.

Tiny models on synthetic data: the 5-class MLP of ``test_attacks.py`` (inputs in [0, 1]^36) for the norm-bounded
attacks, and a small conv net on 3 x 8 x 8 images for the corruptions. The image classes differ only in the
contrast of one fixed random texture (on a random grey level), so noise, blur, contrast and brightness all move
images across classes, as corruptions do to natural images.
"""
import copy
from dataclasses import dataclass
from typing import Callable

import pytest
import torch
from torch import nn

import nrpm
from nrpm.attacks import (CORRUPTIONS, CWL2, PGD, SPSA, Corruption, CWLinf, DeepFool, SmoothedGradient, corrupt,
                          eval_frozen, loss_and_gradient, make_attack, margin_loss_per_sample, perturbation_norm,
                          robust_accuracy, with_default_seed)
from nrpm.attacks.corruptions import SEVERITY_CONSTANTS, defocus_kernel

N_CLASSES = 5
N_FEATURES = 36
TOLERANCE = 1e-5


pytestmark = pytest.mark.usefixtures("single_thread")  # tiny models (conftest.py)


def _train(model, x, y, steps):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        for module in model.modules():
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
        optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
        for _ in range(steps):
            optimiser.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            optimiser.step()
    model.zero_grad(set_to_none=True)
    return model.eval()


@pytest.fixture(scope="module")
def trained():
    """(model, x, y): the MLP of test_attacks.py (with dropout, so eval mode matters) and held-out data."""
    generator = torch.Generator().manual_seed(0)
    prototypes = 0.25 + 0.5 * torch.rand(N_CLASSES, N_FEATURES, generator=generator)

    def data(n):
        labels = torch.randint(0, N_CLASSES, (n,), generator=generator)
        return (prototypes[labels] + 0.1 * torch.randn(n, N_FEATURES, generator=generator)).clamp(0, 1), labels

    (x_train, y_train), (x_test, y_test) = data(600), data(200)
    model = nn.Sequential(nn.Linear(N_FEATURES, 32), nn.ReLU(), nn.Dropout(0.1), nn.Linear(32, N_CLASSES))
    return _train(model, x_train, y_train, 300), x_test, y_test


@pytest.fixture(scope="module")
def images():
    """(conv model, images, labels): class c is a fixed random texture at contrast 0.02 (c + 0.5)."""
    generator = torch.Generator().manual_seed(0)
    texture = torch.randn(3, 8, 8, generator=generator).sign()
    contrast = 0.02 * (0.5 + torch.arange(N_CLASSES))

    def data(n):
        labels = torch.randint(0, N_CLASSES, (n,), generator=generator)
        level = 0.3 + 0.3 * torch.rand(n, 1, 1, 1, generator=generator)
        return (level + contrast[labels, None, None, None] * texture).clamp(0, 1), labels

    (x_train, y_train), (x_test, y_test) = data(500), data(200)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 64, N_CLASSES))
    return _train(model, x_train, y_train, 200), x_test, y_test


def _accuracy(model, x, y):
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def _fooled(model, x, y):
    with torch.no_grad():
        return model(x).argmax(1) != y


# ------------------------------------------------------------------------------------------ margin loss
def test_margin_loss_is_positive_exactly_when_misclassified():
    logits = torch.tensor([[3.0, 1.0, 0.0], [0.0, 2.0, 5.0]])
    y = torch.tensor([0, 1])
    assert torch.equal(margin_loss_per_sample(logits, y), torch.tensor([-2.0, 3.0]))
    assert torch.equal(margin_loss_per_sample(logits + 7.0, y), margin_loss_per_sample(logits, y))


# ------------------------------------------------------------------------------------------ the shared contract
@dataclass
class Case:
    build: Callable
    n_samples: int = 64


CASES = {
    "cw": Case(lambda: CWLinf(0.1, steps=20)),
    "cw-restarts": Case(lambda: CWLinf(0.1, steps=10, restarts=2, seed=1)),
    "cw-l2": Case(lambda: CWL2(1.0, steps=30, binary_steps=3, lr=0.05)),
    "deepfool": Case(lambda: DeepFool(1.0)),
    "deepfool-top3": Case(lambda: DeepFool(1.0, candidates=3)),
    "spsa": Case(lambda: SPSA(0.1, steps=30, samples=32, seed=2)),
    "spsa-l2": Case(lambda: SPSA(1.0, norm="L2", steps=30, samples=32, lr=0.02)),
}


def _assert_valid(x_adv, x, attack):
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype and not x_adv.requires_grad
    assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
    size = perturbation_norm(x_adv, x, attack.norm)
    assert size.max().item() <= attack.eps + TOLERANCE, f"{attack.norm} size {size.max():.6g} > {attack.eps}"


@pytest.mark.parametrize("case_name", list(CASES))
def test_attack_contract(case_name, trained):
    """In budget (before the base class's projection), deterministic, leaves the model, the input and the global
    RNG alone, and lowers the accuracy of the trained model."""
    model, x, y = trained
    case = CASES[case_name]
    attack = case.build()
    x, y = x[:case.n_samples], y[:case.n_samples]
    x_before, rng_before = x.clone(), torch.get_rng_state()
    parameters_before = [p.detach().clone() for p in model.parameters()]
    with eval_frozen(model):
        raw = attack.perturb(model, x, y)
    _assert_valid(raw.detach().to(x.dtype), x, attack)
    model.train()
    first = attack(model, x, y)
    assert model.training
    model.eval()
    second = attack(model, x, y)
    assert torch.equal(first, second), "same seed, same result"
    torch.testing.assert_close(first, raw.to(x.dtype), atol=TOLERANCE, rtol=0)
    for before, after in zip(parameters_before, model.parameters()):
        assert torch.equal(before, after) and after.requires_grad and after.grad is None
    assert torch.equal(torch.get_rng_state(), rng_before), "global RNG must not be touched"
    assert torch.equal(x, x_before)
    assert _accuracy(model, first, y) < _accuracy(model, x, y) - 0.2


def test_seeded_attacks_change_with_the_seed(trained):
    model, x, y = trained
    for build in (lambda s: SPSA(0.1, steps=5, samples=8, seed=s), lambda s: CWLinf(0.1, steps=3, seed=s)):
        assert not torch.equal(build(0)(model, x[:32], y[:32]), build(1)(model, x[:32], y[:32]))


# ------------------------------------------------------------------------------------------ minimal-norm L2 attacks
@pytest.mark.parametrize("build", [lambda e: CWL2(e, steps=30, binary_steps=3, lr=0.05), lambda e: DeepFool(e)],
                         ids=["cw-l2", "deepfool"])
def test_l2_attacks_stay_within_budget_and_return_only_real_adversarials(build, trained):
    """A sample counts as broken only when its adversarial lies within the L2 budget: the others come back as x
    (never projected onto the ball), every changed sample is misclassified, and a larger budget breaks a superset
    with the same points (the search does not depend on the budget)."""
    model, x, y = trained
    x, y = x[:64], y[:64]
    small, large = build(0.4), build(1.0)
    with eval_frozen(model):
        raw = small.perturb(model, x, y)
    assert perturbation_norm(raw, x, "L2").max().item() <= 0.4 + TOLERANCE
    x_small, x_large = small(model, x, y), large(model, x, y)
    changed_small = (x_small != x).flatten(1).any(1)
    changed_large = (x_large != x).flatten(1).any(1)
    assert torch.equal(changed_small, _fooled(model, x_small, y))
    assert torch.equal(changed_large, _fooled(model, x_large, y))
    assert 0 < changed_small.sum() < changed_large.sum()
    assert torch.all(changed_large[changed_small])
    assert torch.equal(x_small[changed_small], x_large[changed_small])
    assert perturbation_norm(x_large, x, "L2").max().item() <= 1.0 + TOLERANCE


def test_cw_l2_finds_smaller_perturbations_with_more_binary_steps(trained):
    model, x, y = trained
    x, y = x[:32], y[:32]
    few, many = CWL2(3.0, steps=30, binary_steps=1, lr=0.05)(model, x, y), CWL2(3.0, steps=30, binary_steps=4,
                                                                                 lr=0.05)(model, x, y)
    both = _fooled(model, few, y) & _fooled(model, many, y)
    assert both.sum() > 10
    assert perturbation_norm(many, x, "L2")[both].mean() < perturbation_norm(few, x, "L2")[both].mean()


# ------------------------------------------------------------------------------------------ SPSA
class DetachedInput(nn.Module):
    """The same function as ``model``, but no gradient reaches the input: gradient attacks cannot run."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x.detach())


class CountingRows(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model, self.rows = model, 0

    def forward(self, x):
        self.rows += len(x)
        return self.model(x)


def test_spsa_needs_no_gradient_and_stops_early(trained):
    model, x, y = trained
    x, y = x[:48], y[:48]
    with pytest.raises(RuntimeError, match="differentiabl"):
        PGD(0.1, steps=2)(DetachedInput(model), x, y)
    counting = CountingRows(DetachedInput(model))
    attack = SPSA(0.15, steps=40, samples=16)
    x_adv = attack(counting, x, y)
    assert _accuracy(model, x_adv, y) < _accuracy(model, x, y) - 0.3
    assert counting.rows < 0.7 * len(x) * attack.steps * (attack.samples + 1)  # fooled samples stop querying
    with pytest.raises(ValueError, match="even"):
        SPSA(0.1, samples=7)


# ------------------------------------------------------------------------------------------ corruptions
@pytest.mark.parametrize("kind", CORRUPTIONS)
def test_each_corruption_lowers_accuracy_keeps_the_range_and_is_seeded(kind, images):
    model, x, y = images
    attack = Corruption(5, kind=kind)
    corrupted = attack(model, x, y)
    assert corrupted.shape == x.shape and corrupted.min() >= 0 and corrupted.max() <= 1
    assert torch.equal(corrupted, attack(model, x, y))
    assert robust_accuracy(model, attack, x, y) < _accuracy(model, x, y) - 0.2
    changes = [(corrupt(x, kind, s) - x).abs().mean().item() for s in range(1, 6)]
    assert changes == sorted(changes) and changes[0] > 0, changes  # severity orders the damage
    if kind.endswith("noise"):
        assert not torch.equal(corrupted, Corruption(5, kind=kind, seed=1)(model, x, y))


def test_corruption_budget_is_the_severity_and_not_a_norm_ball(images):
    model, x, y = images
    assert torch.equal(Corruption(0)(model, x, y), x)
    salt_and_pepper = Corruption(5, kind="impulse_noise")(model, x, y)
    assert (salt_and_pepper - x).abs().max() > 0.3  # not clipped to an eps ball of radius 5 or anything else
    for bad in (6, 2.5, -1):
        with pytest.raises(ValueError, match="severity"):
            Corruption(bad)
    with pytest.raises(ValueError, match="unknown corruption"):
        Corruption(1, kind="snow")
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        corrupt(x.flatten(1), "gaussian_blur", 1)
    assert corrupt(x.flatten(1), "gaussian_noise", 1).shape == x.flatten(1).shape


def test_corruptions_match_the_reference_operations():
    """gaussian_blur = scipy's gaussian_filter (skimage's backend: mode 'nearest', truncate 4); defocus = the
    reference disk kernel with OpenCV's BORDER_REFLECT_101 (scipy 'mirror'); brightness = HSV value + c."""
    ndimage = pytest.importorskip("scipy.ndimage")
    import colorsys

    import numpy as np

    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x[0, :, 0, 0] = 0.0  # a black pixel (HSV saturation 0)
    for severity in (1, 5):
        sigma = SEVERITY_CONSTANTS["gaussian_blur"][severity - 1]
        blurred = ndimage.gaussian_filter(x.numpy(), sigma=(0, 0, sigma, sigma), mode="nearest", truncate=4.0)
        np.testing.assert_allclose(corrupt(x, "gaussian_blur", severity).numpy(), blurred.clip(0, 1), atol=1e-12)

        kernel = defocus_kernel(*SEVERITY_CONSTANTS["defocus_blur"][severity - 1]).numpy()
        defocused = np.stack([[ndimage.correlate(image, kernel, mode="mirror") for image in sample]
                              for sample in x.numpy()])
        np.testing.assert_allclose(corrupt(x, "defocus_blur", severity).numpy(), defocused.clip(0, 1), atol=1e-12)

        c = SEVERITY_CONSTANTS["brightness"][severity - 1]
        pixels = x.permute(0, 2, 3, 1).reshape(-1, 3).tolist()
        brighter = [colorsys.hsv_to_rgb(h, s, min(v + c, 1.0)) for h, s, v in map(lambda p: colorsys.rgb_to_hsv(*p),
                                                                                    pixels)]
        expected = torch.tensor(brighter, dtype=x.dtype).reshape(2, 8, 8, 3).permute(0, 3, 1, 2)
        torch.testing.assert_close(corrupt(x, "brightness", severity), expected.clamp(0, 1), atol=1e-12, rtol=0)


def test_defocus_kernel_is_the_reference_disk():
    """radius 0.3: only the centre of the disk, blurred by the 3 x 3 Gaussian; radius 1.5: the full 3 x 3 block."""
    small, large = defocus_kernel(0.3, 0.4), defocus_kernel(1.5, 0.1)
    assert small.shape == (3, 3) and large.shape == (5, 5)
    assert torch.isclose(small.sum(), torch.tensor(1.0, dtype=small.dtype))
    assert torch.isclose(large.sum(), torch.tensor(1.0, dtype=large.dtype))
    assert small[1, 1] == small.max() and torch.allclose(small, small.T)


# ------------------------------------------------------------------------------------------ smoothed IRLS gradient
def test_smoothed_gradient_is_the_gradient_of_the_smoother_model(trained):
    model, x, y = trained
    x, y = x[:16], y[:16]
    robust = nrpm.reprogram(copy.deepcopy(model), nrpm.ReprogramConfig(lam=0.3, K=3, eps=1e-3))
    for source, eps, K in ((SmoothedGradient(10), 1e-2, 3), (SmoothedGradient(K=1), 1e-3, 1)):
        reference = nrpm.reprogram(copy.deepcopy(model), nrpm.ReprogramConfig(lam=0.3, K=K, eps=eps))
        with eval_frozen(robust, reference):
            grad, losses, _ = source(robust, x, y, margin_loss_per_sample)
            expected, expected_losses, _ = loss_and_gradient(reference, x, y, margin_loss_per_sample)
        torch.testing.assert_close(grad, expected, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(losses, expected_losses, rtol=1e-5, atol=1e-6)
    assert all((m.eps, m.K) == (1e-3, 3) for m in nrpm.robust_layers(robust).values())  # restored
    with pytest.raises(ValueError, match="keep='last'"):
        PGD(0.1, gradient=SmoothedGradient(10))  # its fooled flags are the smoothed model's, not the target's
    x_adv = PGD(0.1, steps=10, gradient=SmoothedGradient(100), keep="last")(robust, x, y)
    assert _accuracy(robust, x_adv, y) < _accuracy(robust, x, y)


# ------------------------------------------------------------------------------------------ registry
def test_registry_names_build_the_new_attacks():
    assert isinstance(make_attack("cw", 0.1, steps=5), CWLinf) and make_attack("cw", 0.1).loss_fn is \
        margin_loss_per_sample
    assert isinstance(make_attack("CW_L2", 0.5, binary_steps=2, kappa=1.0), CWL2)
    assert isinstance(make_attack("deepfool", 0.5, candidates=3), DeepFool)
    assert isinstance(make_attack("spsa", 0.1, samples=16, lr=0.02), SPSA)
    attack = make_attack("corruption", 2, kind="contrast")
    assert isinstance(attack, Corruption) and attack.severity == 2 and attack.kind == "contrast"
    assert with_default_seed("spsa", {}, 5) == {"seed": 5} and with_default_seed("corruption", {}, 5) == {"seed": 5}
    assert with_default_seed("deepfool", {}, 5) == {} and with_default_seed("cw-l2", {}, 5) == {}
    with pytest.raises(TypeError, match="bad arguments for attack 'spsa'"):
        make_attack("spsa", 0.1, queries=10)
