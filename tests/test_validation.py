"""nrpm.validation: the one set of input checks used by functional, nn, reprogram, attacks and train."""

import math

import pytest
import torch

from nrpm import validation as V


@pytest.mark.parametrize("value", [-1, 1.5, True, "1", None])
def test_check_K_refuses_non_counts(value):
    with pytest.raises(ValueError, match="K \\(number of IRLS steps\\)"):
        V.check_K(value)


@pytest.mark.parametrize("value", [0, -1e-3, math.nan, math.inf, True])
def test_check_eps_wants_a_finite_positive_number(value):
    with pytest.raises(ValueError, match="eps must be a finite number > 0"):
        V.check_eps(value)


def test_check_lam_accepts_floats_and_0d_tensors_only():
    assert V.check_lam(1) == 1.0 and isinstance(V.check_lam(1), float)
    assert V.check_lam(torch.tensor([0.3])).shape == ()
    for bad in (1.01, -0.1, math.nan, torch.tensor([0.1, 0.2]), torch.tensor(1)):
        with pytest.raises(ValueError, match="lam"):
            V.check_lam(bad)


@pytest.mark.parametrize("check, bad", [(V.check_nonneg, -1.0), (V.check_nonneg, math.nan),
                                        (V.check_positive, 0.0), (V.check_positive, math.inf),
                                        (V.check_budget, math.nan), (V.check_positive, "0.1")])
def test_number_checks_name_the_value(check, bad):
    with pytest.raises(ValueError, match="what must be a finite number"):
        check(bad, "what")


def test_check_count_accepts_integral_floats():
    assert V.check_count(3.0, "steps", 1) == 3
    with pytest.raises(ValueError, match="steps must be an integer >= 1, got 2.5"):
        V.check_count(2.5, "steps", 1)


def test_check_batch_names_the_problem():
    x, y = torch.rand(3, 4), torch.tensor([0, 1, 2])
    V.check_batch(x, y)
    with pytest.raises(ValueError, match="must lie in \\[0, 1\\]"):
        V.check_batch(x + 1, y)
    with pytest.raises(ValueError, match="contains NaN"):
        V.check_batch(torch.full((3, 4), math.nan), y)
    with pytest.raises(ValueError, match="batch sizes differ"):
        V.check_batch(x, y[:2])
    with pytest.raises(ValueError, match="integer class labels"):
        V.check_batch(x, y.float())
