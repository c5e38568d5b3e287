"""GENIE's second truncated Taylor method (TTM2), derived with sympy (book chapter: genie).

Every function returns sympy expressions and has no side effects; the genie chapter displays
them and ``tests/test_derivations_genie.py`` lambdifies them and compares them with the numbers
that :mod:`fastdiff_edu.solvers.genie` uses.

(a) :func:`scaled_ode` -- the eps form of the probability-flow ODE, ``dx/dt = (log alpha)' x -
    sigma lambda' eps``, becomes ``d x_bar/d sigma_bar = eps`` in ``x_bar = x/alpha``,
    ``sigma_bar = sigma/alpha`` (GENIE's gamma) for any schedule.
(b) :func:`taylor_step` -- the k-th truncated Taylor method in sigma_bar; k = 1 is DDIM, k = 2
    is GENIE's TTM2, ``x_bar + h eps + h^2/2 d eps/d sigma_bar``; :func:`ttm2_local_error` is its
    local error, ``h^3/6 eps''`` + O(h^4).
(c) :func:`total_derivative` -- the chain rule for ``eps(x(sigma_bar), t(sigma_bar))``: the JVP of
    the network in its inputs (x, t) with tangent ``(dx/d sigma_bar, dt/d sigma_bar)``, where
    ``dx/d sigma_bar = alpha eps + x d log alpha/d sigma_bar`` (:func:`x_tangent`) and
    ``dt/d sigma_bar = 1/sigma_bar'(t)`` (:func:`t_tangent`).
(d) :func:`x_space_coefficients` -- the TTM2 step in x: DDIM's (c_x, c_eps) plus
    ``c_d = alpha_{n+1} h^2/2``.
(e) :func:`gaussian_total_derivative` -- for Gaussian data the total derivative is
    ``eps s^2/(sigma_bar (s^2 + sigma_bar^2))`` (the form the distilled head is built on), and
    :func:`afs_eps` -- the analytic first step's ``eps = sigma x/(alpha^2 + sigma^2)``, exact for
    N(0, 1) data.

All derivations are one-dimensional: the solvers act on each coordinate alike (the JVP couples
coordinates only through the network, which stays an unspecified function here).
"""
from __future__ import annotations

import sympy as sp

__all__ = [
    "t", "sb", "h", "s2", "x", "x_bar", "eps_sym", "alpha_fn", "sigma_fn", "eps_fn",
    "scaled_ode", "scaled_ode_difference", "taylor_step", "exact_step_series", "ttm2_local_error",
    "total_derivative", "x_tangent", "x_tangent_difference", "t_tangent", "x_space_coefficients",
    "x_space_difference", "gaussian_eps", "gaussian_total_derivative", "gaussian_check", "afs_eps",
    "vp_linear_sigma_bar",
]

#: time, the scaled noise level sigma_bar (GENIE's gamma), a step h in sigma_bar, a data variance s^2
t = sp.Symbol("t", real=True)
sb = sp.Symbol(r"\bar\sigma", positive=True)
h = sp.Symbol("h", real=True)
s2 = sp.Symbol("s^2", positive=True)
#: a coordinate of the sample, its scaled version and the noise prediction's value
x, x_bar, eps_sym = sp.symbols(r"x \bar{x} \epsilon", real=True)
#: the schedule and the network, unspecified
alpha_fn, sigma_fn = sp.Function(r"\alpha"), sp.Function(r"\sigma")
eps_fn = sp.Function(r"\epsilon")


def scaled_ode() -> tuple[sp.Expr, sp.Expr]:
    """(d x_bar/dt, d sigma_bar/dt) along the eps-form ODE, with x_bar = x/alpha, sigma_bar = sigma/alpha.

    The eps-form ODE is dx/dt = (log alpha)' x - sigma lambda' eps with lambda = log(alpha/sigma).
    """
    a, s = alpha_fn(t), sigma_fn(t)
    xt = sp.Function("x")(t)
    lam = sp.log(a / s)
    dx_dt = sp.diff(sp.log(a), t) * xt - s * sp.diff(lam, t) * eps_sym
    dxbar_dt = sp.diff(xt / a, t).subs(sp.Derivative(xt, t), dx_dt)
    dsb_dt = sp.diff(s / a, t)
    return sp.simplify(dxbar_dt), sp.simplify(dsb_dt)


def scaled_ode_difference() -> sp.Expr:
    """(d x_bar/dt) / (d sigma_bar/dt) - eps: zero, i.e. d x_bar/d sigma_bar = eps for any schedule."""
    dxbar_dt, dsb_dt = scaled_ode()
    return sp.simplify(dxbar_dt / dsb_dt - eps_sym)


def taylor_step(order: int) -> sp.Expr:
    """The ``order``-th truncated Taylor method for d x_bar/d sigma_bar = eps(sigma_bar) from sigma_bar:

    x_bar + sum_{k=1}^{order} h^k/k! d^{k-1} eps/d sigma_bar^{k-1}; order 1 is DDIM, order 2 TTM2.
    """
    e = eps_fn(sb)
    return x_bar + sum(h**k / sp.factorial(k) * sp.diff(e, sb, k - 1) for k in range(1, order + 1))


def exact_step_series(order: int) -> sp.Expr:
    """The exact solution x_bar(sigma_bar + h) of x_bar' = eps, Taylor-expanded to O(h^(order+1)):
    its k-th derivative is the (k-1)-th derivative of eps along the solution (the ODE)."""
    return x_bar + sum(sp.diff(eps_fn(sb), sb, k - 1) * h**k / sp.factorial(k) for k in range(1, order + 1))


def ttm2_local_error() -> sp.Expr:
    """Exact step minus TTM2, to O(h^4): h^3/6 d^2 eps/d sigma_bar^2 (the local error of a 2nd-order method)."""
    return sp.expand(exact_step_series(3) - taylor_step(2))


def total_derivative() -> tuple[sp.Expr, sp.Expr]:
    """(d/d sigma_bar eps(x(sigma_bar), t(sigma_bar)), and the same in terms of partials).

    sympy's chain rule gives d eps/dx * dx/d sigma_bar + d eps/dt * dt/d sigma_bar: the JVP of the
    network in its inputs (x, t) with tangent (dx/d sigma_bar, dt/d sigma_bar).
    """
    X, T = sp.Function("x")(sb), sp.Function("t")(sb)
    total = sp.diff(eps_fn(X, T), sb)
    return sp.Derivative(eps_fn(X, T), sb), total


def x_tangent() -> sp.Expr:
    """dx/d sigma_bar for x = alpha(sigma_bar) x_bar(sigma_bar) with d x_bar/d sigma_bar = eps."""
    a = sp.Function(r"\alpha")(sb)
    xb = sp.Function(r"\bar{x}")(sb)
    return sp.diff(a * xb, sb).subs(sp.Derivative(xb, sb), eps_sym)


def x_tangent_difference() -> sp.Expr:
    """x_tangent() - (alpha eps + x d log alpha/d sigma_bar) with x = alpha x_bar: zero."""
    a = sp.Function(r"\alpha")(sb)
    xb = sp.Function(r"\bar{x}")(sb)
    claimed = a * eps_sym + (a * xb) * sp.diff(sp.log(a), sb)
    return sp.simplify(x_tangent() - claimed)


def vp_linear_sigma_bar(beta_0: float = 0.1, beta_1: float = 20.0) -> tuple[sp.Expr, sp.Expr]:
    """(log alpha(t), sigma_bar(t)) of the continuous VP-linear schedule, closed form in t."""
    b0, b1 = sp.nsimplify(beta_0), sp.nsimplify(beta_1)
    log_alpha = -b0 * t / 2 - (b1 - b0) * t**2 / 4
    return log_alpha, sp.sqrt(1 - sp.exp(2 * log_alpha)) / sp.exp(log_alpha)


def t_tangent(log_alpha: sp.Expr, sigma_bar: sp.Expr) -> tuple[sp.Expr, sp.Expr]:
    """(dt/d sigma_bar, d log alpha/d sigma_bar) for a schedule given in closed form in t."""
    dt = 1 / sp.diff(sigma_bar, t)
    return dt, sp.diff(log_alpha, t) * dt


def x_space_coefficients() -> tuple[sp.Expr, sp.Expr, sp.Expr]:
    """(c_x, c_eps, c_d) of the TTM2 step in x: x_{n+1} = alpha_{n+1} * TTM2(x_n/alpha_n)."""
    a_n, a_n1, sb_n, sb_n1 = sp.symbols(r"\alpha_n \alpha_{n+1} \bar\sigma_n \bar\sigma_{n+1}", positive=True)
    xn, d_eps = sp.symbols(r"x_n \epsilon'", real=True)
    step = sb_n1 - sb_n
    x_next = sp.expand(a_n1 * (xn / a_n + step * eps_sym + step**2 / 2 * d_eps))
    return x_next.coeff(xn), sp.factor(x_next.coeff(eps_sym)), sp.factor(x_next.coeff(d_eps))


def x_space_difference() -> sp.Expr:
    """The eps coefficient of TTM2 in x minus DDIM's ``sigma_{n+1} - alpha_{n+1} sigma_n/alpha_n``: zero."""
    a_n, a_n1, sb_n, sb_n1 = sp.symbols(r"\alpha_n \alpha_{n+1} \bar\sigma_n \bar\sigma_{n+1}", positive=True)
    ddim = a_n1 * sb_n1 - a_n1 * (a_n * sb_n) / a_n  # sigma = alpha sigma_bar
    return sp.simplify(x_space_coefficients()[1] - ddim)


def gaussian_eps() -> sp.Expr:
    """eps(x_bar, sigma_bar) = E[eps | x_bar] for data N(0, s^2): sigma_bar x_bar/(s^2 + sigma_bar^2)."""
    return sb * x_bar / (s2 + sb**2)


def gaussian_total_derivative() -> sp.Expr:
    """d eps/d sigma_bar along the ODE for N(0, s^2) data: d eps/d sigma_bar + d eps/d x_bar * eps."""
    e = gaussian_eps()
    return sp.simplify(sp.diff(e, sb) + sp.diff(e, x_bar) * e)


def gaussian_check() -> sp.Expr:
    """gaussian_total_derivative() - eps s^2/(sigma_bar (s^2 + sigma_bar^2)): zero."""
    e = gaussian_eps()
    return sp.simplify(gaussian_total_derivative() - e * s2 / (sb * (s2 + sb**2)))


def afs_eps() -> sp.Expr:
    """The analytic first step's noise prediction: exact eps for N(0, 1) data at (alpha, sigma).

    eps = -sigma * score and x_t ~ N(0, alpha^2 + sigma^2), so eps = sigma x/(alpha^2 + sigma^2).
    """
    a, s = sp.symbols(r"\alpha \sigma", positive=True)
    var = a**2 + s**2
    log_p = -x**2 / (2 * var)
    return sp.simplify(-s * sp.diff(log_p, x))
