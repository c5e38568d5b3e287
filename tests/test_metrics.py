"""metrics: rmse, sliced Wasserstein, Frechet distance, empirical order."""
from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import torch

from fastdiff_edu import metrics
from tests._helpers import single_thread  # noqa: F401

F64 = torch.float64


def _randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


# -- rmse ---------------------------------------------------------------------------------------------
def test_rmse_identical_is_zero():
    x = _randn(10, 3, 4)
    assert metrics.rmse(x, x.clone()) == 0.0


def test_rmse_hand_example():
    x = torch.tensor([[0.0, 0.0], [3.0, 4.0]])
    ref = torch.zeros(2, 2)
    # per sample RMS over coordinates: 0 and sqrt((9 + 16)/2); then the mean over the batch
    assert metrics.rmse(x, ref) == pytest.approx(0.5 * math.sqrt(12.5), rel=1e-15)
    y = torch.tensor([[[1.0, -1.0], [1.0, -1.0]]], dtype=torch.float16)  # any trailing shape, any dtype
    assert metrics.rmse(y, torch.zeros(1, 2, 2, dtype=F64)) == pytest.approx(1.0, rel=1e-15)


def test_rmse_shape_mismatch():
    with pytest.raises(ValueError, match="shapes differ"):
        metrics.rmse(torch.zeros(2, 3), torch.zeros(3, 2))


# -- sliced Wasserstein ---------------------------------------------------------------------------------
def test_sliced_wasserstein_identical_sets_is_zero():
    x = _randn(300, 5)
    assert metrics.sliced_wasserstein(x, x.clone()) == 0.0
    assert metrics.sliced_wasserstein(x, x[torch.randperm(300, generator=torch.Generator().manual_seed(1))]) < 1e-12


def test_sliced_wasserstein_of_a_shift_in_1d_is_the_shift():
    """In one dimension every projection is +-1, so W2 of x and x + c is exactly |c|."""
    x = _randn(500, 1)
    for c in (0.0, 0.3, -2.5):
        assert metrics.sliced_wasserstein(x, x + c) == pytest.approx(abs(c), rel=1e-12, abs=1e-12)


def test_sliced_wasserstein_of_a_shift_in_d_dims():
    """Projected on a unit u, a shift c moves every point by u.c, so SW^2 = mean_u (u.c)^2, whose
    expectation over uniform directions is |c|^2/d. With 2048 directions in d = 4 the relative
    standard deviation of the mean of (u.c)^2 is sqrt(2(d-1)/(d+2))/sqrt(2048) = 2.2%."""
    d = 4
    x = _randn(200, d)
    c = torch.tensor([1.0, -2.0, 0.5, 2.0], dtype=F64)
    sw = metrics.sliced_wasserstein(x, x + c, num_projections=2048)
    expected = float(c.norm()) / math.sqrt(d)
    assert sw == pytest.approx(expected, rel=0.05)  # SW ~ sqrt: about half of 5 standard deviations
    assert sw <= float(c.norm()) + 1e-12


def test_sliced_wasserstein_symmetric_and_seeded():
    x, y = _randn(100, 3, seed=1), 1.5 * _randn(100, 3, seed=2) + 0.2
    assert metrics.sliced_wasserstein(x, y) == pytest.approx(metrics.sliced_wasserstein(y, x), rel=1e-14)
    assert metrics.sliced_wasserstein(x, y, seed=3) == metrics.sliced_wasserstein(x, y, seed=3)
    assert metrics.sliced_wasserstein(x, y) > 0.1


def test_sliced_wasserstein_unequal_sizes():
    # 1-D, evenly spaced sets: their linear-interpolation quantiles are exactly level and level + c
    x = torch.linspace(0, 1, 101, dtype=F64)[:, None]
    y = torch.linspace(0, 1, 257, dtype=F64)[:, None] + 0.4
    assert metrics.sliced_wasserstein(x, y) == pytest.approx(0.4, rel=1e-10)
    assert metrics.sliced_wasserstein(y, x) == pytest.approx(0.4, rel=1e-10)
    # many dimensions: two large samples of the same law are close, a scaled law is not
    a, b = _randn(3000, 3, seed=3), _randn(1000, 3, seed=4)
    assert metrics.sliced_wasserstein(a, b) < 0.08
    assert metrics.sliced_wasserstein(a, 2 * b) > 0.6  # exact value for N(0, I) vs N(0, 4I): 1


def test_sliced_wasserstein_dimension_mismatch():
    with pytest.raises(ValueError, match="dimensions differ"):
        metrics.sliced_wasserstein(torch.zeros(5, 2), torch.zeros(5, 3))


# -- Frechet distance -------------------------------------------------------------------------------------
def _with_exact_moments(n, mean, cov, seed):
    """n points whose sample mean and unbiased sample covariance are exactly mean and cov."""
    z = _randn(n, mean.numel(), seed=seed)
    z = z - z.mean(0)
    white = torch.linalg.cholesky(torch.cov(z.T))
    z = torch.linalg.solve_triangular(white, z.T, upper=False).T  # sample covariance = I
    return mean + z @ torch.linalg.cholesky(cov).T


def _closed_form(m1, c1, m2, c2):
    """||m1 - m2||^2 + tr(C1 + C2 - 2 (C1 C2)^(1/2)), with scipy's sqrtm (an independent formula)."""
    root = scipy.linalg.sqrtm(c1.numpy() @ c2.numpy()).real
    return float(((m1 - m2) ** 2).sum()) + float(np.trace(c1.numpy() + c2.numpy() - 2 * root))


def test_frechet_distance_matches_closed_form():
    d = 4
    a = _randn(d, d, seed=5)
    b = _randn(d, d, seed=6)
    c1 = a @ a.T + 0.1 * torch.eye(d, dtype=F64)
    c2 = b @ b.T + 0.3 * torch.eye(d, dtype=F64)
    m1, m2 = _randn(d, seed=7), _randn(d, seed=8)
    x = _with_exact_moments(500, m1, c1, seed=9)
    y = _with_exact_moments(800, m2, c2, seed=10)
    mean_x, cov_x = metrics.gaussian_fit(x)
    assert torch.allclose(mean_x, m1, atol=1e-12, rtol=0) and torch.allclose(cov_x, c1, atol=1e-12, rtol=0)
    expected = _closed_form(m1, c1, m2, c2)
    assert metrics.frechet_distance(x, y) == pytest.approx(expected, rel=1e-9)
    assert metrics.frechet_distance(y, x) == pytest.approx(expected, rel=1e-9)


def test_frechet_distance_commuting_case_and_identity():
    d = 3
    v1 = torch.tensor([0.5, 1.0, 2.0], dtype=F64)
    v2 = torch.tensor([2.0, 1.0, 0.25], dtype=F64)
    m1, m2 = torch.zeros(d, dtype=F64), torch.tensor([1.0, 0.0, -1.0], dtype=F64)
    x = _with_exact_moments(400, m1, torch.diag(v1), seed=11)
    y = _with_exact_moments(400, m2, torch.diag(v2), seed=12)
    expected = 2.0 + float(((v1.sqrt() - v2.sqrt()) ** 2).sum())
    assert metrics.frechet_distance(x, y) == pytest.approx(expected, rel=1e-10)
    assert metrics.frechet_distance(x, x) == pytest.approx(0.0, abs=1e-10)


def test_frechet_distance_of_samples_approaches_the_population_value():
    d = 2
    m2 = torch.tensor([0.5, -0.5], dtype=F64)
    c2 = torch.tensor([[2.0, 0.3], [0.3, 0.5]], dtype=F64)
    x = _randn(100_000, d, seed=13)
    y = m2 + _randn(100_000, d, seed=14) @ torch.linalg.cholesky(c2).T
    expected = _closed_form(torch.zeros(d, dtype=F64), torch.eye(d, dtype=F64), m2, c2)
    # moment estimates from 1e5 samples: errors of order 1e-2 in the distance
    assert metrics.frechet_distance(x, y) == pytest.approx(expected, abs=0.03)


# -- empirical order -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("p", [0.5, 1.0, 2.0, 3.7])
def test_empirical_order_recovers_exact_power_law(p):
    nfes = [10, 20, 40, 80, 160]
    errors = [3.2 * n ** -p for n in nfes]
    assert metrics.empirical_order(nfes, errors) == pytest.approx(p, rel=1e-12)
    assert metrics.empirical_order(np.array(nfes), torch.tensor(errors, dtype=F64)) == pytest.approx(p, rel=1e-12)


def test_empirical_order_is_a_least_squares_slope():
    nfes = [10, 20, 40]
    errors = [1e-1, 2e-2, 1e-2]  # slopes -log2(5) then -1: the LS fit is their average
    expected = (math.log2(5) + 1) / 2
    assert metrics.empirical_order(nfes, errors) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("nfes, errors", [
    ([10], [0.1]),
    ([10, 20], [0.1]),
    ([10, 20], [0.1, 0.0]),
    ([10, 20], [0.1, -0.05]),
    ([0, 20], [0.1, 0.05]),
    ([], []),
])
def test_empirical_order_rejects_bad_input(nfes, errors):
    with pytest.raises(ValueError):
        metrics.empirical_order(nfes, errors)
