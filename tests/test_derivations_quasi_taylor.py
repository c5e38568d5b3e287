"""The quasi-Taylor derivation (fastdiff_edu.derivations.quasi_taylor) and the numbers the sampler uses."""
from __future__ import annotations

import functools
import importlib
import math

import pytest
import sympy as sp
import torch

from fastdiff_edu import schedules, timesteps
from fastdiff_edu.derivations import quasi_taylor as dq

qt = importlib.import_module("fastdiff_edu.solvers.quasi_taylor")
F64 = torch.float64


def test_generic_total_derivative_needs_the_model_jacobian():
    second = dq.total_derivatives(2)[1]
    partials = second.atoms(sp.Derivative)
    E = dq.E(dq.x, dq.lam)
    assert sp.Derivative(E, dq.x) in partials and sp.Derivative(E, dq.lam) in partials


def test_ideal_partials():
    p = dq.ideal_partials()
    assert sp.simplify(p["E_x"] - 1 / dq.sigma(dq.lam)) == 0
    assert p["E_xx"] == 0


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_ideal_derivatives_are_alpha_n_x0_plus_sigma_n_eps(n):
    assert dq.ideal_derivative_residual(n) == 0


def test_eps_is_constant_along_the_single_point_path():
    assert dq.ideal_eps_rate() == 0


@pytest.mark.parametrize("order", [1, 2, 3])   # order 4: 10 s of sympy; covered numerically below
def test_quasi_taylor_is_the_taylor_polynomial_of_ddim_vp(order):
    assert dq.series_residual(order) == 0


@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_quasi_taylor_is_the_taylor_polynomial_of_ddim_edm(order):
    assert dq.series_residual(order, dq.edm_alpha, dq.edm_sigma) == 0


def test_whole_series_is_ddim_edm():
    _, difference = dq.edm_series_sum()
    assert difference == 0


def test_vp_radius_of_convergence():
    assert set(dq.vp_singularities()) == {sp.I * sp.pi / 2, -sp.I * sp.pi / 2}


@functools.lru_cache(maxsize=None)
def _weights(kind, order):
    a, s = (dq.vp_alpha, dq.vp_sigma) if kind == "vp" else (dq.edm_alpha, dq.edm_sigma)
    return dq.taylor_coefficients(order, a, s)


@pytest.mark.parametrize("sched, kind", [(schedules.DiscreteVP.ddpm_linear(), "vp"), (schedules.VPCosine(), "vp"),
                                         (schedules.EDM(), "edm")], ids=["DiscreteVP", "VPCosine", "EDM"])
def test_sampler_taylor_weights_match_sympy(sched, kind):
    order = 5
    A, B = _weights(kind, order)
    grid = timesteps.make(sched, "logsnr", 9)
    lam = sched.half_log_snr(grid)
    got_a, got_b = qt.ideal_taylor_coefficients(qt.log_alpha_slope(sched, grid), order)
    for n in range(order + 1):
        fa, fb = sp.lambdify(dq.lam, A[n], "math"), sp.lambdify(dq.lam, B[n], "math")
        want_a = torch.tensor([float(fa(float(v))) for v in lam], dtype=F64)
        want_b = torch.tensor([float(fb(float(v))) for v in lam], dtype=F64)
        torch.testing.assert_close(got_a[n], want_a, rtol=1e-12, atol=1e-13)
        torch.testing.assert_close(got_b[n], want_b, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_sampler_coefficients_are_the_lambdified_step(order):
    """c_x, c_eps of the sampler = d(step)/dx and d(step)/d eps of the sympy step (VP)."""
    sched = schedules.VPLinear()
    grid = timesteps.make(sched, "logsnr", 6)
    lam = sched.half_log_snr(grid)
    step = sp.expand(dq.quasi_taylor_step(order, dq.vp_alpha, dq.vp_sigma))
    f_x = sp.lambdify((dq.lam, dq.h), sp.diff(step, dq.x), "math")
    f_e = sp.lambdify((dq.lam, dq.h), sp.diff(step, dq.eps), "math")
    c_x, c_eps = qt.quasi_taylor_coefficients(sched, grid, order)
    for i in range(6):
        h = float(lam[i + 1] - lam[i])
        assert math.isclose(float(c_x[i]), f_x(float(lam[i]), h), rel_tol=1e-11)
        assert math.isclose(float(c_eps[i]), f_e(float(lam[i]), h), rel_tol=1e-11, abs_tol=1e-14)


@pytest.mark.parametrize("which", ["vp", "edm"])
def test_ito_taylor_moments_match_ddpm_to_second_order(which):
    a, s = (dq.vp_alpha, dq.vp_sigma) if which == "vp" else (dq.edm_alpha, dq.edm_sigma)
    _, _, dm, dv = dq.ito_taylor_moments(a, s)
    for d in (dm, dv):
        d = sp.expand(d)
        assert all(sp.simplify(d.coeff(dq.h, p)) == 0 for p in range(3))
        assert sp.simplify(d.coeff(dq.h, 3)) != 0
