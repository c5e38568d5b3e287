"""Parity with k-diffusion (used as an oracle only): ``sample_heun`` / ``sample_euler`` with and
without churn, and ``get_sigmas_karras``, to 1e-6 relative in float64 on the same sigmas and the
same denoiser (our exact mixture's x0 view under the EDM schedule, alpha = 1).

The noise. k-diffusion draws ``torch.randn_like(x)`` from the *global* RNG at every step (also where
gamma = 0); our samplers draw from ``generator`` through ``solvers._common.noise_like`` (float32 noise
cast to x's dtype, so that one seed gives the same noise in every precision), one draw per step when
S_churn > 0. So seeding the global RNG alike does not give both the same numbers in float64.
Instead we hand k-diffusion *our* stream: the noises our sampler will draw are produced first from a
generator with the same seed, and ``torch.randn_like`` is patched (for the duration of the call
only) to return them in order.
"""
from __future__ import annotations

import math

import pytest
import torch

from fastdiff_edu import problems, timesteps
from fastdiff_edu.preconditioning import denoiser
from fastdiff_edu.schedules import EDM, DiscreteVP
from fastdiff_edu.solvers import edm
from fastdiff_edu.solvers._common import noise_like
from tests._helpers import single_thread  # noqa: F401
from tests.oracles import k_diffusion_sampling

F64 = torch.float64
TOL = 1e-6


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.fixture(scope="module")
def K():
    return k_diffusion_sampling()


@pytest.fixture(scope="module")
def bed():
    sched = EDM()
    gmm = problems.gmm64()
    model = gmm.prediction(sched, "x0")
    x_T = sched.prior_sample((16, gmm.dim), generator=torch.Generator().manual_seed(0), dtype=F64)
    return model, denoiser(model), x_T


def with_our_noise(monkeypatch, x_like: torch.Tensor, seed: int, count: int):
    """Patch torch.randn_like to return the ``count`` noises a sampler seeded with ``seed`` draws."""
    gen = torch.Generator().manual_seed(seed)
    stream = iter([noise_like(x_like, gen) for _ in range(count)])
    monkeypatch.setattr(torch, "randn_like", lambda x, *args, **kwargs: next(stream))


@pytest.mark.parametrize("n", [1, 5, 18, 40])
@pytest.mark.parametrize("rho", [3.0, 7.0])
def test_karras_sigmas(K, n, rho):
    ours = timesteps.make(EDM(), "karras", n, rho=rho, append_zero=True)
    before = torch.get_default_dtype()
    torch.set_default_dtype(F64)  # k-diffusion's ramp is torch.linspace in the default dtype
    try:
        theirs = K.get_sigmas_karras(n, 0.002, 80.0, rho=rho)
    finally:
        torch.set_default_dtype(before)
    assert ours.shape == theirs.shape and float(ours[-1]) == float(theirs[-1]) == 0.0
    assert float(((ours[:-1] - theirs[:-1]) / theirs[:-1]).abs().max()) < TOL
    # in its default float32 the grid agrees to float32 precision
    theirs32 = K.get_sigmas_karras(n, 0.002, 80.0, rho=rho).to(F64)
    assert float(((ours[:-1] - theirs32[:-1]) / theirs32[:-1]).abs().max()) < 2e-5


@pytest.mark.parametrize("zero_end", [True, False])
@pytest.mark.parametrize("steps", [1, 6, 18])
def test_heun_and_euler_without_churn(K, bed, steps, zero_end):
    model, D, x_T = bed
    sigmas = timesteps.make(EDM(), "karras", steps, append_zero=zero_end)
    ref = K.sample_heun(D, x_T, sigmas, disable=True)
    assert rel(edm.heun_edm(model, x_T, sigmas), ref) < TOL
    assert rel(edm.edm_stochastic(model, x_T, sigmas, S_churn=0.0), ref) < TOL
    assert rel(edm.euler_edm(model, x_T, sigmas), K.sample_euler(D, x_T, sigmas, disable=True)) < TOL


@pytest.mark.parametrize("churn, tmin, tmax, noise", [(40.0, 0.05, 50.0, 1.003), (2.0, 0.0, math.inf, 1.0),
                                                      (80.0, 0.5, 5.0, 1.0)])
def test_heun_with_churn(K, bed, monkeypatch, churn, tmin, tmax, noise):
    model, D, x_T = bed
    sigmas = timesteps.make(EDM(), "karras", 12, append_zero=True)
    ours = edm.edm_stochastic(model, x_T, sigmas, S_churn=churn, S_tmin=tmin, S_tmax=tmax, S_noise=noise,
                              generator=torch.Generator().manual_seed(11))
    with_our_noise(monkeypatch, x_T, 11, count=12)
    theirs = K.sample_heun(D, x_T, sigmas, disable=True, s_churn=churn, s_tmin=tmin, s_tmax=tmax, s_noise=noise)
    assert rel(ours, theirs) < TOL
    assert rel(ours, edm.heun_edm(model, x_T, sigmas)) > 1e-3  # the churn did something


@pytest.mark.parametrize("churn, tmin, tmax, noise", [(10.0, 0.0, math.inf, 1.0), (40.0, 0.05, 50.0, 1.003)])
def test_euler_with_churn(K, bed, monkeypatch, churn, tmin, tmax, noise):
    model, D, x_T = bed
    sigmas = timesteps.make(EDM(), "karras", 15, append_zero=True)
    ours = edm.euler_edm(model, x_T, sigmas, S_churn=churn, S_tmin=tmin, S_tmax=tmax, S_noise=noise,
                         generator=torch.Generator().manual_seed(4))
    with_our_noise(monkeypatch, x_T, 4, count=15)
    theirs = K.sample_euler(D, x_T, sigmas, disable=True, s_churn=churn, s_tmin=tmin, s_tmax=tmax, s_noise=noise)
    assert rel(ours, theirs) < TOL


def test_global_seed_parity_in_float32(K, bed):
    """In float32 our noise is drawn exactly like randn_like(x): seeding the global RNG alike suffices."""
    model, D, x_T = bed
    x32 = x_T.float()
    sigmas = timesteps.make(EDM(), "karras", 10, append_zero=True)
    torch.manual_seed(3)
    ours = edm.edm_stochastic(model, x32, sigmas, S_churn=20.0, S_tmin=0.0, S_tmax=math.inf)
    torch.manual_seed(3)
    theirs = K.sample_heun(lambda x, s: D(x.double(), s.double()).float(), x32, sigmas.float(), disable=True,
                           s_churn=20.0)
    assert ours.dtype == torch.float32 and rel(ours.double(), theirs.double()) < 1e-4


def test_vp_model_through_the_scaling(K):
    """On the DDPM schedule heun-edm equals k-diffusion's sample_heun on the same model seen as a
    denoiser of x/alpha at sigma/alpha (what k-diffusion's DiscreteEpsDDPMDenoiser provides)."""
    sched = DiscreteVP.ddpm_linear()
    gmm = problems.gmm64()
    model = gmm.prediction(sched)
    grid = timesteps.make(sched, "karras", 10, append_zero=True)
    x_T = sched.prior_sample((8, gmm.dim), generator=torch.Generator().manual_seed(2), dtype=F64)
    ours = edm.heun_edm(model, x_T, grid)
    theirs = K.sample_heun(denoiser(model), x_T / sched.alpha(grid[0]), sched.sigma_bar(grid), disable=True)
    assert rel(ours, theirs) < TOL  # alpha(0) = 1: the last point is in both coordinates the same
