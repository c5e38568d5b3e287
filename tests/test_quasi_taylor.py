"""Quasi-Taylor and Ito-Taylor samplers (Tachibana et al. 2021): coefficients, the series limit
(DDIM), ideal derivatives against autograd on a point mass, measured orders on gmm64, the SDE
sampler in distribution, validation, dtype and device."""
from __future__ import annotations

import importlib
import math

import pytest
import sympy as sp
import torch

import fastdiff_edu as fd
from fastdiff_edu import metrics, problems, reference, schedules, solvers, timesteps
from fastdiff_edu.derivations import quasi_taylor as dq
from fastdiff_edu.prediction import Prediction
from tests._helpers import single_thread  # noqa: F401

qt = importlib.import_module("fastdiff_edu.solvers.quasi_taylor")
ddim_mod = importlib.import_module("fastdiff_edu.solvers.ddim")

F64 = torch.float64
POINT = torch.tensor([0.3, -0.5, 1.0], dtype=F64)


def point_mass(sched):
    """The exact eps-prediction when the data is the single point POINT."""
    def fn(x, t):
        return (x - sched.alpha(t)[:, None].to(x.dtype) * POINT.to(x)) / sched.sigma(t)[:, None].to(x.dtype)
    return Prediction(fn, sched, kind="eps", time="continuous", time_dtype=F64)


@pytest.fixture(scope="module")
def gmm_setup():
    sched = schedules.DiscreteVP.ddpm_linear()
    gmm = problems.gmm64()
    model = gmm.prediction(sched)
    x_T = sched.prior_sample((16, gmm.dim), generator=torch.Generator().manual_seed(0), dtype=F64)
    return sched, model, x_T, reference.solve(model, x_T)


# -- registry -------------------------------------------------------------------------------------
def test_registered():
    for name in ("quasi-taylor", "ito-taylor"):
        spec = solvers.get(name)
        assert spec.chapter == "quasi_taylor" and spec.default_grid == "logsnr"
    assert solvers.get("quasi-taylor").order == 1 and not solvers.get("quasi-taylor").stochastic
    assert solvers.get("ito-taylor").stochastic


@pytest.mark.parametrize("name", ["quasi-taylor", "ito-taylor"])
def test_one_nfe_per_step(name):
    sched = schedules.DiscreteVP.ddpm_linear()
    model = problems.ring2d().prediction(sched)
    x_T = sched.prior_sample((4, 2), generator=torch.Generator().manual_seed(0), dtype=F64)
    opts = {"generator": torch.Generator().manual_seed(1)} if name == "ito-taylor" else {"order": 3}
    _, info = fd.sample(model, x_T, name, nfe=12, return_info=True, **opts)
    assert info.nfe == model.nfe == info.steps == 12


# -- the series limit: DDIM -------------------------------------------------------------------------
@pytest.mark.parametrize("sched", [schedules.DiscreteVP.ddpm_linear(), schedules.VPCosine(), schedules.EDM()],
                         ids=["DiscreteVP", "VPCosine", "EDM"])
def test_high_order_coefficients_tend_to_ddim(sched):
    grid = timesteps.make(sched, "logsnr", 20)                 # h < pi/2 on every schedule here
    lam = sched.half_log_snr(grid)
    assert float((lam[1:] - lam[:-1]).max()) < math.pi / 2
    d_x, d_eps, _ = ddim_mod.ddim_coefficients(sched, grid)
    gaps = []
    for k in (1, 2, 4, 8, 40):
        c_x, c_eps = qt.quasi_taylor_coefficients(sched, grid, k)
        gaps.append(max(float((c_x - d_x).abs().max()), float((c_eps - d_eps).abs().max())))
    assert all(b < a for a, b in zip(gaps, gaps[1:])), gaps
    assert gaps[-1] < 1e-12


def test_series_diverges_beyond_pi_over_2():
    """VP: alpha(lambda) has poles at +-i pi/2, so for steps h > pi/2 high orders move away from DDIM."""
    sched = schedules.DiscreteVP.ddpm_linear()
    grid = timesteps.make(sched, "logsnr", 5)
    lam = sched.half_log_snr(grid)
    assert float((lam[1:] - lam[:-1]).min()) > math.pi / 2
    d_x, _, _ = ddim_mod.ddim_coefficients(sched, grid)
    gaps = [float((qt.quasi_taylor_coefficients(sched, grid, k)[0] - d_x).abs().max()) for k in (40, 60, 80, 100)]
    assert all(b > a for a, b in zip(gaps, gaps[1:])) and gaps[-1] > 100, gaps
    grid = timesteps.make(sched, "logsnr", 7)                  # h = 1.38 < pi/2: converges
    d_x, _, _ = ddim_mod.ddim_coefficients(sched, grid)
    gaps = [float((qt.quasi_taylor_coefficients(sched, grid, k)[0] - d_x).abs().max()) for k in (40, 60, 80, 100)]
    assert all(b < a for a, b in zip(gaps, gaps[1:])) and gaps[-1] < 1e-8, gaps


def test_high_order_sampler_approaches_ddim(gmm_setup):
    sched, model, x_T, _ = gmm_setup
    grid = timesteps.make(sched, "logsnr", 20)
    x_ddim = fd.sample(model, x_T, "ddim", timesteps=grid)
    gaps = [metrics.rmse(fd.sample(model, x_T, "quasi-taylor", timesteps=grid, order=k), x_ddim) for k in (1, 2, 3, 4)]
    assert all(b < a / 2 for a, b in zip(gaps, gaps[1:])), gaps
    c_x, c_eps = qt.quasi_taylor_coefficients(sched, grid, 40)
    x_inf = ddim_mod.run_transfer("qt40", model, x_T, grid, c_x, c_eps, torch.zeros_like(c_x))
    assert metrics.rmse(x_inf, x_ddim) < 1e-12


def test_order_one_is_euler_in_lambda():
    sched = schedules.VPLinear()
    grid = timesteps.make(sched, "logsnr", 7)
    c_x, c_eps = qt.quasi_taylor_coefficients(sched, grid, 1)
    lam, sig = sched.half_log_snr(grid), sched.sigma(grid)
    h = lam[1:] - lam[:-1]
    torch.testing.assert_close(c_x, 1 + h * sig[:-1] ** 2, rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(c_eps, -h * sig[:-1], rtol=1e-14, atol=1e-14)


# -- ideal derivatives against autograd, where the single-point approximation is exact ---------------
def _vp_model_in_lambda(eps_of):
    def f(x, lam):
        a, s = torch.sqrt(torch.sigmoid(2 * lam)), torch.sqrt(torch.sigmoid(-2 * lam))
        return eps_of(x, a, s)
    return f


def _total_derivatives(eps_fn, x, lam):
    """x', x'' and d eps/d lambda along the PF-ODE in lambda by forward-mode autograd (VP)."""
    def rhs(x, lam):
        s = torch.sigmoid(-2 * lam)
        return s * x - torch.sqrt(s) * eps_fn(x, lam)
    one = torch.ones_like(lam)
    v = rhs(x, lam)
    _, x2 = torch.func.jvp(rhs, (x, lam), (v, one))
    _, d_eps = torch.func.jvp(eps_fn, (x, lam), (v, one))
    _, x3 = torch.func.jvp(lambda y, l: torch.func.jvp(rhs, (y, l), (rhs(y, l), torch.ones_like(l)))[1],
                           (x, lam), (v, one))
    return v, x2, x3, d_eps


def test_ideal_derivatives_match_autograd_on_a_point_mass():
    eps_fn = _vp_model_in_lambda(lambda x, a, s: (x - a * POINT) / s)
    x = torch.randn(6, 3, generator=torch.Generator().manual_seed(0), dtype=F64)
    ideal = [sp.lambdify((dq.x, dq.eps, dq.lam), d, "math")
             for d in dq.ideal_derivatives(3, dq.vp_alpha, dq.vp_sigma)]
    for lam_value in (-3.0, -0.5, 0.7, 2.5):
        lam = torch.tensor(lam_value, dtype=F64)
        eps = eps_fn(x, lam)
        v, x2, x3, d_eps = _total_derivatives(eps_fn, x, lam)
        assert float(d_eps.abs().max()) < 1e-12                 # eps is a constant of the motion
        jac = torch.func.jacrev(lambda y: eps_fn(y, lam)[0])(x[:1])[:, 0]
        torch.testing.assert_close(jac, torch.eye(3, dtype=F64) / math.sqrt(torch.sigmoid(-2 * lam)))
        for got, formula in zip((v, x2, x3), ideal):
            want = torch.tensor([[formula(float(xi), float(ei), lam_value) for xi, ei in zip(xr, er)]
                                 for xr, er in zip(x, eps)], dtype=F64)
            torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_ideal_derivatives_are_wrong_on_gmm64_at_small_noise():
    """The measured claim of the chapter: on gmm64, d eps/dx = I/sigma fails near the data."""
    gmm = problems.gmm64()
    eps_fn = _vp_model_in_lambda(gmm.eps)
    x = gmm.marginal(alpha=1 / math.sqrt(1 + 0.05**2), sigma=0.05 / math.sqrt(1 + 0.05**2)).sample(
        8, generator=torch.Generator().manual_seed(0)).to(F64)
    lam = torch.tensor(math.log(1 / 0.05), dtype=F64)
    eps = eps_fn(x, lam)
    _, _, _, d_eps = _total_derivatives(eps_fn, x, lam)
    rate = (d_eps.norm(dim=1) / eps.norm(dim=1)).median()
    assert float(rate) > 0.5                                    # ideal: 0


def test_autograd_derivative_matches_finite_differences_on_gmm64(gmm_setup):
    """The total derivative used in the chapter agrees with finite differences along a reference path."""
    sched, model, x_T, _ = gmm_setup
    gmm = problems.gmm64()
    eps_fn = _vp_model_in_lambda(gmm.eps)
    lam, delta = torch.tensor(0.8, dtype=F64), 1e-4
    t_minus, t, t_plus = (sched.t_of_half_log_snr(lam + d) for d in (-delta, 0.0, delta))
    x_minus = reference.solve(model, x_T[:4], sched.t_max, t_minus)
    x = reference.solve(model, x_minus, t_minus, t)
    x_plus = reference.solve(model, x, t, t_plus)
    _, _, _, d_eps = _total_derivatives(eps_fn, x, lam)
    fd_rate = (eps_fn(x_plus, lam + delta) - eps_fn(x_minus, lam - delta)) / (2 * delta)
    assert float((fd_rate - d_eps).norm() / d_eps.norm()) < 1e-5


# -- convergence orders ------------------------------------------------------------------------------
@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_order_k_on_a_point_mass(order):
    """Where the ideal derivatives are exact, the order-k method is of order k (DDIM is exact there)."""
    sched = schedules.DiscreteVP.ddpm_linear()
    model = point_mass(sched)
    x_T = sched.prior_sample((8, 3), generator=torch.Generator().manual_seed(0), dtype=F64)
    exact = fd.sample(model, x_T, "ddim", nfe=1)
    nfes = [40, 80, 160]
    errors = [metrics.rmse(fd.sample(model, x_T, "quasi-taylor", nfe=n, order=order), exact) for n in nfes]
    assert abs(metrics.empirical_order(nfes, errors) - order) < 0.3, errors


def test_first_order_on_gmm64_whatever_the_order(gmm_setup):
    """On gmm64 the ideal derivatives are approximate: every order is a first-order method, with
    DDIM's error constant for k >= 2 (order 1 = Euler in lambda is about 10% better)."""
    sched, model, x_T, x_ref = gmm_setup
    nfes = [50, 100, 200]
    ddim_err = [metrics.rmse(fd.sample(model, x_T, "ddim", nfe=n, grid="logsnr"), x_ref) for n in nfes]
    for k in (1, 2, 3, 4):
        errors = [metrics.rmse(fd.sample(model, x_T, "quasi-taylor", nfe=n, order=k), x_ref) for n in nfes]
        assert abs(metrics.empirical_order(nfes, errors) - 1.0) < 0.15, (k, errors)
        ratio = errors[-1] / ddim_err[-1]
        assert (0.8 < ratio < 0.97) if k == 1 else (0.97 < ratio < 1.05), (k, ratio)


# -- the Ito-Taylor SDE sampler --------------------------------------------------------------------------
def test_ito_taylor_step_is_the_sympy_step():
    """One step on a point mass, with the noise re-drawn from the same seed, equals the lambdified
    Ito-Taylor step of the derivation."""
    sched = schedules.VPLinear()
    model = point_mass(sched)
    grid = torch.tensor([0.6, 0.45], dtype=F64)
    x = torch.randn(5, 3, generator=torch.Generator().manual_seed(3), dtype=F64)
    out = qt.ito_taylor(model, x, grid, generator=torch.Generator().manual_seed(7))
    gen = torch.Generator().manual_seed(7)
    xi1, xi2 = (torch.randn(x.shape, generator=gen, dtype=torch.float32).to(F64) for _ in range(2))
    lam = sched.half_log_snr(grid)
    h = float(lam[1] - lam[0])
    eps = model.eps(x, grid[0])
    mean, cw, cz = (sp.lambdify((dq.x, dq.eps, dq.lam, dq.h), e, "math") for e in dq.ito_taylor_step())
    dW = math.sqrt(h) * xi1
    dZ = 0.5 * h ** 1.5 * (xi1 + xi2 / math.sqrt(3))
    args = lambda f: torch.tensor([[f(float(a), float(b), float(lam[0]), h) for a, b in zip(r, q)]  # noqa: E731
                                   for r, q in zip(x, eps)], dtype=F64)
    want = args(mean) + args(cw) * dW + args(cz) * dZ
    torch.testing.assert_close(out, want, rtol=1e-12, atol=1e-12)


def test_ito_taylor_distribution_improves_with_nfe():
    """Sliced W2 to exact samples of ring2d at t_min falls with NFE (to the sampling floor)."""
    sched = schedules.DiscreteVP.ddpm_linear()
    gmm = problems.ring2d()
    model = gmm.prediction(sched)
    n = 4000
    exact = gmm.marginal_at(sched, sched.t_min).sample(n, generator=torch.Generator().manual_seed(5)).to(F64)
    floor = metrics.sliced_wasserstein(
        gmm.marginal_at(sched, sched.t_min).sample(n, generator=torch.Generator().manual_seed(6)).to(F64), exact)
    x_T = sched.prior_sample((n, 2), generator=torch.Generator().manual_seed(1), dtype=F64)
    sw = {nfe: metrics.sliced_wasserstein(
        fd.sample(model, x_T, "ito-taylor", nfe=nfe, generator=torch.Generator().manual_seed(2)), exact)
        for nfe in (10, 14, 40)}
    assert sw[10] > 1.5 * sw[14] and sw[14] > sw[40] and sw[40] < 1.4 * floor, (sw, floor)


def test_ito_taylor_is_unstable_for_long_steps():
    """The scheme multiplies the noise component by 1 - 2h + 2h^2: it explodes for h > 1 (NFE 5 here)."""
    sched = schedules.DiscreteVP.ddpm_linear()
    model = problems.ring2d().prediction(sched)
    x_T = sched.prior_sample((500, 2), generator=torch.Generator().manual_seed(1), dtype=F64)
    x = fd.sample(model, x_T, "ito-taylor", nfe=5, generator=torch.Generator().manual_seed(2))
    assert float(x.abs().max()) > 10


def test_ito_taylor_reaches_zero_noise_on_edm():
    sched = schedules.EDM()
    model = problems.ring2d().prediction(sched)
    grid = timesteps.make(sched, "logsnr", 20)
    grid = torch.cat([grid, torch.zeros(1, dtype=F64)])
    x_T = sched.prior_sample((64, 2), generator=torch.Generator().manual_seed(1), dtype=F64)
    x = qt.ito_taylor(model, x_T, grid, generator=torch.Generator().manual_seed(2))
    y = qt.quasi_taylor(model, x_T, grid, order=4)
    assert torch.isfinite(x).all() and torch.isfinite(y).all()
    assert float(x.norm(dim=1).mean()) < 1.5 and float(y.norm(dim=1).mean()) < 1.5


# -- validation, dtype, device -----------------------------------------------------------------------
@pytest.mark.parametrize("order", [0, 5, 2.0, "2", None])
def test_bad_order_raises_before_any_model_call(order):
    sched = schedules.VPLinear()
    model = problems.ring2d().prediction(sched)
    x_T = torch.zeros(3, 2, dtype=F64)
    with pytest.raises(ValueError, match="order must be an integer in 1..4"):
        qt.quasi_taylor(model, x_T, timesteps.make(sched, "logsnr", 5), order=order)
    assert model.nfe == 0


@pytest.mark.parametrize("fn", [qt.quasi_taylor, qt.ito_taylor])
def test_bad_inputs_raise_before_any_model_call(fn):
    sched = schedules.VPLinear()
    model = problems.ring2d().prediction(sched)
    grid = timesteps.make(sched, "logsnr", 5)
    with pytest.raises(ValueError):
        fn(model, torch.zeros(3, 2, dtype=F64), grid.flip(0))             # increasing times
    with pytest.raises(TypeError):
        fn(model, torch.zeros(3, 2, dtype=torch.int64), grid)
    with pytest.raises(TypeError):
        fn(lambda x, t: x, torch.zeros(3, 2, dtype=F64), grid)
    assert model.nfe == 0


@pytest.mark.parametrize("name", ["quasi-taylor", "ito-taylor"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_dtype_and_device_kept(name, dtype):
    sched = schedules.DiscreteVP.ddpm_linear()
    model = problems.ring2d().prediction(sched)
    x64 = sched.prior_sample((32, 2), generator=torch.Generator().manual_seed(0), dtype=F64)
    opts = (lambda: {"generator": torch.Generator().manual_seed(1)}) if name == "ito-taylor" else dict
    x = fd.sample(model, x64.to(dtype), name, nfe=20, **opts())
    ref = fd.sample(model, x64, name, nfe=20, **opts())
    assert x.dtype == dtype and x.device == x64.device and x.shape == x64.shape
    tol = {torch.float32: 1e-4, torch.float16: 0.02, torch.bfloat16: 0.1}[dtype]
    assert float((x.double() - ref).abs().max()) < tol


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", ["quasi-taylor", "ito-taylor"])
@pytest.mark.parametrize("dtype", [F64, torch.float32, torch.float16])
def test_cuda_input_stays_on_cuda(name, dtype):
    sched = schedules.DiscreteVP.ddpm_linear()
    gmm = problems.gmm64()
    model = gmm.prediction(sched)
    x64 = sched.prior_sample((16, gmm.dim), generator=torch.Generator().manual_seed(0), dtype=F64)
    gen = (lambda dev: {"generator": torch.Generator(device=dev).manual_seed(1)}) if name == "ito-taylor" else \
        (lambda dev: {"order": 3})
    x = fd.sample(model, x64.to(device="cuda", dtype=dtype), name, nfe=20, **gen("cuda"))
    assert x.device.type == "cuda" and x.dtype == dtype and bool(torch.isfinite(x).all())
    if name == "quasi-taylor":                                   # deterministic: compare with the CPU float64 run
        ref = fd.sample(model, x64, name, nfe=20, **gen("cpu"))
        tol = {F64: 1e-10, torch.float32: 1e-3, torch.float16: 0.05}[dtype]
        assert float((x.double().cpu() - ref).abs().max()) < tol
