"""The baseline samplers: Euler, DDIM (eta = 0 and eta > 0), DDPM and RK45.

Convergence orders are measured on the standard test bed (problems.gmm64 under the DDPM
discrete linear schedule, float64) against reference.solve, and on a single Gaussian against
its closed-form flow map.
"""
from __future__ import annotations

import math

import pytest
import torch

import fastdiff_edu as fd
from fastdiff_edu import metrics, problems, reference, solvers, timesteps
from fastdiff_edu.schedules import EDM, VE, DiscreteVP, VPCosine, VPLinear
from tests._helpers import counting_model, point_mass_model, single_thread, small_gaussian  # noqa: F401

F64 = torch.float64
ORDER_NFES = [40, 80, 160, 320]


# -- the standard test bed -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def testbed():
    """gmm64 under DiscreteVP.ddpm_linear, batch 64, with its reference solution (computed once)."""
    sched = DiscreteVP.ddpm_linear()
    mixture = problems.gmm64()
    model, counter = counting_model(mixture, sched)
    x_T = sched.prior_sample((64, 64), generator=torch.Generator().manual_seed(0), dtype=F64)
    ref = reference.solve(model, x_T)
    model.reset_nfe()
    return dict(sched=sched, mixture=mixture, model=model, counter=counter, x_T=x_T, ref=ref)


def _errors(testbed, solver, grid):
    model, x_T, ref = testbed["model"], testbed["x_T"], testbed["ref"]
    errors = []
    for nfe in ORDER_NFES:
        calls = testbed["counter"].calls
        x = fd.sample(model, x_T, solver, nfe=nfe, grid=grid)
        assert testbed["counter"].calls - calls == nfe
        errors.append(metrics.rmse(x, ref))
    return errors


@pytest.mark.parametrize("solver, grid", [("ddim", "logsnr"), ("euler", "time_quadratic")])
def test_first_order_on_gmm64(testbed, solver, grid):
    errors = _errors(testbed, solver, grid)
    order = metrics.empirical_order(ORDER_NFES, errors)
    # measured: ddim/logsnr 1.00 (errors 1.6e-2 .. 2.0e-3), euler/time_quadratic 1.06 (4.2e-3 .. 4.7e-4)
    assert abs(order - 1.0) < 0.25, f"{solver} on {grid}: order {order:.3f}, errors {errors}"
    assert all(b < a for a, b in zip(errors, errors[1:])), errors
    assert errors[-1] > 1e3 * 1e-8, "errors must stay far above the reference's own accuracy"


def test_ddim_grid_choice_matters_on_gmm64(testbed):
    """DDIM on the logsnr grid vs uniform t at the same NFE: both first order, uniform-t worse here
    (measured at NFE 40: 1.6e-2 vs 2.8e-2)."""
    x_T, ref, model = testbed["x_T"], testbed["ref"], testbed["model"]
    err_lam = metrics.rmse(fd.sample(model, x_T, "ddim", nfe=40, grid="logsnr"), ref)
    err_t = metrics.rmse(fd.sample(model, x_T, "ddim", nfe=40, grid="time_uniform"), ref)
    assert err_lam < err_t


def test_rk45_on_gmm64_discrete(testbed):
    """RK45 at rtol = atol = 1e-5 in t. The discrete schedule's log alpha is piecewise linear, so
    the ODE in t has 1000 kinks; measured rmse 2.6e-4 to 3.2e-4 with 140-152 NFE (the step
    sequence depends on the float summation order): the bound
    is loose on purpose (see test_rk45_reaches_reference_on_smooth_schedule for the tight one)."""
    model, counter = testbed["model"], testbed["counter"]
    calls = counter.calls
    x, info = solvers.rk45(model, testbed["x_T"], [1.0, testbed["sched"].t_min], return_info=True)
    assert info.nfe == counter.calls - calls > 0
    assert metrics.rmse(x, testbed["ref"]) < 1e-3


# -- RK45 on a smooth schedule ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def smooth_testbed():
    sched = VPLinear()
    model, counter = counting_model(problems.gmm64(), sched)
    x_T = sched.prior_sample((16, 64), generator=torch.Generator().manual_seed(1), dtype=F64)
    ref = reference.solve(model, x_T)
    return dict(sched=sched, model=model, counter=counter, x_T=x_T, ref=ref)


def test_rk45_reaches_reference_on_smooth_schedule(smooth_testbed):
    model, counter, x_T, ref = (smooth_testbed[k] for k in ("model", "counter", "x_T", "ref"))
    grid = [1.0, 1e-3]
    calls = counter.calls
    x, info = solvers.rk45(model, x_T, grid, return_info=True)
    assert info.nfe == counter.calls - calls > 0
    assert info.method == "RK45" and info.variable == "t" and info.rtol == 1e-5 and info.atol == 1e-5
    err_loose = metrics.rmse(x, ref)
    # global error of a 1e-5 local tolerance: measured 1.7e-5 (110 NFE); at 1e-7: 6.7e-8 (290 NFE)
    assert err_loose < 1e-4, err_loose
    calls = counter.calls
    x_tight, info_tight = solvers.rk45(model, x_T, grid, rtol=1e-7, atol=1e-7, return_info=True)
    err_tight = metrics.rmse(x_tight, ref)
    assert info_tight.nfe == counter.calls - calls > info.nfe
    assert err_tight < err_loose / 10, (err_loose, err_tight)
    # through the registry, the SampleInfo reports the same counted NFE
    calls = counter.calls
    y, sample_info = fd.sample(model, x_T, "rk45", return_info=True)
    assert sample_info.nfe == counter.calls - calls == info.nfe
    assert torch.equal(y, x)


# -- DDIM against its closed form --------------------------------------------------------------------------
CLOSED_FORM_CASES = [
    pytest.param(DiscreteVP.ddpm_linear(), "gmm64", id="DiscreteVP-gmm64"),
    pytest.param(VPLinear(), "ring2d", id="VPLinear-ring2d"),
    pytest.param(VPCosine(), "ring2d", id="VPCosine-ring2d"),
    pytest.param(EDM(), "ring2d", id="EDM-ring2d"),
    pytest.param(VE(), "ring2d", id="VE-ring2d"),
]


@pytest.mark.parametrize("sched, problem", CLOSED_FORM_CASES)
@pytest.mark.parametrize("frac_t, frac_s", [(1.0, 0.6), (0.3, 0.29), (0.05, 0.0)])
def test_ddim_one_step_is_the_closed_form_update(sched, problem, frac_t, frac_s):
    mixture = problems.get(problem)
    model = mixture.prediction(sched)
    lo, hi = sched.t_min, sched.t_max
    t, s = lo + frac_t * (hi - lo), lo + frac_s * (hi - lo)
    x = sched.prior_sample((16, mixture.dim), generator=torch.Generator().manual_seed(2), dtype=F64)
    x = float(sched.sigma(t)) / sched.prior_std * x + float(sched.alpha(t)) * mixture.sample(
        16, generator=torch.Generator().manual_seed(3))  # a point of the marginal at t
    # independently: eps_hat from the mixture, x0_hat by definition, x_s = alpha_s x0_hat + sigma_s eps_hat
    a_t, s_t = float(sched.alpha(t)), float(sched.sigma(t))
    a_s, s_s = float(sched.alpha(s)), float(sched.sigma(s))
    eps_hat = mixture.eps(x, a_t, s_t)
    x0_hat = (x - s_t * eps_hat) / a_t
    expected = a_s * x0_hat + s_s * eps_hat
    got = solvers.ddim(model, x, [t, s])
    assert float((got - expected).abs().max()) < 1e-12 * max(1.0, float(expected.abs().max()))


def _ddim_eq16_step(sched, mixture, x, t, s, eta, z):
    """Song, Meng & Ermon (2021), eq. 12 with sigma_t(eta) of eq. 16, in alphas_cumprod."""
    abar_t, abar_s = float(sched.alpha(t)) ** 2, float(sched.alpha(s)) ** 2
    eps_hat = mixture.eps(x, math.sqrt(abar_t), math.sqrt(1 - abar_t))
    x0_hat = (x - math.sqrt(1 - abar_t) * eps_hat) / math.sqrt(abar_t)
    sigma_eta = eta * math.sqrt((1 - abar_s) / (1 - abar_t)) * math.sqrt(1 - abar_t / abar_s)
    return math.sqrt(abar_s) * x0_hat + math.sqrt(1 - abar_s - sigma_eta**2) * eps_hat + sigma_eta * z


@pytest.mark.parametrize("sched", [pytest.param(DiscreteVP.ddpm_linear(), id="DiscreteVP"),
                                   pytest.param(VPLinear(), id="VPLinear")])
def test_ddim_eta_matches_eq16_with_the_same_generator(sched):
    mixture = problems.ring2d()
    model = mixture.prediction(sched)
    eta = 0.5
    grid = timesteps.make(sched, "time_uniform", 3)
    x_T = sched.prior_sample((32, 2), generator=torch.Generator().manual_seed(4), dtype=F64)
    got = solvers.ddim(model, x_T, grid, eta=eta, generator=torch.Generator().manual_seed(7))
    gen = torch.Generator().manual_seed(7)
    x = x_T
    for t, s in zip(grid[:-1].tolist(), grid[1:].tolist()):
        z = torch.randn(x.shape, generator=gen, dtype=torch.float32).to(F64)  # noise_like draws float32
        x = _ddim_eq16_step(sched, mixture, x, t, s, eta, z)
    assert float((got - x).abs().max()) < 1e-12
    # the noise matters: another generator gives another answer, eta = 0 is deterministic
    other = solvers.ddim(model, x_T, grid, eta=eta, generator=torch.Generator().manual_seed(8))
    assert float((other - got).abs().max()) > 1e-3
    assert torch.equal(solvers.ddim(model, x_T, grid, eta=0.0), solvers.ddim(model, x_T, grid))


def test_ddim_rejects_negative_eta():
    sched = VPLinear()
    model, counter = counting_model(problems.ring2d(), sched)
    with pytest.raises(ValueError, match="eta"):
        solvers.ddim(model, torch.zeros(2, 2, dtype=F64), [1.0, 0.5], eta=-0.1)
    assert counter.calls == 0


# -- DDPM -----------------------------------------------------------------------------------------------
def _posterior_step(sched, mixture, x, t, s, z, variance):
    """Ho et al. (2020) eq. 7 for a general schedule (Kingma et al. 2021, eq. 26-27):
    q(x_s | x_t, x0) = N(alpha_ts sigma_s^2/sigma_t^2 x_t + alpha_s beta_ts/sigma_t^2 x0, beta_ts sigma_s^2/sigma_t^2)
    with alpha_ts = alpha_t/alpha_s and beta_ts = sigma_t^2 - alpha_ts^2 sigma_s^2."""
    a_t, s_t, a_s, s_s = (float(v) for v in (sched.alpha(t), sched.sigma(t), sched.alpha(s), sched.sigma(s)))
    a_ts = a_t / a_s
    beta_ts = s_t**2 - a_ts**2 * s_s**2
    x0_hat = mixture.x0(x, a_t, s_t)
    mean = a_ts * s_s**2 / s_t**2 * x + a_s * beta_ts / s_t**2 * x0_hat
    var = beta_ts * s_s**2 / s_t**2 if variance == "posterior" else beta_ts
    return mean + math.sqrt(var) * z


@pytest.mark.parametrize("variance", ["posterior", "forward"])
def test_ddpm_step_is_the_posterior_sample(variance):
    sched = DiscreteVP.ddpm_linear()
    mixture = problems.ring2d()
    model = mixture.prediction(sched)
    grid = timesteps.make(sched, "trailing", 4, t_end=sched.t_min)
    x_T = sched.prior_sample((32, 2), generator=torch.Generator().manual_seed(5), dtype=F64)
    got = solvers.ddpm(model, x_T, grid, variance=variance, generator=torch.Generator().manual_seed(9))
    gen = torch.Generator().manual_seed(9)
    x = x_T
    for t, s in zip(grid[:-1].tolist(), grid[1:].tolist()):
        z = torch.randn(x.shape, generator=gen, dtype=torch.float32).to(F64)  # noise_like draws float32
        x = _posterior_step(sched, mixture, x, t, s, z, variance)
    assert float((got - x).abs().max()) < 1e-12


def test_ddpm_reproducible_with_generator():
    sched = DiscreteVP.ddpm_linear()
    model = problems.ring2d().prediction(sched)
    x_T = sched.prior_sample((16, 2), generator=torch.Generator().manual_seed(6), dtype=F64)
    a = fd.sample(model, x_T, "ddpm", nfe=20, generator=torch.Generator().manual_seed(1))
    b = fd.sample(model, x_T, "ddpm", nfe=20, generator=torch.Generator().manual_seed(1))
    c = fd.sample(model, x_T, "ddpm", nfe=20, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b)
    assert float((a - c).abs().max()) > 1e-3


def _ddpm_law(sched, gaussian, grid):
    """Exact mean and covariance of DDPM's output from x_T ~ N(0, I) on a single Gaussian: each
    step is affine in x plus independent Gaussian noise (posterior variance)."""
    d = gaussian.dim
    eye = torch.eye(d, dtype=F64)
    mu, cov_data = gaussian.means[0], gaussian.covariances[0]
    m, p = torch.zeros(d, dtype=F64), eye.clone()
    for t, s in zip(grid[:-1].tolist(), grid[1:].tolist()):
        a_t, s_t, a_s, s_s = (float(v) for v in (sched.alpha(t), sched.sigma(t), sched.alpha(s), sched.sigma(s)))
        a_ts = a_t / a_s
        beta_ts = s_t**2 - a_ts**2 * s_s**2
        gain = a_t * cov_data @ torch.linalg.inv(a_t**2 * cov_data + s_t**2 * eye)  # x0_hat = mu + gain (x - a_t mu)
        big_a = a_ts * s_s**2 / s_t**2 * eye + a_s * beta_ts / s_t**2 * gain
        b = a_s * beta_ts / s_t**2 * (mu - gain @ (a_t * mu))
        m = big_a @ m + b
        p = big_a @ p @ big_a.T + beta_ts * s_s**2 / s_t**2 * eye
    return m, p


def test_ddpm_samples_a_single_gaussian():
    """NFE 200 on the uniform-t grid, 10^4 samples.

    (1) Loose, against the truth: sample mean within 5 standard errors of the exact marginal's mean
    at t_min, sample covariance within 10% (relative Frobenius) of its covariance.
    (2) Tight, against the exact law of the DDPM chain (each step is affine plus Gaussian noise):
    every moment within 5 standard errors. The gap between the two is DDPM's discretisation bias:
    relative covariance error 0.037 at NFE 200 and 0.13 at NFE 50 (mean error 7e-5).
    """
    sched = DiscreteVP.ddpm_linear()
    gaussian = small_gaussian(dim=3, seed=4)
    model = gaussian.prediction(sched)
    n = 10_000
    x_T = sched.prior_sample((n, 3), generator=torch.Generator().manual_seed(7), dtype=F64)
    x, info = fd.sample(model, x_T, "ddpm", nfe=200, generator=torch.Generator().manual_seed(8), return_info=True)
    assert info.nfe == 200
    sample_mean, sample_cov = x.mean(0), torch.cov(x.T)

    def rel_frobenius(a, b):
        return float(torch.linalg.matrix_norm(a - b) / torch.linalg.matrix_norm(b))

    target = gaussian.marginal_at(sched, sched.t_min)
    se_target = target.covariance().diagonal().sqrt() / math.sqrt(n)
    assert float(((sample_mean - target.mean()) / se_target).abs().max()) < 5
    assert rel_frobenius(sample_cov, target.covariance()) < 0.1

    m, p = _ddpm_law(sched, gaussian, info.timesteps)
    se_mean = p.diagonal().sqrt() / math.sqrt(n)
    assert float(((sample_mean - m) / se_mean).abs().max()) < 5
    se_cov = (p.diagonal()[:, None] * p.diagonal()[None, :] + p**2).sqrt() / math.sqrt(n)  # Gaussian law
    assert float(((sample_cov - p) / se_cov).abs().max()) < 5
    assert float((m - target.mean()).abs().max()) < 1e-3
    cov_err = rel_frobenius(p, target.covariance())
    assert cov_err < 0.1, cov_err
    _, p50 = _ddpm_law(sched, gaussian, timesteps.make(sched, "time_uniform", 50))
    assert cov_err < rel_frobenius(p50, target.covariance()) / 2, "more steps must bring DDPM closer"


# -- exactness for a single data point ---------------------------------------------------------------------
POINT_SCHEDULES = [
    pytest.param(DiscreteVP.ddpm_linear(), id="DiscreteVP"),
    pytest.param(VPLinear(), id="VPLinear"),
    pytest.param(VPCosine(), id="VPCosine"),
    pytest.param(EDM(), id="EDM"),
    pytest.param(VE(), id="VE"),
]


@pytest.mark.parametrize("sched", POINT_SCHEDULES)
@pytest.mark.parametrize("steps", [1, 2, 7, 50])
@pytest.mark.parametrize("kind", ["time_uniform", "logsnr"])
def test_ddim_is_exact_for_a_point_mass(sched, steps, kind):
    x_point = torch.tensor([0.7, -1.3, 0.2], dtype=F64)
    model = point_mass_model(sched, x_point)
    x_T = sched.prior_sample((8, 3), generator=torch.Generator().manual_seed(10), dtype=F64)
    grid = timesteps.make(sched, kind, steps)
    got = solvers.ddim(model, x_T, grid)
    # the exact flow keeps eps = (x - alpha x_point)/sigma constant
    t0, t1 = float(grid[0]), float(grid[-1])
    eps = (x_T - float(sched.alpha(t0)) * x_point) / float(sched.sigma(t0))
    expected = float(sched.alpha(t1)) * x_point + float(sched.sigma(t1)) * eps
    scale = max(1.0, float(x_T.abs().max()))
    assert float((got - expected).abs().max()) < 1e-12 * scale
    assert model.nfe == steps


@pytest.mark.parametrize("sched", [p for p in POINT_SCHEDULES if p.id != "VE"])
@pytest.mark.parametrize("steps", [1, 5])
def test_ddim_to_t0_returns_the_point(sched, steps):
    x_point = torch.tensor([0.7, -1.3, 0.2], dtype=F64)
    model = point_mass_model(sched, x_point)
    x_T = sched.prior_sample((8, 3), generator=torch.Generator().manual_seed(11), dtype=F64)
    grid = timesteps.make(sched, "time_uniform", steps, t_end=0.0)
    got = solvers.ddim(model, x_T, grid)
    assert float((got - x_point).abs().max()) < 1e-12 * max(1.0, float(x_T.abs().max()))
    # DDPM's last step to zero noise adds no noise either
    got_ddpm = solvers.ddpm(model, x_T, grid, generator=torch.Generator().manual_seed(0))
    assert float((got_ddpm - x_point).abs().max()) < 1e-12 * max(1.0, float(x_T.abs().max()))


# -- convergence to the closed-form flow of a single Gaussian ----------------------------------------------------
@pytest.mark.parametrize("sched", [pytest.param(DiscreteVP.ddpm_linear(), id="DiscreteVP"),
                                   pytest.param(VPLinear(), id="VPLinear")])
@pytest.mark.parametrize("solver, grid", [("ddim", "logsnr"), ("euler", "time_quadratic"), ("ddim", "time_uniform")])
def test_first_order_to_closed_form_flow(sched, solver, grid):
    gaussian = small_gaussian(dim=3, seed=4)
    model = gaussian.prediction(sched)
    x_T = sched.prior_sample((256, 3), generator=torch.Generator().manual_seed(12), dtype=F64)
    exact = gaussian.ode_flow(x_T, sched, sched.t_max, sched.t_min)
    nfes = [20, 40, 80, 160]
    errors = [metrics.rmse(fd.sample(model, x_T, solver, nfe=n, grid=grid), exact) for n in nfes]
    order = metrics.empirical_order(nfes, errors)
    assert abs(order - 1.0) < 0.25, f"{solver}/{grid}: order {order:.3f}, errors {errors}"


def test_euler_is_not_exact_for_a_point_mass():
    """Sanity check of the point-mass test: Euler in t is only first order there."""
    sched = VPLinear()
    x_point = torch.tensor([0.7, -1.3, 0.2], dtype=F64)
    model = point_mass_model(sched, x_point)
    x_T = sched.prior_sample((8, 3), generator=torch.Generator().manual_seed(10), dtype=F64)
    got = solvers.euler(model, x_T, timesteps.make(sched, "time_uniform", 10))
    eps = (x_T - float(sched.alpha(1.0)) * x_point) / float(sched.sigma(1.0))
    expected = float(sched.alpha(1e-3)) * x_point + float(sched.sigma(1e-3)) * eps
    assert float((got - expected).abs().max()) > 1e-3


# -- callbacks ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("solver", ["ddim", "euler", "ddpm"])
def test_callback_sees_every_step(solver):
    sched = VPLinear()
    model = problems.ring2d().prediction(sched)
    x_T = sched.prior_sample((4, 2), generator=torch.Generator().manual_seed(13), dtype=F64)
    grid = timesteps.make(sched, "logsnr", 6)
    seen = []
    out = fd.sample(model, x_T, solver, timesteps=grid, callback=lambda i, t, x: seen.append((i, float(t), x.clone())),
                    **({"generator": torch.Generator().manual_seed(0)} if solver == "ddpm" else {}))
    assert [i for i, _, _ in seen] == list(range(6))
    assert [t for _, t, _ in seen] == pytest.approx(grid[1:].tolist(), rel=1e-15)
    assert torch.equal(seen[-1][2], out)


def test_stochastic_noise_does_not_depend_on_the_dtype():
    """noise_like draws float32 and casts, so one seed gives the same DDPM path in any dtype:
    a float32 run differs from the float64 one by rounding only."""
    sched = DiscreteVP.ddpm_linear()
    model = problems.ring2d().prediction(sched)
    x_T = sched.prior_sample((64, 2), generator=torch.Generator().manual_seed(2), dtype=F64)
    runs = {dtype: solvers.ddpm(model, x_T.to(dtype), timesteps.make(sched, "time_uniform", 20),
                                generator=torch.Generator().manual_seed(3)) for dtype in (F64, torch.float32)}
    assert float((runs[torch.float32].double() - runs[F64]).abs().max()) < 1e-4
