"""The probability-flow ODE, derived with sympy (book chapter: recap).

Every function returns sympy expressions and has no side effects; the recap chapter displays
them and ``tests/test_derivations.py`` lambdifies them and compares with the numbers that
:mod:`fastdiff_edu.schedules` and the samplers use.

The chain of results:

(a) :func:`forward_sde_coefficients` -- the forward process ``x_t = alpha(t) x_0 + sigma(t) eps``
    is the solution of the linear SDE ``dx = f x dt + g dw`` with ``f = d log alpha/dt`` and
    ``g^2 = d sigma^2/dt - 2 f sigma^2``, found by matching the mean and variance ODEs
    (:func:`moment_odes`, from Ito's formula) and solving for ``f`` and ``g^2``.
(b) :func:`pf_ode_drift` -- Song et al. (2021), eq. 13: ``dx/dt = f x - g^2/2 * score`` has the
    same marginals as the SDE, because its Fokker-Planck equation is the SDE's
    (:func:`fokker_planck_difference`), and for Gaussian data the marginal
    ``N(alpha x_0, sigma^2)`` solves it (:func:`gaussian_marginal_residual`).
(c) :func:`eps_form_difference` -- with ``score = -eps/sigma`` the drift is
    ``f x - sigma lambda' eps``, ``lambda = log(alpha/sigma)``: the form the package uses.
(d) :func:`vp_coefficients` -- for the VP schedules, concrete ``f``, ``g^2``, ``lambda'``;
    :func:`vp_linear_beta_residuals` shows ``f = -beta/2`` and ``g^2 = beta`` for VP-linear.
(e) :func:`point_mass_ode_residual`, :func:`ddim_point_mass_residual` -- when the data is a
    single point the ODE's solution keeps ``eps`` constant, and one DDIM step is exact.

All derivations are one-dimensional: the SDE and ODE act on each coordinate alike.
"""
from __future__ import annotations

import sympy as sp

__all__ = [
    "t", "x", "x0", "alpha", "sigma",
    "half_log_snr", "moment_odes", "forward_sde_coefficients",
    "pf_ode_drift", "fokker_planck_rhs", "fokker_planck_difference", "gaussian_marginal_residual",
    "pf_ode_eps_form", "eps_form_difference",
    "vp_linear_log_alpha", "vp_cosine_log_alpha", "vp_coefficients", "vp_linear_beta_residuals",
    "point_mass_solution", "point_mass_ode_residual", "ddim_step", "ddim_point_mass_residual",
]

#: time, a coordinate of the sample, and a (fixed) data point
t = sp.Symbol("t", real=True)
x = sp.Symbol("x", real=True)
x0 = sp.Symbol("x_0", real=True)
#: the schedule as unspecified positive functions of t
alpha = sp.Function("alpha", positive=True)(t)
sigma = sp.Function("sigma", positive=True)(t)


def half_log_snr(alpha_expr=alpha, sigma_expr=sigma):
    """lambda = log(alpha / sigma), the half-log signal-to-noise ratio."""
    return sp.log(alpha_expr / sigma_expr)


# -- (a) the forward SDE ------------------------------------------------------------------
def _ito_generator(phi, drift, g2):
    """Ito's formula for dx = drift dt + g dw: d phi(x) = (drift phi' + g^2/2 phi'') dt + (...) dw."""
    return drift * sp.diff(phi, x) + g2 / 2 * sp.diff(phi, x, 2)


def moment_odes(f, g2, m, v):
    """Mean and variance ODEs of the linear SDE ``dx = f x dt + g dw`` (g2 = g^2).

    Taking expectations in Ito's formula for phi = x and phi = x^2 (the dw terms have mean zero)
    gives ``m' = f m`` and ``(v + m^2)' = 2 f (v + m^2) + g^2``; subtracting ``(m^2)' = 2 m m'``
    leaves ``v' = 2 f v + g^2``. ``m`` and ``v`` are functions of ``t``. Returns two ``Eq``.
    """
    moments = {0: sp.Integer(1), 1: m, 2: v + m**2}  # E[x^k] of a distribution with mean m, variance v

    def expectation(poly_in_x):
        coeffs = sp.Poly(sp.expand(poly_in_x), x).as_dict()
        return sum(c * moments[k[0]] for k, c in coeffs.items())

    d_mean = expectation(_ito_generator(x, f * x, g2))
    d_second = expectation(_ito_generator(x**2, f * x, g2))
    d_var = sp.expand(d_second - 2 * m * d_mean)
    return sp.Eq(sp.diff(m, t), d_mean), sp.Eq(sp.diff(v, t), sp.factor_terms(d_var))


def forward_sde_coefficients(alpha_expr=alpha, sigma_expr=sigma):
    """``(f, g^2)`` such that ``dx = f x dt + g dw`` has the marginals of x_t = alpha x_0 + sigma eps.

    Given x_0, x_t is Gaussian with mean ``alpha x_0`` and variance ``sigma^2``; both must satisfy
    :func:`moment_odes`. Two linear equations in the two unknowns: solved here with ``sp.solve``.
    Returns ``f = alpha'/alpha`` (= d log alpha/dt) and ``g^2 = (sigma^2)' - 2 f sigma^2``.
    """
    f_sym, g2_sym = sp.symbols("f g2", real=True)
    mean_ode, var_ode = moment_odes(f_sym, g2_sym, alpha_expr * x0, sigma_expr**2)
    sol = sp.solve([mean_ode, var_ode], [f_sym, g2_sym], dict=True)[0]
    return sp.simplify(sol[f_sym]), sp.simplify(sol[g2_sym])


# -- (b) the probability-flow ODE and its Fokker-Planck equation ------------------------------
def pf_ode_drift(f, g2, score):
    """Song et al. (2021), eq. 13, for the linear SDE: ``dx/dt = f x - g^2/2 * score``."""
    return f * x - g2 / 2 * score


def fokker_planck_rhs(drift, g2, p):
    """dp/dt for ``dx = drift dt + g dw`` in 1-D: ``-d/dx(drift p) + g^2/2 d^2p/dx^2`` (g2 = 0: an ODE)."""
    return -sp.diff(drift * p, x) + g2 / 2 * sp.diff(p, x, 2)


def fokker_planck_difference():
    """Fokker-Planck of the SDE minus the continuity equation of the PF-ODE, for *any* density.

    With p(x, t) an arbitrary positive function and score = d log p/dx, the term -g^2/2 * score
    moves the diffusion into the drift: ``-d/dx(-g^2/2 p'/p * p) = g^2/2 p''``. Simplifies to 0.
    """
    p = sp.Function("p", positive=True)(x, t)
    f = sp.Function("f", real=True)(t)
    g2 = sp.Function("g2", positive=True)(t)
    score = sp.diff(sp.log(p), x)
    sde = fokker_planck_rhs(f * x, g2, p)
    ode = fokker_planck_rhs(pf_ode_drift(f, g2, score), 0, p)
    return sp.simplify(sde - ode)


def _gaussian_marginal(alpha_expr=alpha, sigma_expr=sigma):
    """The density of x_t given x_0: N(x; alpha x_0, sigma^2)."""
    return sp.exp(-(x - alpha_expr * x0) ** 2 / (2 * sigma_expr**2)) / sp.sqrt(2 * sp.pi * sigma_expr**2)


def gaussian_marginal_residual(alpha_expr=alpha, sigma_expr=sigma):
    """dp/dt minus the PF-ODE's continuity equation for p = N(alpha x_0, sigma^2), with (f, g^2) from (a).

    The time derivative of the forward marginal is exactly what the ODE's flow transports, so the
    residual simplifies to 0: the ODE drift, with the exact score, reproduces the marginals.
    """
    p = _gaussian_marginal(alpha_expr, sigma_expr)
    f, g2 = forward_sde_coefficients(alpha_expr, sigma_expr)
    drift = pf_ode_drift(f, g2, sp.diff(sp.log(p), x))
    return sp.simplify((sp.diff(p, t) - fokker_planck_rhs(drift, 0, p)) / p)


# -- (c) the eps form the package uses ---------------------------------------------------------
def pf_ode_eps_form(alpha_expr=alpha, sigma_expr=sigma, eps=sp.Symbol("epsilon", real=True)):
    """``f x - sigma lambda' eps``: the drift of ``fastdiff_edu.ode.drift_t``."""
    f, _ = forward_sde_coefficients(alpha_expr, sigma_expr)
    return f * x - sigma_expr * sp.diff(half_log_snr(alpha_expr, sigma_expr), t) * eps


def eps_form_difference(alpha_expr=alpha, sigma_expr=sigma):
    """Song's drift with score = -eps/sigma minus :func:`pf_ode_eps_form`; simplifies to 0.

    Reason: g^2/(2 sigma) = sigma' - f sigma = -sigma (alpha'/alpha - sigma'/sigma) = -sigma lambda'.
    """
    eps = sp.Symbol("epsilon", real=True)
    f, g2 = forward_sde_coefficients(alpha_expr, sigma_expr)
    song = pf_ode_drift(f, g2, -eps / sigma_expr)
    return sp.simplify(song - pf_ode_eps_form(alpha_expr, sigma_expr, eps))


# -- (d) concrete VP schedules -----------------------------------------------------------------
def vp_linear_log_alpha(beta_min=sp.Symbol("beta_0", positive=True), beta_max=sp.Symbol("beta_1", positive=True)):
    """Song et al. (2021), eq. 29: log alpha = -t^2 (beta_1 - beta_0)/4 - t beta_0/2."""
    return -t**2 * (beta_max - beta_min) / 4 - t * beta_min / 2


def vp_cosine_log_alpha(s=sp.Rational(8, 1000)):
    """Nichol & Dhariwal (2021), eq. 17: alpha^2 = cos^2(pi/2 (t+s)/(1+s)) / cos^2(pi/2 s/(1+s))."""
    angle = lambda u: sp.pi / 2 * (u + s) / (1 + s)  # noqa: E731
    return sp.log(sp.cos(angle(t))) - sp.log(sp.cos(angle(0)))


def vp_coefficients(log_alpha_expr):
    """For a VP schedule (alpha^2 + sigma^2 = 1) given by log alpha(t): a dict with
    ``alpha``, ``sigma``, ``f``, ``g2``, ``lambda`` and ``dlambda`` (= d lambda/dt) as expressions in t."""
    a = sp.exp(log_alpha_expr)
    s = sp.sqrt(1 - sp.exp(2 * log_alpha_expr))
    f, g2 = forward_sde_coefficients(a, s)
    lam = half_log_snr(a, s)
    return {"alpha": a, "sigma": s, "f": sp.simplify(f), "g2": sp.simplify(g2),
            "lambda": lam, "dlambda": sp.simplify(sp.diff(lam, t))}


def vp_linear_beta_residuals():
    """``(f + beta/2, g^2 - beta)`` for VP-linear with beta(t) = beta_0 + t (beta_1 - beta_0): both 0."""
    b0, b1 = sp.symbols("beta_0 beta_1", positive=True)
    c = vp_coefficients(vp_linear_log_alpha(b0, b1))
    beta = b0 + t * (b1 - b0)
    return sp.simplify(c["f"] + beta / 2), sp.simplify(c["g2"] - beta)


# -- (e) a single data point: the exact solution, and DDIM is exact ----------------------------------
def point_mass_solution(x_start=sp.Symbol("x_s", real=True), s=sp.Symbol("s", positive=True)):
    """Data = the point x_0: the PF-ODE solution through x_start at time s.

    Then eps_hat(x, t) = (x - alpha x_0)/sigma, and the solution keeps it constant:
    ``x(t) = alpha(t) x_0 + sigma(t) (x_start - alpha(s) x_0)/sigma(s)``.
    """
    eps_start = (x_start - alpha.subs(t, s) * x0) / sigma.subs(t, s)
    return alpha * x0 + sigma * eps_start


def point_mass_ode_residual():
    """d/dt of :func:`point_mass_solution` minus the PF-ODE drift ``f x - sigma lambda' eps_hat``; 0."""
    eps = sp.Symbol("epsilon", real=True)
    sol = point_mass_solution()
    eps_hat = (sol - alpha * x0) / sigma  # the exact eps-prediction of a point mass at x = sol
    drift = pf_ode_eps_form(alpha, sigma, eps).subs(x, sol).subs(eps, eps_hat)
    return sp.simplify(sp.diff(sol, t) - drift)


def ddim_step(x_t, eps_hat, alpha_t, sigma_t, alpha_s, sigma_s):
    """Deterministic DDIM (Song, Meng & Ermon 2021, eq. 12 with eta = 0) from t to s:
    ``x_s = alpha_s x0_hat + sigma_s eps_hat`` with ``x0_hat = (x_t - sigma_t eps_hat)/alpha_t``,
    i.e. ``c_x x_t + c_eps eps_hat`` with ``c_x = alpha_s/alpha_t``, ``c_eps = sigma_s - alpha_s sigma_t/alpha_t``."""
    x0_hat = (x_t - sigma_t * eps_hat) / alpha_t
    return alpha_s * x0_hat + sigma_s * eps_hat


def ddim_point_mass_residual():
    """One DDIM step from s to t (any s, t) minus the exact :func:`point_mass_solution`; 0."""
    x_s, s = sp.Symbol("x_s", real=True), sp.Symbol("s", positive=True)
    alpha_s, sigma_s = alpha.subs(t, s), sigma.subs(t, s)
    eps_hat = (x_s - alpha_s * x0) / sigma_s
    step = ddim_step(x_s, eps_hat, alpha_s, sigma_s, alpha, sigma)
    return sp.simplify(step - point_mass_solution(x_s, s))
