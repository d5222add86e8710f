"""Tests for nrpm.attacks on a small MLP trained on a synthetic 5-class problem.

Five classes so that pyautoattack's DLR losses (>= 3 classes, targeted >= 4)
apply; inputs live in [0, 1]^36 so they can also be viewed as 6 x 6 images,
which Square Attack needs.
"""
from dataclasses import dataclass
from typing import Callable

import pytest
import torch
from torch import nn

from nrpm.attacks import (
    ATTACKS,
    APGDCE,
    APGDDLR,
    FGML1,
    FGML2,
    FGSM,
    L0TopK,
    NoiseAttack,
    PGD,
    PGDL2,
    AutoAttackStandard,
    Square,
    eval_frozen,
    clean_accuracy,
    make_attack,
    perturbation_norm,
    robust_accuracy,
)

N_CLASSES = 5
N_FEATURES = 36
TOLERANCE = 1e-5


# --------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------

def _synthetic_data(generator, prototypes, n):
    labels = torch.randint(0, N_CLASSES, (n,), generator=generator)
    noise = 0.1 * torch.randn(n, N_FEATURES, generator=generator)
    return (prototypes[labels] + noise).clamp(0.0, 1.0), labels


pytestmark = pytest.mark.usefixtures("single_thread")  # tiny models (conftest.py)


@pytest.fixture(scope="module")
def trained():
    """(model, x, y): an MLP with dropout (so eval mode matters) and held-out data."""
    generator = torch.Generator().manual_seed(0)
    prototypes = 0.25 + 0.5 * torch.rand(N_CLASSES, N_FEATURES, generator=generator)
    x_train, y_train = _synthetic_data(generator, prototypes, 600)
    x_test, y_test = _synthetic_data(generator, prototypes, 200)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(N_FEATURES, 32), nn.ReLU(), nn.Dropout(0.1),
                              nn.Linear(32, N_CLASSES))
        optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
        for _ in range(300):
            optimiser.zero_grad()
            nn.functional.cross_entropy(model(x_train), y_train).backward()
            optimiser.step()
    model.zero_grad(set_to_none=True)
    model.eval()
    return model, x_test, y_test


@pytest.fixture
def model(trained):
    """The trained model, checked to come back from each test untouched."""
    model = trained[0]
    yield model
    assert all(p.grad is None for p in model.parameters())
    model.eval()


def _accuracy(model, x, y):
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def test_model_is_accurate(trained):
    model, x, y = trained
    assert clean_accuracy(model, x, y) > 0.9


# --------------------------------------------------------------------------
# The shared contract, checked for every attack
# --------------------------------------------------------------------------

@dataclass
class Case:
    build: Callable
    n_samples: int = 64
    strong: bool = True  # expected to lower accuracy noticeably (not the noise baselines)


CASES = {
    "fgsm": Case(lambda: FGSM(0.1)),
    "pgd": Case(lambda: PGD(0.1, steps=20)),
    "pgd-restarts": Case(lambda: PGD(0.1, steps=10, restarts=3, seed=3)),
    "pgd-no-random-start": Case(lambda: PGD(0.1, steps=10, random_start=False)),
    "pgd_l2": Case(lambda: PGDL2(0.5, steps=20, restarts=2)),
    "fgm_l1": Case(lambda: FGML1(3.0)),
    "fgm_l2": Case(lambda: FGML2(0.5)),
    "l0": Case(lambda: L0TopK(3)),
    "noise-linf": Case(lambda: NoiseAttack(0.1), strong=False),
    "noise-l2": Case(lambda: NoiseAttack(0.5, norm="L2", seed=1), strong=False),
    "noise-l1": Case(lambda: NoiseAttack(3.0, norm="L1"), strong=False),
    "noise-l0": Case(lambda: NoiseAttack(3, norm="L0"), strong=False),
    "apgd-ce": Case(lambda: APGDCE(0.1, steps=50), n_samples=32),
    "apgd-ce-l2": Case(lambda: APGDCE(0.5, norm="L2", steps=50), n_samples=32),
    "apgd-dlr": Case(lambda: APGDDLR(0.1, steps=50), n_samples=32),
    "square": Case(lambda: Square(0.15, n_queries=300), n_samples=24),
    "square-l2": Case(lambda: Square(1.0, norm="L2", n_queries=300), n_samples=24),
    # eps=0.1 leaves robust points, so the whole pipeline (APGD-T, FAB-T, Square) runs
    "autoattack": Case(lambda: AutoAttackStandard(0.1), n_samples=16),
    "autoattack-l2": Case(lambda: AutoAttackStandard(1.5, norm="L2"), n_samples=16),
}


def _assert_valid(x_adv, x, attack):
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype
    assert not x_adv.requires_grad
    assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
    size = perturbation_norm(x_adv, x, attack.norm)
    assert size.max().item() <= attack.eps + TOLERANCE, f"{attack.norm} size {size.max():.6g} > {attack.eps}"


@pytest.mark.parametrize("case_name", list(CASES))
def test_attack_contract(case_name, trained, model):
    case = CASES[case_name]
    attack = case.build()
    _, x, y = trained
    x, y = x[:case.n_samples], y[:case.n_samples]
    x_before = x.clone()
    parameters_before = [p.detach().clone() for p in model.parameters()]
    rng_before = torch.get_rng_state()

    # The attack's own output must respect the budget, not just after the base
    # class's safety-net projection (this is where pyautoattack is checked).
    with eval_frozen(model):
        raw = attack.perturb(model, x, y)
    _assert_valid(raw.to(x.dtype).detach(), x, attack)

    model.train()
    first = attack(model, x, y)
    assert model.training and all(m.training for m in model.modules())
    model.eval()
    second = attack(model, x, y)
    assert not any(m.training for m in model.modules())

    _assert_valid(first, x, attack)
    assert torch.equal(first, second), "same seed must give identical outputs"
    torch.testing.assert_close(first, raw.to(x.dtype), atol=TOLERANCE, rtol=0)
    for before, after in zip(parameters_before, model.parameters()):
        assert torch.equal(before, after)
        assert after.requires_grad and after.grad is None
    assert torch.equal(torch.get_rng_state(), rng_before), "global RNG must not be touched"
    assert torch.equal(x, x_before), "the input batch must not be modified in place"
    if case.strong:
        assert _accuracy(model, first, y) < _accuracy(model, x, y) - 0.2


# --------------------------------------------------------------------------
# Relative strength
# --------------------------------------------------------------------------

def test_pgd_at_least_as_strong_as_fgsm(trained, model):
    _, x, y = trained
    fgsm = robust_accuracy(model, FGSM(0.1), x, y)
    pgd = robust_accuracy(model, PGD(0.1, steps=40), x, y)
    assert pgd <= fgsm
    assert pgd < clean_accuracy(model, x, y)


def test_more_restarts_never_weaker(trained, model):
    _, x, y = trained
    x, y = x[:100], y[:100]

    def fooled(restarts):
        x_adv = PGD(0.08, steps=5, restarts=restarts, seed=7)(model, x, y)
        with torch.no_grad():
            return model(x_adv).argmax(1) != y

    once, thrice = fooled(1), fooled(3)
    assert torch.all(thrice | ~once), "every sample fooled with 1 restart is fooled with 3"
    assert thrice.sum() >= once.sum()


def test_noise_is_weaker_than_attack(trained, model):
    _, x, y = trained
    assert robust_accuracy(model, NoiseAttack(0.1), x, y) > robust_accuracy(model, FGSM(0.1), x, y)


# --------------------------------------------------------------------------
# Exact behaviour of the hand-written single-step attacks
# --------------------------------------------------------------------------

def _input_gradient(model, x, y):
    x = x.clone().requires_grad_(True)
    nn.functional.cross_entropy(model(x), y, reduction="sum").backward()
    model.zero_grad(set_to_none=True)
    return x.grad


@pytest.fixture
def interior(trained, model):
    """Points far enough from 0 and 1 that small steps are not clipped."""
    _, x, y = trained
    return 0.4 + 0.2 * x[:16], y[:16], _input_gradient(model, 0.4 + 0.2 * x[:16], y[:16])


def test_fgsm_is_a_signed_gradient_step(interior, model):
    x, y, grad = interior
    torch.testing.assert_close(FGSM(0.05)(model, x, y), x + 0.05 * grad.sign())


def test_fgm_l2_and_l1_normalise_the_gradient(interior, model):
    x, y, grad = interior
    l2_step = 0.3 * grad / grad.norm(dim=1, keepdim=True)
    l1_step = 2.0 * grad / grad.abs().sum(dim=1, keepdim=True)
    torch.testing.assert_close(FGML2(0.3)(model, x, y), x + l2_step)
    torch.testing.assert_close(FGML1(2.0)(model, x, y), x + l1_step)
    assert torch.allclose(perturbation_norm(FGML1(2.0)(model, x, y), x, "L1"), torch.tensor(2.0))


def test_l0_sets_top_k_coordinates_to_extremes(interior, model):
    x, y, grad = interior
    x_adv = L0TopK(4)(model, x, y)
    changed = x_adv != x
    assert (changed.sum(dim=1) == 4).all()
    top = grad.abs().topk(4, dim=1).indices
    assert torch.equal(changed, torch.zeros_like(changed).scatter(1, top, True))
    assert torch.equal(x_adv[changed], (grad[changed] > 0).float())


def test_l0_counts_every_channel_value_as_a_coordinate(trained, model):
    _, x, y = trained
    images = x[:8].reshape(8, 4, 3, 3)  # 4 "channels" of 3 x 3
    image_model = nn.Sequential(nn.Flatten(), model)
    x_adv = L0TopK(5)(image_model, images, y[:8])
    assert ((x_adv != images).flatten(1).sum(dim=1) <= 5).all()
    assert torch.equal(x_adv.flatten(1), L0TopK(5)(model, x[:8], y[:8]))


def test_log_softmax_models_are_attacked_the_same(interior, model):
    x, y, _ = interior
    log_prob_model = nn.Sequential(model, nn.LogSoftmax(dim=1))
    for attack in (FGSM(0.05), PGD(0.05, steps=5), FGML1(2.0)):
        torch.testing.assert_close(attack(log_prob_model, x, y), attack(model, x, y))


def test_attacks_accept_image_shaped_inputs(trained, model):
    _, x, y = trained
    images, image_model = x[:16].reshape(16, 1, 6, 6), nn.Sequential(nn.Flatten(), model)
    for attack in (PGD(0.1, steps=5), Square(0.15, n_queries=50)):
        x_adv = attack(image_model, images, y[:16])
        assert x_adv.shape == images.shape
        assert torch.equal(x_adv.flatten(1), attack(model, x[:16], y[:16]))


# --------------------------------------------------------------------------
# Budgets, validation and registry
# --------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(ATTACKS))
def test_zero_budget_returns_input_unchanged(name, trained, model):
    _, x, y = trained
    x_adv = make_attack(name, 0)(model, x[:8], y[:8])
    assert torch.equal(x_adv, x[:8])


@pytest.mark.parametrize("name", list(ATTACKS))
def test_registry_builds_every_attack(name):
    attack = make_attack(name, 3)
    assert attack.name == name
    assert attack.eps == 3


def test_registry_rejects_unknown_names_and_bad_arguments():
    with pytest.raises(ValueError, match="known attacks: .*pgd_l2.*autoattack-l2"):
        make_attack("no-such-attack", 0.1)
    with pytest.raises(TypeError, match="bad arguments for attack 'pgd'.*steps"):
        make_attack("pgd", 0.1, stepz=10)
    with pytest.raises(TypeError, match="fixes norm='L2'"):
        make_attack("autoattack-l2", 0.5, norm="Linf")
    assert isinstance(make_attack("PGD-L2", 0.5, steps=3), PGDL2)


@pytest.mark.parametrize("build", [FGSM, PGD, PGDL2, FGML1, FGML2, L0TopK, NoiseAttack,
                                   APGDCE, APGDDLR, Square, AutoAttackStandard])
def test_negative_budget_is_rejected(build):
    with pytest.raises(ValueError, match=">= 0"):
        build(-0.1)


def test_bad_options_are_rejected():
    with pytest.raises(ValueError, match="k must be an integer"):
        L0TopK(2.5)
    with pytest.raises(ValueError, match="steps"):
        PGD(0.1, steps=0)
    with pytest.raises(ValueError, match="norm"):
        Square(0.1, norm="L1")
    with pytest.raises(ValueError, match="version"):
        AutoAttackStandard(0.1, version="fast")


@pytest.mark.parametrize("attack", [FGSM(0.1), PGD(0.1, steps=2), NoiseAttack(0.1), APGDCE(0.1)],
                         ids=lambda attack: attack.name)
def test_bad_inputs_are_rejected(attack, trained, model):
    _, x, y = trained
    x, y = x[:8], y[:8]
    too_low, too_high = x.clone(), x.clone()
    too_low[3, 5], too_high[3, 5] = -0.5, 1.5
    with pytest.raises(ValueError, match=r"\[0, 1\].*\[-0\.5, "):
        attack(model, too_low, y)
    with pytest.raises(ValueError, match=r"\[0, 1\].*, 1\.5\]"):
        attack(model, too_high, y)
    with pytest.raises(ValueError, match="floating"):
        attack(model, (x * 255).to(torch.uint8), y)
    with pytest.raises(ValueError, match="batch sizes differ"):
        attack(model, x, y[:5])
    with pytest.raises(ValueError, match="integer class labels"):
        attack(model, x, y.float())
    with pytest.raises(ValueError, match="NaN"):
        attack(model, torch.full_like(x, float("nan")), y)


def test_dlr_based_attacks_need_enough_classes(trained):
    _, x, y = trained
    three_classes = nn.Linear(N_FEATURES, 3)
    two_classes = nn.Linear(N_FEATURES, 2)
    with pytest.raises(ValueError, match="at least 3 classes"):
        APGDDLR(0.1)(two_classes, x[:4], y[:4] % 2)
    with pytest.raises(ValueError, match="at least 4 classes"):
        AutoAttackStandard(0.1)(three_classes, x[:4], y[:4] % 3)


def test_l2_square_needs_large_enough_images(trained, model):
    _, x, y = trained
    strips = nn.Sequential(nn.Flatten(), model)
    with pytest.raises(ValueError, match="H < 5"):
        Square(0.5, norm="L2", n_queries=5)(strips, x[:4].reshape(4, 1, 2, 18), y[:4])


# --------------------------------------------------------------------------
# Accuracy helpers
# --------------------------------------------------------------------------

def test_robust_accuracy_counts_clean_errors_as_failures(trained, model):
    _, x, y = trained
    wrong = y.clone()
    wrong[:50] = (wrong[:50] + 1) % N_CLASSES  # a quarter of the labels are now wrong
    clean = clean_accuracy(model, x, wrong, batch_size=64)
    assert clean <= 0.75
    assert robust_accuracy(model, FGSM(0.0), x, wrong, batch_size=64) == pytest.approx(clean)
    assert robust_accuracy(model, FGSM(0.1), x, wrong, batch_size=64) < clean


def test_robust_accuracy_matches_a_direct_computation(trained, model):
    _, x, y = trained
    x_adv = FGSM(0.1)(model, x, y)
    with torch.no_grad():
        expected = ((model(x).argmax(1) == y) & (model(x_adv).argmax(1) == y)).float().mean().item()
    for batch_size in (1000, 37):
        assert robust_accuracy(model, FGSM(0.1), x, y, batch_size=batch_size) == pytest.approx(expected)


def test_accuracy_helpers_restore_training_mode(trained, model):
    _, x, y = trained
    model.train()
    clean_accuracy(model, x, y)
    robust_accuracy(model, FGSM(0.05), x, y)
    assert all(m.training for m in model.modules())


# --------------------------------------------------------------------------
# One projected-gradient core, pluggable gradient sources, the extension point
# --------------------------------------------------------------------------

def test_budget_can_be_given_by_keyword():
    assert PGD(eps=0.1).eps == 0.1 and FGSM(eps=0.2).eps == 0.2


def _old_transfer_pgd(source, x, y, eps, steps, alpha, seed):
    """The audit's former hand-written transfer PGD (Linf), kept here to pin the shared core to it; its random
    start is drawn per sample (seeded by (seed, row index)), as every attack's is."""
    from nrpm.attacks.randomness import per_sample_noise, sample_seed

    noise = per_sample_noise(x.shape[1:], [sample_seed(seed, i) for i in range(len(x))], x)
    x_adv = (x + eps * (2 * noise - 1))
    x_adv = torch.min(torch.max(x_adv, x - eps), x + eps).clamp(0, 1)
    for _ in range(steps):
        x_adv = x_adv.detach().requires_grad_(True)
        loss = torch.nn.functional.cross_entropy(source(x_adv), y, reduction="sum")
        (grad,) = torch.autograd.grad(loss, x_adv)
        x_adv = torch.min(torch.max(x_adv.detach() + alpha * grad.sign(), x - eps), x + eps).clamp(0, 1)
    return x_adv


def test_transfer_gradient_with_keep_last_is_the_transfer_protocol(trained, model):
    from nrpm.attacks import TransferGradient

    x, y = trained[1][:40], trained[2][:40]
    source = nn.Sequential(nn.Linear(N_FEATURES, N_CLASSES)).eval()
    target_calls = []
    handle = model.register_forward_hook(lambda *a: target_calls.append(1))
    attack = PGD(0.1, steps=5, seed=3, gradient=TransferGradient(source), keep="last")
    got = attack(model, x, y)
    handle.remove()
    assert not target_calls  # the attacked model is never queried
    assert torch.equal(got, _old_transfer_pgd(source, x, y, 0.1, 5, 2.5 * 0.1 / 5, 3))
    with pytest.raises(ValueError, match="never queries the attacked model"):
        PGD(0.1, gradient=TransferGradient(source))
    with pytest.raises(ValueError, match="restarts must be 1"):
        PGD(0.1, restarts=2, keep="last")


def test_backward_mode_gradient_is_bpda_on_a_reprogrammed_model(trained):
    import copy

    import nrpm
    from nrpm.attacks import BackwardModeGradient

    robust = nrpm.reprogram(copy.deepcopy(trained[0]), nrpm.ReprogramConfig(lam=0.5, K=2)).eval()
    x, y = trained[1][:20], trained[2][:20]
    bpda = PGD(0.2, steps=4, seed=1, gradient=BackwardModeGradient("plain"))(robust, x, y)
    with nrpm.backward_override(robust, "plain"):
        manual = PGD(0.2, steps=4, seed=1)(robust, x, y)
    assert torch.equal(bpda, manual)
    assert all(m.backward_mode == "exact" for m in nrpm.robust_layers(robust).values())
    assert not torch.equal(bpda, PGD(0.2, steps=4, seed=1)(robust, x, y))


def test_a_user_attack_only_implements_perturb(trained, model):
    from nrpm.attacks import Attack

    class Shift(Attack):
        name, norm = "shift", "Linf"

        def perturb(self, model, x, y):
            assert not model.training and not any(p.requires_grad for p in model.parameters())
            return x + 10.0  # out of budget on purpose: the base class projects it back

    x, y = trained[1][:8], trained[2][:8]
    x_adv = Shift(0.05)(model, x, y)
    assert (x_adv - x).abs().max() <= 0.05 + 1e-7 and x_adv.max() <= 1
