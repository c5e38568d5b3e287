"""Analytic-DPM: Gamma (Monte Carlo vs closed form), the optimal variance (sympy vs code), its
bounds, the trajectory DP (vs brute force), the samplers (identities, reproducibility, quality)."""
from __future__ import annotations

import itertools
import math
import warnings

import pytest
import sympy as sp
import torch

import fastdiff_edu as fd
from fastdiff_edu import likelihood as L
from fastdiff_edu import metrics, problems, solvers, timesteps
from fastdiff_edu.derivations import analytic_dpm as d
from fastdiff_edu.schedules import DiscreteVP, VPCosine, VPLinear
from fastdiff_edu.solvers import analytic_dpm as A
from tests._helpers import counting_model, single_thread, small_gaussian  # noqa: F401

F64 = torch.float64
SCHED = DiscreteVP.ddpm_linear()


def gen(seed):
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def gauss64():
    """One 64-D component of the standard test bed (anisotropic, std 0.05..0.5)."""
    g = problems.gmm64()
    return problems.GaussianMixture(g.means[:1], g.covariances[:1])


# -- Gamma ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["eps_norm", "denoising"])
def test_monte_carlo_gamma_matches_the_closed_form(gauss64, method):
    model = gauss64.prediction(SCHED)
    times = SCHED.t_of_label(torch.tensor([999.0, 700, 300, 60, 10, 0]))
    exact = A.gamma_gaussian(gauss64, SCHED, times)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # eps_norm is imprecise at t = 1; the check below uses its own error
        mc = A.estimate_gamma(model, gauss64, times, n_samples=1000, batch_size=500, generator=gen(0), method=method)
    assert torch.equal(mc.t, exact.t) and mc.n_samples == 1000 and mc.method == method
    z = (mc.values - exact.values) / mc.stderr
    assert torch.all(z.abs() < 4), z
    assert torch.all(mc.stderr > 0) and torch.all(exact.stderr == 0)


def test_gamma_closed_form_is_the_derivation():
    g, _ = d.gamma_gaussian()
    s = sp.Symbol("s", positive=True)
    f = sp.lambdify((d.a_t, d.s_t, s), g)
    gauss = small_gaussian(dim=5)
    times = torch.tensor([0.9, 0.3, 0.01], dtype=F64)
    table = A.gamma_gaussian(gauss, VPLinear(), times)
    a, sg = VPLinear().alpha(times), VPLinear().sigma(times)
    expected = torch.stack([
        torch.tensor([f(float(a[i]), float(sg[i]), float(e)) for e in gauss.eigvals[0]], dtype=F64).mean()
        for i in range(3)])
    assert torch.allclose(table.values, expected.to(F64), rtol=1e-12)
    with pytest.raises(ValueError, match="one component"):
        A.gamma_gaussian(problems.ring2d(), SCHED)


def test_the_two_estimators_have_opposite_strengths(gauss64):
    """eps_norm is precise where Gamma ~ 0 (low noise), denoising where Gamma ~ 1 (high noise)."""
    model = gauss64.prediction(SCHED)
    times = SCHED.t_of_label(torch.tensor([999.0, 0.0]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = A.estimate_gamma(model, gauss64, times, n_samples=200, generator=gen(1), method="eps_norm")
    b = A.estimate_gamma(model, gauss64, times, n_samples=200, generator=gen(1), method="denoising")
    assert b.stderr[0] < 1e-4 * a.stderr[0]  # high noise
    assert a.stderr[1] < 0.1 * b.stderr[1]   # low noise


def test_too_few_samples_warn_with_the_number_needed(gauss64):
    model = gauss64.prediction(SCHED)
    times = SCHED.t_of_label(torch.tensor([700.0, 300.0]))
    with pytest.warns(UserWarning, match=r"needs n_samples >= .*method='denoising'") as record:
        A.estimate_gamma(model, gauss64, times, n_samples=20, generator=gen(2))
    assert "rtol=0.1" in str(record[0].message)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        A.estimate_gamma(model, gauss64, times, n_samples=100, generator=gen(2), method="denoising")
        A.estimate_gamma(model, gauss64, times, n_samples=100, generator=gen(2), method="eps_norm", rtol=10.0)


def test_gamma_table_lookup_and_interpolation():
    t = torch.tensor([0.9, 0.5, 0.1], dtype=F64)
    table = A.GammaTable(t, torch.tensor([0.9, 0.5, 0.1], dtype=F64), torch.zeros(3, dtype=F64))
    assert torch.allclose(table.at(torch.tensor([0.5, 0.3, 0.9, 0.1], dtype=F64)),
                          torch.tensor([0.5, 0.3, 0.9, 0.1], dtype=F64), rtol=1e-14)
    with pytest.raises(ValueError, match="tabulated"):
        table.at(torch.tensor([0.95], dtype=F64))
    with pytest.raises(ValueError, match="timesteps"):
        A.estimate_gamma(problems.ring2d().prediction(VPLinear()), problems.ring2d())
    with pytest.raises(ValueError, match="method"):
        A.estimate_gamma(problems.ring2d().prediction(SCHED), problems.ring2d(), [0.5], method="magic")


# -- the optimal variance: derivation vs code -----------------------------------------------------
def test_symbolic_results():
    assert d.paper_form_difference() == 0
    assert d.optimal_kl_difference() == 0
    assert sp.simplify(d.kl_second_derivative() - 1 / (2 * sp.Symbol("S", positive=True) ** 2)) == 0
    post, _ = d.posterior_variance_of_x0()
    assert sp.simplify(post - d.s_t**2 * (1 - d.Gamma) / d.a_t**2) == 0
    _, (c_x, c0) = d.forward_posterior_mean()
    assert sp.simplify(c0 - d.c0) == 0
    lower, upper = d.variance_bounds()
    assert lower == d.lam2 and sp.simplify(upper - (d.lam2 + d.c0**2 * d.s_t**2 / d.a_t**2)) == 0


@pytest.mark.parametrize("schedule", [SCHED, VPCosine()], ids=["DiscreteVP", "VPCosine"])
@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_analytic_variances_are_the_derived_formula(schedule, eta):
    grid = timesteps.make(schedule, "time_uniform", 7)
    grid = torch.cat([grid, torch.zeros(1, dtype=F64)])
    gamma = torch.linspace(0.95, 0.02, 8, dtype=F64)
    ours = A.analytic_variances(schedule, grid, gamma, eta=eta)
    f = sp.lambdify((d.a_t, d.s_t, d.a_s, d.s_s, d.lam2, d.Gamma), d.optimal_variance())
    c = L.step_coefficients(schedule, grid, eta)
    for i in range(7):
        args = [float(v[i]) for v in (c["alpha_t"], c["sigma_t"], c["alpha_s"], c["sigma_s"], c["lam2"])]
        assert math.isclose(float(ours[i]), f(*args, float(gamma[i])), rel_tol=1e-9)
    # the decoder step (to t = 0): lam2 = 0, c0 = 1, the posterior variance of x0 itself
    assert torch.isclose(ours[-1], c["post_var_max"][-1] * (1 - gamma[-1]), rtol=1e-12)
    # the paper's alpha_bar form on the DiscreteVP
    if schedule is SCHED and eta == 1.0:
        ab_t, ab_s, paper = d.paper_form()
        g = sp.lambdify((ab_t, ab_s, d.lam2, d.Gamma), paper)
        for i in range(6):
            val = g(float(c["alpha_t"][i] ** 2), float(c["alpha_s"][i] ** 2), float(c["lam2"][i]), float(gamma[i]))
            assert math.isclose(float(ours[i]), val, rel_tol=1e-9)


def test_theorem_2_clipping():
    grid = L.grid_from_labels(SCHED, [999, 500, 100, 0])
    c = L.step_coefficients(SCHED, grid)
    too_big = A.analytic_variances(SCHED, grid, torch.full((4,), 1.7, dtype=F64))
    assert torch.allclose(too_big[:-1], c["lam2"][:-1])  # Gamma > 1 -> lower bound lam2
    negative = A.analytic_variances(SCHED, grid, torch.full((4,), -3.0, dtype=F64))
    assert torch.allclose(negative, c["lam2"] + c["c0"] ** 2 * c["post_var_max"])  # Gamma < 0 -> upper bound
    bounded = A.analytic_variances(SCHED, grid, torch.full((4,), -3.0, dtype=F64), x0_variance_bound=0.25)
    assert torch.allclose(bounded, c["lam2"] + c["c0"] ** 2 * c["post_var_max"].clamp(max=0.25))
    with pytest.raises(ValueError, match="positive"):
        A.analytic_variances(SCHED, grid, torch.zeros(4, dtype=F64), x0_variance_bound=0.0)
    with pytest.raises(ValueError, match="one value per step"):
        A.analytic_variances(SCHED, grid, torch.zeros(3, dtype=F64))


def test_dp_cost_of_the_official_code_differs_by_a_telescoping_term():
    (ab_r, ab_s), ours, code, tele = d.dp_costs()
    f = sp.lambdify((ab_r, ab_s, d.Gamma), ours - code - tele)
    for r, s, g in [(0.3, 0.6, 0.4), (0.01, 0.99, 0.9), (0.5, 0.51, 0.01)]:
        assert abs(f(r, s, g)) < 1e-12


# -- the trajectory ------------------------------------------------------------------------------
def test_dp_trajectory_is_the_brute_force_optimum():
    sched = DiscreteVP.ddpm_linear(num_steps=24)
    gauss = small_gaussian(dim=3)
    gamma = A.gamma_gaussian(gauss, sched)
    def stats_for(grid):
        return L.vlb(_exact_stats(gauss, sched, grid), A.analytic_variances(sched, grid, gamma))

    for steps in [1, 2, 3]:
        traj = A.optimal_trajectory(sched, gamma, steps)
        assert traj.labels[0] == 23 and traj.labels.numel() == steps
        assert torch.all(traj.labels[1:] < traj.labels[:-1])
        best = min(float(stats_for(L.grid_from_labels(sched, [23.0, *sorted(rest, reverse=True)])).terms[1:].sum())
                   for rest in itertools.combinations(range(23), steps - 1))
        got = stats_for(traj.grid)
        assert math.isclose(float(got.terms[1:].sum()), best, rel_tol=1e-9, abs_tol=1e-12)
        assert math.isclose(traj.bits_per_dim, best, rel_tol=1e-9, abs_tol=1e-12)
    many = A.optimal_trajectory(sched, gamma, [4, 1, 2])
    for steps in [1, 2, 4]:
        one = A.optimal_trajectory(sched, gamma, steps)
        assert torch.equal(many[steps].labels, one.labels) and many[steps].bits_per_dim == one.bits_per_dim
    full = A.optimal_trajectory(sched, gamma, 24)
    assert torch.equal(full.labels, torch.arange(23, -1, -1, dtype=F64))
    with pytest.raises(ValueError, match="eta > 0"):
        A.optimal_trajectory(sched, gamma, 3, eta=0.0)
    with pytest.raises(ValueError, match="steps"):
        A.optimal_trajectory(sched, gamma, 25)


def test_dp_prediction_matches_the_monte_carlo_bound(gauss64):
    model = gauss64.prediction(SCHED)
    gamma = A.gamma_gaussian(gauss64, SCHED)
    traj = A.optimal_trajectory(SCHED, gamma, 8)
    stats = L.denoising_stats(model, gauss64, traj.grid, 256, generator=gen(3))
    res = L.vlb(stats, A.analytic_variances(SCHED, traj.grid, gamma))
    assert abs(float(res.terms[1:].sum()) - traj.bits_per_dim) < 4 * res.stderr
    linear = L.vlb(L.denoising_stats(model, gauss64, timesteps.make(SCHED, "linspace", 8), 256, generator=gen(3)),
                   A.analytic_variances(SCHED, timesteps.make(SCHED, "linspace", 8), gamma))
    assert res.bits_per_dim < linear.bits_per_dim - 4 * linear.stderr


def _exact_stats(gauss, schedule, grid):
    s = gauss.eigvals[0]
    t = grid[:-1]
    a2, s2 = schedule.alpha(t)[:, None] ** 2, schedule.sigma(t)[:, None] ** 2
    post = (s[None] * s2 / (a2 * s[None] + s2)).mean(1)
    norm = (gauss.means[0].pow(2).sum() + s.sum()) / gauss.dim
    return L.DenoisingStats(schedule, grid, post.repeat(2, 1), post.repeat(2, 1), norm.repeat(2), None, gauss.dim)


# -- the samplers ---------------------------------------------------------------------------------
def test_registered():
    for name in ["analytic-ddpm", "analytic-ddim"]:
        spec = solvers.get(name)
        assert spec.stochastic and spec.chapter == "analytic_dpm" and spec.default_grid in timesteps.KINDS
        assert fd.REGISTRY[name] is spec


@pytest.mark.parametrize("name", ["analytic-ddpm", "analytic-ddim"])
def test_reproducible_bit_for_bit(gauss64, name):
    model = gauss64.prediction(SCHED)
    gamma = A.gamma_gaussian(gauss64, SCHED)
    x_T = SCHED.prior_sample((16, 64), generator=gen(0), dtype=F64)
    runs = [fd.sample(model, x_T, name, nfe=10, gamma=gamma, generator=gen(seed)) for seed in (5, 5, 6)]
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])
    x32 = fd.sample(model, x_T.float(), name, nfe=10, gamma=gamma, generator=gen(5))
    assert x32.dtype == torch.float32 and torch.isfinite(x32).all()


def test_gamma_one_recovers_ddpm_and_ddim():
    """Gamma = 1 (x_t says all about eps): sigma*^2 = lam2, i.e. DDPM's beta_tilde and DDIM's 0."""
    ring = problems.ring2d()
    model = ring.prediction(SCHED)
    x_T = SCHED.prior_sample((32, 2), generator=gen(0), dtype=F64)
    grid = timesteps.make(SCHED, "linspace", 12)
    one = lambda t: torch.ones_like(t)  # noqa: E731
    a = fd.sample(model, x_T, "analytic-ddpm", timesteps=grid, gamma=one, generator=gen(1))
    b = fd.sample(model, x_T, "ddpm", timesteps=grid, generator=gen(1))
    assert torch.allclose(a, b, rtol=0, atol=1e-12)
    c = fd.sample(model, x_T, "analytic-ddim", timesteps=grid, gamma=one, generator=gen(1))
    e = fd.sample(model, x_T, "ddim", timesteps=grid)
    assert torch.allclose(c, e, rtol=0, atol=1e-12)


def test_optimal_variance_gives_better_samples_at_few_steps():
    """At K = 10 the analytic variance beats both fixed DDPM variances (sliced W2 to exact samples)."""
    gmm = problems.gmm64()
    model = gmm.prediction(SCHED)
    grid = timesteps.make(SCHED, "linspace", 10)
    gamma = A.estimate_gamma(model, gmm, grid, n_samples=128, generator=gen(9), method="denoising")
    x_T = SCHED.prior_sample((512, 64), generator=gen(0), dtype=F64)
    exact = gmm.sample(512, generator=gen(1))
    sw = {}
    for label, name, kw in [("small", "ddpm", {}), ("large", "ddpm", {"variance": "forward"}),
                            ("analytic", "analytic-ddpm", {"gamma": gamma}), ("ddim", "ddim", {}),
                            ("analytic-ddim", "analytic-ddim", {"gamma": gamma})]:
        x = fd.sample(model, x_T, name, timesteps=grid, generator=gen(2), **kw)
        sw[label] = metrics.sliced_wasserstein(x, exact)
    floor = metrics.sliced_wasserstein(gmm.sample(512, generator=gen(3)), exact)
    assert sw["analytic"] < 0.8 * min(sw["small"], sw["large"]), sw
    assert sw["analytic-ddim"] < 0.8 * sw["ddim"], sw


@pytest.mark.parametrize("name", ["analytic-ddpm", "analytic-ddim"])
def test_bad_inputs_fail_before_any_model_call(name):
    ring = problems.ring2d()
    model, counter = counting_model(ring, SCHED)
    x_T = torch.zeros(4, 2, dtype=F64)
    with pytest.raises(ValueError, match="needs gamma"):
        fd.sample(model, x_T, name, nfe=5)
    with pytest.raises(ValueError, match="strictly decreasing"):
        fd.sample(model, x_T, name, timesteps=[0.5, 0.9, 0.0], gamma=lambda t: t * 0)
    with pytest.raises(ValueError, match="tabulated"):
        table = A.GammaTable(torch.tensor([0.5, 0.4], dtype=F64), torch.zeros(2, dtype=F64), torch.zeros(2, dtype=F64))
        fd.sample(model, x_T, name, nfe=5, gamma=table)
    assert counter.calls == 0 and model.nfe == 0
