"""nrpm.reference: the naive NRPM that the fast kernels are checked against, checked against hand values."""

import torch

from nrpm.reference import naive_irls, naive_weights


def test_weights_at_hand_computed_points():
    d = torch.tensor([0.0, 0.5, 2.0], dtype=torch.float64)
    eps = 1e-3
    torch.testing.assert_close(naive_weights(d, eps, "l1"), 1 / (d + eps))
    torch.testing.assert_close(naive_weights(d, eps, "mcp", gamma=1.0), torch.tensor([1 / eps - 1, 1 / 0.501 - 1, eps],
                                                                                    dtype=torch.float64))
    torch.testing.assert_close(naive_weights(d, eps, "huber", delta=1.0), torch.tensor([1.0, 1.0, 1 / 2.001],
                                                                                       dtype=torch.float64))
    hm = naive_weights(d, eps, "hm", gamma=2.0, delta=1.0)  # clamp(1 * (2/(d+eps) - 1), eps, 1)
    torch.testing.assert_close(hm, torch.tensor([1.0, 1.0, eps], dtype=torch.float64))


def test_irls_is_the_median_like_estimate_of_one_outlier():
    votes = torch.tensor([[1.0, 1.0, 1.0, 1.0, 100.0]], dtype=torch.float64)
    assert naive_irls(votes, 1.0, 3, 1e-3).item() == 104.0  # lam 1: the plain sum
    robust = naive_irls(votes, 0.0, 10, 1e-3).item() / 5
    assert abs(robust - 1.0) < 0.05  # the estimate per vote is near the majority, not the mean 20.8
