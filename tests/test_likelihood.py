"""fastdiff_edu.likelihood: the variational bound of a K-step chain by Monte Carlo.

Gaussian data make every term's expectation known in closed form (the posterior variance of x0
is sum_i s_i sigma^2/(alpha^2 s_i + sigma^2)/d), so the estimator, its standard error, the bound
>= NLL inequality and the exact entropy are all checked against exact numbers.
"""
from __future__ import annotations

import math

import pytest
import torch

from fastdiff_edu import likelihood as L
from fastdiff_edu import problems, timesteps
from fastdiff_edu.schedules import DiscreteVP, VPCosine
from tests._helpers import counting_model, single_thread, small_gaussian  # noqa: F401
from tests.oracles import diffusers

F64 = torch.float64
SCHED = DiscreteVP.ddpm_linear()


def gen(seed):
    return torch.Generator().manual_seed(seed)


def exact_stats(gaussian, schedule, grid) -> L.DenoisingStats:
    """Statistics whose sample means are the exact expectations, for Gaussian data."""
    s = gaussian.eigvals[0]
    t = grid[:-1]
    a2, s2 = schedule.alpha(t)[:, None] ** 2, schedule.sigma(t)[:, None] ** 2
    post = (s[None] * s2 / (a2 * s[None] + s2)).mean(1)  # E||x0 - E[x0|x_t]||^2 / d
    gamma = (s2 / (a2 * s[None] + s2)).mean(1)
    norm = (gaussian.means[0].pow(2).sum() + s.sum()) / gaussian.dim
    d = gaussian.dim
    entropy = 0.5 * (torch.log(2 * math.pi * math.e * s).sum())  # nats, of the whole vector
    return L.DenoisingStats(schedule, grid, post.repeat(2, 1), gamma.repeat(2, 1), norm.repeat(2),
                            (-entropy).repeat(2), d)


def test_step_coefficients_on_the_full_chain_are_ddpms_betas():
    grid = L.grid_from_labels(SCHED, torch.arange(999, -1, -1))
    c = L.step_coefficients(SCHED, grid)
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=F64).flip(0)
    assert torch.allclose(c["beta"], betas, rtol=1e-10, atol=0)
    abar = SCHED.alphas_cumprod.flip(0)  # abar at labels 999..0
    beta_tilde = (1 - abar[1:]) / (1 - abar[:-1]) * betas[:-1]  # Ho et al. eq. 7
    assert torch.allclose(c["beta_tilde"][:-1], beta_tilde, rtol=1e-10, atol=0)
    assert c["beta_tilde"][-1] == 0 and c["lam2"][-1] == 0 and torch.allclose(c["c0"][-1], torch.ones((), dtype=F64))


@pytest.mark.parametrize("steps", [10, 50])
def test_fixed_variances_match_diffusers_ddpm_scheduler(steps):
    dif = diffusers()
    sched = dif.DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02,
                              timestep_spacing="leading")
    sched.set_timesteps(steps)
    # the same schedule in float64 (diffusers keeps float32 buffers): parity of the formulas
    sched.alphas_cumprod = SCHED.alphas_cumprod.clone()
    sched.one = torch.ones((), dtype=F64)
    labels = sched.timesteps.to(F64)
    grid = timesteps.make(SCHED, "leading", steps)
    assert torch.equal(SCHED.label(grid[:-1]).round(), labels)
    for kind, name in [("small", "fixed_small"), ("large", "fixed_large")]:
        ours = L.fixed_variances(SCHED, grid, kind)
        theirs = torch.stack([sched._get_variance(int(t), variance_type=name).to(F64) for t in sched.timesteps])
        # every step but the decoder (diffusers gives beta_tilde = 0 there, clamped to 1e-20)
        assert torch.allclose(ours[:-1], theirs[:-1], rtol=1e-10, atol=0), kind
    # the decoder of both fixed choices: beta_tilde of the step that lands on t_1
    small = L.fixed_variances(SCHED, grid, "small")
    assert L.fixed_variances(SCHED, grid, "large")[-1] == small[-1] == small[-2]


@pytest.mark.parametrize("labels", [[999, 500, 100, 0], [999, 600, 250, 40, 7, 2]])
def test_monte_carlo_bound_matches_the_closed_form_for_gaussian_data(labels):
    gauss = small_gaussian(dim=6)
    model, counter = counting_model(gauss, SCHED)
    grid = L.grid_from_labels(SCHED, labels)
    stats = L.denoising_stats(model, gauss, grid, 4000, batch_size=1000, generator=gen(0))
    assert counter.calls == (len(labels)) * 4
    truth = exact_stats(gauss, SCHED, grid)
    for choice in ["small", "large"]:
        mc, exact = L.vlb(stats, choice), L.vlb(truth, choice)
        assert abs(mc.bits_per_dim - exact.bits_per_dim) < 4 * mc.stderr
        assert torch.all((mc.terms - exact.terms).abs() <= 4 * mc.terms_stderr + 1e-12)
        assert abs(mc.nll_bits_per_dim - exact.nll_bits_per_dim) < 4 * mc.nll_stderr
        # bound >= exact NLL, measurably
        assert exact.gap > 0 and mc.gap > 4 * mc.gap_stderr
        assert math.isclose(float(mc.terms.sum()), mc.bits_per_dim, rel_tol=1e-9, abs_tol=1e-12)


def test_standard_errors_are_honest():
    """The spread of repeated estimates around the exact value matches the reported errors."""
    gauss = small_gaussian(dim=2, seed=3)
    model = gauss.prediction(SCHED)
    grid = L.grid_from_labels(SCHED, [999, 400, 60, 5])
    exact = L.vlb(exact_stats(gauss, SCHED, grid), "large").bits_per_dim
    z = []
    for seed in range(40):
        res = L.vlb(L.denoising_stats(model, gauss, grid, 200, generator=gen(seed)), "large")
        z.append((res.bits_per_dim - exact) / res.stderr)
    z = torch.tensor(z)
    assert abs(float(z.mean())) < 0.6 and 0.6 < float(z.std()) < 1.5


def test_the_optimal_variance_minimises_the_bound():
    """With the exact posterior variance, lam2 + c0^2 P is the minimiser of every step's term."""
    gauss = small_gaussian(dim=4)
    grid = L.grid_from_labels(SCHED, [999, 700, 300, 90, 20, 0])
    truth = exact_stats(gauss, SCHED, grid)
    c = L.step_coefficients(SCHED, grid)
    best = c["lam2"] + c["c0"] ** 2 * truth.x0_error[0]
    at_best = L.vlb(truth, best)
    for factor in [0.8, 0.95, 1.05, 1.25]:
        other = L.vlb(truth, best * factor)
        assert torch.all(other.terms[1:] > at_best.terms[1:])
    # and the optimal step term is (1/2) log(var/lam2) per dimension (the decoder: (1/2) log(2 pi e var))
    expected = 0.5 * torch.log(best[:-1] / c["lam2"][:-1]) / math.log(2)
    assert torch.allclose(at_best.terms[1:-1], expected, rtol=1e-10)
    assert math.isclose(float(at_best.terms[-1]), 0.5 * math.log(2 * math.pi * math.e * float(best[-1])) / math.log(2),
                        rel_tol=1e-10)


def test_the_full_chain_bound_approaches_the_exact_nll_with_the_optimal_variances():
    gauss = small_gaussian(dim=4)
    truth = {}
    for steps in [10, 100, 1000]:
        grid = timesteps.make(SCHED, "linspace", steps)
        stats = exact_stats(gauss, SCHED, grid)
        c = L.step_coefficients(SCHED, grid)
        truth[steps] = L.vlb(stats, c["lam2"] + c["c0"] ** 2 * stats.x0_error[0]).gap
    assert 0 < truth[1000] < truth[100] < truth[10]
    assert truth[1000] < 0.01


def test_reproducible_and_tensor_data():
    gauss = small_gaussian(dim=3)
    model = gauss.prediction(SCHED)
    grid = L.grid_from_labels(SCHED, [999, 300, 10])
    a = L.denoising_stats(model, gauss, grid, 50, batch_size=16, generator=gen(7))
    b = L.denoising_stats(model, gauss, grid, 50, batch_size=16, generator=gen(7))
    c = L.denoising_stats(model, gauss, grid, 50, batch_size=16, generator=gen(8))
    assert torch.equal(a.x0_error, b.x0_error) and torch.equal(a.eps_norm, b.eps_norm)
    assert not torch.equal(a.x0_error, c.x0_error)
    data = gauss.sample(30, generator=gen(1))
    t = L.denoising_stats(model, data, grid, 20, batch_size=8, generator=gen(2))
    assert t.log_prob is None and torch.allclose(t.x0_norm, data[:20].pow(2).mean(1))
    res = L.vlb(t, "small")
    assert res.gap is None and res.nll_bits_per_dim is None and math.isfinite(res.bits_per_dim)
    assert "bound" in str(res)


def test_vlb_bits_per_dim_shares_the_samples_between_choices():
    gauss = small_gaussian(dim=3)
    model = gauss.prediction(VPCosine())
    grid = torch.tensor([VPCosine().t_max, 0.5, 0.1, 0.0], dtype=F64)
    both = L.vlb_bits_per_dim(model, gauss, grid, {"small": "small", "large": "large",
                                                    "half": lambda st: 0.5 * L.fixed_variances(st.schedule, st.grid)},
                               n_samples=64, generator=gen(0))
    assert set(both) == {"small", "large", "half"}
    assert both["small"].nll_bits_per_dim == both["large"].nll_bits_per_dim
    one = L.vlb_bits_per_dim(model, gauss, grid, "large", n_samples=64, generator=gen(0))
    assert one.bits_per_dim == both["large"].bits_per_dim


@pytest.mark.parametrize("bad, match", [
    (dict(timesteps=[1.0, 0.5, 0.1]), "must end at t = 0"),
    (dict(timesteps=[0.5, 1.0, 0.0]), "strictly decreasing"),
    (dict(n_samples=1), "n_samples"),
    (dict(batch_size=0), "batch_size"),
    (dict(data=torch.zeros(3, 2, dtype=F64)), "fewer than n_samples"),
    (dict(data=object()), "sample"),
])
def test_bad_inputs_are_rejected_before_any_model_call(bad, match):
    ring = problems.ring2d()
    model, counter = counting_model(ring, SCHED)
    args = dict(timesteps=L.grid_from_labels(SCHED, [999, 0]), n_samples=8, data=ring, batch_size=4)
    args.update(bad)
    with pytest.raises((ValueError, TypeError), match=match):
        L.denoising_stats(model, args["data"], args["timesteps"], args["n_samples"], batch_size=args["batch_size"])
    assert counter.calls == 0 and model.nfe == 0


def test_bad_variances_and_eta():
    gauss = small_gaussian(dim=2)
    grid = L.grid_from_labels(SCHED, [999, 100, 0])
    stats = exact_stats(gauss, SCHED, grid)
    with pytest.raises(ValueError, match="one reverse variance per step"):
        L.vlb(stats, torch.ones(2, dtype=F64))
    with pytest.raises(ValueError, match="positive"):
        L.vlb(stats, torch.tensor([1.0, -1.0, 1.0], dtype=F64))
    with pytest.raises(ValueError, match="eta must be > 0"):
        L.vlb(stats, "small", eta=0.0)
    with pytest.raises(ValueError, match="'small'"):
        L.fixed_variances(SCHED, grid, "medium")
    with pytest.raises(ValueError, match="DiscreteVP"):
        L.grid_from_labels(VPCosine(), [3, 2])
