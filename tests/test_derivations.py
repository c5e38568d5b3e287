"""Derivations vs code: the sympy results of fastdiff_edu.derivations.pf_ode, lambdified and
compared with the numbers the schedules and samplers use."""
from __future__ import annotations

import numpy as np
import pytest
import sympy as sp
import torch

from fastdiff_edu import schedules
from fastdiff_edu.derivations import pf_ode as d
from fastdiff_edu.solvers import ddim_coefficients
from tests._helpers import single_thread  # noqa: F401

F64 = torch.float64


def _vp_cases():
    lin = schedules.VPLinear()
    cos = schedules.VPCosine()
    return [
        pytest.param(lin, d.vp_linear_log_alpha(sp.Float(lin.beta_min), sp.Float(lin.beta_max)), id="VPLinear"),
        pytest.param(cos, d.vp_cosine_log_alpha(sp.Float(cos.s)), id="VPCosine"),
    ]


def _grid(sched, n=501):
    return torch.linspace(sched.t_min, sched.t_max, n, dtype=F64)


def _lambdified(expr):
    return sp.lambdify(d.t, expr, modules="numpy")


def _rel_err(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-300)))


# -- (a), (d): the derived f, g^2, lambda, lambda' equal the schedule's -------------------------
@pytest.mark.parametrize("sched, log_alpha", _vp_cases())
def test_derived_f_equals_d_log_alpha(sched, log_alpha):
    c = d.vp_coefficients(log_alpha)
    t = _grid(sched)
    assert _rel_err(_lambdified(c["f"])(t.numpy()), sched.d_log_alpha(t).numpy()) < 1e-10


@pytest.mark.parametrize("sched, log_alpha", _vp_cases())
def test_derived_g2_equals_minus_two_sigma2_dlambda(sched, log_alpha):
    # g^2 = (sigma^2)' - 2 f sigma^2 = -2 sigma^2 lambda' (see eps_form_difference): compare the
    # derived g^2 with the schedule's sigma and d_half_log_snr, an independent code path
    c = d.vp_coefficients(log_alpha)
    t = _grid(sched)
    from_code = -2.0 * sched.sigma(t) ** 2 * sched.d_half_log_snr(t)
    assert _rel_err(_lambdified(c["g2"])(t.numpy()), from_code.numpy()) < 1e-10


@pytest.mark.parametrize("sched, log_alpha", _vp_cases())
def test_derived_lambda_and_its_derivative(sched, log_alpha):
    c = d.vp_coefficients(log_alpha)
    t = _grid(sched)
    assert _rel_err(_lambdified(c["lambda"])(t.numpy()), sched.half_log_snr(t).numpy()) < 1e-10
    assert _rel_err(_lambdified(c["dlambda"])(t.numpy()), sched.d_half_log_snr(t).numpy()) < 1e-10
    assert _rel_err(_lambdified(c["alpha"])(t.numpy()), sched.alpha(t).numpy()) < 1e-10
    assert _rel_err(_lambdified(c["sigma"])(t.numpy()), sched.sigma(t).numpy()) < 1e-10


def test_vp_linear_f_and_g2_are_minus_half_beta_and_beta():
    assert d.vp_linear_beta_residuals() == (0, 0)


def test_forward_sde_coefficients_general_form():
    f, g2 = d.forward_sde_coefficients()
    assert sp.simplify(f - sp.diff(sp.log(d.alpha), d.t)) == 0
    assert sp.simplify(g2 - (sp.diff(d.sigma**2, d.t) - 2 * f * d.sigma**2)) == 0


def test_moment_odes_of_the_linear_sde():
    f, g2 = sp.symbols("f g2")
    m, v = sp.Function("m")(d.t), sp.Function("v")(d.t)
    mean_ode, var_ode = d.moment_odes(f, g2, m, v)
    assert sp.simplify(mean_ode.rhs - f * m) == 0
    assert sp.simplify(var_ode.rhs - (2 * f * v + g2)) == 0


# -- (b), (c): identities that must simplify to zero ---------------------------------------------
def test_fokker_planck_of_sde_equals_continuity_equation_of_pf_ode():
    assert d.fokker_planck_difference() == 0


def test_gaussian_marginal_solves_the_pf_ode_continuity_equation():
    assert d.gaussian_marginal_residual() == 0


def test_gaussian_marginal_residual_vp_linear():
    c = d.vp_coefficients(d.vp_linear_log_alpha())
    assert d.gaussian_marginal_residual(c["alpha"], c["sigma"]) == 0


def test_eps_form_difference_simplifies_to_zero():
    assert d.eps_form_difference() == 0


# -- (e): a point mass ------------------------------------------------------------------------------
def test_point_mass_solution_solves_the_ode():
    assert d.point_mass_ode_residual() == 0


def test_ddim_is_exact_for_a_point_mass():
    assert d.ddim_point_mass_residual() == 0


@pytest.mark.parametrize("sched", [schedules.VPLinear(), schedules.VPCosine(), schedules.DiscreteVP.ddpm_linear()],
                         ids=["VPLinear", "VPCosine", "DiscreteVP"])
def test_ddim_step_coefficients_match_the_sampler(sched):
    x_t, eps = sp.symbols("x_t epsilon")
    a_t, s_t, a_s, s_s = sp.symbols("alpha_t sigma_t alpha_s sigma_s", positive=True)
    step = sp.expand(d.ddim_step(x_t, eps, a_t, s_t, a_s, s_s))
    c_x = sp.lambdify((a_t, s_t, a_s, s_s), step.coeff(x_t))
    c_eps = sp.lambdify((a_t, s_t, a_s, s_s), step.coeff(eps))
    grid = torch.linspace(sched.t_max, sched.t_min, 21, dtype=F64)
    a, s = sched.alpha(grid).numpy(), sched.sigma(grid).numpy()
    code_x, code_eps, _ = ddim_coefficients(sched, grid)
    assert _rel_err(c_x(a[:-1], s[:-1], a[1:], s[1:]), code_x.numpy()) < 1e-10
    assert _rel_err(c_eps(a[:-1], s[:-1], a[1:], s[1:]), code_eps.numpy()) < 1e-10
