"""Euler ancestral sampling: k-diffusion's ``sample_euler_ancestral`` and diffusers'
``EulerAncestralDiscreteScheduler``, written as the DDIM step it is.

In the scaled coordinates ``x_bar = x/alpha``, ``sigma_bar = sigma/alpha`` (the EDM chapter), one
step from noise level sigma_i to sigma_{i+1} splits the target level into a deterministic part
sigma_down and fresh noise sigma_up, sigma_down^2 + sigma_up^2 = sigma_{i+1}^2:

    sigma_up   = min(sigma_{i+1}, eta sigma_{i+1} sqrt(1 - sigma_{i+1}^2 / sigma_i^2)),
    sigma_down = sqrt(sigma_{i+1}^2 - sigma_up^2),
    x_bar     <- x_bar + (sigma_down - sigma_i) eps_hat + s_noise sigma_up z,

an Euler step of d x_bar/d sigma_bar = eps_hat to sigma_down, then noise up to sigma_{i+1}
(Karras et al. 2022, Sec. 4 and k-diffusion's ``get_ancestral_step``). With
sigma_{i+1}^2/sigma_i^2 = e^{-2h} (h the step in the half-log-SNR) this is exactly DDIM's
generalised step (Song, Meng & Ermon 2021, eq. 12) with its eta (eq. 16), sigma_up being DDIM's
sigma_eta / alpha_{i+1}; eta = 1 is DDPM's ancestral step (Ho et al. 2020, Algorithm 2) with the
posterior variance. So the step IS ``solvers.ddim.ddim_coefficients``; what this module adds is
k-diffusion's cap (sigma_up <= sigma_{i+1}, i.e. an effective eta_i = min(eta, 1/sqrt(1 - e^{-2h}))
so that eta > 1 stays defined), its ``s_noise`` factor on the noise alone, its defaults
(eta = 1, Karras grid to sigma = 0) and its name. Book chapter: edm ("what the libraries do").
"""
from __future__ import annotations

import math

import torch

from ..prediction import Prediction
from ._common import Callback, check_inputs
from .ddim import ddim_coefficients, run_transfer
from .registry import SamplerSpec, register

Tensor = torch.Tensor

__all__ = ["euler_ancestral", "ancestral_eta"]


def ancestral_eta(schedule, grid: Tensor, eta: float) -> Tensor:
    """Per-step DDIM eta of the ancestral step with k-diffusion's cap sigma_up <= sigma_{i+1}:
    eta_i = min(eta, 1/sqrt(1 - e^{-2h_i})) (float64, one per step)."""
    lam = schedule.half_log_snr(grid)
    shrink = -torch.expm1(-2.0 * (lam[1:] - lam[:-1]))  # 1 - sigma_{i+1}^2/sigma_i^2 in sigma_bar; 1 at sigma = 0
    return torch.minimum(torch.full_like(shrink, float(eta)), 1.0 / torch.sqrt(shrink))


def euler_ancestral(model: Prediction, x_T: Tensor, timesteps, *, eta: float = 1.0, s_noise: float = 1.0,
                    generator: torch.Generator | None = None, callback: Callback | None = None,
                    progress: bool = False) -> Tensor:
    """Euler ancestral (k-diffusion ``sample_euler_ancestral``; Karras et al. 2022, Sec. 4;
    = DDIM eq. 12 with eta, Song et al. 2021): an Euler step in (x/alpha, sigma/alpha) to
    sigma_down, then fresh noise s_noise sigma_up z. One NFE per step; no noise on a last step
    to zero noise. ``eta = 1`` (default) is DDPM's ancestral step, ``eta = 0`` deterministic DDIM.
    The noise comes from ``generator``, one draw per noisy step (``solvers._common.noise_like``).
    """
    grid = check_inputs("euler-ancestral", model, x_T, timesteps)
    if not (isinstance(eta, (int, float)) and math.isfinite(eta) and eta >= 0.0):
        raise ValueError(f"euler-ancestral: eta must be a finite number >= 0 (0 = DDIM, 1 = DDPM), got {eta!r}")
    if not (isinstance(s_noise, (int, float)) and math.isfinite(s_noise) and s_noise >= 0.0):
        raise ValueError(f"euler-ancestral: s_noise must be a finite number >= 0 (1 = exact noise), got {s_noise!r}")
    schedule = model.schedule
    eta_i = ancestral_eta(schedule, grid, eta)
    c_x, c_eps, c_noise = ddim_coefficients(schedule, grid, eta_i)
    # where the cap acts sigma_down = 0 and the step lands on x0_hat (also keeps sqrt(1 - 1) from rounding to NaN)
    capped = eta_i < eta
    c_eps = torch.where(capped, -schedule.alpha(grid[1:]) * schedule.sigma(grid[:-1]) / schedule.alpha(grid[:-1]), c_eps)
    return run_transfer("euler-ancestral", model, x_T, grid, c_x, c_eps, s_noise * c_noise,
                        generator=generator, callback=callback, progress=progress)


register(SamplerSpec("euler-ancestral", euler_ancestral, order=None, default_grid="karras", chapter="edm",
                     stochastic=True, summary="Euler ancestral (k-diffusion; = DDIM step with eta, default 1)"))
