"""Gaussian mixtures (exact score, denoiser, samples, flow map) and the 2D toy sets."""
from __future__ import annotations

import math

import pytest
import torch

from fastdiff_edu import ode, problems, reference
from fastdiff_edu.problems import GaussianMixture
from fastdiff_edu.schedules import EDM, DiscreteVP, VPCosine, VPLinear
from tests._helpers import single_thread, small_gaussian, small_mixture  # noqa: F401

F64 = torch.float64


@pytest.fixture(scope="module")
def mixture():
    return small_mixture(dim=3, modes=3)


def _x(batch, dim, scale=1.0, seed=0):
    return scale * torch.randn(batch, dim, generator=torch.Generator().manual_seed(seed), dtype=F64)


# -- the exact score ---------------------------------------------------------------------------------
@pytest.mark.parametrize("alpha, sigma", [(1.0, 0.05), (0.8, 0.6), (0.1, 0.995), (1.0, 5.0)])
@pytest.mark.parametrize("which", ["small", "gmm64"])
def test_eps_is_minus_sigma_times_autograd_score(mixture, which, alpha, sigma):
    mix = mixture if which == "small" else problems.gmm64()
    x = _x(16, mix.dim, scale=max(alpha, sigma)).requires_grad_(True)
    logp = mix.log_prob(x, alpha, sigma)
    (grad,) = torch.autograd.grad(logp.sum(), x)
    x = x.detach()
    eps = mix.eps(x, alpha, sigma)
    assert float((eps + sigma * grad).abs().max()) < 1e-10
    assert float((mix.score(x, alpha, sigma) - grad).abs().max()) < 1e-10 / sigma


def test_score_accepts_per_sample_alpha_sigma(mixture):
    x = _x(4, 3)
    alpha = torch.tensor([1.0, 0.9, 0.5, 0.2], dtype=F64)
    sigma = (1 - alpha**2).sqrt() + 0.01
    rows = torch.cat([mixture.score(x[i:i + 1], float(alpha[i]), float(sigma[i])) for i in range(4)])
    assert torch.allclose(mixture.score(x, alpha, sigma), rows, rtol=0, atol=1e-12)


def test_x0_is_tweedie_posterior_mean(mixture):
    """E[x0 | x] computed independently: responsibilities times per-component Gaussian posteriors."""
    alpha, sigma = 0.7, 0.5
    x = _x(10, 3)
    eye = torch.eye(3, dtype=F64)
    log_r, post = [], []
    for k in range(mixture.num_components):
        mu, cov = mixture.means[k], mixture.covariances[k]
        c = alpha**2 * cov + sigma**2 * eye
        dist = torch.distributions.MultivariateNormal(alpha * mu, covariance_matrix=c)
        log_r.append(torch.log(mixture.weights[k]) + dist.log_prob(x))
        gain = alpha * cov @ torch.linalg.inv(c)
        post.append(mu + (x - alpha * mu) @ gain.T)
    resp = torch.softmax(torch.stack(log_r, 1), dim=1)
    expected = (resp[:, :, None] * torch.stack(post, 1)).sum(1)
    assert float((mixture.x0(x, alpha, sigma) - expected).abs().max()) < 1e-12
    # and log_prob itself against torch.distributions
    assert torch.allclose(mixture.log_prob(x, alpha, sigma), torch.logsumexp(torch.stack(log_r, 1), 1),
                          rtol=0, atol=1e-12)


def test_marginal_log_prob_equals_log_prob_at_alpha_sigma(mixture):
    for alpha, sigma in [(1.0, 0.0), (0.9, 0.3), (0.3, 0.95)]:
        x = _x(20, 3, seed=5)
        if sigma == 0.0:
            direct = mixture.log_prob(x)
        else:
            direct = mixture.log_prob(x, alpha, sigma)
        assert torch.allclose(mixture.marginal(alpha, sigma).log_prob(x), direct, rtol=0, atol=1e-11)
    sched = VPLinear()
    t = 0.37
    assert torch.allclose(mixture.marginal_at(sched, t).log_prob(x),
                          mixture.log_prob(x, sched.alpha(t), sched.sigma(t)), rtol=0, atol=1e-11)


def test_results_follow_input_dtype(mixture):
    x32 = _x(5, 3).float()
    for out in (mixture.eps(x32, 0.8, 0.6), mixture.x0(x32, 0.8, 0.6), mixture.score(x32, 0.8, 0.6)):
        assert out.dtype == torch.float32


# -- exact samples ---------------------------------------------------------------------------------------
def test_samples_match_mean_and_covariance(mixture):
    """Each entry within 5 standard errors, the standard errors estimated from the same samples
    (for the covariance: Var[(x_i - m_i)(x_j - m_j)] / n, which covers the mixture's kurtosis)."""
    n = 200_000
    x = mixture.sample(n, generator=torch.Generator().manual_seed(0))
    assert x.shape == (n, 3) and x.dtype == F64
    mean, cov = mixture.mean(), mixture.covariance()
    se_mean = x.std(0) / math.sqrt(n)
    z_mean = (x.mean(0) - mean) / se_mean
    assert float(z_mean.abs().max()) < 5, f"mean z-scores {z_mean}"
    centred = x - x.mean(0)
    products = centred[:, :, None] * centred[:, None, :]
    se_cov = products.std(0) / math.sqrt(n)
    z_cov = (products.mean(0) - cov) / se_cov
    assert float(z_cov.abs().max()) < 5, f"covariance z-scores {z_cov}"
    # the formulas themselves: mean and law of total covariance
    assert torch.allclose(mean, (mixture.weights[:, None] * mixture.means).sum(0), rtol=0, atol=1e-15)


def test_sampling_is_reproducible_and_respects_dtype(mixture):
    a = mixture.sample(100, generator=torch.Generator().manual_seed(3))
    b = mixture.sample(100, generator=torch.Generator().manual_seed(3))
    c = mixture.sample(100, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert mixture.sample(7, dtype=torch.float32).dtype == torch.float32


def test_component_weights_are_respected():
    """Well-separated 1-D components: the share of samples near each mean is its weight."""
    mix = GaussianMixture(torch.tensor([[-10.0], [0.0], [10.0]]), torch.full((3,), 0.01), torch.tensor([1.0, 2.0, 7.0]))
    x = mix.sample(50_000, generator=torch.Generator().manual_seed(0))[:, 0]
    shares = torch.stack([(x < -5).double().mean(), ((x > -5) & (x < 5)).double().mean(), (x > 5).double().mean()])
    # binomial standard error <= 0.5/sqrt(n) = 0.0022
    assert torch.allclose(shares, torch.tensor([0.1, 0.2, 0.7], dtype=F64), atol=0.011, rtol=0)


@pytest.mark.parametrize("kwargs, match", [
    (dict(means=torch.zeros(3), covariances=torch.ones(3)), "means"),
    (dict(means=torch.zeros(2, 3), covariances=torch.ones(4)), "covariances"),
    (dict(means=torch.zeros(2, 3), covariances=-torch.ones(2)), "positive definite"),
    (dict(means=torch.zeros(2, 3), covariances=torch.ones(2), weights=torch.tensor([1.0, -1.0])), "weights"),
])
def test_constructor_validates(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GaussianMixture(**kwargs)


def test_covariance_formats_agree():
    means = torch.zeros(2, 3, dtype=F64)
    per_comp = GaussianMixture(means, torch.tensor([0.5, 2.0]))
    diag = GaussianMixture(means, torch.tensor([[0.5] * 3, [2.0] * 3]))
    full = GaussianMixture(means, torch.stack([0.5 * torch.eye(3), 2.0 * torch.eye(3)]).double())
    x = _x(6, 3)
    for other in (diag, full):
        assert torch.allclose(per_comp.log_prob(x, 0.8, 0.3), other.log_prob(x, 0.8, 0.3), rtol=0, atol=1e-13)


# -- the exact flow map of one Gaussian -----------------------------------------------------------------
@pytest.fixture(scope="module")
def gaussian():
    return small_gaussian(dim=3)


FLOW_SCHEDULES = [pytest.param(VPLinear(), id="VPLinear"), pytest.param(VPCosine(), id="VPCosine"),
                  pytest.param(EDM(), id="EDM")]


@pytest.mark.parametrize("sched", FLOW_SCHEDULES)
def test_ode_flow_satisfies_the_ode(gaussian, sched):
    model = gaussian.prediction(sched)
    lo, hi = sched.t_min, sched.t_max
    s = hi
    x_s = _x(6, 3, scale=sched.prior_std)
    for frac in (0.02, 0.3, 0.7):
        t = lo + frac * (hi - lo)
        h = 1e-5 * t
        plus = gaussian.ode_flow(x_s, sched, s, t + h)
        minus = gaussian.ode_flow(x_s, sched, s, t - h)
        fd = (plus - minus) / (2 * h)
        x_t = gaussian.ode_flow(x_s, sched, s, t)
        drift = ode.drift_t(model, x_t, t)
        assert float((fd - drift).abs().max()) < 1e-6 * max(1.0, float(drift.abs().max())), f"t={t}"


def test_ode_flow_satisfies_the_ode_inside_a_discrete_segment(gaussian):
    sched = DiscreteVP.ddpm_linear()
    model = gaussian.prediction(sched)
    x_s = _x(6, 3)
    for k in (3, 250, 800):
        t = (k + 0.5) / sched.num_steps
        h = 1e-3 / sched.num_steps
        fd = (gaussian.ode_flow(x_s, sched, 1.0, t + h) - gaussian.ode_flow(x_s, sched, 1.0, t - h)) / (2 * h)
        drift = ode.drift_t(model, gaussian.ode_flow(x_s, sched, 1.0, t), t)
        assert float((fd - drift).abs().max()) < 1e-6 * max(1.0, float(drift.abs().max()))


@pytest.mark.parametrize("sched", FLOW_SCHEDULES + [pytest.param(DiscreteVP.ddpm_linear(), id="DiscreteVP")])
def test_ode_flow_composes(gaussian, sched):
    lo, hi = sched.t_min, sched.t_max
    s, t, u = hi, lo + 0.4 * (hi - lo), lo
    x = _x(8, 3, scale=sched.prior_std)
    direct = gaussian.ode_flow(x, sched, s, u)
    two_legs = gaussian.ode_flow(gaussian.ode_flow(x, sched, s, t), sched, t, u)
    assert float((direct - two_legs).abs().max()) < 1e-12 * max(1.0, float(x.abs().max()))
    back = gaussian.ode_flow(direct, sched, u, s)
    assert float((back - x).abs().max()) < 1e-10 * max(1.0, float(x.abs().max()))
    assert torch.equal(gaussian.ode_flow(x, sched, t, t), x) or \
        float((gaussian.ode_flow(x, sched, t, t) - x).abs().max()) < 1e-15 * float(x.abs().max())


@pytest.mark.parametrize("sched", [pytest.param(VPLinear(), id="VPLinear"),
                                   pytest.param(DiscreteVP.ddpm_linear(), id="DiscreteVP")])
def test_ode_flow_matches_reference_solve(gaussian, sched):
    model = gaussian.prediction(sched)
    x_T = _x(8, 3)
    ref = reference.solve(model, x_T)
    exact = gaussian.ode_flow(x_T, sched, sched.t_max, sched.t_min)
    assert float((ref - exact).abs().max()) < 1e-8


def test_ode_flow_maps_the_marginals(gaussian):
    """The flow pushes N(alpha_s mu, C_s) to N(alpha_t mu, C_t): check the linear map exactly."""
    sched = VPLinear()
    s, t = 0.8, 0.05
    d = gaussian.dim
    basis = torch.eye(d, dtype=F64)
    origin = torch.zeros(1, d, dtype=F64) + float(sched.alpha(s)) * gaussian.means[0]
    shift = gaussian.ode_flow(origin, sched, s, t)
    assert torch.allclose(shift, float(sched.alpha(t)) * gaussian.means[:1], rtol=0, atol=1e-13)
    m = gaussian.ode_flow(origin + basis, sched, s, t) - shift  # rows: images of the unit vectors
    c_s = gaussian.marginal_at(sched, s).covariance()
    c_t = gaussian.marginal_at(sched, t).covariance()
    assert torch.allclose(m.T @ c_s @ m, c_t, rtol=0, atol=1e-12)


def test_ode_flow_needs_one_component(mixture):
    with pytest.raises(ValueError, match="single Gaussian"):
        mixture.ode_flow(_x(2, 3), VPLinear(), 1.0, 0.5)


# -- ready-made problems ---------------------------------------------------------------------------------
def test_ring2d_documented_shape_and_determinism():
    a, b = problems.ring2d(), problems.ring2d()
    assert a.num_components == 8 and a.dim == 2
    assert torch.equal(a.means, b.means) and torch.equal(a.covariances, b.covariances)
    radii = a.means.norm(dim=1)
    assert torch.allclose(radii, torch.ones(8, dtype=F64), rtol=0, atol=1e-15)
    assert torch.allclose(a.eigvals, torch.full((8, 2), 0.08**2, dtype=F64), rtol=1e-12, atol=0)
    assert torch.allclose(a.weights, torch.full((8,), 1 / 8, dtype=F64), rtol=0, atol=1e-16)
    assert problems.ring2d(modes=5, radius=2.0).num_components == 5


def test_gmm64_documented_shape_and_determinism():
    a, b = problems.gmm64(), problems.gmm64()
    assert a.num_components == 10 and a.dim == 64
    for name in ("means", "covariances", "weights"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert not torch.equal(problems.gmm64(seed=1).means, a.means)
    # standard deviations log-uniform in [0.05, 0.5]: eigenvalues in [0.0025, 0.25]
    assert float(a.eigvals.min()) >= 0.05**2 * (1 - 1e-12)
    assert float(a.eigvals.max()) <= 0.5**2 * (1 + 1e-12)
    assert float(a.weights.sum()) == pytest.approx(1.0, abs=1e-15)
    assert len(set(a.weights.tolist())) == 10, "weights are uneven"
    # means ~ N(0, I/4): 640 draws, their std within 10% of 0.5
    assert float(a.means.std()) == pytest.approx(0.5, rel=0.1)
    assert problems.get("gmm64").dim == 64 and problems.get("ring2d").dim == 2
    with pytest.raises(ValueError, match="unknown problem"):
        problems.get("gmm65")


# -- 2D toy sets ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(problems.TOY_SETS))
def test_toy_sets_shape_and_reproducibility(name):
    a = problems.sample_toy(name, 501, generator=torch.Generator().manual_seed(0))
    b = problems.sample_toy(name, 501, generator=torch.Generator().manual_seed(0))
    c = problems.sample_toy(name, 501, generator=torch.Generator().manual_seed(1))
    assert a.shape == (501, 2) and a.dtype == F64
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert bool(torch.isfinite(a).all())
    assert float(a.abs().max()) < 2.0, "toy sets are scaled to about unit spread"
    assert torch.equal(problems.TOY_SETS[name](501, generator=torch.Generator().manual_seed(0)), a)


def test_toy_set_unknown_name():
    with pytest.raises(ValueError, match="unknown toy set"):
        problems.sample_toy("spiral", 10)


def test_checkerboard_lies_on_black_squares():
    x = problems.checkerboard(2000, generator=torch.Generator().manual_seed(0))
    cell = torch.floor((x + 1) / 0.5).long()
    assert bool(((cell[:, 0] + cell[:, 1]) % 2 == 0).all())


def test_component_and_guided_prediction_are_exact():
    """Guidance at scale 1 is the conditional model; scale 0 the unconditional one; in between
    the eps views combine affinely (Ho & Salimans eq. 6)."""
    from fastdiff_edu import problems, schedules

    mix = problems.classes64()
    sched = schedules.DiscreteVP.ddpm_linear()
    x = mix.marginal_at(sched, 0.3).sample(5, torch.Generator().manual_seed(0))
    t = torch.tensor(0.3, dtype=torch.float64)
    cond = mix.component(4).prediction(sched).eps(x, t)
    uncond = mix.prediction(sched).eps(x, t)
    assert torch.allclose(mix.guided_prediction(sched, 4, 1.0).eps(x, t), cond, atol=1e-12)
    assert torch.allclose(mix.guided_prediction(sched, 4, 0.0).eps(x, t), uncond, atol=1e-12)
    assert torch.allclose(mix.guided_prediction(sched, 4, 3.0).eps(x, t), uncond + 3 * (cond - uncond), atol=1e-12)
    data = mix.sample(4000, torch.Generator().manual_seed(1))
    assert data.abs().max() < 1.25 and (data.abs() > 1).double().mean() < 1e-3  # pixel-like range
    with pytest.raises(ValueError, match="class 10 does not exist"):
        mix.component(10)
