"""FastDPM (Kong & Ping 2021): continuous steps, STEP/VAR chains, DDIM-rev/DDPM-rev with kappa.

Identities (bit for bit where the arithmetic is the same), the derivations against the code, the
official update formula, parity with diffusers' DDIM and DDPM schedulers on the same exact model
and labels, reproducibility with a generator, and validation before any model call.
"""
from __future__ import annotations

import importlib
import math
from unittest import mock

import pytest
import sympy as sp
import torch

import fastdiff_edu as fd
from fastdiff_edu import metrics, problems, solvers, timesteps
from fastdiff_edu.derivations import fastdpm as d
from fastdiff_edu.schedules import DiscreteVP, VPLinear
from fastdiff_edu.solvers import fastdpm as F
from fastdiff_edu.solvers._common import noise_like
from tests._helpers import counting_model, point_mass_model, single_thread  # noqa: F401
from tests import oracles
from tests.oracles import diffusers

F64 = torch.float64
SCHED = DiscreteVP.ddpm_linear()


@pytest.fixture(scope="module")
def ring():
    return problems.ring2d()


def _x_T(n=64, dim=2, seed=0, dtype=F64):
    return SCHED.prior_sample((n, dim), generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _gen(seed=7):
    return torch.Generator().manual_seed(seed)


# -- continuous steps ---------------------------------------------------------------------------------
def test_paper_noise_level_is_the_ddpm_table_at_integer_labels():
    labels = torch.arange(-1, 1000, dtype=F64)
    table = torch.cat([torch.zeros(1, dtype=F64), torch.log(SCHED.alphas_cumprod)])
    exact = F.paper_log_alphas_cumprod(labels, stirling=False)
    stirling = F.paper_log_alphas_cumprod(labels)
    # measured: lgamma 6.6e-11, Stirling 1.8e-10 (float64 cancellation of two log-Gammas near 5e5)
    assert float((exact - table).abs().max()) < 1e-9
    assert float((stirling - table).abs().max()) < 1e-9


def test_stirling_mapping_agrees_with_numerical_inversion():
    """The paper's map (Gamma function, Stirling, bisection) and DiscreteVP's exact inverse of its
    piecewise log-linear interpolation: equal at integer labels, within 0.021 label units between
    them (measured 0.0208, near label 0 where log abar is most curved relative to its slope)."""
    labels = torch.linspace(0.0, 999.0, 9991, dtype=F64)
    abar = SCHED.alpha(SCHED.t_of_label(labels)) ** 2
    ours = F.continuous_step(SCHED, abar)
    paper = F.paper_continuous_step(abar)
    assert float((ours - labels).abs().max()) < 1e-8  # the exact inverse of the schedule
    gap = (paper - ours).abs()
    assert float(gap.max()) < 0.025
    integer = labels == torch.round(labels)
    assert float(gap[integer].max()) < 1e-5  # measured 8.5e-7 (bisection and Stirling at the float64 level)
    # and the noise levels of the two interpolations differ by at most 2.6e-6 in log abar
    between = F.paper_log_alphas_cumprod(labels, stirling=False) - torch.log(abar)
    assert float(between.abs().max()) < 3e-6


def test_continuous_step_works_for_any_discrete_schedule():
    sched = DiscreteVP.scaled_linear()  # betas linear in sqrt: the paper's closed form does not apply
    labels = torch.tensor([0.0, 0.3, 17.25, 500.5, 998.9, 999.0], dtype=F64)
    abar = sched.alpha(sched.t_of_label(labels)) ** 2
    assert float((F.continuous_step(sched, abar) - labels).abs().max()) < 1e-8


# -- the derivations against the code -------------------------------------------------------------------
def test_gamma_formula_derivations():
    assert d.gamma_recurrence_residual() == 0
    assert all(d.gamma_product_residual(n) == 0 for n in (-1, 0, 4))
    f = sp.lambdify(d.tau, d.log_alphas_cumprod_gamma().subs({d.beta_0: 1e-4, d.dbeta: (0.02 - 1e-4) / 999}),
                    modules="mpmath")
    for label in [-0.5, 0.25, 123.4, 998.5]:
        assert abs(float(f(label)) - float(F.paper_log_alphas_cumprod(label, stirling=False))) < 1e-9


def test_stirling_error_series():
    series, y = d.stirling_error_series()
    assert sp.simplify(series - (sp.Rational(1, 288) / y**2 - sp.Rational(77, 25920) / y**3)) == 0
    for value in [20.0, 200.0]:
        actual = float(torch.lgamma(torch.tensor(value + 1, dtype=F64)) - F.stirling_log_gamma(value + 1))
        assert abs(actual - float(series.subs(y, value))) < 2.0 / value**4
        assert abs(float(d.stirling_log_gamma(sp.Float(value + 1))) - float(F.stirling_log_gamma(value + 1))) < 1e-12


def test_reverse_process_identities():
    assert d.ddpm_rev_residuals() == (0, 0)
    assert d.variance_deficit("ddim") == 0
    assert sp.simplify(d.variance_deficit("ddpm") - (1 - d.kappa**2) * d.eta_tilde) == 0


@pytest.mark.parametrize("kind", ["ddim", "ddpm"])
@pytest.mark.parametrize("kappa", [0.0, 0.3, 1.0])
def test_coefficients_are_the_derived_steps(kind, kappa):
    """c_x, c_eps, c_noise of the package = the derivatives of the sympy step, on a VAR chain."""
    grid = F.fastdpm_grid(SCHED, 10, "var")
    c_x, c_eps, c_noise = F.fastdpm_coefficients(SCHED, grid, kind, kappa)
    step = {"ddim": d.ddim_rev_step, "ddpm": d.ddpm_rev_step}[kind]()
    funcs = [sp.lambdify((d.gbar_t, d.eta, d.kappa), sp.diff(step, v)) for v in (d.x, d.eps_hat, d.z)]
    abar = SCHED.alpha(grid) ** 2
    for i in range(grid.numel() - 2):  # the last step, to the data, is checked below
        g_t, g_s = float(abar[i]), float(abar[i + 1])
        expected = [f(g_t, 1.0 - g_t / g_s, kappa) for f in funcs]
        for got, want in zip((c_x[i], c_eps[i], c_noise[i]), expected):
            assert abs(float(got) - want) <= 1e-10 * max(1.0, abs(want))
    # the last step returns x0_hat = (x - sqrt(1 - abar) eps)/sqrt(abar) and adds no noise
    g = float(abar[-2])
    assert abs(float(c_x[-1]) - 1 / math.sqrt(g)) < 1e-10 and float(c_noise[-1]) == 0.0
    assert abs(float(c_eps[-1]) + math.sqrt((1 - g) / g)) < 1e-10


def test_official_update_formula():
    """The update of the official generate.py, written from gbar values: x *= sqrt(a'/a);
    c = sqrt(1 - a' - sigma^2) - sqrt(1 - a) sqrt(a'/a); sigma = kappa sqrt((1-a')/(1-a) (1 - a/a'))."""
    _, gbar = F.var_noise_levels(SCHED, 20, "quadratic")
    grid = F.fastdpm_grid(SCHED, 20, "var", "quadratic")
    kappa = 0.6
    c_x, c_eps, c_noise = F.fastdpm_coefficients(SCHED, grid, "ddim", kappa)
    a = torch.flip(gbar, [0])
    a_t, a_s = a[:-1], a[1:]
    sigma = kappa * torch.sqrt((1 - a_s) / (1 - a_t) * (1 - a_t / a_s))
    official = (torch.sqrt(a_s / a_t), torch.sqrt(1 - a_s - sigma**2) - torch.sqrt(1 - a_t) * torch.sqrt(a_s / a_t),
                sigma)
    for ours, theirs in zip((c_x[:-1], c_eps[:-1], c_noise[:-1]), official):
        assert float(((ours - theirs) / theirs).abs().max()) < 1e-9


# -- the chains -----------------------------------------------------------------------------------------
def test_step_labels_are_the_official_ones():
    assert F.step_labels(SCHED, 10).tolist() == [111.0 * i for i in range(10)]
    lin = F.step_labels(SCHED, 20)
    assert lin.tolist() == [math.floor(i * 999 / 19) for i in range(20)]
    quad = F.step_labels(SCHED, 10, "quadratic")
    assert quad.tolist() == [math.floor(v**2) for v in torch.linspace(0, math.sqrt(800), 10, dtype=F64).tolist()]
    assert quad[-1] == 800.0
    # for large S the quadratic labels repeat near 0; repeats are dropped
    assert F.step_labels(SCHED, 50, "quadratic").numel() == 49
    assert F.step_labels(SCHED, 100, "quadratic").numel() == 96


@pytest.mark.parametrize("spacing", ["linear", "quadratic"])
@pytest.mark.parametrize("steps", [10, 100])
def test_var_chain_starts_at_the_prior_and_hits_its_noise_levels(spacing, steps):
    eta, gbar = F.var_noise_levels(SCHED, steps, spacing)
    assert abs(float(gbar[-1] / SCHED.alphas_cumprod[-1]) - 1.0) < 1e-10
    assert abs(float(eta[0]) - 1e-4) < 1e-15
    if spacing == "linear":
        assert float(torch.diff(eta, 2).abs().max()) < 1e-12
    else:
        root = torch.sqrt(eta / eta[0])
        assert float(torch.diff(root, 2).abs().max()) < 1e-9
    grid = F.fastdpm_grid(SCHED, steps, "var", spacing)
    assert grid.numel() == steps + 1 and grid[-1] == 0.0 and abs(float(grid[0]) - 1.0) < 1e-12
    assert float(((SCHED.alpha(grid[:-1]) ** 2 - torch.flip(gbar, [0])) / torch.flip(gbar, [0])).abs().max()) < 1e-9


# -- identities between samplers -----------------------------------------------------------------------
@pytest.mark.parametrize("kappa", [0.0, 0.5, 1.0])
def test_step_with_ddim_rev_is_ddim_with_eta_kappa(ring, kappa):
    """STEP + DDIM-rev with kappa = DDIM with eta = kappa on the same labels, bit for bit."""
    model = ring.prediction(SCHED)
    grid = F.fastdpm_grid(SCHED, 10, "step")
    ours = F.fastdpm(model, _x_T(), 10, kappa=kappa, generator=_gen())
    theirs = solvers.ddim(model, _x_T(), grid, eta=kappa, generator=_gen())
    assert torch.equal(ours, theirs)


@pytest.mark.parametrize("approx", ["step", "var"])
def test_ddpm_rev_and_ddim_rev_coincide_at_kappa_1_only(ring, approx):
    model = ring.prediction(SCHED)
    grid = F.fastdpm_grid(SCHED, 20, approx)
    both = [F.fastdpm(model, _x_T(), grid, kind=kind, kappa=1.0, generator=_gen()) for kind in ("ddim", "ddpm")]
    assert torch.equal(both[0], both[1])
    # and both are DDPM's ancestral sampler on that grid
    assert torch.equal(both[0], solvers.ddpm(model, _x_T(), grid, generator=_gen()))
    half = [F.fastdpm(model, _x_T(), grid, kind=kind, kappa=0.5, generator=_gen()) for kind in ("ddim", "ddpm")]
    assert float((half[0] - half[1]).abs().max()) > 1e-2


@pytest.mark.parametrize("kind, kappa", [("ddim", 0.0), ("ddim", 0.5), ("ddpm", 0.0), ("ddpm", 0.5)])
def test_one_step_variance_on_a_point_mass(kind, kappa):
    """The variance x_s has after one step from exact x_t when the data is the point 0:
    1 - gbar_s (DDIM-rev), 1 - gbar_s - (1 - kappa^2) eta_tilde (DDPM-rev)."""
    model = point_mass_model(SCHED, torch.zeros(1, 2, dtype=F64))
    t, s = float(SCHED.t_of_label(600)), float(SCHED.t_of_label(200))
    x_t = float(SCHED.sigma(t)) * torch.randn(20000, 2, generator=_gen(1), dtype=F64)
    x_s = F.fastdpm(model, x_t, [t, s], kind=kind, kappa=kappa, generator=_gen(2))
    g_t, g_s = float(SCHED.alpha(t)) ** 2, float(SCHED.alpha(s)) ** 2
    expected = float(d.one_step_variance(kind).subs({d.gbar_t: g_t, d.eta: 1 - g_t / g_s, d.kappa: kappa}))
    var = x_s.pow(2).mean()
    stderr = float(x_s.pow(2).std() / math.sqrt(x_s.numel()))
    assert abs(float(var) - expected) < 4 * stderr + 1e-12
    if kind == "ddim":
        assert abs(expected - (1 - g_s)) < 1e-12
    else:
        assert expected < (1 - g_s) - 0.1


def test_ddpm_rev_below_kappa_1_is_too_narrow(ring):
    """DDPM-rev with kappa < 1 under-disperses: at S = 50 its samples of the ring have about 70%
    of the data's variance (measured 0.70), DDIM-rev's have the right one (measured 0.99)."""
    model = ring.prediction(SCHED)
    x_T = _x_T(2000)
    exact = float(ring.covariance().trace())
    ratio = {kind: float(F.fastdpm(model, x_T, 50, kind=kind, kappa=0.0).var(dim=0).sum()) / exact
             for kind in ("ddim", "ddpm")}
    assert abs(ratio["ddim"] - 1) < 0.05
    assert ratio["ddpm"] < 0.8


# -- parity with diffusers -----------------------------------------------------------------------------
def _float64_scheduler(scheduler):
    scheduler.alphas_cumprod = SCHED.alphas_cumprod.clone()
    scheduler.betas = 1 - SCHED.alphas_cumprod / torch.cat([torch.ones(1, dtype=F64), SCHED.alphas_cumprod[:-1]])
    scheduler.alphas = 1 - scheduler.betas
    scheduler.final_alpha_cumprod = torch.tensor(1.0, dtype=F64)
    scheduler.one = torch.tensor(1.0, dtype=F64)
    return scheduler


@pytest.mark.parametrize("kappa", [0.0, 0.5, 1.0])
def test_parity_with_diffusers_ddim_scheduler(ring, kappa):
    """STEP + DDIM-rev on diffusers' 'leading' labels = DDIMScheduler(eta=kappa), same noise (the
    scheduler's float32 alphas_cumprod replaced by the schedule's float64 ones; measured 1.6e-15)."""
    lib = diffusers()
    steps = 10
    sch = _float64_scheduler(lib.DDIMScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02,
                                               beta_schedule="linear", clip_sample=False, set_alpha_to_one=True,
                                               timestep_spacing="leading", steps_offset=0))
    sch.set_timesteps(steps)
    model = ring.prediction(SCHED)
    grid = timesteps.make(SCHED, "leading", steps)
    assert torch.equal(SCHED.label(grid[:-1]), sch.timesteps.to(F64))
    ours = F.fastdpm(model, _x_T(), grid, kappa=kappa, generator=_gen())
    x, noise = _x_T(), _gen()
    for t in sch.timesteps:
        eps = model.eps(x, SCHED.t_of_label(float(t)))
        z = noise_like(x, noise)  # the package's noise, in the sampler's order
        x = sch.step(eps, int(t), x, eta=kappa, variance_noise=z).prev_sample
    assert float((ours - x).abs().max() / x.abs().max()) < 1e-12


def test_parity_with_diffusers_ddpm_scheduler(ring):
    """DDPM-rev (kappa = 1) on FastDPM's STEP labels = DDPMScheduler('fixed_small') on custom
    timesteps, float64 alphas_cumprod, the package's noise."""
    lib = diffusers()
    sch = _float64_scheduler(lib.DDPMScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02,
                                               beta_schedule="linear", clip_sample=False,
                                               variance_type="fixed_small"))
    labels = F.step_labels(SCHED, 20)
    sch.set_timesteps(timesteps=[int(v) for v in torch.flip(labels, [0]).tolist()])
    model = ring.prediction(SCHED)
    ours = F.fastdpm(model, _x_T(), 20, kind="ddpm", kappa=1.0, generator=_gen())
    x, noise = _x_T(), _gen()
    module = importlib.import_module(type(sch).__module__)
    # DDPMScheduler.step draws its own noise (randn_tensor); hand it the package's noise instead
    same_noise = lambda shape, generator=None, **kw: noise_like(torch.empty(shape, dtype=F64), generator)  # noqa: E731
    with mock.patch.object(module, "randn_tensor", same_noise):
        for t in sch.timesteps:
            eps = model.eps(x, SCHED.t_of_label(float(t)))
            x = sch.step(eps, int(t), x, generator=noise).prev_sample
    assert float((ours - x).abs().max() / x.abs().max()) < 1e-12


@pytest.mark.parametrize("kappa", [0.5, 1.0])
def test_parity_with_k_diffusion_euler_ancestral(ring, kappa):
    """k-diffusion's sample_euler_ancestral(eta) in the scaled coordinates (x/alpha, sigma/alpha)
    is DDIM-rev with kappa = eta: run both on a VAR chain (fractional labels), same noise."""
    kd = oracles.k_diffusion_sampling()
    model = ring.prediction(SCHED)
    grid = F.fastdpm_grid(SCHED, 20, "var")
    ours = F.fastdpm(model, _x_T(), grid, kappa=kappa, generator=_gen())
    times = iter(grid[:-1])

    def denoiser(x_bar, sigma_bar):  # called once per step, in order: use the grid's exact times
        t = next(times)
        return model.x0(SCHED.alpha(t) * x_bar, t)

    noise = _gen()
    x0 = _x_T()
    sigmas = SCHED.sigma_bar(grid)
    assert float(sigmas[-1]) == 0.0
    theirs = kd.sample_euler_ancestral(denoiser, x0 / SCHED.alpha(grid[0]), sigmas, disable=True, eta=kappa,
                                       noise_sampler=lambda sigma, sigma_next: noise_like(x0, noise))
    assert float((ours - theirs).abs().max() / theirs.abs().max()) < 1e-12


# -- reliability -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("approx, kind", [("step", "ddim"), ("var", "ddpm")])
def test_reproducible_bit_for_bit_with_a_generator(ring, approx, kind):
    model = ring.prediction(SCHED)
    runs = [F.fastdpm(model, _x_T(), 20, approx=approx, kind=kind, kappa=0.5, generator=_gen(seed))
            for seed in (11, 11, 12)]
    assert torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[0], runs[2])
    via_registry = fd.sample(model, _x_T(), "fastdpm", timesteps=20, approx=approx, kind=kind, kappa=0.5,
                             generator=_gen(11))
    assert torch.equal(runs[0], via_registry)


def test_registry_entry_and_nfe(ring):
    spec = solvers.get("fastdpm")
    assert spec.stochastic and spec.chapter == "fastdpm" and spec.default_grid in timesteps.KINDS
    model, counter = counting_model(ring, SCHED)
    x, info = fd.sample(model, _x_T(8), "fastdpm", nfe=12, generator=_gen(), return_info=True)
    assert info.nfe == counter.calls == 12 and torch.equal(info.timesteps, timesteps.make(SCHED, "linspace", 12))
    model.reset_nfe()
    F.fastdpm(model, _x_T(8), 50, spacing="quadratic", kappa=0.0)
    assert model.nfe == 49  # a repeated label is dropped, not paid for


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_low_precision_keeps_dtype(ring, dtype):
    model = ring.prediction(SCHED)
    x_T = _x_T(16)
    x = F.fastdpm(model, x_T.to(dtype), 10, approx="var", kappa=0.5, generator=_gen())
    ref = F.fastdpm(model, x_T, 10, approx="var", kappa=0.5, generator=_gen())
    assert x.dtype == dtype and bool(torch.isfinite(x).all())
    # the package draws its noise in float32 whatever the dtype: the runs differ by precision alone
    assert float((x.double() - ref).abs().max()) < (1e-4 if dtype == torch.float32 else 0.1)


BAD = [
    (dict(timesteps=10, kappa=1.5), "kappa must lie in"),
    (dict(timesteps=10, kappa=-0.1), "kappa must lie in"),
    (dict(timesteps=10, kind="ddpm-rev"), "kind must be one of"),
    (dict(timesteps=10, approx="STEP"), "approx must be one of"),
    (dict(timesteps=10, spacing="cosine"), "spacing must be one of"),
    (dict(timesteps=1), "S >= 2"),
    (dict(timesteps=1001), "more than the 1000 steps"),
    (dict(timesteps=[1.0, 0.5, 0.0], approx="var"), "give timesteps=S"),
    (dict(timesteps=[1.0, 0.5, 0.0], spacing="quadratic"), "give timesteps=S"),
    (dict(timesteps=[1.0, 0.5, 0.7]), "strictly decreasing"),
]


@pytest.mark.parametrize("kwargs, fragment", BAD)
def test_bad_options_raise_before_any_model_call(ring, kwargs, fragment):
    model, counter = counting_model(ring, SCHED)
    kwargs = dict(kwargs)
    with pytest.raises(ValueError, match=fragment) as info:
        F.fastdpm(model, _x_T(4), kwargs.pop("timesteps"), **kwargs)
    assert str(info.value).startswith("fastdpm:")
    assert counter.calls == 0 and model.nfe == 0


def test_a_length_needs_a_discrete_schedule(ring):
    model, counter = counting_model(ring, VPLinear())
    with pytest.raises(ValueError, match="DiscreteVP"):
        F.fastdpm(model, _x_T(4), 10)
    # an explicit grid works on any VP schedule
    x = F.fastdpm(model, _x_T(4), timesteps.make(VPLinear(), "logsnr", 5), kappa=0.0)
    assert counter.calls == 5 and bool(torch.isfinite(x).all())
    with pytest.raises(TypeError, match="Prediction"):
        F.fastdpm(model.fn, _x_T(4), 10)


def test_sample_quality_on_ring(ring):
    """A sanity check of the whole chain: at S = 20, STEP and VAR with DDIM-rev land within
    0.1 (sliced W2) of exact samples; the finite-sample floor at n = 1000 is about 0.05."""
    model = ring.prediction(SCHED)
    exact = ring.sample(1000, generator=_gen(5))
    for approx in ("step", "var"):
        x = F.fastdpm(model, _x_T(1000), 20, approx=approx, kappa=1.0, generator=_gen())
        assert metrics.sliced_wasserstein(x, exact) < 0.1
