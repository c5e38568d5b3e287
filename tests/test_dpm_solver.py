"""DPM-Solver and DPM-Solver++ (fastdiff_edu.solvers.dpm_solver, fastdiff_edu.exponential):
phi functions, identities, measured orders, and the third-order multistep term."""
from __future__ import annotations

import math

import mpmath
import pytest
import torch

import fastdiff_edu as fd
from tests._helpers import gmm64_test_bed, measured_order, single_thread  # noqa: F401 (autouse)
from fastdiff_edu.exponential import expansion_weights, phi
from fastdiff_edu.solvers.dpm_solver import derivative_weights

F64 = torch.float64


@pytest.fixture(scope="module")
def bed():
    return gmm64_test_bed()


@pytest.mark.parametrize("k", [1, 2, 3, 4])
@pytest.mark.parametrize("z", [-30.0, -2.0, -0.5, -1e-3, 1e-9, 0.2, 0.4999, 0.5001, 1.0, 5.0])
def test_phi_is_accurate_everywhere(k, z):
    mpmath.mp.dps = 60
    zm = mpmath.mpf(z)
    exact = (mpmath.exp(zm) - sum(zm**j / mpmath.factorial(j) for j in range(k))) / zm**k
    assert abs(float(phi(k, z)) - float(exact)) <= 4e-15 * abs(float(exact))


def test_phi_at_zero_is_one_over_k_factorial():
    for k in (1, 2, 3):
        assert float(phi(k, 0.0)) == pytest.approx(1.0 / math.factorial(k), rel=1e-15)


def test_first_order_weights_are_ddim():
    """x_t = (alpha_t/alpha_s) x_s - sigma_t (e^h - 1) eps  =  alpha_t x0_hat + sigma_t eps_hat."""
    sched = fd.schedules.VPCosine()
    c_x, w = expansion_weights(sched, 0.7, 0.4, "eps", 1)
    ddim_cx, ddim_ceps, _ = fd.solvers.ddim_coefficients(sched, torch.tensor([0.7, 0.4], dtype=F64))
    assert float(c_x) == pytest.approx(float(ddim_cx[0]), rel=1e-14)
    assert float(w[0]) == pytest.approx(float(ddim_ceps[0]), rel=1e-12)


def test_derivative_weights_are_exact_for_polynomials():
    offsets = torch.tensor([0.0, -0.7, -1.9], dtype=F64)
    weights = derivative_weights(offsets)
    poly = lambda u: 2.0 - 3.0 * u + 0.5 * u**2  # value 2, first derivative -3, second 1 at 0
    values = poly(offsets)
    assert torch.allclose(weights @ values, torch.tensor([2.0, -3.0, 1.0], dtype=F64), atol=1e-13)


def test_dpm_solver_1_equals_ddim(bed):
    sched, model, x_T, _ = bed
    grid = fd.timesteps.make(sched, "logsnr", 10)
    diff = fd.sample(model, x_T, "ddim", timesteps=grid) - fd.sample(model, x_T, "dpm-solver-1", timesteps=grid)
    assert float(diff.abs().max()) < 1e-10


def _order(bed, name, nfes, **options):
    _, model, x_T, ref = bed
    return measured_order(model, x_T, ref, name, nfes, **options)


@pytest.mark.parametrize("name,order,nfes", [
    ("dpm-solver-2", 2, [96, 192]),
    ("dpm-solver-3", 3, [192, 384]),
    ("dpm-solver-2m", 2, [96, 192]),
    ("dpm-solver-3m", 3, [96, 192]),
    ("dpm-solver++2s", 2, [96, 192]),
    ("dpm-solver++2m", 2, [96, 192]),
    ("dpm-solver++3m", 3, [96, 192]),
])
def test_measured_order(bed, name, order, nfes):
    measured, used = _order(bed, name, nfes)
    assert used == nfes, "the NFE budget must be spent exactly (counted)"
    assert abs(measured - order) < 0.3, (name, measured)


@pytest.mark.parametrize("name", ["dpm-solver-3m", "dpm-solver++3m"])
def test_published_third_order_multistep_is_only_second_order(bed, name):
    """The reference code's 3M halves the second-difference term (our derivation: it needs
    2 * phi_3 * D2 with D2 = (D1_0 - D1_1)/(r0 + r1) ~ h^2 f''/2); the published form then
    measures order ~2, the corrected one ~3."""
    published, _ = _order(bed, name, [96, 192], third_order="published")
    corrected, _ = _order(bed, name, [96, 192])
    assert published < 2.4 < 2.7 < corrected


def test_bad_options_fail_before_any_model_call(bed):
    sched, model, x_T, _ = bed
    before = model.nfe
    with pytest.raises(ValueError, match="solver_type"):
        fd.sample(model, x_T, "dpm-solver++2m", nfe=10, solver_type="rk")
    with pytest.raises(ValueError, match="third_order"):
        fd.sample(model, x_T, "dpm-solver-3m", nfe=10, third_order="new")
    with pytest.raises(ValueError, match="r1"):
        fd.sample(model, x_T, "dpm-solver-2", nfe=10, r1=1.5)
    with pytest.raises(ValueError, match="nfe >= 3"):
        fd.sample(model, x_T, "dpm-solver-3", nfe=2)
    assert model.nfe == before
