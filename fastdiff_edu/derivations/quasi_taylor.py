"""Quasi-Taylor samplers and ideal derivatives, derived with sympy (book chapter: quasi_taylor).

Tachibana et al. (2021, arXiv 2112.13339) solve the probability-flow ODE (and, in the paper's first
version, the reverse SDE) with Taylor schemes whose higher derivatives are *ideal derivatives*: the
derivatives the trajectory would have if the data were a single point. No automatic
differentiation and no extra model evaluation is involved. The time variable here is the
half-log-SNR ``lambda`` (our choice). Every function returns sympy expressions; the chapter
displays them and ``tests/test_derivations_quasi_taylor.py`` lambdifies them and compares with
:mod:`fastdiff_edu.solvers.quasi_taylor`.

(a) :func:`total_derivatives` -- the Taylor coefficients ``d^n x/dlambda^n`` of the ODE
    ``x' = f(x, lambda) = (alpha'/alpha) x - sigma E(x, lambda)`` for a *generic* model E: they need
    partial derivatives of E of all orders (Jacobians, JVPs).
(b) :func:`single_point_model`, :func:`ideal_partials` -- if the data were the point c, the model would
    be ``(x - alpha c)/sigma``: ``dE/dx = 1/sigma`` and all other partials closed-form; c is eliminated
    with ``c = (x - sigma eps)/alpha`` (eps = the model's output at the current point).
(c) :func:`ideal_derivatives` -- substituting (b) into (a): ``x^(n) = alpha^(n)/alpha (x - sigma eps)
    + sigma^(n) eps`` (:func:`ideal_derivative_residual`); along the path ``dE/dlambda = 0``.
(d) :func:`quasi_taylor_step`, :func:`ddim_step` -- the order-k step is the degree-k Taylor polynomial
    in h of DDIM's step (:func:`series_residual`, for VP and EDM schedules); the whole series is DDIM
    (:func:`edm_series_sum`) where it converges: for VP schedules only for ``h < pi/2``
    (:func:`vp_singularities`).
(e) :func:`ito_taylor_moments` -- the second-order Ito-Taylor step of the reverse SDE with the same
    ideal derivatives: its mean and variance agree with DDPM's posterior step to O(h^2).
"""
from __future__ import annotations

import sympy as sp

__all__ = [
    "lam", "h", "x", "eps", "c", "alpha", "sigma",
    "vp_alpha", "vp_sigma", "edm_alpha", "edm_sigma",
    "ode_rhs", "total_derivatives", "single_point_model", "ideal_partials", "ideal_derivatives",
    "ideal_derivative_formula", "ideal_derivative_residual", "ideal_eps_rate",
    "quasi_taylor_step", "ddim_step", "series_residual", "edm_series_sum", "vp_singularities",
    "taylor_coefficients", "ito_taylor_step", "ito_taylor_moments",
]

#: time (half-log-SNR), step, a coordinate of the sample, the model's output there, the data point
lam = sp.Symbol("lambda", real=True)
h = sp.Symbol("h", positive=True)
x = sp.Symbol("x", real=True)
eps = sp.Symbol(r"\hat\epsilon", real=True)
c = sp.Symbol("c", real=True)
#: a generic schedule as a function of lambda: alpha(lambda) arbitrary, sigma = alpha e^{-lambda}
#: (the definition of lambda = log(alpha/sigma)); and a generic model E(x, lambda)
alpha = sp.Function("alpha", positive=True)
sigma = lambda u: alpha(u) * sp.exp(-u)  # noqa: E731
E = sp.Function("E")

#: VP (alpha^2 = sigmoid(2 lambda)) and EDM/VE (alpha = 1, sigma = e^-lambda) as functions of lambda
vp_alpha = lambda u: 1 / sp.sqrt(1 + sp.exp(-2 * u))  # noqa: E731
vp_sigma = lambda u: 1 / sp.sqrt(1 + sp.exp(2 * u))  # noqa: E731
edm_alpha = lambda u: sp.Integer(1)  # noqa: E731
edm_sigma = lambda u: sp.exp(-u)  # noqa: E731


def ode_rhs(model=None, a=alpha, s=sigma):
    """The PF-ODE in lambda: ``dx/dlambda = (d log alpha/d lambda) x - sigma model(x, lambda)``."""
    model = E(x, lam) if model is None else model
    return sp.diff(a(lam), lam) / a(lam) * x - s(lam) * model


def total_derivatives(order, model=None, a=alpha, s=sigma):
    """``[x', x'', ..., x^(order)]`` along the ODE as functions of (x, lambda): each is the previous one
    differentiated with the operator ``D = d/dlambda + f d/dx`` (chain rule, f = :func:`ode_rhs`)."""
    f = ode_rhs(model, a, s)
    out = [f]
    for _ in range(order - 1):
        out.append(sp.diff(out[-1], lam) + f * sp.diff(out[-1], x))
    return out


def single_point_model(a=alpha, s=sigma):
    """The exact noise prediction if the data were the single point c: ``(x - alpha c)/sigma``."""
    return (x - a(lam) * c) / s(lam)


def _eliminate_point(expr, a=alpha, s=sigma):
    """Replace the data point c by what the model says it is: ``c = x0_hat = (x - sigma eps)/alpha``."""
    return sp.simplify(expr.subs(c, (x - s(lam) * eps) / a(lam)))


def ideal_partials(a=alpha, s=sigma):
    """The partial derivatives of the single-point model, in terms of (x, eps, lambda): a dict
    ``{'E_x': 1/sigma, 'E_xx': 0, 'E_lambda': ..., 'E_xlambda': ...}``."""
    m = single_point_model(a, s)
    parts = {"E_x": sp.diff(m, x), "E_xx": sp.diff(m, x, 2), "E_lambda": sp.diff(m, lam),
             "E_xlambda": sp.diff(m, x, lam)}
    return {k: _eliminate_point(v, a, s) for k, v in parts.items()}


def ideal_derivatives(order, a=alpha, s=sigma):
    """``[x', ..., x^(order)]`` with the single-point model substituted before differentiating, then
    c eliminated: closed-form in (x, eps, lambda) -- the "ideal derivative substitution"."""
    return [_eliminate_point(d, a, s) for d in total_derivatives(order, single_point_model(a, s), a, s)]


def ideal_derivative_formula(n, a=alpha, s=sigma):
    """``alpha^(n)/alpha (x - sigma eps) + sigma^(n) eps``: alpha^(n) x0_hat + sigma^(n) eps."""
    return sp.diff(a(lam), lam, n) / a(lam) * (x - s(lam) * eps) + sp.diff(s(lam), lam, n) * eps


def ideal_derivative_residual(n, a=alpha, s=sigma):
    """n-th ideal derivative minus :func:`ideal_derivative_formula`; simplifies to 0."""
    return sp.simplify(ideal_derivatives(n, a, s)[-1] - ideal_derivative_formula(n, a, s))


def ideal_eps_rate(a=alpha, s=sigma):
    """``dE/dlambda = E_lambda + E_x x'`` along the path for the single-point model: 0 (eps and x0_hat
    are constants of the motion)."""
    m = single_point_model(a, s)
    f = ode_rhs(m, a, s)
    return sp.simplify(sp.diff(m, lam) + sp.diff(m, x) * f)


def quasi_taylor_step(order, a=alpha, s=sigma):
    """The order-k step ``sum_{n<=k} h^n/n! x^(n)`` with the ideal derivatives (x^(0) = x)."""
    ders = ideal_derivatives(order, a, s)
    return x + sum(h ** (n + 1) / sp.factorial(n + 1) * d for n, d in enumerate(ders))


def ddim_step(a=alpha, s=sigma):
    """DDIM from lambda to lambda + h: ``alpha(lambda+h) x0_hat + sigma(lambda+h) eps``."""
    return a(lam + h) * (x - s(lam) * eps) / a(lam) + s(lam + h) * eps


def series_residual(order, a=vp_alpha, s=vp_sigma):
    """Quasi-Taylor step of order k minus the degree-k Taylor polynomial (in h) of DDIM's step, for a
    concrete schedule (default VP): 0 -- the quasi-Taylor steps are the truncations of DDIM."""
    poly = sp.series(ddim_step(a, s), h, 0, order + 1).removeO()
    return sp.simplify(quasi_taylor_step(order, a, s) - poly)


def edm_series_sum():
    """For alpha = 1, sigma = e^-lambda the whole series sums in closed form; returns
    (sum_{n>=0} h^n/n! x^(n), the same minus DDIM's step) -- the second is 0."""
    n = sp.Symbol("n", integer=True, nonnegative=True)
    total = x + sp.summation(h**n / sp.factorial(n) * (-1) ** n * sp.exp(-lam) * eps, (n, 1, sp.oo))
    return total, sp.simplify(total - ddim_step(edm_alpha, edm_sigma))


def vp_singularities():
    """Where VP's ``alpha(lambda)^2 = 1/(1 + e^{-2 lambda})`` has its poles in the complex plane:
    ``lambda = +-i pi/2`` (mod i pi). The Taylor series in h therefore converges only for ``h < pi/2``."""
    z = sp.Symbol("z")
    return sp.solve(sp.Eq(1 + sp.exp(-2 * z), 0), z)


def taylor_coefficients(order, a=vp_alpha, s=vp_sigma):
    """``(a_n, b_n)`` = ``alpha^(n)/(n! alpha)``, ``sigma^(n)/(n! sigma)`` for n = 0..order, as functions
    of lambda: the weights the sampler's Taylor-mode recursion computes."""
    A = [sp.simplify(sp.diff(a(lam), lam, n) / (sp.factorial(n) * a(lam))) for n in range(order + 1)]
    B = [sp.simplify(sp.diff(s(lam), lam, n) / (sp.factorial(n) * s(lam))) for n in range(order + 1)]
    return A, B


def ito_taylor_step(a=vp_alpha, s=vp_sigma):
    """The Ito-Taylor order-2 step of ``dx = A dlambda + B dW``, ``A = (log alpha)' x - 2 sigma E``,
    ``B = sqrt(2) sigma``, with the single-point model, as ``(mean, coefficient of dW, of dZ)``:

        x + A h + (L0 A) h^2/2 + (B + h L0 B) dW + (L1 A - L0 B) dZ,

    ``L0 = d/dlambda + A d/dx + B^2/2 d^2/dx^2``, ``L1 = B d/dx``; c eliminated."""
    m = single_point_model(a, s)
    A = sp.diff(a(lam), lam) / a(lam) * x - 2 * s(lam) * m
    B = sp.sqrt(2) * s(lam)
    L0 = lambda g: sp.diff(g, lam) + A * sp.diff(g, x) + B**2 / 2 * sp.diff(g, x, 2)  # noqa: E731
    L1 = lambda g: B * sp.diff(g, x)  # noqa: E731
    mean = x + A * h + L0(A) * h**2 / 2
    return tuple(_eliminate_point(e, a, s) for e in (mean, B + h * L0(B), L1(A) - L0(B)))


def ito_taylor_moments(a=vp_alpha, s=vp_sigma, order=3):
    """Mean and variance of one Ito-Taylor step minus those of DDPM's posterior step
    (``alpha_s x0_hat + sigma_s e^{-h} eps``, variance ``sigma_s^2 (1 - e^{-2h})``), as series in h up
    to ``h^order``; both start at h^3 (the scheme is consistent to second order in the moments).
    Returns ``(mean, variance, mean difference, variance difference)``."""
    mean, cw, cz = ito_taylor_step(a, s)
    var = cw**2 * h + 2 * cw * cz * h**2 / 2 + cz**2 * h**3 / 3   # Var dW = h, Cov = h^2/2, Var dZ = h^3/3
    x0_hat = (x - s(lam) * eps) / a(lam)
    exact_mean = a(lam + h) * x0_hat + s(lam + h) * sp.exp(-h) * eps
    exact_var = s(lam + h) ** 2 * (1 - sp.exp(-2 * h))
    dm = sp.series(mean - exact_mean, h, 0, order + 1).removeO()
    dv = sp.series(var - exact_var, h, 0, order + 1).removeO()
    dm, dv = (sum(sp.simplify(sp.expand(d).coeff(h, p).rewrite(sp.exp)) * h**p for p in range(order + 1))
              for d in (dm, dv))
    return mean, var, dm, dv
