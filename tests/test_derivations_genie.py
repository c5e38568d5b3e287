"""The sympy derivation of GENIE's TTM2 (fastdiff_edu.derivations.genie) against the solver's numbers."""
from __future__ import annotations

import sympy as sp
import torch

from fastdiff_edu import problems, schedules, timesteps
from fastdiff_edu.derivations import genie as dg
from fastdiff_edu.solvers import genie as sg
from tests._helpers import single_thread  # noqa: F401 (autouse)

F64 = torch.float64


def test_symbolic_identities():
    assert dg.scaled_ode_difference() == 0
    assert dg.x_tangent_difference() == 0
    assert dg.x_space_difference() == 0
    assert dg.gaussian_check() == 0
    assert sp.simplify(dg.taylor_step(1) - (dg.x_bar + dg.h * dg.eps_fn(dg.sb))) == 0  # TTM1 = DDIM
    assert sp.simplify(dg.ttm2_local_error() - dg.h**3 / 6 * sp.diff(dg.eps_fn(dg.sb), dg.sb, 2)) == 0
    _, chain = dg.total_derivative()
    assert len(chain.args) == 2  # two terms: d eps/dx * dx/dsb + d eps/dt * dt/dsb


def test_x_space_coefficients_match_the_solver():
    sched = schedules.DiscreteVP.ddpm_linear()
    grid = timesteps.make(sched, "time_quadratic", 12)
    c_x, c_eps, c_d = sg.ttm2_coefficients(sched, grid)
    a_n, a_n1, sb_n, sb_n1 = sp.symbols(r"\alpha_n \alpha_{n+1} \bar\sigma_n \bar\sigma_{n+1}", positive=True)
    funcs = [sp.lambdify((a_n, a_n1, sb_n, sb_n1), e, "math") for e in dg.x_space_coefficients()]
    alpha, sigma_bar = sched.alpha(grid), sched.sigma_bar(grid)
    for i in range(12):
        args = (float(alpha[i]), float(alpha[i + 1]), float(sigma_bar[i]), float(sigma_bar[i + 1]))
        for f, code in zip(funcs, (c_x[i], c_eps[i], c_d[i])):
            assert abs(f(*args) - float(code)) <= 1e-12 * max(1.0, abs(float(code)))


def test_tangent_coefficients_match_the_closed_form():
    sched = schedules.VPLinear()
    log_alpha, sigma_bar = dg.vp_linear_sigma_bar(sched.beta_min, sched.beta_max)
    dt_sym, dlog_sym = (sp.lambdify(dg.t, e, "math") for e in dg.t_tangent(log_alpha, sigma_bar))
    ts = torch.tensor([0.002, 0.05, 0.3, 0.7, 1.0], dtype=F64)
    _, dlog_alpha, dt = sg.tangent_coefficients(sched, ts)
    for i, tv in enumerate(ts.tolist()):
        assert abs(dt_sym(tv) - float(dt[i])) <= 1e-10 * abs(dt_sym(tv))
        assert abs(dlog_sym(tv) - float(dlog_alpha[i])) <= 1e-10 * abs(dlog_sym(tv))


def test_gaussian_total_derivative_equals_the_jvp():
    """For isotropic Gaussian data the JVP of the exact model is eps s^2/(sigma_bar (s^2 + sigma_bar^2))."""
    var = 0.3
    data = problems.GaussianMixture(torch.zeros(1, 3, dtype=F64), torch.full((1,), var, dtype=F64))
    sched = schedules.DiscreteVP.ddpm_linear()
    model = data.prediction(sched)
    formula = sp.lambdify((dg.x_bar, dg.sb, dg.s2), dg.gaussian_total_derivative(), "math")
    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(0), dtype=F64)
    for tv in (0.02, 0.3, 0.9):
        t = torch.tensor(tv, dtype=F64)
        alpha, dlog, dt = sg.tangent_coefficients(sched, t)
        eps = model.eps(x, t)
        d_eps = sg.total_derivative(model, x, t, eps, alpha, dlog, dt)
        x_bar, sb = x / alpha, float(sched.sigma_bar(t))
        expected = torch.tensor([[formula(float(v), sb, var) for v in row] for row in x_bar], dtype=F64)
        assert torch.allclose(d_eps, expected, rtol=1e-9, atol=1e-12)


def test_afs_coefficient_matches_the_derivation():
    a, s = sp.symbols(r"\alpha \sigma", positive=True)
    coeff = sp.lambdify((a, s), dg.afs_eps() / dg.x, "math")
    for sched in (schedules.DiscreteVP.ddpm_linear(), schedules.EDM()):
        t = torch.tensor(sched.t_max, dtype=F64)
        expected = coeff(float(sched.alpha(t)), float(sched.sigma(t)))
        assert abs(float(sg.afs_coefficient(sched, t)) - expected) <= 1e-14 * abs(expected)
