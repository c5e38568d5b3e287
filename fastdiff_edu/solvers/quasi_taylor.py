"""Quasi-Taylor samplers (Tachibana et al. 2021, arXiv 2112.13339): Taylor schemes whose higher
derivatives come from the "single point approximation" instead of extra model evaluations.

The time variable here is the half-log-SNR ``lambda`` (our choice; the paper's full text was not
available to us, only its abstract). In ``lambda`` the probability-flow ODE is

    dx/dlambda = s x - sigma eps_hat(x, lambda),      s = dlog alpha/dlambda  (= sigma^2 for VP, 0 for VE/EDM).

*Ideal derivatives.* If the data were the single point ``x0_hat = (x - sigma eps_hat)/alpha`` the
model would be ``eps(x', lambda) = (x' - alpha x0_hat)/sigma``: ``d eps/dx = I/sigma``, and along the
solution both ``x0_hat`` and ``eps_hat`` stay constant. Every derivative of the trajectory is then
closed-form in ``(x, eps_hat, lambda)``:

    d^n x/dlambda^n = alpha^(n) x0_hat + sigma^(n) eps_hat,

and the order-k quasi-Taylor step is the Taylor polynomial of degree k of that trajectory,
``x_s = sum_{n<=k} h^n/n! (alpha^(n) x0_hat + sigma^(n) eps_hat)`` with ``h = lambda_s - lambda_t``,
one model evaluation per step. Summing all orders gives ``alpha_s x0_hat + sigma_s eps_hat``: DDIM's
step (for VP schedules only while ``h < pi/2``, the radius of convergence of ``alpha(lambda)``).

:func:`ito_taylor` is the second-order Ito-Taylor scheme of the paper's first version for the
reverse SDE, with the same ideal derivatives. Book chapter: quasi_taylor.
"""
from __future__ import annotations

import math

import torch

from ..prediction import Prediction
from ..schedules import Schedule
from ._common import Callback, StepLoop, check_inputs, noise_like, on_device
from .ddim import ddim_coefficients, run_transfer
from .registry import SamplerSpec, register

Tensor = torch.Tensor

__all__ = ["quasi_taylor", "ito_taylor", "quasi_taylor_coefficients", "ideal_taylor_coefficients",
           "log_alpha_slope"]

MAX_ORDER = 4


def log_alpha_slope(schedule: Schedule, grid: Tensor) -> Tensor:
    """``s = d log alpha / d lambda`` on the grid (float64): ``sigma^2`` for VP schedules
    (alpha^2 = sigmoid(2 lambda)), 0 where alpha = 1 (VE, EDM). Other schedules are refused."""
    if schedule.variance_preserving:
        return schedule.sigma(grid) ** 2
    if torch.all(schedule.log_alpha(grid) == 0):
        return torch.zeros_like(grid)
    raise ValueError(f"quasi-Taylor needs a VP schedule (alpha^2 + sigma^2 = 1) or alpha = 1 (VE, EDM); "
                     f"got {schedule!r}")


def ideal_taylor_coefficients(s: Tensor, order: int) -> tuple[list[Tensor], list[Tensor]]:
    """Taylor coefficients ``a_n = alpha^(n)/(n! alpha)`` and ``b_n = sigma^(n)/(n! sigma)`` in lambda,
    n = 0..order, from ``s = d log alpha/d lambda`` alone.

    Since lambda = log alpha - log sigma: ``alpha' = s alpha``, ``sigma' = -(1 - s) sigma``, and for VP
    ``s = sigmoid(-2 lambda)`` obeys ``s' = -2 s (1 - s)`` (s = 0 solves it too: VE/EDM). Taylor-mode
    arithmetic on these three ODEs (Cauchy products of coefficient sequences) gives every order
    without cancellation.
    """
    a, b, c = [torch.ones_like(s)], [torch.ones_like(s)], [s]  # c_n: Taylor coefficients of s
    for n in range(order):
        conv = lambda u, v: sum(u[j] * v[n - j] for j in range(n + 1))  # noqa: E731  (u v)_n
        a.append(conv(a, c) / (n + 1))
        b.append(-(b[n] - conv(b, c)) / (n + 1))
        c.append(-2.0 * (c[n] - conv(c, c)) / (n + 1))
    return a, b


def quasi_taylor_coefficients(schedule: Schedule, grid: Tensor, order: int) -> tuple[Tensor, Tensor]:
    """Per step (grid[i] -> grid[i+1]): ``x_next = c_x x + c_eps eps_hat``, float64, for the order-k
    quasi-Taylor step (any k >= 1; the sampler allows 1..4).

    With ``x0_hat = (x - sigma_t eps_hat)/alpha_t``, the Taylor polynomial
    ``sum_n h^n (a_n alpha_t x0_hat + b_n sigma_t eps_hat)`` is
    ``c_x = sum_n a_n h^n`` and ``c_eps = sigma_t sum_n (b_n - a_n) h^n``; as k -> infinity (and for
    VP only if h < pi/2) these tend to :func:`~fastdiff_edu.solvers.ddim.ddim_coefficients`:
    ``alpha_s/alpha_t`` and ``sigma_s - sigma_t alpha_s/alpha_t``.
    A step that ends at zero noise (lambda = infinity) has no Taylor series: it is DDIM's, x0_hat.
    """
    if not (isinstance(order, int) and order >= 1):
        raise ValueError(f"order must be an integer >= 1, got {order!r}")
    s = log_alpha_slope(schedule, grid)[:-1]
    sigma, lam = schedule.sigma(grid), schedule.half_log_snr(grid)
    to_data = sigma[1:] == 0
    h = torch.where(to_data, torch.zeros_like(s), lam[1:] - lam[:-1])
    a, b = ideal_taylor_coefficients(s, order)
    c_x = sum(a_n * h**n for n, a_n in enumerate(a))
    c_eps = sigma[:-1] * sum((b_n - a_n) * h**n for n, (a_n, b_n) in enumerate(zip(a, b)))
    ddim_x, ddim_eps, _ = ddim_coefficients(schedule, grid)
    return torch.where(to_data, ddim_x, c_x), torch.where(to_data, ddim_eps, c_eps)


def quasi_taylor(model: Prediction, x_T: Tensor, timesteps, *, order: int = 2, callback: Callback | None = None,
                 progress: bool = False) -> Tensor:
    """Quasi-Taylor sampler of order ``order`` (1..4) for the probability-flow ODE in lambda
    (Tachibana et al. 2021, the ODE sampler of v2). One NFE per step.

    Each step evaluates eps_hat once and moves along the Taylor polynomial of the single-point
    trajectory ``alpha(lambda) x0_hat + sigma(lambda) eps_hat`` ("ideal derivative substitution").
    Order 1 is Euler in lambda; the series limit is DDIM. Since the ideal derivatives are exact only
    for a point mass, the method is first order on real data whatever ``order`` is.
    """
    grid = check_inputs("quasi-taylor", model, x_T, timesteps)
    if not (isinstance(order, int) and 1 <= order <= MAX_ORDER):
        raise ValueError(f"quasi-taylor: order must be an integer in 1..{MAX_ORDER}, got {order!r} "
                         "(the series limit, order -> infinity, is DDIM: use 'ddim')")
    c_x, c_eps = quasi_taylor_coefficients(model.schedule, grid, order)
    return run_transfer("quasi-taylor", model, x_T, grid, c_x, c_eps, torch.zeros_like(c_x),
                        callback=callback, progress=progress)


def ito_taylor(model: Prediction, x_T: Tensor, timesteps, *, generator: torch.Generator | None = None,
               callback: Callback | None = None, progress: bool = False) -> Tensor:
    """Second-order Ito-Taylor sampler of the reverse SDE with ideal derivatives (Tachibana et al.,
    arXiv 2112.13339 v1; the scheme is the order-2.0 weak Taylor scheme of Kloeden & Platen,
    Sec. 14.2, for additive noise). One NFE per step, two normal draws per step from ``generator``.

    In lambda the reverse SDE is ``dx = a dlambda + b dW`` with ``a = s x - 2 sigma eps_hat`` and
    ``b = sqrt(2) sigma``. The ideal derivatives (d eps/dx = I/sigma, x0_hat fixed) give
    ``a_x = s - 2``, ``da/dlambda = s' x + 2 s (x - sigma eps_hat)`` and ``a_xx = 0``; with
    ``L0 = d/dlambda + a d/dx + b^2/2 d^2/dx^2`` and ``L1 = b d/dx`` the step is

        x + a h + b dW + (L1 a) dZ + (L0 a) h^2/2 + (L0 b)(h dW - dZ),

    ``dW ~ N(0, h)`` and ``dZ = int int dW ds`` (Var h^3/3, Cov(dW, dZ) = h^2/2). A final step to zero
    noise returns x0_hat. Under the single-point model its mean and variance match DDPM's
    posterior step to O(h^2).
    """
    grid = check_inputs("ito-taylor", model, x_T, timesteps)
    sched = model.schedule
    s = log_alpha_slope(sched, grid)[:-1]
    alpha, sigma, lam = sched.alpha(grid), sched.sigma(grid), sched.half_log_snr(grid)
    to_data = (sigma[1:] == 0).tolist()
    h = torch.where(sigma[1:] == 0, torch.zeros_like(s), lam[1:] - lam[:-1])
    ds = -2.0 * s * (1.0 - s)                                      # s' = ds/dlambda
    b = math.sqrt(2.0) * sigma[:-1]                                # diffusion coefficient
    db = -(1.0 - s) * b                                            # L0 b = db/dlambda
    sqrt_h = torch.sqrt(h)
    s, ds, alpha, sig, b, db, h, sqrt_h = (on_device(v, x_T) for v in (s, ds, alpha[:-1], sigma[:-1], b, db, h, sqrt_h))
    loop = StepLoop("ito-taylor", grid, x_T, callback, progress)
    x = x_T
    for i in loop:
        eps = model.eps(x, loop.times[i])
        if to_data[i]:                                             # lambda = infinity: denoise
            x = (x - sig[i] * eps) / alpha[i]
            loop.done(i, x)
            continue
        a = s[i] * x - 2.0 * sig[i] * eps                          # drift
        a_x = s[i] - 2.0                                           # ideal: d eps/dx = I/sigma
        a_lam = ds[i] * x + 2.0 * s[i] * (x - sig[i] * eps)        # d a/d lambda with x0_hat fixed
        L0a, L1a = a_lam + a_x * a, b[i] * a_x
        xi1, xi2 = noise_like(x, generator), noise_like(x, generator)
        dW = sqrt_h[i] * xi1
        dZ = 0.5 * h[i] * sqrt_h[i] * (xi1 + xi2 / math.sqrt(3.0))
        x = x + a * h[i] + b[i] * dW + L1a * dZ + 0.5 * L0a * h[i] ** 2 + db[i] * (h[i] * dW - dZ)
        loop.done(i, x)
    loop.check()
    return x


register(SamplerSpec("quasi-taylor", quasi_taylor, order=1, default_grid="logsnr", chapter="quasi_taylor",
                     defaults={"order": 2},
                     summary="Quasi-Taylor (Tachibana et al.): Taylor in lambda with ideal derivatives, 1 NFE/step"))
register(SamplerSpec("ito-taylor", ito_taylor, order=None, default_grid="logsnr", chapter="quasi_taylor",
                     stochastic=True,
                     summary="Ito-Taylor order-2 SDE sampler with ideal derivatives (Tachibana et al. v1)"))
