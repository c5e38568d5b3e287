"""SDE-DPM-Solver++ (Lu et al. 2022b, Appendix): the exponential integrator for the reverse SDE.

The reverse-time SDE (Song et al. 2021, eq. 6) of ``x_t = alpha x_0 + sigma eps`` is

    dx = [f x - g^2 score] dt + g dw_bar,      score = -(x - alpha x0)/sigma^2,

with f = d log alpha/dt and g^2 = d sigma^2/dt - 2 f sigma^2 = -2 sigma^2 d lambda/dt. In lambda
its drift is :func:`reverse_sde_drift_in_lambda`: ``(d log alpha/d lambda - 2) x + 2 alpha x0`` —
the probability-flow ODE's linear rate minus 1 more, and twice the data term. Variation of
constants with the factor alpha e^{-2 lambda} then gives, over a step of length h,

    x_t = (sigma_t/sigma_s) e^{-h} x_s + 2 alpha_t int_0^h e^{-2(h-u)} x0(lambda_s + u) du + noise,

so the Taylor term n of x0 carries ``2 h^{n+1} phi_{n+1}(-2h)`` (:func:`data_weight`) instead of
the ODE's ``h^{n+1} phi_{n+1}(-h)``, and the noise has variance ``sigma_t^2 (1 - e^{-2h})``
(:func:`noise_variance`). The first-order step is DDPM's posterior step, i.e. DDIM with eta = 1
(:func:`first_order_minus_ddpm`). Book chapter: dpm_solver_pp.
"""
from __future__ import annotations

import sympy as sp

from .exponential import alpha_s, alpha_t, h, phi, sigma_s, sigma_t, u

__all__ = ["x", "x0", "lam_dot", "dlog_alpha_dlam", "reverse_sde_drift_in_lambda", "drift_difference",
           "data_weight", "data_weight_closed_form", "noise_variance", "first_order_step", "ddpm_posterior_step",
           "first_order_minus_ddpm"]

x, x0 = sp.symbols("x x_0", real=True)
#: d lambda/dt (negative along the forward process) and d log alpha/d lambda
lam_dot = sp.Symbol(r"\dot\lambda", negative=True)
dlog_alpha_dlam = sp.Symbol(r"\frac{d\log\alpha}{d\lambda}", real=True)
alpha, sigma = sp.symbols("alpha sigma", positive=True)
z = sp.Symbol("z", real=True)


def reverse_sde_drift_in_lambda():
    """The reverse SDE's drift divided by d lambda/dt, with f = (d log alpha/d lambda) lambda',
    g^2 = -2 sigma^2 lambda' and the score written with the data prediction."""
    f = dlog_alpha_dlam * lam_dot
    g2 = -2 * sigma**2 * lam_dot
    score = -(x - alpha * x0) / sigma**2
    return sp.simplify((f * x - g2 * score) / lam_dot)


def drift_difference():
    """:func:`reverse_sde_drift_in_lambda` minus ``(d log alpha/d lambda - 2) x + 2 alpha x0``: 0."""
    return sp.simplify(reverse_sde_drift_in_lambda() - ((dlog_alpha_dlam - 2) * x + 2 * alpha * x0))


def data_weight(n: int):
    """``int_0^h 2 e^{-2(h-u)} u^n/n! du``, evaluated by sympy: times alpha_t, the weight of the
    n-th derivative x0^(n) of the data prediction in one SDE step."""
    return sp.simplify(sp.integrate(2 * sp.exp(-2 * (h - u)) * u**n / sp.factorial(n), (u, 0, h)))


def data_weight_closed_form(n: int):
    """The claimed value of :func:`data_weight`: ``2 h^{n+1} phi_{n+1}(-2h)``."""
    return 2 * h ** (n + 1) * phi(n + 1, -2 * h)


def noise_variance():
    """Variance of the step's noise: ``int (alpha_t/alpha)^2 e^{-4(lambda_t - lambda)} 2 sigma^2 d lambda``
    over the step, with sigma/alpha = e^{-lambda}; sympy gives sigma_t^2 (1 - e^{-2h})."""
    lam, lam_t = sp.symbols("lambda lambda_t", real=True)
    integrand = alpha_t**2 * sp.exp(-4 * (lam_t - lam)) * 2 * sp.exp(-2 * lam)
    variance = sp.integrate(integrand, (lam, lam_t - h, lam_t))
    # sigma_t = alpha_t e^{-lambda_t}
    return sp.simplify(variance.subs(alpha_t, sigma_t * sp.exp(lam_t)))


def first_order_step(noise=z):
    """SDE-DPM-Solver-1: ``(sigma_t/sigma_s) e^{-h} x + alpha_t (1 - e^{-2h}) x0 + sigma_t sqrt(1 - e^{-2h}) z``."""
    return (sigma_t / sigma_s * sp.exp(-h) * x + alpha_t * (1 - sp.exp(-2 * h)) * x0
            + sigma_t * sp.sqrt(1 - sp.exp(-2 * h)) * noise)


def ddpm_posterior_step(noise=z):
    """DDIM's eq. 12 with eta = 1 (DDPM's posterior mean and variance):
    ``alpha_t x0 + sqrt(sigma_t^2 - s^2) eps_hat + s z``, ``s = sigma_t sqrt(1 - e^{-2h})``,
    eps_hat = (x - alpha_s x0)/sigma_s."""
    spread = sigma_t * sp.sqrt(1 - sp.exp(-2 * h))
    eps_hat = (x - alpha_s * x0) / sigma_s
    return alpha_t * x0 + sp.sqrt(sigma_t**2 - spread**2) * eps_hat + spread * noise


def first_order_minus_ddpm():
    """:func:`first_order_step` minus :func:`ddpm_posterior_step` with alpha_s = alpha_t e^{-h} sigma_s/sigma_t
    (the definition of h = lambda_t - lambda_s): 0."""
    difference = first_order_step() - ddpm_posterior_step()
    return sp.simplify(difference.subs(alpha_s, alpha_t * sp.exp(-h) * sigma_s / sigma_t))
