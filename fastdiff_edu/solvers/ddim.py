"""DDIM (Song, Meng & Ermon 2021) and DDPM ancestral sampling (Ho et al. 2020): the
first-order "transfer" step every later chapter builds on.

From time t to the next, lower time s, DDIM's generalised step (eq. 12) is

    x_s = alpha_s x0_hat + sqrt(sigma_s^2 - sigma_eta^2) eps_hat + sigma_eta z,

    sigma_eta = eta * sigma_s * sqrt(1 - exp(-2h)),      h = lambda_s - lambda_t > 0,

where eq. 16's ``sqrt((1 - abar_s)/(1 - abar_t)) sqrt(1 - abar_t/abar_s)`` is written with the
half-log-SNR, which makes it valid for any schedule (VP, VE, EDM). ``eta = 0`` is the
deterministic DDIM, which equals DPM-Solver-1 and Euler in (x/alpha, sigma/alpha); ``eta = 1``
is DDPM's ancestral step with the posterior variance beta_tilde. Book chapter: recap.
"""
from __future__ import annotations

import torch

from ..prediction import Prediction
from ..schedules import Schedule
from ._common import Callback, StepLoop, check_inputs, noise_like, on_device
from .registry import SamplerSpec, register

Tensor = torch.Tensor

__all__ = ["ddim", "ddpm", "ddim_coefficients", "run_transfer"]


def ddim_coefficients(schedule: Schedule, grid: Tensor, eta: float = 0.0,
                      noise: str = "posterior") -> tuple[Tensor, Tensor, Tensor]:
    """Per step i (grid[i] -> grid[i+1]): ``x_next = c_x x + c_eps eps_hat + c_noise z``, float64.

    Substituting x0_hat = (x - sigma_t eps_hat)/alpha_t into eq. 12 gives
    c_x = alpha_s/alpha_t and c_eps = sqrt(sigma_s^2 - sigma_eta^2) - alpha_s sigma_t/alpha_t
    = sigma_s (sqrt(1 - eta^2 (1 - e^{-2h})) - e^h), evaluated with expm1 so that it stays
    accurate for small h. ``noise="forward"`` uses DDPM's larger variance (beta_t, i.e.
    sigma_t^2 (1 - e^{-2h})) for the noise while keeping the posterior mean.
    A step that ends at zero noise (t = 0) returns x0_hat and adds no noise.
    """
    alpha, sigma, lam = schedule.alpha(grid), schedule.sigma(grid), schedule.half_log_snr(grid)
    alpha_t, sigma_t, alpha_s, sigma_s = alpha[:-1], sigma[:-1], alpha[1:], sigma[1:]
    h = lam[1:] - lam[:-1]
    shrink = -torch.expm1(-2.0 * h)  # 1 - e^{-2h}: the share of sigma_s^2 that is fresh noise at eta = 1
    c_x = alpha_s / alpha_t
    c_eps = sigma_s * (torch.sqrt(1.0 - eta**2 * shrink) - 1.0 - torch.expm1(h))
    to_data = sigma_s == 0
    c_eps = torch.where(to_data, -alpha_s * sigma_t / alpha_t, c_eps)
    if noise == "posterior":
        c_noise = eta * sigma_s * torch.sqrt(shrink)
    elif noise == "forward":
        c_noise = eta * sigma_t * torch.sqrt(shrink)
    else:
        raise ValueError(f"noise must be 'posterior' or 'forward', got {noise!r}")
    c_noise = torch.where(to_data, torch.zeros_like(c_noise), c_noise)
    return c_x, c_eps, c_noise


def run_transfer(name: str, model: Prediction, x_T: Tensor, grid: Tensor, c_x: Tensor, c_eps: Tensor,
                 c_noise: Tensor, generator: torch.Generator | None = None, callback: Callback | None = None,
                 progress: bool = False) -> Tensor:
    """The loop of every sampler built on the transfer step (DDIM, DDPM, FastDPM, Analytic-DPM):

        x_{i+1} = c_x[i] x_i + c_eps[i] eps_hat(x_i, t_i) + c_noise[i] z_i,

    one evaluation per step. The float64 coefficient tables are cast once; which steps draw
    noise (c_noise > 0) is decided before the loop, so nothing inside it talks to the host.
    """
    noisy = (c_noise > 0).tolist()
    c_x, c_eps, c_noise = (on_device(c, x_T) for c in (c_x, c_eps, c_noise))
    loop = StepLoop(name, grid, x_T, callback, progress)
    x = x_T
    for i in loop:
        eps = model.eps(x, loop.times[i])
        x = torch.addcmul(c_x[i] * x, c_eps[i], eps)
        if noisy[i]:
            x = torch.addcmul(x, c_noise[i], noise_like(x, generator))
        loop.done(i, x)
    loop.check()
    return x


def _transfer(name: str, model: Prediction, x_T: Tensor, timesteps, eta: float, noise: str,
              generator: torch.Generator | None, callback: Callback | None, progress: bool) -> Tensor:
    grid = check_inputs(name, model, x_T, timesteps)
    if not eta >= 0.0:
        raise ValueError(f"{name}: eta must be >= 0, got {eta}")
    return run_transfer(name, model, x_T, grid, *ddim_coefficients(model.schedule, grid, eta, noise),
                        generator=generator, callback=callback, progress=progress)


def ddim(model: Prediction, x_T: Tensor, timesteps, *, eta: float = 0.0, generator: torch.Generator | None = None,
         callback: Callback | None = None, progress: bool = False) -> Tensor:
    """DDIM sampling (Song, Meng & Ermon 2021, eq. 12; eta as in eq. 16). One NFE per step.

    ``eta = 0`` (default) is deterministic: the first-order solver of the probability-flow ODE
    that is exact when the data is a single point. ``eta > 0`` draws fresh noise from
    ``generator``.
    """
    return _transfer("ddim", model, x_T, timesteps, eta, "posterior", generator, callback, progress)


def ddpm(model: Prediction, x_T: Tensor, timesteps, *, variance: str = "posterior",
         generator: torch.Generator | None = None, callback: Callback | None = None,
         progress: bool = False) -> Tensor:
    """DDPM ancestral sampling (Ho et al. 2020, Algorithm 2) on any grid. One NFE per step.

    The mean is the posterior mean of q(x_s | x_t, x0 = x0_hat) (eq. 7); ``variance`` picks
    the noise: ``"posterior"`` (beta_tilde, = DDIM with eta = 1) or ``"forward"`` (beta_t, the
    "large" choice of Sec. 3.2). No noise is added on a final step to zero noise.
    """
    return _transfer("ddpm", model, x_T, timesteps, 1.0, variance, generator, callback, progress)


register(SamplerSpec("ddim", ddim, order=1, default_grid="time_uniform", chapter="recap",
                     summary="DDIM (eta=0 deterministic; eta>0 stochastic)"))
register(SamplerSpec("ddpm", ddpm, order=None, default_grid="time_uniform", chapter="recap", stochastic=True,
                     summary="DDPM ancestral sampling"))
