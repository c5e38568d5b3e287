"""Parity with k-diffusion (as a test oracle) for the DPM-Solver++ family.

k-diffusion samples in the scaled coordinates x_bar = x/alpha with noise level sigma_bar =
sigma/alpha and a denoiser D(x_bar, sigma_bar) = x0_hat. We give it our exact mixture's x0 view
through that change of variables, the same noise and the same sigma_bar grid (ending at
sigma_bar(t_min) > 0, so that no library-specific final denoising step is involved), and compare.
"""
from __future__ import annotations

import pytest
import torch

import fastdiff_edu as fd
from oracles import k_diffusion_sampling

F64 = torch.float64


@pytest.fixture(scope="module")
def setup():
    torch.set_num_threads(1)
    sched = fd.schedules.DiscreteVP.ddpm_linear()
    model = fd.problems.gmm64().prediction(sched)
    x_T = sched.prior_sample((8, 64), generator=torch.Generator().manual_seed(1), dtype=F64)
    grid = fd.timesteps.make(sched, "logsnr", 12)
    return sched, model, x_T, grid


def _k_diffusion_run(sampler_name, setup, **kwargs):
    sched, model, x_T, grid = setup
    K = k_diffusion_sampling()

    def denoiser(x_bar, sigma_bar):
        t = sched.t_of_sigma_bar(sigma_bar[0])
        return model.x0(x_bar * sched.alpha(t), t)

    sigmas = sched.sigma_bar(grid)
    x_bar = getattr(K, sampler_name)(denoiser, x_T / sched.alpha(grid[0]), sigmas, disable=True, **kwargs)
    return x_bar * sched.alpha(grid[-1])


def _relative(a, b):
    return float((a - b).norm() / b.norm())


def test_ddim_equals_k_diffusion_euler(setup):
    """DDIM = Euler in (x_bar, sigma_bar): k-diffusion's sample_euler on the wrapped VP model."""
    sched, model, x_T, grid = setup
    ours = fd.sample(model, x_T, "ddim", timesteps=grid)
    assert _relative(ours, _k_diffusion_run("sample_euler", setup)) < 1e-10


def test_dpm_solver_pp_2m_equals_k_diffusion(setup):
    sched, model, x_T, grid = setup
    ours = fd.sample(model, x_T, "dpm-solver++2m", timesteps=grid)
    assert _relative(ours, _k_diffusion_run("sample_dpmpp_2m", setup)) < 1e-10


def test_dpm_solver_pp_2s_equals_k_diffusion_2s_ancestral_at_eta_0(setup):
    sched, model, x_T, grid = setup
    ours = fd.sample(model, x_T, "dpm-solver++2s", timesteps=grid)
    theirs = _k_diffusion_run("sample_dpmpp_2s_ancestral", setup, eta=0.0)
    assert _relative(ours, theirs) < 1e-10


def test_k_diffusion_3m_is_the_published_third_order_formula(setup):
    """k-diffusion's DPM-Solver++(3M) (eta = 0) equals our 'published' variant, not the corrected
    default: it carries the halved second-difference term (measured orders in test_dpm_solver)."""
    sched, model, x_T, grid = setup
    theirs = _k_diffusion_run("sample_dpmpp_3m_sde", setup, eta=0.0)
    # k-diffusion warms up with the exact phi_2 ("taylor") second-order step; diffusers and the
    # reference code with the midpoint one (our default), see test_parity_diffusers_dpm_solver
    published = fd.sample(model, x_T, "dpm-solver++3m", timesteps=grid, third_order="published",
                          solver_type="taylor")
    corrected = fd.sample(model, x_T, "dpm-solver++3m", timesteps=grid)
    assert _relative(published, theirs) < 1e-10
    assert _relative(corrected, theirs) > 1e-4
