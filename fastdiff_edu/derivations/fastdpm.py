"""FastDPM, derived with sympy (book chapter: fastdpm).

Every function returns sympy expressions and has no side effects; the chapter displays them and
``tests/test_fastdpm.py`` lambdifies them and compares with :mod:`fastdiff_edu.solvers.fastdpm`.

Notation (0-based labels as in the official code and :class:`~fastdiff_edu.schedules.DiscreteVP`):
linear betas ``beta_n = beta_0 + n dbeta``, noise levels ``abar_n = prod_{i<=n} (1 - beta_i)``; a
short chain has noise levels ``gbar_s`` and variances ``eta_s = 1 - gbar_s/gbar_{s-1}``; one
reverse step goes from ``gbar_t`` (noisier) to ``gbar_s = gbar_t/(1 - eta)``.

(a) :func:`alphas_cumprod_gamma` -- the continuous noise level ``abar(tau) = dbeta^(tau+1)
    Gamma(c+1)/Gamma(c-tau)``, ``c = (1 - beta_0)/dbeta``; :func:`gamma_recurrence_residual`
    shows it obeys ``abar(tau+1) = (1 - beta_{tau+1}) abar(tau)`` for *real* tau, and
    :func:`gamma_product_residual` that it is the DDPM product at integers.
(b) :func:`stirling_log_gamma`, :func:`stirling_error_series` -- the official code's Stirling
    formula and its error, 1/(288 y^2) + O(y^-3).
(c) :func:`ddpm_rev_step`, :func:`ddim_rev_step` -- the two reverse processes as
    ``c_x x + c_eps eps_hat + c_noise z``; :func:`ddpm_rev_residuals` shows that DDPM's posterior
    mean with x0_hat plugged in is ``(x - eta/sqrt(1 - gbar_t) eps_hat)/sqrt(1 - eta)`` and equals
    DDIM-rev's mean at kappa = 1.
(d) :func:`one_step_variance`, :func:`variance_deficit` -- with the exact eps_hat of a single
    data point, the variance of x_s after one step from the exact x_t: DDIM-rev keeps the forward
    marginal ``1 - gbar_s`` for every kappa, DDPM-rev loses ``(1 - kappa^2) eta_tilde``.

The square roots are simplified after substituting positive symbols
(``gbar = 1/(1 + r^2)``, r = sigma/alpha), which tell sympy that every radicand is positive.
"""
from __future__ import annotations

import sympy as sp

__all__ = [
    "tau", "beta_0", "dbeta", "gbar_t", "eta", "kappa", "x", "eps_hat", "z",
    "alphas_cumprod_gamma", "log_alphas_cumprod_gamma", "gamma_recurrence_residual", "gamma_product_residual",
    "stirling_log_gamma", "stirling_error_series",
    "gbar_s", "eta_tilde", "GBAR_S", "ETA_TILDE", "X0_HAT", "ddpm_posterior_mean", "ddpm_rev_step", "ddim_rev_step", "ddpm_rev_residuals",
    "one_step_variance", "variance_deficit",
]

#: a real (continuous) step label, the first beta and the beta increment of a linear schedule
tau = sp.Symbol("tau", real=True)
beta_0 = sp.Symbol("beta_0", positive=True)
dbeta = sp.Symbol(r"{\Delta\beta}", positive=True)
#: one reverse step: noise level at its start, the short chain's variance of the step, kappa
gbar_t = sp.Symbol(r"\bar\gamma_t", positive=True)
eta = sp.Symbol("eta", positive=True)
kappa = sp.Symbol("kappa", nonnegative=True)
#: a coordinate of the sample, the model's eps prediction, fresh noise
x, eps_hat, z = sp.symbols(r"x \hat\epsilon z", real=True)

#: the noise level after the step and the posterior variance of the step (Ho et al. 2020, eq. 7)
gbar_s = gbar_t / (1 - eta)
eta_tilde = (1 - gbar_s) / (1 - gbar_t) * eta
#: the same three as plain symbols, for displaying the steps as the text writes them
GBAR_S, ETA_TILDE, X0_HAT = sp.symbols(r"\bar\gamma_s \tilde\eta \hat{x}_0", positive=True)


# -- (a) continuous steps --------------------------------------------------------------------------
def _c():
    return (1 - beta_0) / dbeta


def alphas_cumprod_gamma(label=tau):
    """abar(tau) = dbeta^(tau+1) Gamma(c + 1)/Gamma(c - tau), c = (1 - beta_0)/dbeta (the paper's
    continuous noise level squared, for linear betas)."""
    c = _c()
    return dbeta ** (label + 1) * sp.gamma(c + 1) / sp.gamma(c - label)


def log_alphas_cumprod_gamma(label=tau):
    """log abar(tau) = (tau + 1) log dbeta + log Gamma(c + 1) - log Gamma(c - tau): the form the code evaluates."""
    c = _c()
    return (label + 1) * sp.log(dbeta) + sp.loggamma(c + 1) - sp.loggamma(c - label)


def gamma_recurrence_residual():
    """abar(tau + 1)/abar(tau) - (1 - beta_0 - (tau + 1) dbeta), for real tau: simplifies to 0.

    So the Gamma-function formula extends the DDPM recursion abar_{n+1} = (1 - beta_{n+1}) abar_n
    to every real label; with abar(-1) = 1 (the clean data) it is the product at integers.
    """
    ratio = sp.gammasimp(alphas_cumprod_gamma(tau + 1) / alphas_cumprod_gamma(tau))
    return sp.simplify(ratio - (1 - beta_0 - (tau + 1) * dbeta))


def gamma_product_residual(n: int):
    """abar(n) from the Gamma formula minus prod_{i=0}^{n} (1 - beta_0 - i dbeta), for an integer
    n >= -1 (n = -1: the empty product 1): simplifies to 0."""
    closed = sp.expand_func(alphas_cumprod_gamma(sp.Integer(n)))
    product = sp.prod([1 - beta_0 - i * dbeta for i in range(n + 1)])
    return sp.simplify(closed - product)


# -- (b) Stirling ------------------------------------------------------------------------------------
def stirling_log_gamma(arg):
    """The official code's log Gamma(arg): y = arg - 1, log(sqrt(2 pi y) (y/e)^y (1 + 1/(12 y)))."""
    y = arg - 1
    return sp.log(2 * sp.pi * y) / 2 + y * (sp.log(y) - 1) + sp.log(1 + 1 / (12 * y))


def stirling_error_series(order: int = 4):
    """log Gamma(y + 1) minus the code's formula as y -> oo: 1/(288 y^2) - 77/(25920 y^3) + O(y^-4)."""
    y = sp.Symbol("y", positive=True)
    series = sp.series(sp.loggamma(y + 1) - stirling_log_gamma(y + 1), y, sp.oo, order).removeO()
    return sp.expand(sp.simplify(sp.expand_log(series, force=True))), y


# -- (c) the two reverse processes -------------------------------------------------------------------
def _x0_hat():
    return (x - sp.sqrt(1 - gbar_t) * eps_hat) / sp.sqrt(gbar_t)


def ddpm_posterior_mean():
    """The mean of q(x_s | x_t, x0) (Ho et al. 2020, eq. 7) for the step gbar_t -> gbar_s, with
    x0 -> x0_hat = (x - sqrt(1 - gbar_t) eps_hat)/sqrt(gbar_t)."""
    return (sp.sqrt(gbar_s) * eta / (1 - gbar_t) * _x0_hat()
            + sp.sqrt(1 - eta) * (1 - gbar_s) / (1 - gbar_t) * x)


def ddpm_rev_step(display: bool = False):
    """DDPM-rev: ``(x - eta/sqrt(1 - gbar_t) eps_hat)/sqrt(1 - eta) + kappa sqrt(eta_tilde) z``.
    ``display=True`` keeps eta_tilde as a symbol."""
    tilde = ETA_TILDE if display else eta_tilde
    return (x - eta / sp.sqrt(1 - gbar_t) * eps_hat) / sp.sqrt(1 - eta) + kappa * sp.sqrt(tilde) * z


def ddim_rev_step(display: bool = False):
    """DDIM-rev (the official code's update; DDIM eq. 12 with eta_DDIM = kappa):
    ``sqrt(gbar_s) x0_hat + sqrt(1 - gbar_s - sigma^2) eps_hat + sigma z``, sigma = kappa sqrt(eta_tilde).
    ``display=True`` keeps gbar_s, eta_tilde and x0_hat as symbols."""
    g_s, tilde, x0 = (GBAR_S, ETA_TILDE, X0_HAT) if display else (gbar_s, eta_tilde, _x0_hat())
    sigma = kappa * sp.sqrt(tilde)
    return sp.sqrt(g_s) * x0 + sp.sqrt(1 - g_s - sigma**2) * eps_hat + sigma * z


def _positive_substitution():
    """gbar_t and eta through positive symbols, so that sympy can take the square roots:
    gbar_t = 1/(1 + r_t^2), gbar_s = 1/(1 + r_s^2), r_t^2 = r_s^2 + delta^2 (r = sigma/alpha)."""
    r_s, delta = sp.symbols("r_s delta", positive=True)
    r_t2 = r_s**2 + delta**2
    return {gbar_t: 1 / (1 + r_t2), eta: delta**2 / (1 + r_t2)}


def ddpm_rev_residuals():
    """Two zeros: DDPM's posterior mean minus DDPM-rev's mean, and DDIM-rev at kappa = 1 minus
    DDPM-rev at kappa = 1 (so the two reverse processes coincide at kappa = 1)."""
    sub = _positive_substitution()
    mean = ddpm_rev_step().subs(z, 0)
    first = sp.simplify((ddpm_posterior_mean() - mean).subs(sub))
    second = sp.simplify((ddim_rev_step() - ddpm_rev_step()).subs(kappa, 1).subs(sub))
    return first, second


# -- (d) the variance one step leaves behind ---------------------------------------------------------
def one_step_variance(kind: str):
    """Var(x_s) after one step from the exact x_t when the data is the single point 0.

    Then x_t = sqrt(1 - gbar_t) eps, the exact eps_hat is eps, and x_s = (c_x sqrt(1 - gbar_t) +
    c_eps) eps + c_noise z with independent eps, z. ``kind`` is "ddim" or "ddpm". Returns the
    variance in gbar_t, eta, kappa.
    """
    step = {"ddim": ddim_rev_step, "ddpm": ddpm_rev_step}[kind]()
    eps = sp.Symbol("epsilon", real=True)
    sample = step.subs(eps_hat, eps).subs(x, sp.sqrt(1 - gbar_t) * eps)
    return sp.diff(sample, eps) ** 2 + sp.diff(sample, z) ** 2


def variance_deficit(kind: str):
    """(1 - gbar_s) minus :func:`one_step_variance`, simplified: 0 for DDIM-rev,
    (1 - kappa^2) eta_tilde for DDPM-rev (returned in gbar_t, eta, kappa; substitute
    ``{eta_tilde: ETA_TILDE}`` to display it with the symbol)."""
    sub = _positive_substitution()
    deficit = sp.simplify(((1 - gbar_s) - one_step_variance(kind)).subs(sub))
    back = sp.simplify(((1 - kappa**2) * eta_tilde).subs(sub))
    if deficit == 0:
        return sp.Integer(0)
    if sp.simplify(deficit - back) == 0:
        return (1 - kappa**2) * eta_tilde
    return deficit
