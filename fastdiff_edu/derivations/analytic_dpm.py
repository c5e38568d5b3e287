"""Analytic-DPM's optimal reverse variance, derived with sympy (book chapter: analytic_dpm).

Bao, Li, Zhu & Zhang (ICLR 2022). Every function returns sympy expressions and has no side
effects; the chapter displays them and ``tests/test_analytic_dpm.py`` lambdifies them and
compares with :func:`fastdiff_edu.solvers.analytic_dpm.analytic_variances`, with the Monte
Carlo bound of :mod:`fastdiff_edu.likelihood`, and with :func:`gamma_gaussian`.

Notation (per step from t to s < t; one coordinate, the d coordinates add up):
``a_t, s_t, a_s, s_s`` = alpha and sigma at t and s; ``lam2`` = the variance of the forward
posterior q(x_s | x_t, x0) of the DDIM family; ``Gamma`` = E||eps_hat(x_t)||^2/d.

The chain of results:

(a) :func:`forward_posterior_mean` -- q's mean is ``c_x x_t + c0 x0`` with
    ``c0 = a_s - sqrt(s_s^2 - lam2) a_t/s_t``; the model's mean replaces x0 by x0_hat, so the
    means differ by ``c0 (x0 - x0_hat)``.
(b) :func:`posterior_variance_of_x0` -- with x0_hat = (x_t - s_t eps_hat)/a_t,
    x0 - x0_hat = -(s_t/a_t)(eps - eps_hat); since eps_hat = E[eps | x_t],
    E[eps eps_hat] = E[eps_hat^2] = Gamma, so E(x0 - x0_hat)^2 = (s_t^2/a_t^2)(1 - Gamma).
(c) :func:`expected_kl` and :func:`optimal_variance` -- the expected KL of a Gaussian reverse
    step with variance var, minimised over var: sigma*^2 = lam2 + c0^2 (s_t^2/a_t^2)(1 - Gamma)
    (Bao et al., Theorem 1 / eq. 7); :func:`kl_second_derivative` shows it is a minimum and
    :func:`paper_form_difference` that it is the paper's formula in alpha_bar notation.
(d) :func:`optimal_kl` -- the minimal expected KL per dimension is (1/2) log(sigma*^2/lam2),
    the cost the trajectory DP adds up (Sec. 4); :func:`dp_costs` gives the official code's
    cost log(1 - beta_{r|s} Gamma/beta_bar_r), which differs from it by terms that telescope
    along any trajectory.
(e) :func:`variance_bounds` -- 0 <= 1 - Gamma <= 1 and E Var(x0|x_t) <= Var(x0) bound sigma*^2
    (Theorem 2; for data in [a, b], Var(x0) <= (b - a)^2/4).
(f) :func:`gamma_gaussian` -- for Gaussian data, Gamma in closed form.
"""
from __future__ import annotations

from functools import lru_cache

import sympy as sp

__all__ = [
    "a_t", "s_t", "a_s", "s_s", "lam2", "var", "Gamma", "P", "c0",
    "forward_posterior_mean", "posterior_variance_of_x0", "expected_kl", "optimal_variance",
    "kl_second_derivative", "paper_form", "paper_form_difference", "optimal_kl", "optimal_kl_difference",
    "dp_costs", "variance_bounds", "gamma_gaussian",
]

a_t, s_t, a_s, s_s = sp.symbols("alpha_t sigma_t alpha_s sigma_s", positive=True)
lam2 = sp.Symbol("lambda^2", positive=True)
var = sp.Symbol("sigma^2", positive=True)
Gamma = sp.Symbol("Gamma", nonnegative=True)
#: the mean posterior variance of x0 per dimension, E (x0 - E[x0|x_t])^2
P = sp.Symbol("P", nonnegative=True)
#: the weight of x0 in the forward posterior mean
c0 = a_s - sp.sqrt(s_s**2 - lam2) * a_t / s_t


# -- (a) the forward posterior of the DDIM family -----------------------------------------------
def forward_posterior_mean():
    """``(mean, (c_x, c0))``: q(x_s | x_t, x0) has mean a_s x0 + sqrt(s_s^2 - lam2) eps with
    eps = (x_t - a_t x0)/s_t (Song et al. 2021, eq. 7; Bao et al. eq. 5), linear in (x_t, x0)."""
    xt, x0 = sp.symbols("x_t x_0", real=True)
    mean = a_s * x0 + sp.sqrt(s_s**2 - lam2) * (xt - a_t * x0) / s_t
    poly = sp.Poly(sp.expand(mean), xt, x0)
    return mean, (poly.coeff_monomial(xt), poly.coeff_monomial(x0))


# -- (b) the posterior variance of x0 from Gamma ------------------------------------------------
def posterior_variance_of_x0():
    """``(expression, derivation steps)``: E(x0 - x0_hat)^2 = (s_t^2/a_t^2)(1 - Gamma).

    The moments used: E eps^2 = 1 (standard noise), E[eps eps_hat] = E[eps_hat E[eps|x_t]] =
    E eps_hat^2 = Gamma (the tower property, eps_hat being the conditional mean).
    """
    e2 = sp.Symbol(r"\mathbb{E}[\epsilon^2]")
    e_ehat = sp.Symbol(r"\mathbb{E}[\epsilon\hat\epsilon]")
    ehat2 = sp.Symbol(r"\mathbb{E}[\hat\epsilon^2]")
    sq_error = (s_t / a_t) ** 2 * (e2 - 2 * e_ehat + ehat2)  # E (x0 - x0_hat)^2, expanded
    result = sp.factor(sq_error.subs({e2: 1, e_ehat: Gamma, ehat2: Gamma}))
    return result, sq_error


# -- (c) the optimal variance ----------------------------------------------------------------
def expected_kl(variance=var, post=P):
    """E KL(N(m, lam2) || N(mu, variance)) per dimension, with E(m - mu)^2 = c0^2 post.

    ``post`` is the posterior variance of x0 per dimension, the symbol P by default; (b) gives
    P = (s_t^2/a_t^2)(1 - Gamma).
    """
    return sp.Rational(1, 2) * (lam2 / variance - 1 + sp.log(variance / lam2)) + c0**2 * post / (2 * variance)


def optimal_variance(in_terms_of_gamma: bool = True):
    """sigma*^2, the root of d E KL / d sigma^2 = 0: lam2 + c0^2 P, and with P from (b)
    lam2 + c0^2 (s_t^2/a_t^2)(1 - Gamma) (Bao et al., Theorem 1, eq. 7)."""
    root = _stationary_point()
    return root.subs(P, posterior_variance_of_x0()[0]) if in_terms_of_gamma else root


@lru_cache(maxsize=None)
def _stationary_point():
    """Solve d E KL / d sigma^2 = 0 once; return it in the structured form lam2 + c0^2 P after
    checking that the two agree."""
    (root,) = sp.solve(sp.Eq(sp.diff(expected_kl(), var), 0), var)
    structured = lam2 + c0**2 * P
    if sp.simplify(root - structured) != 0:  # pragma: no cover - would mean the algebra changed
        return root
    return structured


def kl_second_derivative():
    """d^2 E KL / d (sigma^2)^2 at sigma*^2, in terms of sigma*^2 =: S: 1/(2 S^2) > 0, a minimum."""
    star = sp.Symbol("S", positive=True)
    second = sp.diff(expected_kl(), var, 2).subs(var, star)
    return sp.simplify(second.subs(P, (star - lam2) / c0**2))


def paper_form():
    """Bao et al.'s eq. 7 in alpha_bar notation for a VP step n -> n-1 (or tau_k -> tau_{k-1}):
    lam2 + (sqrt(beta_bar_n/alpha_n) - sqrt(beta_bar_{n-1} - lam2))^2 (1 - Gamma_n),
    with alpha_n = alpha_bar_n/alpha_bar_{n-1} the step's own alpha. Returns
    ``(alphabar_t, alphabar_s, expression)``."""
    ab_t, ab_s = sp.symbols("alphabar_t alphabar_s", positive=True)
    step_alpha = ab_t / ab_s
    return ab_t, ab_s, lam2 + (sp.sqrt((1 - ab_t) / step_alpha) - sp.sqrt((1 - ab_s) - lam2)) ** 2 * (1 - Gamma)


def paper_form_difference():
    """paper_form - optimal_variance with a^2 = alpha_bar, s^2 = 1 - alpha_bar: simplifies to 0."""
    ab_t, ab_s, paper = paper_form()
    ours = optimal_variance().subs({a_t: sp.sqrt(ab_t), s_t: sp.sqrt(1 - ab_t), a_s: sp.sqrt(ab_s),
                                    s_s: sp.sqrt(1 - ab_s)})
    return sp.simplify(sp.expand(paper - ours))


# -- (d) the optimal KL and the trajectory cost --------------------------------------------------
def optimal_kl():
    """The expected KL per dimension at the optimum, in terms of S = sigma*^2 = lam2 + c0^2 P
    (so c0^2 P = S - lam2): (1/2) log(S/lam2)."""
    star = sp.Symbol("S", positive=True)
    kl = expected_kl().subs(var, star).subs(P, (star - lam2) / c0**2)
    return sp.simplify(sp.expand_log(kl, force=True))


def optimal_kl_difference():
    """optimal_kl - (1/2) log(S/lam2): 0."""
    star = sp.Symbol("S", positive=True)
    return sp.simplify(sp.expand_log(optimal_kl() - sp.log(star / lam2) / 2, force=True))


def dp_costs():
    """``(ours, code, telescoping)`` for a DDPM step r -> s (lam2 = beta_tilde), alpha_bar notation.

    ``ours``: the per-dimension optimal KL, (1/2) log(sigma*^2/beta_tilde). ``code``: the
    official code's DP cost (``_get_fn_m``, per dimension), (1/2) log(1 - beta_{r|s}
    Gamma/beta_bar_r), beta_{r|s} = 1 - alpha_bar_r/alpha_bar_s. ``telescoping``:
    (1/2) log(beta_bar_r/beta_bar_s) - (1/2) log(alpha_bar_r/alpha_bar_s). ours = code +
    telescoping (checked numerically in the tests: sympy does not denest the square roots),
    and the sum of the telescoping part along a trajectory depends on its end points only, so
    both costs pick the same trajectory.
    """
    ab_r, ab_s = sp.symbols("alphabar_r alphabar_s", positive=True)
    subs = {a_t: sp.sqrt(ab_r), s_t: sp.sqrt(1 - ab_r), a_s: sp.sqrt(ab_s), s_s: sp.sqrt(1 - ab_s)}
    skip_beta = 1 - ab_r / ab_s
    beta_tilde = (1 - ab_s) / (1 - ab_r) * skip_beta
    ours = sp.log(optimal_variance().subs(subs).subs(lam2, beta_tilde) / beta_tilde) / 2
    code = sp.log(1 - skip_beta * Gamma / (1 - ab_r)) / 2
    telescoping = (sp.log((1 - ab_r) / (1 - ab_s)) - sp.log(ab_r / ab_s)) / 2
    return (ab_r, ab_s), ours, code, telescoping


# -- (e) the bounds of Theorem 2 ----------------------------------------------------------------
def variance_bounds(data_variance=None):
    """``(lower, upper)`` for sigma*^2: Gamma in [0, 1] gives lam2 <= sigma*^2 <= lam2 + c0^2 s_t^2/a_t^2;
    with ``data_variance`` (a bound on Var(x0) per dimension, e.g. (b - a)^2/4 for data in
    [a, b]) the posterior variance of x0 is also at most it, on average (law of total variance)."""
    star = optimal_variance()
    lower, upper = star.subs(Gamma, 1), star.subs(Gamma, 0)
    if data_variance is not None:
        upper = lam2 + c0**2 * sp.Min((s_t / a_t) ** 2, data_variance)
    return lower, upper


# -- (f) Gaussian data ---------------------------------------------------------------------------
def gamma_gaussian():
    """``(Gamma, eps_hat)`` for one coordinate of Gaussian data N(mu, s) (an eigen-direction of
    the covariance): x_t = a_t x0 + s_t eps is jointly Gaussian with eps, so
    E[eps | x_t] = Cov(eps, x_t)/Var(x_t) (x_t - a_t mu), and Gamma = E eps_hat^2
    = Cov^2/Var = s_t^2/(a_t^2 s + s_t^2). Average over the d eigenvalues for Gamma_t."""
    s, xt, mu = sp.symbols("s x_t mu", positive=True)
    var_xt = a_t**2 * s + s_t**2
    cov = s_t  # Cov(eps, a_t x0 + s_t eps)
    eps_hat = cov / var_xt * (xt - a_t * mu)
    gamma = sp.simplify((cov / var_xt) ** 2 * var_xt)  # E eps_hat^2 = (Cov/Var)^2 Var(x_t)
    return gamma, eps_hat
