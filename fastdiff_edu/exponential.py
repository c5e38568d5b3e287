"""The exponential integrator: what DEIS, DPM-Solver and DPM-Solver++ have in common.

With the half-log-SNR lambda as time, the probability-flow ODE is semi-linear, and variation of
constants integrates its linear part exactly from lambda_s to lambda_t = lambda_s + h
(Lu et al. 2022, eq. 3.4 and 2022b, eq. 9):

    x_t = (alpha_t/alpha_s) x_s - sigma_t * sum_n h^(n+1) phi_{n+1}(h)  eps^(n)(lambda_s)   (eps)
    x_t = (sigma_t/sigma_s) x_s + alpha_t * sum_n h^(n+1) phi_{n+1}(-h) x0^(n)(lambda_s)   (data)

where ``f^(n)`` is the n-th derivative of the prediction along the trajectory in lambda and
``phi_k(z) = (e^z - sum_{j<k} z^j/j!) / z^k`` are the phi-functions of exponential integrators
(Hochbruck & Ostermann 2010). A solver of order k keeps k terms and estimates the derivatives:
from extra evaluations inside the step (singlestep) or from earlier steps (multistep).

Everything here is float64 and runs before a sampling loop.
"""
from __future__ import annotations

import math

import torch

from .schedules import Schedule, as_float64

Tensor = torch.Tensor

__all__ = ["phi", "expansion_weights", "PREDICTIONS"]

PREDICTIONS = ("eps", "x0")


def phi(k: int, z) -> Tensor:
    """phi_k(z) for k >= 1, accurate for every z (float64).

    The closed form cancels catastrophically for small |z| (e^z - 1 - z - ... loses all digits),
    so below |z| < 0.5 we sum the series phi_k(z) = sum_j z^j / (j + k)!, which converges there
    to machine precision in 20 terms.
    """
    if k < 1:
        raise ValueError("phi_k is defined here for k >= 1")
    z = as_float64(z)
    series = torch.zeros_like(z)
    term = torch.full_like(z, 1.0 / math.factorial(k))
    for j in range(20):
        series = series + term
        term = term * z / (j + k + 1)
    tail = torch.exp(z)
    for j in range(k):
        tail = tail - z**j / math.factorial(j)
    closed = tail / torch.where(z == 0, torch.ones_like(z), z) ** k
    return torch.where(z.abs() < 0.5, series, closed)


def expansion_weights(schedule: Schedule, t_from, t_to, prediction: str, order: int,
                      stochastic: bool = False) -> tuple[Tensor, Tensor]:
    """Coefficients of one exponential-integrator step from ``t_from`` to ``t_to``.

    Returns ``(c_x, w)`` with ``x_to = c_x x_from + sum_n w[..., n] * h^n f^(n)`` for the
    prediction ``f`` ("eps" or "x0"), ``n < order``: the derivatives enter scaled by h^n, the
    natural unit of a finite difference. Inputs may be tensors of times (one step each).

    ``stochastic=True`` (data prediction only) gives the mean of the SDE-DPM-Solver++ step
    (Lu et al. 2022b, Appendix; the reverse SDE in lambda has twice the linear rate), whose
    kernel e^{-2(h-u)} turns phi_k(-h) into 2 phi_k(-2h) and c_x into (sigma_t/sigma_s) e^{-h};
    its noise is ``sigma_t sqrt(1 - e^{-2h})``, DDPM's posterior standard deviation
    (``solvers.ddim.ddim_coefficients(..., eta=1)``).

    A step that ends at zero noise (sigma(t_to) = 0, h = infinity) has the exact limits of its
    first-order weights (x0: c_x = 0, w_0 = alpha_t; eps: c_x = alpha_t/alpha_s,
    w_0 = -alpha_t sigma_s/alpha_s, the DDIM step to t = 0); the higher ones diverge and are NaN,
    so a solver must end with a first-order step (``final_step="euler"`` in the solvers).
    """
    if prediction not in PREDICTIONS:
        raise ValueError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")
    if stochastic and prediction != "x0":
        raise ValueError("the stochastic (SDE) weights are implemented for data prediction (x0) only")
    t_from, t_to = as_float64(t_from), as_float64(t_to)
    alpha_to, sigma_to = schedule.alpha(t_to), schedule.sigma(t_to)
    alpha_from, sigma_from = schedule.alpha(t_from), schedule.sigma(t_from)
    to_zero = sigma_to == 0
    # a finite stand-in for h where the step ends at zero noise; its weights are replaced below
    h = torch.where(to_zero, torch.ones_like(t_to),
                    schedule.half_log_snr(torch.where(to_zero, t_from, t_to)) - schedule.half_log_snr(t_from))
    if prediction == "eps":
        c_x = alpha_to / alpha_from
        w = [-sigma_to * h * phi(n + 1, h) for n in range(order)]
        first = -alpha_to * sigma_from / alpha_from
    elif stochastic:
        c_x = sigma_to / sigma_from * torch.exp(-h)
        w = [2.0 * alpha_to * h * phi(n + 1, -2.0 * h) for n in range(order)]
        first = alpha_to
    else:
        c_x = sigma_to / sigma_from
        w = [alpha_to * h * phi(n + 1, -h) for n in range(order)]
        first = alpha_to
    w = torch.stack(w, dim=-1)
    if bool(to_zero.any()):
        limit = torch.full_like(w, float("nan"))
        limit[..., 0] = first.expand_as(w[..., 0]) if first.ndim else first
        w = torch.where(to_zero[..., None], limit, w)
    return c_x, w
