"""EDM (Karras et al. 2022): the samplers, their NFE accounting, orders, derivations, preconditioning,
the stochastic sampler's distribution, and ``timesteps.make(..., append_zero=True)``."""
from __future__ import annotations

import math

import numpy as np
import pytest
import sympy as sp
import torch

import fastdiff_edu as fd
from fastdiff_edu import metrics, preconditioning, problems, reference, solvers, timesteps
from fastdiff_edu.derivations import edm as d
from fastdiff_edu.prediction import Prediction
from fastdiff_edu.schedules import EDM, VE, DiscreteVP, VPCosine, VPLinear
from fastdiff_edu.solvers import edm
from tests._helpers import counting_model, single_thread, small_gaussian  # noqa: F401

F64 = torch.float64
NAMES = ["heun-edm", "edm-stochastic", "euler-edm", "edm-rk2"]
SIGMA_MIN = 0.002  # the end noise of the order measurements (the Euler step to 0 is first order)


@pytest.fixture(scope="module")
def gmm():
    return problems.gmm64()


@pytest.fixture(scope="module")
def edm_bed(gmm):
    """gmm64 under the EDM schedule, a batch of 32 and its reference solution at sigma_min."""
    sched = EDM()
    model = gmm.prediction(sched, "x0")
    x_T = sched.prior_sample((32, gmm.dim), generator=torch.Generator().manual_seed(0), dtype=F64)
    return model, x_T, reference.solve(model, x_T, sched.t_max, SIGMA_MIN)


# -- timesteps.make(append_zero=True) ---------------------------------------------------------------------
@pytest.mark.parametrize("sched", [EDM(), VPLinear(), VPCosine(), DiscreteVP.ddpm_linear()], ids=repr)
@pytest.mark.parametrize("kind", ["karras", "logsnr", "time_uniform", "time_quadratic"])
def test_append_zero_ends_at_zero_and_keeps_the_step_count(sched, kind):
    for steps in [2, 5, 18]:
        grid = timesteps.make(sched, kind, steps, append_zero=True)
        assert grid.shape == (steps + 1,) and float(grid[-1]) == 0.0
        assert torch.equal(grid[:-1], timesteps.make(sched, kind, steps - 1))
        assert bool((grid[1:] < grid[:-1]).all())
    assert timesteps.make(sched, kind, 1, append_zero=True).tolist() == [sched.t_max, 0.0]
    # default unchanged
    assert torch.equal(timesteps.make(sched, kind, 7), timesteps.make(sched, kind, 7, append_zero=False))


def test_append_zero_is_refused_where_it_cannot_apply():
    with pytest.raises(ValueError, match="never reaches zero noise"):
        timesteps.make(VE(), "karras", 10, append_zero=True)
    with pytest.raises(ValueError, match="already ends at t_end"):
        timesteps.make(DiscreteVP.ddpm_linear(), "trailing", 10, append_zero=True)
    with pytest.raises(ValueError, match="must be positive"):
        timesteps.make(EDM(), "karras", 10, t_end=0.0, append_zero=True)
    with pytest.raises(ValueError, match="positive integer"):
        timesteps.make(EDM(), "karras", 0, append_zero=True)


def test_append_zero_matches_edm_time_steps():
    """EDM's eq. 5 with N = 18 (rho = 7, 0.002..80) and sigma_N = 0, written out directly."""
    n, rho = 18, 7.0
    i = torch.arange(n, dtype=F64)
    expected = (80.0 ** (1 / rho) + i / (n - 1) * (0.002 ** (1 / rho) - 80.0 ** (1 / rho))) ** rho
    grid = timesteps.make(EDM(), "karras", n, append_zero=True)
    assert torch.allclose(grid[:-1], expected, rtol=1e-13, atol=0) and float(grid[-1]) == 0.0


# -- the registry and the NFE accounting ------------------------------------------------------------------
def test_names_are_registered():
    for name in NAMES:
        spec = solvers.get(name)
        assert spec.chapter == "edm" and spec.default_grid == "karras"
    assert solvers.get("heun-edm").order == 2 and solvers.get("edm-rk2").order == 2
    assert solvers.get("euler-edm").order == 1 and solvers.get("edm-stochastic").stochastic
    assert solvers.get("heun-edm").min_nfe == 2 and solvers.get("euler-edm").min_nfe == 1


@pytest.mark.parametrize("steps", [1, 2, 5, 18])
def test_heun_uses_2n_minus_1_evaluations_to_zero_and_2n_otherwise(steps):
    sched = EDM()
    model, counter = counting_model(problems.ring2d(), sched, kind="x0")
    x_T = sched.prior_sample((4, 2), generator=torch.Generator().manual_seed(0), dtype=F64)
    edm.heun_edm(model, x_T, timesteps.make(sched, "karras", steps, append_zero=True))
    assert model.nfe == counter.calls == edm.heun_nfe(steps) == 2 * steps - 1
    model.reset_nfe()
    edm.heun_edm(model, x_T, timesteps.make(sched, "karras", steps))
    assert model.nfe == edm.heun_nfe(steps, ends_at_zero=False) == 2 * steps
    model.reset_nfe()
    edm.euler_edm(model, x_T, timesteps.make(sched, "karras", steps, append_zero=True))
    assert model.nfe == steps


@pytest.mark.parametrize("name", NAMES)
def test_counted_nfe_never_exceeds_the_budget(name):
    sched = VPLinear()
    model, counter = counting_model(problems.ring2d(), sched)
    x_T = sched.prior_sample((4, 2), generator=torch.Generator().manual_seed(0), dtype=F64)
    opts = {"generator": torch.Generator().manual_seed(1)} if name == "edm-stochastic" else {}
    spec = solvers.get(name)
    for nfe in range(spec.min_nfe, 14):
        for t_end in [None, 0.0]:  # a grid ending at t_min (all full steps) or at t = 0 (Euler last step)
            grid = "time_uniform" if t_end == 0.0 else None
            _, info = fd.sample(model, x_T, name, nfe=nfe, grid=grid, t_end=t_end, return_info=True, **opts)
            assert info.nfe <= nfe
            if t_end is None:  # full steps: the budget is spent exactly when it is a multiple of the step cost
                assert info.nfe == (nfe if name == "euler-edm" else 2 * (nfe // 2))


@pytest.mark.parametrize("name, smallest", [("heun-edm", 2), ("edm-stochastic", 2), ("edm-rk2", 2), ("euler-edm", 1)])
def test_too_small_a_budget_names_the_smallest_that_works(name, smallest):
    model, counter = counting_model(problems.ring2d(), EDM(), kind="x0")
    with pytest.raises(ValueError, match=f"{name} needs an integer nfe >= {smallest}"):
        fd.sample(model, torch.zeros(2, 2, dtype=F64), name, nfe=smallest - 1)
    assert counter.calls == 0 and model.nfe == 0
    _, info = fd.sample(model, 80 * torch.ones(2, 2, dtype=F64), name, nfe=smallest, return_info=True)
    assert info.nfe == smallest


@pytest.mark.parametrize("name, options, fragment", [
    ("edm-rk2", {"alpha": 0.0}, "alpha must lie in"),
    ("edm-rk2", {"alpha": 1.5}, "alpha must lie in"),
    ("edm-rk2", {"alpha": float("nan")}, "alpha must lie in"),
    ("edm-stochastic", {"S_churn": -1.0}, "S_churn must be"),
    ("edm-stochastic", {"S_churn": float("inf")}, "S_churn must be"),
    ("edm-stochastic", {"S_tmin": 2.0, "S_tmax": 1.0}, "S_tmin <= S_tmax"),
    ("euler-edm", {"S_noise": -0.1}, "S_noise must be"),
])
def test_bad_options_raise_before_any_model_call(name, options, fragment):
    model, counter = counting_model(problems.ring2d(), EDM(), kind="x0")
    with pytest.raises(ValueError, match=fragment):
        fd.sample(model, torch.zeros(2, 2, dtype=F64), name, nfe=6, **options)
    assert counter.calls == 0


@pytest.mark.parametrize("fn", [edm.heun_edm, edm.edm_stochastic, edm.euler_edm, edm.edm_rk2])
def test_bad_grid_raises_before_any_model_call(fn):
    model, counter = counting_model(problems.ring2d(), EDM(), kind="x0")
    with pytest.raises(ValueError, match="strictly decreasing"):
        fn(model, torch.zeros(2, 2, dtype=F64), [1.0, 2.0, 0.5])
    with pytest.raises(ValueError, match="at least 1 steps"):
        fn(model, torch.zeros(2, 2, dtype=F64), [1.0])
    assert counter.calls == 0


@pytest.mark.parametrize("fn", [edm.heun_edm, edm.edm_stochastic])
def test_nan_mid_trajectory_names_the_step(fn):
    model, _ = counting_model(problems.ring2d(), EDM(), kind="x0", nan_from=5)
    with pytest.raises(FloatingPointError, match="step 2 of 6"):
        fn(model, 80 * torch.ones(2, 2, dtype=F64), timesteps.make(EDM(), "karras", 6))


def test_callback_sees_every_step_in_model_coordinates():
    sched = DiscreteVP.ddpm_linear()
    model = problems.ring2d().prediction(sched)
    x_T = sched.prior_sample((3, 2), generator=torch.Generator().manual_seed(0), dtype=F64)
    grid = timesteps.make(sched, "karras", 5, append_zero=True)
    seen = []
    x = edm.heun_edm(model, x_T, grid, callback=lambda i, t, x: seen.append((i, float(t), x.clone())))
    assert [s[0] for s in seen] == list(range(5)) and [s[1] for s in seen] == grid[1:].tolist()
    assert torch.equal(seen[-1][2], x)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name", NAMES)
def test_low_precision_keeps_dtype(name, dtype):
    sched = DiscreteVP.ddpm_linear()
    model = problems.ring2d().prediction(sched)
    x_T = sched.prior_sample((16, 2), generator=torch.Generator().manual_seed(0), dtype=dtype)
    opts = lambda: {"generator": torch.Generator().manual_seed(1)} if name == "edm-stochastic" else {}  # noqa: E731
    x = fd.sample(model, x_T, name, nfe=12, **opts())
    x64 = fd.sample(model, x_T.to(F64), name, nfe=12, **opts())
    assert x.dtype == dtype and bool(torch.isfinite(x).all())
    assert metrics.rmse(x, x64) < (1e-4 if dtype == torch.float32 else 5e-2)


# -- identities ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("sched", [EDM(), VE(), VPLinear(), DiscreteVP.ddpm_linear()], ids=repr)
def test_euler_in_scaled_coordinates_is_ddim(gmm, sched):
    model = gmm.prediction(sched)
    x_T = sched.prior_sample((8, gmm.dim), generator=torch.Generator().manual_seed(0), dtype=F64)
    for grid in [timesteps.make(sched, "karras", 7), timesteps.make(sched, "logsnr", 5)]:
        x = edm.euler_edm(model, x_T, grid)
        assert metrics.rmse(x, fd.sample(model, x_T, "ddim", timesteps=grid)) < 1e-12


def test_rk2_with_alpha_one_is_heun_and_coordinates_edm_is_heun(edm_bed):
    model, x_T, _ = edm_bed
    for grid in [timesteps.make(EDM(), "karras", 9), timesteps.make(EDM(), "karras", 9, append_zero=True)]:
        heun = edm.heun_edm(model, x_T, grid)
        assert torch.equal(edm.edm_rk2(model, x_T, grid, alpha=1.0), heun)
        assert metrics.rmse(edm.sample_in_coordinates(model, x_T, grid, coordinates="edm"), heun) < 1e-12
        euler = edm.euler_edm(model, x_T, grid)
        assert metrics.rmse(edm.sample_in_coordinates(model, x_T, grid, solver="euler"), euler) < 1e-12


def test_heun_on_vp_runs_through_the_scaling(gmm):
    """On a VP schedule heun-edm is Heun in (x/alpha, sigma/alpha): the same numbers as on the EDM
    schedule at the same noise levels, once x_T is scaled."""
    vp, ve_like = DiscreteVP.ddpm_linear(), EDM(sigma_min=1e-3, sigma_max=200.0)
    grid_vp = timesteps.make(vp, "karras", 8, append_zero=True)
    grid_edm = vp.sigma_bar(grid_vp)
    x_T = vp.prior_sample((8, gmm.dim), generator=torch.Generator().manual_seed(3), dtype=F64)
    x_vp = edm.heun_edm(gmm.prediction(vp), x_T, grid_vp)
    x_edm = edm.heun_edm(gmm.prediction(ve_like, "x0"), x_T / vp.alpha(grid_vp[0]), grid_edm)
    assert metrics.rmse(x_vp, x_edm) < 1e-10


# -- convergence orders (gmm64, float64, end at sigma_min > 0) ------------------------------------------------
def _errors(model, x_T, x_ref, sched, steps, fn, **options):
    errors, nfes = [], []
    for n in steps:
        model.reset_nfe()
        x = fn(model, x_T, timesteps.make(sched, "karras", n, t_end=SIGMA_MIN if isinstance(sched, EDM) else None),
               **options)
        errors.append(metrics.rmse(x, x_ref))
        nfes.append(model.nfe)
    return nfes, errors


@pytest.mark.parametrize("fn, options, order", [
    (edm.heun_edm, {}, 2), (edm.edm_rk2, {"alpha": 0.5}, 2), (edm.edm_rk2, {"alpha": 2 / 3}, 2),
    (edm.euler_edm, {}, 1)])
def test_empirical_order_on_gmm64(edm_bed, fn, options, order):
    model, x_T, x_ref = edm_bed
    nfes, errors = _errors(model, x_T, x_ref, EDM(), [24, 48, 96], fn, **options)
    p = metrics.empirical_order(nfes, errors)
    assert abs(p - order) < 0.3, (p, errors)
    assert max(errors) < 0.05


def test_heun_order_on_a_vp_schedule(gmm):
    sched = DiscreteVP.ddpm_linear()
    model = gmm.prediction(sched)
    x_T = sched.prior_sample((16, gmm.dim), generator=torch.Generator().manual_seed(1), dtype=F64)
    x_ref = reference.solve(model, x_T)
    nfes, errors = _errors(model, x_T, x_ref, sched, [24, 48, 96], edm.heun_edm)
    assert abs(metrics.empirical_order(nfes, errors) - 2) < 0.3, errors


def test_all_coordinates_converge_to_the_same_solution(edm_bed):
    model, x_T, x_ref = edm_bed
    for name in ["vp", "ve", "edm"]:
        errs = [metrics.rmse(edm.sample_in_coordinates(model, x_T, timesteps.make(EDM(), "karras", n, t_end=SIGMA_MIN),
                                                       coordinates=name), x_ref) for n in [32, 64]]
        assert errs[1] < errs[0] / 3 and errs[1] < 2e-2, (name, errs)


# -- the derivations agree with the code --------------------------------------------------------------------
def test_general_ode_and_its_forms():
    assert d.general_ode_difference() == 0
    assert d.denoiser_form_difference() == 0
    assert d.coordinate_change_residual() == 0
    assert d.straight_line_residual() == (0, 0)
    g = d.general_ode()
    assert sp.simplify(g["g2"] - 2 * d.s**2 * d.sigma * sp.diff(d.sigma, d.t)) == 0
    odes = d.special_case_odes()
    assert sp.simplify(odes["edm"] - (d.x - d.D) / d.t) == 0
    assert sp.simplify(odes["ve"] - (d.x - d.D) / (2 * d.t)) == 0


def test_vp_curvature_is_not_zero():
    expr = d.vp_constant_denoiser_curvature()
    fn = sp.lambdify((d.t, d.D, sp.Symbol("x_start", real=True), sp.Symbol("sigma_0", positive=True)), expr)
    assert abs(fn(0.3, 0.2, 1.5, 80.0)) > 1e-3


@pytest.mark.parametrize("name", ["vp", "ve", "edm"])
def test_coordinates_match_table_1(name):
    s_expr, sigma_expr = d.special_cases()[name]
    coords = edm.COORDINATES[name]
    tau = torch.tensor([1e-3, 0.05, 0.3, 0.9], dtype=F64)
    check = {
        "s": (coords.s, s_expr), "sigma": (coords.sigma, sigma_expr),
        "d_sigma": (coords.d_sigma, sp.diff(sigma_expr, d.t)),
        "d_log_s": (coords.d_log_s, sp.diff(sp.log(s_expr), d.t)),
    }
    for key, (code, expr) in check.items():
        expected = sp.lambdify(d.t, expr, "numpy")(tau.numpy()) * np.ones(4)
        assert np.allclose(code(tau).numpy(), expected, rtol=1e-12, atol=0), key
    assert torch.allclose(coords.tau_of_sigma(coords.sigma(tau)), tau, rtol=1e-10)
    if name == "vp":  # Table 1's VP is the package's VPLinear: s = alpha, sigma = sigma_bar
        sched = VPLinear()
        assert torch.allclose(coords.s(tau), sched.alpha(tau), rtol=1e-12)
        assert torch.allclose(coords.sigma(tau), sched.sigma_bar(tau), rtol=1e-12)


def test_rk2_weights_are_the_ones_the_step_uses():
    alpha = sp.Symbol("alpha", positive=True)
    b1, b2 = d.rk2_weights(alpha)
    assert sp.simplify(b1 - (1 - 1 / (2 * alpha))) == 0 and sp.simplify(b2 - 1 / (2 * alpha)) == 0
    # the step with f(x) = lambda x: one step equals 1 + h lambda (b1 + b2 (1 + alpha h lambda))
    lam, h, x = -0.7, 0.3, torch.tensor(2.0, dtype=F64)
    for a in [0.5, 2 / 3, 1.0]:
        got = edm.rk2_step(lambda y, k: lam * y, x, h, a)
        w1, w2 = float(b1.subs(alpha, a)), float(b2.subs(alpha, a))
        assert math.isclose(float(got), 2.0 * (1 + h * lam * (w1 + w2 * (1 + a * h * lam))), rel_tol=1e-14)


def test_churn_cap_and_noise():
    assert sp.simplify(d.churn_gamma_cap() - (sp.sqrt(2) - 1)) == 0
    assert math.isclose(float(d.churn_gamma_cap()), edm.GAMMA_CAP, rel_tol=1e-15)
    grid = timesteps.make(EDM(), "karras", 10, append_zero=True)
    c = edm.edm_steps(EDM(), grid, S_churn=2.0, S_tmin=0.05, S_tmax=50.0, S_noise=1.1)
    sig = grid[:-1]
    gamma = torch.where((sig >= 0.05) & (sig <= 50.0), torch.full_like(sig, 0.2), torch.zeros_like(sig))
    assert torch.equal(c.gamma, gamma)
    std = sp.lambdify((sp.Symbol("gamma", nonnegative=True), sp.Symbol("sigma_i", positive=True)), d.churn_noise_std(),
                      "numpy")
    assert np.allclose(c.noise_std.numpy(), 1.1 * std(gamma.numpy(), sig.numpy()), rtol=1e-12, atol=0)


def test_karras_grid_and_its_limit():
    expr, u = d.karras_sigma(sp.Integer(7))
    fn = sp.lambdify((u, sp.Symbol("sigma_max", positive=True), sp.Symbol("sigma_min", positive=True)), expr)
    us = np.linspace(0, 1, 11)
    assert np.allclose(fn(us, 80.0, 0.002), timesteps.make(EDM(), "karras", 10).numpy(), rtol=1e-12)
    limit = sp.lambdify((u, sp.Symbol("sigma_max", positive=True), sp.Symbol("sigma_min", positive=True)),
                        d.karras_limit())
    assert np.allclose(limit(us, 80.0, 0.002), timesteps.make(EDM(), "logsnr", 10).numpy(), rtol=1e-12)
    big_rho = timesteps.make(EDM(), "karras", 10, rho=1e6)
    assert torch.allclose(big_rho, timesteps.make(EDM(), "logsnr", 10), rtol=1e-4)


# -- preconditioning ----------------------------------------------------------------------------------------
def test_derived_coefficients_equal_the_code():
    p = d.edm_preconditioning()
    args = (p["sigma"], d.sigma_data)
    sig = torch.tensor([0.002, 0.1, 0.5, 1.0, 7.0, 80.0], dtype=F64)
    for sd in [0.5, 1.0]:
        c = preconditioning.edm_coefficients(sig, sd)
        for key in ["c_skip", "c_out", "c_in", "c_noise"]:
            expected = sp.lambdify(args, p[key], "numpy")(sig.numpy(), sd) * np.ones(sig.numel())
            assert np.allclose(getattr(c, key).numpy(), expected, rtol=1e-13), key
        weight = sp.lambdify(args, p["loss_weight"], "numpy")(sig.numpy(), sd)
        assert np.allclose(preconditioning.loss_weight(sig, sd).numpy(), weight, rtol=1e-13)
        assert torch.allclose(preconditioning.loss_weight(sig, sd), c.c_out ** -2, rtol=1e-13)
    # the variance requirement holds identically at the derived c_skip, c_out
    tv = p["target_variance"].subs({sp.Symbol("c_skip", positive=True): p["c_skip"],
                                    sp.Symbol("c_out", positive=True): p["c_out"]})
    assert sp.simplify(tv - 1) == 0


@pytest.mark.parametrize("sigma", [0.002, 0.2, 0.5, 3.0, 80.0])
def test_unit_variance_of_input_and_target_for_gaussian_data(sigma):
    """Data N(0, sigma_data^2 I): c_in (y + n) and the training target (y - c_skip (y + n))/c_out have
    unit variance; the ideal denoiser is c_skip x, so the ideal F is 0."""
    sd = 0.5
    gen = torch.Generator().manual_seed(0)
    y = sd * torch.randn(200_000, generator=gen, dtype=F64)
    x = y + sigma * torch.randn(200_000, generator=gen, dtype=F64)
    c = preconditioning.edm_coefficients(sigma, sd)
    assert abs(float((c.c_in * x).var()) - 1) < 0.01
    assert abs(float(((y - c.c_skip * x) / c.c_out).var()) - 1) < 0.01
    data = problems.GaussianMixture(torch.zeros(1, 3, dtype=F64), torch.full((1,), sd**2, dtype=F64))
    xs = torch.randn(5, 3, generator=gen, dtype=F64) * math.sqrt(sigma**2 + sd**2)
    precond = preconditioning.EDMPrecond(lambda x_in, c_noise: torch.zeros_like(x_in), sigma_data=sd)
    assert torch.allclose(precond(xs, sigma), data.x0(xs, 1.0, sigma), rtol=1e-9, atol=1e-12)


def test_edm_precond_round_trip_with_the_exact_denoiser(gmm):
    """F = (D* - c_skip x)/c_out as a 'network' of (c_in x, c_noise): EDMPrecond gives back D*."""
    sd = 0.5

    def raw_net(x_in, c_noise):
        sigma = torch.exp(4 * c_noise)
        c = preconditioning.edm_coefficients(sigma, sd)
        x = x_in / c.c_in[:, None]
        return (gmm.x0(x, 1.0, sigma) - c.c_skip[:, None] * x) / c.c_out[:, None]

    precond = preconditioning.EDMPrecond(raw_net, sigma_data=sd)
    assert isinstance(precond, torch.nn.Module) and "sigma_data=0.5" in repr(precond)
    gen = torch.Generator().manual_seed(0)
    sigma = torch.tensor([0.01, 0.3, 2.0, 40.0], dtype=F64)
    x = gmm.sample(4, gen) + sigma[:, None] * torch.randn(4, gmm.dim, generator=gen, dtype=F64)
    assert torch.allclose(precond(x, sigma), gmm.x0(x, 1.0, sigma), rtol=1e-10, atol=1e-12)
    # wrapped as a Prediction on the EDM schedule it samples like the exact model
    model = Prediction(precond, EDM(), kind="x0", time_dtype=F64)
    x_T = EDM().prior_sample((4, gmm.dim), generator=gen, dtype=F64)
    grid = timesteps.make(EDM(), "karras", 6, append_zero=True)
    assert metrics.rmse(edm.heun_edm(model, x_T, grid), edm.heun_edm(gmm.prediction(EDM(), "x0"), x_T, grid)) < 1e-9
    with pytest.raises(ValueError, match="sigma > 0"):
        precond(x, 0.0)


@pytest.mark.parametrize("sched, kind", [(VPLinear(), "eps"), (VPLinear(), "x0"), (VPLinear(), "v"),
                                         (VPLinear(), "score"), (DiscreteVP.ddpm_linear(), "eps"),
                                         (VE(), "eps"), (VE(), "score"), (EDM(), "x0"), (EDM(), "eps")],
                         ids=lambda v: repr(v) if not isinstance(v, str) else v)
def test_denoiser_views_of_a_prediction(gmm, sched, kind):
    model = gmm.prediction(sched, kind)
    D = preconditioning.denoiser(model)
    gen = torch.Generator().manual_seed(1)
    sigma_bar = sched.sigma_bar(torch.tensor([0.3 * sched.t_max + 0.7 * sched.t_min, 0.5 * sched.t_max], dtype=F64))
    for sb in sigma_bar:
        x_bar = gmm.sample(6, gen) + sb * torch.randn(6, gmm.dim, generator=gen, dtype=F64)
        expected = gmm.x0(x_bar, 1.0, sb)  # the ideal denoiser of the data at noise sb
        assert torch.allclose(D(x_bar, sb), expected, rtol=1e-9, atol=1e-10)
        c = preconditioning.denoiser_coefficients(model, sb)
        t = sched.t_of_sigma_bar(sb)
        raw = model(c.c_in * x_bar, t)
        assert torch.allclose(c.c_skip * x_bar + c.c_out * raw, expected, rtol=1e-9, atol=1e-10)


def test_table_1_columns():
    sig = torch.tensor([0.01, 0.5, 3.0, 80.0], dtype=F64)
    vp = preconditioning.table1_coefficients("vp", sig)
    view = preconditioning.denoiser_coefficients(problems.ring2d().prediction(VPLinear(), "eps"), sig)
    for key in ["c_skip", "c_out", "c_in"]:
        assert torch.allclose(getattr(vp, key), getattr(view, key), rtol=1e-12)
    assert torch.allclose(vp.c_noise, 999 * VPLinear().t_of_sigma_bar(sig), rtol=1e-10)
    ve = preconditioning.table1_coefficients("ve", sig)
    assert torch.equal(ve.c_out, sig) and torch.allclose(ve.c_noise, torch.log(sig / 2))
    # v-prediction on VP is EDM's preconditioning with sigma_data = 1, F of the opposite sign
    v_view = preconditioning.denoiser_coefficients(problems.ring2d().prediction(VPLinear(), "v"), sig)
    ours = preconditioning.table1_coefficients("edm", sig, sigma_data=1.0)
    assert torch.allclose(v_view.c_skip, ours.c_skip, rtol=1e-12)
    assert torch.allclose(-v_view.c_out, ours.c_out, rtol=1e-12)
    assert torch.allclose(v_view.c_in, ours.c_in, rtol=1e-12)
    with pytest.raises(ValueError, match="'vp', 've' or 'edm'"):
        preconditioning.table1_coefficients("sub-vp", sig)


# -- the stochastic sampler -----------------------------------------------------------------------------------
def test_stochastic_sampler_is_reproducible_and_uses_its_generator():
    sched = EDM()
    model = problems.ring2d().prediction(sched, "x0")
    x_T = sched.prior_sample((8, 2), generator=torch.Generator().manual_seed(0), dtype=F64)
    grid = timesteps.make(sched, "karras", 10, append_zero=True)
    run = lambda seed, **o: edm.edm_stochastic(model, x_T, grid, generator=torch.Generator().manual_seed(seed), **o)  # noqa: E731
    assert torch.equal(run(1), run(1)) and not torch.equal(run(1), run(2))
    assert torch.equal(run(1, S_churn=0.0), edm.heun_edm(model, x_T, grid))
    # no churn where sigma lies outside [S_tmin, S_tmax]: outside the whole grid, churn does nothing
    assert torch.equal(run(1, S_tmin=100.0, S_tmax=200.0), edm.heun_edm(model, x_T, grid))
    torch.manual_seed(5)
    a = edm.edm_stochastic(model, x_T, grid)
    torch.manual_seed(5)
    assert torch.equal(a, edm.edm_stochastic(model, x_T, grid))


def test_stochastic_sampler_reaches_the_exact_marginal_of_a_gaussian():
    """Data N(mu, S): the output's mean and covariance approach the data's as steps grow, with churn."""
    gauss = small_gaussian(dim=3, seed=0)
    sched = EDM()
    model = gauss.prediction(sched, "x0")
    n = 20_000
    x_T = sched.prior_sample((n, 3), generator=torch.Generator().manual_seed(1), dtype=F64)
    cov_err = {}
    for steps in [12, 48]:
        grid = timesteps.make(sched, "karras", steps, append_zero=True)
        x = edm.edm_stochastic(model, x_T, grid, S_churn=40.0, S_tmin=0.0, S_tmax=math.inf,
                               generator=torch.Generator().manual_seed(2))
        mu, cov = metrics.gaussian_fit(x)
        cov_err[steps] = float((cov - gauss.covariance()).norm() / gauss.covariance().norm())
        se = float(torch.sqrt(torch.diagonal(gauss.covariance()).max() / n))
        assert float((mu - gauss.mean()).abs().max()) < 5 * se + 0.02
    assert cov_err[48] < 0.1 and cov_err[48] < cov_err[12] / 2, cov_err
    # S_noise > 1 adds too much noise: the covariance error grows
    grid = timesteps.make(sched, "karras", 48, append_zero=True)
    x = edm.edm_stochastic(model, x_T, grid, S_churn=40.0, S_tmin=0.0, S_tmax=math.inf, S_noise=1.3,
                           generator=torch.Generator().manual_seed(2))
    _, cov = metrics.gaussian_fit(x)
    assert float((cov - gauss.covariance()).norm() / gauss.covariance().norm()) > 2 * cov_err[48]


def test_stochastic_distribution_error_shrinks_with_steps():
    """Sliced W2 to exact samples of ring2d, with churn, falls as steps are added."""
    sched = EDM()
    ring = problems.ring2d()
    model = ring.prediction(sched, "x0")
    x_T = sched.prior_sample((2000, 2), generator=torch.Generator().manual_seed(1), dtype=F64)
    exact = ring.sample(2000, torch.Generator().manual_seed(2))
    sw = []
    for steps in [4, 16]:
        x = edm.edm_stochastic(model, x_T, timesteps.make(sched, "karras", steps, append_zero=True),
                               S_churn=10.0, generator=torch.Generator().manual_seed(3))
        sw.append(metrics.sliced_wasserstein(x, exact))
    assert sw[1] < sw[0] / 2 and sw[1] < 0.1, sw


def test_vp_coordinates_are_heun_in_t_on_the_vplinear_pf_ode(gmm):
    """Independent check: Table 1's VP coordinates are VPLinear's, and Heun on ode.drift_t in its t
    (the package's own probability-flow ODE) gives the same numbers."""
    from fastdiff_edu import ode

    vp, model_vp = VPLinear(), gmm.prediction(VPLinear())
    model_edm = gmm.prediction(EDM(), "x0")
    x_T = EDM().prior_sample((4, gmm.dim), generator=torch.Generator().manual_seed(0), dtype=F64)
    grid = timesteps.make(EDM(), "karras", 7)
    t = vp.t_of_sigma_bar(grid)
    x = x_T * vp.alpha(t[0])
    for i in range(7):
        h = t[i + 1] - t[i]
        d1 = ode.drift_t(model_vp, x, t[i])
        x = x + h * (d1 + ode.drift_t(model_vp, x + h * d1, t[i + 1])) / 2
    ours = edm.sample_in_coordinates(model_edm, x_T, grid, coordinates="vp")
    assert metrics.rmse(x / vp.alpha(t[-1]), ours) < 1e-12


# -- CUDA (skipped without a GPU) --------------------------------------------------------------------------
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype, tol", [(F64, 1e-10), (torch.float32, 1e-4), (torch.float16, 0.05)])
def test_cuda_input_stays_on_cuda(gmm, name, dtype, tol):
    sched = DiscreteVP.ddpm_linear()
    model = gmm.prediction(sched)
    x_T = sched.prior_sample((16, gmm.dim), generator=torch.Generator().manual_seed(0), dtype=F64)
    opts = lambda device: ({"generator": torch.Generator(device=device).manual_seed(0)}  # noqa: E731
                           if name == "edm-stochastic" else {})
    x = fd.sample(model, x_T.to(device="cuda", dtype=dtype), name, nfe=12, **opts("cuda"))
    assert x.device.type == "cuda" and x.dtype == dtype and bool(torch.isfinite(x).all())
    if name != "edm-stochastic":  # CPU and CUDA generators draw different numbers
        dev = float((x.double().cpu() - fd.sample(model, x_T, name, nfe=12)).abs().max())
        print(f"{name} {dtype}: max deviation from the CPU float64 run {dev:.2e}")
        assert dev < tol


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", NAMES)
def test_no_host_sync_per_step_on_cuda(name):
    """Synchronising CUDA calls do not grow with the number of steps (the loop never waits for the GPU)."""
    import warnings

    sched = EDM()
    model = Prediction(lambda x, t: 0.5 * x, sched, kind="x0")  # a GPU-only stand-in for a network
    x_T = torch.randn(8, 4, device="cuda")
    counts = []
    for steps in [4, 16]:
        grid = timesteps.make(sched, "karras", steps, append_zero=True)
        opts = {"generator": torch.Generator(device="cuda").manual_seed(0)} if name == "edm-stochastic" else {}
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("warn")
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                fd.sample(model, x_T, name, timesteps=grid, **opts)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        counts.append(sum("synchroniz" in str(w.message) for w in caught))
    print(f"{name}: synchronising calls for 4 and 16 steps: {counts}")
    assert counts[0] == counts[1]
