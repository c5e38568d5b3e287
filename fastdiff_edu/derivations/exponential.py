"""Exponential integrators for the probability-flow ODE, derived with sympy (book chapter: dpm_solver).

Every function returns sympy expressions and has no side effects; the dpm_solver chapter displays
them and ``tests/test_derivations_exponential.py`` lambdifies them and compares with the numbers
that :mod:`fastdiff_edu.exponential` and :mod:`fastdiff_edu.solvers.dpm_solver` use.

The chain of results:

(a) :func:`lambda_form_difference` -- with the half-log-SNR lambda = log(alpha/sigma) as time, the
    eps form ``dx/dt = f x - sigma lambda' eps`` of the recap chapter becomes
    ``dx/dlambda = (d log alpha/dlambda) x - sigma eps``: linear in x, plus a nonlinear part.
    :func:`variation_of_constants` integrates the linear part exactly (ansatz ``x = alpha c``,
    or ``x = sigma c`` for the data prediction) and gives Lu et al. (2022), eq. 3.4,
    ``x_t = (alpha_t/alpha_s) x_s - alpha_t int e^{-lambda} eps dlambda``, and Lu et al. (2022b),
    eq. 9, ``x_t = (sigma_t/sigma_s) x_s + sigma_t int e^{lambda} x0 dlambda``;
    :func:`solution_residual` checks that both satisfy the ODE.
(b) :func:`phi` -- the phi functions ``phi_k(z) = (e^z - sum_{j<k} z^j/j!)/z^k``, their recursion
    (:func:`phi_recursion_residual`), integral form and series at 0 (:func:`phi_series`).
    :func:`taylor_integral` integrates the n-th Taylor term of eps (or x0) against e^{-lambda}
    (or e^{lambda}) over a step and :func:`taylor_integral_difference` shows that it is
    ``(sigma_t/alpha_t) h^{n+1} phi_{n+1}(h)`` (or ``(alpha_t/sigma_t) h^{n+1} phi_{n+1}(-h)``);
    :func:`expansion_weight` is the resulting weight of ``h^n F^(n)`` in the step, the number
    :func:`fastdiff_edu.exponential.expansion_weights` computes.
(c) Multistep: the last k predictions sit at lambda_s + h u_j with u_0 = 0, u_1 = -r0,
    u_2 = -(r0 + r1), where r0 = h0/h and r1 = h1/h are the previous step sizes in units of the
    current one. :func:`derivative_weight_matrix` gives the derivatives of the interpolating
    polynomial (``h^n F^(n) ~ sum_j a_nj F_j``; cf. ``dpm_solver.derivative_weights``);
    :func:`multistep_exactness_residual` shows that a k-step method with these estimates is exact
    when the prediction is a polynomial of degree k - 1 in lambda.
    THE KEY RESULT: :func:`reference_differences` writes the finite differences of the reference
    code's third-order multistep update (D1_0, D1_1, D1, D2); D1 is the interpolant's first
    derivative, but D2 is the second *divided difference*, half of the interpolant's second
    derivative (:func:`divided_difference_identities`, :func:`difference_expansions`:
    ``D1 = h F' + O(h^3)``, ``D2 = h^2 F''/2 + O(h^3)``). The Taylor expansion needs
    ``h^3 phi_3 F''``, so the published ``phi_3 D2`` term is half of it:
    :func:`third_order_local_error` gives a local error of order h^3 (global order 2) for the
    published form and h^4 (global order 3) for the corrected ``2 phi_3 D2``.

All derivations are one-dimensional: the solvers act on each coordinate alike.
"""
from __future__ import annotations

from functools import lru_cache

import sympy as sp

__all__ = [
    "t", "lam", "lam_s", "lam_t", "h", "u", "z", "x", "eps", "r0", "r1", "F",
    "alpha_t", "sigma_t", "alpha_s", "sigma_s", "PREDICTIONS",
    "pf_ode_t", "pf_ode_lambda", "lambda_form", "lambda_form_difference",
    "variation_of_constants", "exponential_integrator_solution", "solution_residual", "data_form_difference",
    "phi", "phi_recursion", "phi_recursion_residual", "phi_integral_form", "phi_series", "phi_series_terms",
    "taylor_integral", "taylor_integral_closed_form", "taylor_integral_difference", "expansion_weight",
    "interpolation_nodes", "derivative_weight_matrix", "multistep_weights", "multistep_exactness_residual",
    "reference_differences", "divided_difference_identities", "difference_expansions",
    "reference_code_phis", "third_order_step", "exact_step", "third_order_local_error",
    "exp_taylor_coefficients", "cubic_taylor_coefficients",
]

PREDICTIONS = ("eps", "x0")

#: time of the forward process, and the half-log-SNR lambda as the new time variable
t = sp.Symbol("t", real=True)
lam = sp.Symbol("lambda", real=True)
#: lambda at the start s and at the end t of a step, the step h = lambda_t - lambda_s, and the
#: position u = lambda - lambda_s inside it
lam_s, lam_t = sp.symbols("lambda_s lambda_t", real=True)
h = sp.Symbol("h", positive=True)
u = sp.Symbol("u", real=True)
#: the argument of the phi functions
z = sp.Symbol("z")
#: a coordinate of the sample and the noise prediction at it
x = sp.Symbol("x", real=True)
eps = sp.Symbol("epsilon", real=True)
#: earlier step sizes in units of the current one: r0 = h0/h (the last step), r1 = h1/h (the one before)
r0, r1 = sp.symbols("r_0 r_1", positive=True)
#: Taylor coefficients F^(n)(lambda_s) of the prediction F (eps or x0) along the trajectory
F = sp.symbols("F_0:6", real=True)
#: the schedule at the end t and the start s of a step
alpha_t, sigma_t, alpha_s, sigma_s = sp.symbols("alpha_t sigma_t alpha_s sigma_s", positive=True)


def _check_prediction(prediction: str) -> None:
    if prediction not in PREDICTIONS:
        raise ValueError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")


# -- (a) the ODE in lambda and variation of constants ---------------------------------------------------
def pf_ode_t():
    """The eps form of the PF-ODE in t (recap chapter): ``dx/dt = f x - sigma lambda' eps`` with
    ``f = d log alpha/dt`` and ``lambda = log(alpha/sigma)``; alpha, sigma unspecified functions of t."""
    alpha = sp.Function("alpha", positive=True)(t)
    sigma = sp.Function("sigma", positive=True)(t)
    lam_of_t = sp.log(alpha / sigma)
    return sp.diff(sp.log(alpha), t) * x - sigma * sp.diff(lam_of_t, t) * eps


def pf_ode_lambda():
    """``dx/dlambda = (dx/dt)/(dlambda/dt)``: divide :func:`pf_ode_t` by ``lambda'(t)`` (lambda is
    monotone in t, so it can serve as time). Returns ``(dx/dlambda, dlog alpha/dlambda)`` as
    expressions in t, where ``d log alpha/dlambda = (d log alpha/dt)/(d lambda/dt)``."""
    alpha = sp.Function("alpha", positive=True)(t)
    sigma = sp.Function("sigma", positive=True)(t)
    dlam_dt = sp.diff(sp.log(alpha / sigma), t)
    return pf_ode_t() / dlam_dt, sp.diff(sp.log(alpha), t) / dlam_dt


def lambda_form():
    """The same division written with f = d log alpha/dt and lambda(t) left as named functions:
    ``Eq(dx/dlambda, f x/lambda' - sigma eps)``; the coefficient f/lambda' is d log alpha/dlambda
    by the chain rule (the form the chapter displays; :func:`lambda_form_difference` checks it
    with alpha and sigma themselves)."""
    f = sp.Function("f")(t)
    lam_of_t = sp.Function("lambda")(t)
    sigma = sp.Function("sigma", positive=True)(t)
    rhs_t = f * x - sigma * sp.diff(lam_of_t, t) * eps
    return sp.Eq(sp.Symbol(r"\frac{dx}{dt}"), rhs_t), sp.Eq(sp.Symbol(r"\frac{dx}{d\lambda}"),
                                                             sp.expand(rhs_t / sp.diff(lam_of_t, t)))


def lambda_form_difference():
    """:func:`pf_ode_lambda` minus ``(d log alpha/dlambda) x - sigma eps``; simplifies to 0."""
    sigma = sp.Function("sigma", positive=True)(t)
    dx_dlam, dlog_alpha_dlam = pf_ode_lambda()
    return sp.simplify(dx_dlam - (dlog_alpha_dlam * x - sigma * eps))


def _schedule_in_lambda():
    """alpha as an unspecified function of lambda; sigma = alpha e^{-lambda} by definition of lambda."""
    alpha = sp.Function("alpha", positive=True)(lam)
    return alpha, alpha * sp.exp(-lam)


def _rhs_in_lambda(prediction: str, xx, f_of_lam):
    """The right-hand side dx/dlambda in the eps form or, with eps = (x - alpha x0)/sigma, the data form."""
    alpha, sigma = _schedule_in_lambda()
    if prediction == "eps":
        return sp.diff(sp.log(alpha), lam) * xx - sigma * f_of_lam
    return sp.diff(sp.log(sigma), lam) * xx + alpha * f_of_lam


def data_form_difference():
    """The eps form with eps = (x - alpha x0)/sigma minus the data form
    ``(d log sigma/dlambda) x + alpha x0`` (DPM-Solver++'s ODE); simplifies to 0, because
    ``d log sigma/dlambda = d log alpha/dlambda - 1``."""
    alpha, sigma = _schedule_in_lambda()
    x0 = sp.Symbol("x_0", real=True)
    eps_of_x0 = (x - alpha * x0) / sigma
    return sp.simplify(_rhs_in_lambda("eps", x, eps_of_x0) - _rhs_in_lambda("x0", x, x0))


def variation_of_constants(prediction: str = "eps"):
    """Lagrange's ansatz for the linear ODE in lambda: ``x = alpha(lambda) c(lambda)`` (eps form)
    or ``x = sigma(lambda) c(lambda)`` (data form), where alpha (or sigma) solves the homogeneous
    part. Substituting into the ODE and solving for c' leaves only the nonlinear term:

        eps:  c' = -e^{-lambda} eps(lambda),       data:  c' = e^{lambda} x0(lambda).

    Returns ``Eq(c', ...)``; integrating from lambda_s gives :func:`exponential_integrator_solution`.
    """
    _check_prediction(prediction)
    alpha, sigma = _schedule_in_lambda()
    c = sp.Function("c")(lam)
    pred = sp.Function(r"\epsilon" if prediction == "eps" else "x_0")(lam)
    carrier = alpha if prediction == "eps" else sigma
    ode = sp.Eq(sp.diff(carrier * c, lam), _rhs_in_lambda(prediction, carrier * c, pred))
    c_prime = sp.solve(ode, sp.diff(c, lam))[0]
    return sp.Eq(sp.diff(c, lam), sp.simplify(c_prime))


def exponential_integrator_solution(prediction: str = "eps"):
    """The exact solution from lambda_s to lambda of the ODE in lambda, with the integral of the
    prediction left unevaluated (Lu et al. 2022, eq. 3.4; Lu et al. 2022b, eq. 9):

        eps:   x(lambda) = (alpha/alpha_s) x_s - alpha int_{lambda_s}^{lambda} e^{-v} eps(v) dv
        data:  x(lambda) = (sigma/sigma_s) x_s + sigma int_{lambda_s}^{lambda} e^{v} x0(v) dv

    Built from :func:`variation_of_constants`: c(lambda) = c(lambda_s) + int c'. Returns
    ``(x(lambda), x_s)`` with ``x_s`` the symbol of the starting value.
    """
    _check_prediction(prediction)
    alpha, sigma = _schedule_in_lambda()
    v = sp.Symbol("v", real=True)
    x_s = sp.Symbol("x_s", real=True)
    c_prime = variation_of_constants(prediction).rhs
    carrier = alpha if prediction == "eps" else sigma
    c_s = x_s / carrier.subs(lam, lam_s)
    c_of_lam = c_s + sp.Integral(c_prime.subs(lam, v), (v, lam_s, lam))
    return sp.expand(carrier * c_of_lam), x_s


def solution_residual(prediction: str = "eps"):
    """``(dx/dlambda - rhs, x(lambda_s) - x_s)`` for :func:`exponential_integrator_solution`: both 0."""
    sol, x_s = exponential_integrator_solution(prediction)
    pred = sp.Function(r"\epsilon" if prediction == "eps" else "x_0")(lam)
    residual = sp.simplify(sp.diff(sol, lam) - _rhs_in_lambda(prediction, sol, pred))
    start = sp.simplify(sol.subs(lam, lam_s).doit() - x_s)
    return residual, start


# -- (b) phi functions and the Taylor-expanded integrals --------------------------------------------------
def phi(k: int, arg=z):
    """``phi_k(z) = (e^z - sum_{j<k} z^j/j!) / z^k`` (phi_0 = e^z): the closed form, which cancels
    catastrophically in floating point for small |z| (see the chapter)."""
    if k < 0:
        raise ValueError("k must be >= 0")
    return (sp.exp(arg) - sum(arg**j / sp.factorial(j) for j in range(k))) / arg**k


def phi_recursion(k: int, arg=z):
    """``phi_{k+1}(z) = (phi_k(z) - 1/k!)/z`` applied k times from ``phi_0 = e^z``."""
    out = sp.exp(arg)
    for j in range(k):
        out = (out - 1 / sp.factorial(j)) / arg
    return out


def phi_recursion_residual(k: int):
    """``phi_{k+1}(z) - (phi_k(z) - 1/k!)/z``, simplified: 0."""
    return sp.simplify(phi(k + 1) - (phi(k) - 1 / sp.factorial(k)) / z)


def phi_integral_form(k: int, arg=z):
    """``phi_k(z) = int_0^1 e^{(1 - theta) z} theta^{k-1}/(k-1)! dtheta`` (k >= 1), evaluated by sympy:
    the form that links phi_k to the Taylor integrals below."""
    if k < 1:
        raise ValueError("the integral form needs k >= 1")
    theta = sp.Symbol("theta", positive=True)
    return sp.integrate(sp.exp((1 - theta) * arg) * theta ** (k - 1) / sp.factorial(k - 1), (theta, 0, 1),
                        conds="none")


def phi_series(k: int, order: int = 4, arg=z):
    """The series of :func:`phi` at z = 0 up to O(z^order), computed by sympy from the closed form."""
    return sp.series(phi(k, arg), arg, 0, order)


def phi_series_terms(k: int, terms: int, arg=z):
    """The known series ``sum_{j < terms} z^j/(j + k)!`` (what ``fastdiff_edu.exponential.phi`` sums
    for |z| < 0.5), as a polynomial."""
    return sum(arg**j / sp.factorial(j + k) for j in range(terms))


def taylor_integral(n: int, prediction: str = "eps"):
    """The integral of the n-th Taylor term of the prediction against the exponential weight of
    :func:`exponential_integrator_solution`, over one step, with u = lambda - lambda_s:

        eps:   int_0^h e^{-(lambda_s + u)} u^n/n! du = (sigma_t/alpha_t) int_0^h e^{h - u} u^n/n! du
        data:  int_0^h e^{lambda_s + u} u^n/n! du   = (alpha_t/sigma_t) int_0^h e^{u - h} u^n/n! du

    using e^{-lambda_t} = sigma_t/alpha_t and lambda_s = lambda_t - h. Evaluated by sympy.
    """
    _check_prediction(prediction)
    sign = 1 if prediction == "eps" else -1
    scale = sigma_t / alpha_t if prediction == "eps" else alpha_t / sigma_t
    return scale * sp.integrate(sp.exp(sign * (h - u)) * u**n / sp.factorial(n), (u, 0, h))


def taylor_integral_closed_form(n: int, prediction: str = "eps"):
    """The claimed value of :func:`taylor_integral`: ``(sigma_t/alpha_t) h^{n+1} phi_{n+1}(h)`` (eps)
    or ``(alpha_t/sigma_t) h^{n+1} phi_{n+1}(-h)`` (data)."""
    _check_prediction(prediction)
    if prediction == "eps":
        return sigma_t / alpha_t * h ** (n + 1) * phi(n + 1, h)
    return alpha_t / sigma_t * h ** (n + 1) * phi(n + 1, -h)


def taylor_integral_difference(n: int, prediction: str = "eps"):
    """:func:`taylor_integral` minus :func:`taylor_integral_closed_form`; simplifies to 0."""
    return sp.simplify(taylor_integral(n, prediction) - taylor_integral_closed_form(n, prediction))


@lru_cache(maxsize=None)
def expansion_weight(n: int, prediction: str = "eps"):
    """The weight of ``h^n F^(n)(lambda_s)`` in the exact step (the coefficient
    ``fastdiff_edu.exponential.expansion_weights`` returns in column n):

        eps:   -alpha_t * taylor_integral / h^n = -sigma_t h phi_{n+1}(h)
        data:   sigma_t * taylor_integral / h^n =  alpha_t h phi_{n+1}(-h)
    """
    _check_prediction(prediction)
    carrier = -alpha_t if prediction == "eps" else sigma_t
    return sp.simplify(carrier * taylor_integral(n, prediction) / h**n)


# -- (c) multistep: derivative estimates from earlier predictions ------------------------------------------
def interpolation_nodes(k: int):
    """Where the last k predictions sit, in units of the current step h, newest first:
    ``0, -r0, -(r0 + r1)``."""
    if k not in (1, 2, 3):
        raise ValueError(f"k must be 1, 2 or 3, got {k}")
    return [sp.Integer(0), -r0, -(r0 + r1)][:k]


def _lagrange_basis(nodes, j, var):
    out = sp.Integer(1)
    for m, node in enumerate(nodes):
        if m != j:
            out *= (var - node) / (nodes[j] - node)
    return out


def derivative_weight_matrix(nodes):
    """Matrix ``a`` (rows n, columns j) with ``h^n F^(n)(0) ~ sum_j a_nj F(u_j)``: the n-th derivative
    at 0 of the polynomial through the values at the nodes u_j (measured in units of h, so the
    derivative in u is h^n times the derivative in lambda). Nodes may be symbols or numbers."""
    nodes = [sp.sympify(n) for n in nodes]
    k = len(nodes)
    basis = [_lagrange_basis(nodes, j, u) for j in range(k)]
    return sp.Matrix(k, k, lambda n, j: sp.simplify(sp.diff(basis[j], u, n).subs(u, 0)))


def multistep_weights(k: int, prediction: str = "eps"):
    """The weights ``W_j`` of ``x_t = c_x x_s + sum_j W_j F_j`` (F_0 the newest prediction) of the
    k-step exponential integrator: the Taylor weights of :func:`expansion_weight` applied to the
    derivative estimates of :func:`derivative_weight_matrix` (``W = w @ a``); cf.
    ``fastdiff_edu.solvers.dpm_solver.multistep_weights`` with ``solver_type="taylor"``."""
    a = derivative_weight_matrix(interpolation_nodes(k))
    w = sp.Matrix([[expansion_weight(n, prediction) for n in range(k)]])
    return [sp.simplify(e) for e in (w * a)]


def multistep_exactness_residual(k: int, prediction: str = "eps"):
    """The k-step step minus the exact step when the prediction is a polynomial of degree k - 1 in
    lambda (generic coefficients, non-uniform steps): simplifies to 0. The exact step integrates the
    polynomial's Taylor terms with :func:`expansion_weight`; the k-step method sees it only through
    its values at the k nodes, from which the interpolant recovers it exactly."""
    coeffs = F[:k]
    poly = sum(coeffs[n] * u**n / sp.factorial(n) for n in range(k))  # in units of h: u = (lambda - lambda_s)/h
    values = [poly.subs(u, node) for node in interpolation_nodes(k)]
    step = sum(w * v for w, v in zip(multistep_weights(k, prediction), values))
    exact = sum(expansion_weight(n, prediction) * coeffs[n] for n in range(k))
    return sp.simplify(step - exact)


def reference_differences(values=None):
    """The finite differences of the reference code's third-order multistep update
    (``multistep_dpm_solver_third_update``; Lu et al. 2022b, Appendix B), from the newest three
    predictions ``(F_s, F_p1, F_p2)`` at ``lambda_s``, ``lambda_s - h0``, ``lambda_s - h0 - h1``:

        D1_0 = (F_s - F_p1)/r0,  D1_1 = (F_p1 - F_p2)/r1,
        D1 = D1_0 + r0/(r0 + r1) (D1_0 - D1_1),   D2 = (D1_0 - D1_1)/(r0 + r1).

    ``values`` defaults to the symbols F_s, F_p1, F_p2. Returns a dict of the four expressions.
    """
    f_s, f_p1, f_p2 = values if values is not None else sp.symbols("F_s F_p1 F_p2", real=True)
    d1_0 = (f_s - f_p1) / r0
    d1_1 = (f_p1 - f_p2) / r1
    return {"D1_0": d1_0, "D1_1": d1_1,
            "D1": d1_0 + r0 / (r0 + r1) * (d1_0 - d1_1),
            "D2": (d1_0 - d1_1) / (r0 + r1)}


def divided_difference_identities():
    """``(D1 - P'(0), D2 - P''(0)/2)`` for the interpolant P through the three predictions (in units
    of h): both 0. D1_0, D1_1 are first divided differences, D2 the *second divided difference*,
    and for a parabola that is half of the second derivative."""
    values = sp.symbols("F_s F_p1 F_p2", real=True)
    a = derivative_weight_matrix(interpolation_nodes(3))
    p_first, p_second = (a * sp.Matrix(values))[1], (a * sp.Matrix(values))[2]
    d = reference_differences(values)
    return sp.simplify(d["D1"] - p_first), sp.simplify(d["D2"] - p_second / 2)


def _taylor_values(coeffs):
    """The three predictions of a function with Taylor coefficients ``coeffs`` (F^(n)(lambda_s))
    at lambda_s, lambda_s - r0 h, lambda_s - (r0 + r1) h."""
    poly = lambda v: sum(c * v**n / sp.factorial(n) for n, c in enumerate(coeffs))  # noqa: E731
    return [poly(sp.Integer(0)), poly(-r0 * h), poly(-(r0 + r1) * h)]


def difference_expansions(terms: int = 5):
    """D1 and D2 of :func:`reference_differences` for a smooth prediction with Taylor coefficients
    F_0, F_1, ... at lambda_s, as polynomials in h (exact for a polynomial of degree terms - 1):

        D1 = h F_1 + O(h^3)      (the h^2 term cancels: D1 is second-order accurate)
        D2 = h^2 F_2 / 2 + O(h^3)

    Returns ``{"D1": ..., "D2": ...}`` collected in powers of h.
    """
    d = reference_differences(_taylor_values(F[:terms]))
    return {key: sp.collect(sp.expand(sp.simplify(d[key])), h) for key in ("D1", "D2")}


def reference_code_phis(prediction: str = "eps", step=h):
    """The three coefficients of the reference code's third-order multistep update, as it writes
    them (``phi_1 = expm1(h)``, ``phi_2 = phi_1/h - 1``, ``phi_3 = phi_2/h - 1/2`` for eps;
    ``phi_1 = expm1(-h)``, ``phi_2 = phi_1/h + 1``, ``phi_3 = phi_2/h - 1/2`` for data). In terms of
    :func:`phi` they are ``h phi_1(h), h phi_2(h), h phi_3(h)`` and ``-h phi_1(-h), h phi_2(-h),
    -h phi_3(-h)``."""
    _check_prediction(prediction)
    if prediction == "eps":
        p1 = sp.exp(step) - 1
        p2 = p1 / step - 1
    else:
        p1 = sp.exp(-step) - 1
        p2 = p1 / step + 1
    return p1, p2, p2 / step - sp.Rational(1, 2)


def third_order_step(variant: str = "published", prediction: str = "eps", values=None, x_s=None):
    """One step of the third-order multistep update from lambda_s to lambda_t = lambda_s + h:

        eps:   x_t = (alpha_t/alpha_s) x_s - sigma_t phi_1 F_s - sigma_t phi_2 D1 - c sigma_t phi_3 D2
        data:  x_t = (sigma_t/sigma_s) x_s - alpha_t phi_1 F_s + alpha_t phi_2 D1 - c alpha_t phi_3 D2

    with the phis of :func:`reference_code_phis` and c = 1 for ``variant="published"`` (the
    reference code, diffusers' and k-diffusion's 3M samplers) or c = 2 for ``"corrected"``.
    """
    _check_prediction(prediction)
    if variant not in ("published", "corrected"):
        raise ValueError(f"variant must be 'published' or 'corrected', got {variant!r}")
    values = values if values is not None else sp.symbols("F_s F_p1 F_p2", real=True)
    x_s = sp.Symbol("x_s", real=True) if x_s is None else x_s
    p1, p2, p3 = reference_code_phis(prediction)
    d = reference_differences(values)
    c = 1 if variant == "published" else 2
    if prediction == "eps":
        return alpha_t / alpha_s * x_s - sigma_t * (p1 * values[0] + p2 * d["D1"] + c * p3 * d["D2"])
    return sigma_t / sigma_s * x_s - alpha_t * (p1 * values[0] - p2 * d["D1"] + c * p3 * d["D2"])


def exact_step(prediction: str = "eps", coeffs=None, x_s=None):
    """The exact step for a prediction with Taylor coefficients ``coeffs`` along the path:
    ``c_x x_s + sum_n expansion_weight(n) h^n F_n`` (exact when the prediction is the polynomial
    with these coefficients, and a Taylor truncation otherwise)."""
    coeffs = F[:5] if coeffs is None else coeffs
    x_s = sp.Symbol("x_s", real=True) if x_s is None else x_s
    c_x = alpha_t / alpha_s if prediction == "eps" else sigma_t / sigma_s
    return c_x * x_s + sum(expansion_weight(n, prediction) * h**n * c for n, c in enumerate(coeffs))


@lru_cache(maxsize=None)
def _series_in_h(expr, order: int):
    """The Taylor polynomial of degree < order + 1 in h of a coefficient that is analytic at h = 0
    (a phi, or a weight over sigma_t): e^{+-h} is replaced by a Taylor polynomial long enough for
    the divisions by up to h^5, the removable singularity cancelled, and the result truncated
    (the same as ``sp.series``, which is several times slower here)."""
    poly = lambda s: sum((s * h) ** j / sp.factorial(j) for j in range(order + 8))  # noqa: E731
    exact = sp.expand(sp.cancel(sp.together(expr.xreplace({sp.exp(h): poly(1), sp.exp(-h): poly(-1)}))))
    if exact.has(sp.exp):
        raise ValueError(f"cannot expand {expr} in h: an exponential other than exp(+-h) is left")
    return sum(exact.coeff(h, p) * h**p for p in range(order + 1))


def third_order_local_error(variant: str = "published", prediction: str = "eps", coeffs=None, order: int = 5):
    """Local truncation error of one third-order multistep step with exact inputs (exact x_s and
    exact earlier predictions), divided by sigma_t (eps) or alpha_t (data), as a polynomial in h
    up to O(h^order). ``coeffs`` are the Taylor coefficients of the prediction at lambda_s (default:
    the generic symbols F_0..F_4; see :func:`exp_taylor_coefficients`, :func:`cubic_taylor_coefficients`).

    The x_s terms of the two steps are identical and cancel; what is left is the difference of
    :func:`third_order_step` (with the reference code's phis) and :func:`exact_step` (with the
    Taylor weights), each coefficient replaced by its series in h.
    Returns ``(series, leading)``: the error's terms h^0 .. h^(order-1) and the lowest nonzero one.
    Published: ``leading = +h^3 F_2/12`` (eps) or ``-h^3 F_2/12`` (data) -- local error O(h^3),
    global order 2. Corrected: the h^3 term vanishes; the leading term is of order h^4 (global order 3).
    """
    _check_prediction(prediction)
    if variant not in ("published", "corrected"):
        raise ValueError(f"variant must be 'published' or 'corrected', got {variant!r}")
    coeffs = list(F[:order] if coeffs is None else coeffs)[:order]
    d = reference_differences(_taylor_values(coeffs))
    p1, p2, p3 = (_series_in_h(p, order) for p in reference_code_phis(prediction))
    c = 1 if variant == "published" else 2
    sign = 1 if prediction == "eps" else -1     # eps: -sigma_t(...), data: -alpha_t(p1 F - p2 D1 + c p3 D2)
    step = -(p1 * coeffs[0] + sign * p2 * d["D1"] + c * p3 * d["D2"])
    scale = sigma_t if prediction == "eps" else alpha_t
    exact = sum(_series_in_h(expansion_weight(n, prediction) / scale, order) * h**n * f
                for n, f in enumerate(coeffs))
    err = sp.expand(step - exact)
    terms = [sp.factor(err.coeff(h, p)) if err.coeff(h, p) != 0 else sp.Integer(0) for p in range(order)]
    series = sum(cf * h**p for p, cf in enumerate(terms))
    for p, cf in enumerate(terms):
        if cf != 0:
            return series, cf * h**p
    return series, sp.Integer(0)


def exp_taylor_coefficients(c=sp.Symbol("c", real=True), terms: int = 5):
    """Taylor coefficients at lambda_s of the test prediction F(lambda) = exp(c (lambda - lambda_s)):
    F^(n)(lambda_s) = c^n."""
    return [c**n for n in range(terms)]


def cubic_taylor_coefficients(a=sp.symbols("a_0:4", real=True)):
    """Taylor coefficients at lambda_s of the cubic F = a_0 + a_1 u + a_2 u^2 + a_3 u^3 (u = lambda - lambda_s):
    F^(n)(lambda_s) = n! a_n, zero beyond n = 3."""
    return [sp.factorial(n) * a[n] for n in range(4)] + [sp.Integer(0)]
