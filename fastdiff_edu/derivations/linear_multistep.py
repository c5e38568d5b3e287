"""Linear multistep coefficients and PNDM's pseudo steps, derived with sympy (book chapter: pndm).

Every function returns sympy expressions and has no side effects; the pndm chapter displays
them and ``tests/test_pndm.py`` lambdifies them and compares with the numbers that
:mod:`fastdiff_edu.solvers.pndm` uses.

The chain of results:

(a) :func:`adams_bashforth` -- the k-step Adams-Bashforth weights: integrate the Lagrange
    interpolant of the last k values over the next step. With general (non-uniform) step sizes
    ``h`` (the step being taken) and ``h1, h2, h3`` (the previous ones) the weights are rational
    functions of the steps; with equal steps they are the classical 1, (3, -1)/2,
    (23, -16, 5)/12 and (55, -59, 37, -9)/24 (:func:`adams_bashforth_uniform`).
    :func:`order_conditions` checks that a weight set integrates polynomials of degree < k
    exactly.
(b) :func:`pndm_transfer` and :func:`ddim_transfer` -- PNDM's transfer part (Liu et al. 2022,
    eq. 9) written with abar = alpha^2 is algebraically the DDIM step (Song et al. 2021, eq. 12);
    :func:`transfer_difference` returns the (zero) difference of the two coefficients.
(c) :func:`pseudo_step_local_error` -- why the weights' variable matters: a transfer step with a
    constant noise estimate eps' is an Euler step in (x/alpha, sigma/alpha), so it is exact only
    if eps' is the *sigma/alpha-average* of eps over the step. Classical weights computed in t
    (or in the step index) give the t-average instead; the difference is a local error of
    order h^3 -- a global order of 2 -- unless sigma/alpha is linear in t.
"""
from __future__ import annotations

import sympy as sp

__all__ = [
    "s", "h", "previous_steps",
    "lagrange_basis", "adams_bashforth", "adams_bashforth_uniform", "order_conditions",
    "abar_t", "abar_s", "x", "eps",
    "pndm_transfer", "ddim_transfer", "transfer_difference",
    "pseudo_step_local_error",
]

#: the integration variable, measured from the current point in the direction of the step
s = sp.Symbol("s", real=True)
#: the size of the step being taken
h = sp.Symbol("h", positive=True)
#: the sizes of the previous steps, most recent first: nodes sit at 0, -h1, -(h1 + h2), ...
previous_steps = sp.symbols("h1 h2 h3", positive=True)


# -- (a) Adams-Bashforth weights --------------------------------------------------------------------
def lagrange_basis(nodes, j, var=s):
    """The j-th Lagrange basis polynomial on ``nodes``: 1 at ``nodes[j]``, 0 at the others."""
    out = sp.Integer(1)
    for m, node in enumerate(nodes):
        if m != j:
            out *= (var - node) / (nodes[j] - node)
    return out


def _nodes(order: int, uniform: bool = False):
    """0, -h1, -(h1 + h2), ...: where the last ``order`` values sit, newest first
    (0, -h, -2h, ... for equal steps)."""
    nodes, position = [sp.Integer(0)], sp.Integer(0)
    for k in range(order - 1):
        position -= h if uniform else previous_steps[k]
        nodes.append(position)
    return nodes


def adams_bashforth(order: int, uniform: bool = False):
    """Weights ``b_j`` (newest value first) of the ``order``-step Adams-Bashforth method:

        (1/h) * integral_0^h P(s) ds = sum_j b_j f_j,

    where P interpolates the values f_j at the nodes 0, -h1, -(h1 + h2), ... For ``uniform=True``
    all steps equal h and the weights are numbers; otherwise they depend on h, h1, h2, h3.
    """
    if order not in (1, 2, 3, 4):
        raise ValueError(f"order must be 1, 2, 3 or 4, got {order}")
    nodes = _nodes(order, uniform)
    return [sp.factor(sp.integrate(lagrange_basis(nodes, j), (s, 0, h)) / h) for j in range(order)]


def adams_bashforth_uniform(order: int):
    """The classical equal-step weights as rationals (e.g. 55/24, -59/24, 37/24, -9/24)."""
    return adams_bashforth(order, uniform=True)


def order_conditions(weights, order: int):
    """Residuals ``sum_j b_j p(node_j) - (1/h) int_0^h p`` for p = 1, s, ..., s^(order-1);
    all zero when the weights integrate polynomials of degree < order exactly."""
    nodes = _nodes(order)
    residuals = []
    for degree in range(order):
        exact = sp.integrate(s**degree, (s, 0, h)) / h
        quadrature = sum(w * node**degree for w, node in zip(weights, nodes))
        residuals.append(sp.simplify(quadrature - exact))
    return residuals


# -- (b) the transfer part is the DDIM step ------------------------------------------------------------
#: abar = alpha^2 at the start t and at the end s = t - delta of a step, a coordinate, a noise value
abar_t, abar_s = sp.symbols(r"\bar{\alpha}_t \bar{\alpha}_{t-\delta}", positive=True)
x, eps = sp.symbols(r"x_t \epsilon")


def pndm_transfer(x_expr=x, eps_expr=eps, a_t=abar_t, a_s=abar_s):
    """Liu et al. (2022), eq. 9: phi(x_t, eps, t, t - delta), as the paper writes it."""
    return x_expr + (a_s - a_t) * (
        x_expr / (sp.sqrt(a_t) * (sp.sqrt(a_t) + sp.sqrt(a_s)))
        - eps_expr / (sp.sqrt(a_t) * (sp.sqrt((1 - a_s) * a_t) + sp.sqrt((1 - a_t) * a_s))))


def ddim_transfer(x_expr=x, eps_expr=eps, a_t=abar_t, a_s=abar_s):
    """DDIM, eq. 12 with eta = 0: alpha_s x0_hat + sigma_s eps with alpha = sqrt(abar)."""
    x0_hat = (x_expr - sp.sqrt(1 - a_t) * eps_expr) / sp.sqrt(a_t)
    return sp.sqrt(a_s) * x0_hat + sp.sqrt(1 - a_s) * eps_expr


def transfer_difference():
    """(x coefficient, eps coefficient) of PNDM's transfer minus DDIM's; both simplify to 0.

    The square roots are replaced by u = sqrt(abar_t), p = sqrt(abar_s) (and
    sqrt(1 - abar) by sqrt(1 - u^2), sqrt(1 - p^2)), in which form sympy can cancel them: the eps
    coefficient needs the conjugate, (a - b)/(c + d) = (c - d) when a - b = c^2 - d^2.
    """
    u, p = sp.symbols("u p", positive=True)
    subs = {abar_t: u**2, abar_s: p**2}
    diff = sp.expand(pndm_transfer() - ddim_transfer()).subs(subs)
    coeff_x = sp.simplify(diff.coeff(x))
    coeff_eps = sp.radsimp(sp.together(diff.coeff(eps)))
    coeff_eps = sp.simplify(sp.factor(coeff_eps))
    return coeff_x, coeff_eps


# -- (c) the local error of a pseudo step with t-averaged weights -----------------------------------------
def pseudo_step_local_error(terms: int = 5):
    """Leading local error of a transfer step whose noise estimate is the t-average of eps.

    In x_bar = x/alpha and sigma_bar = sigma/alpha the exact step is
    ``x_bar(t + h) - x_bar(t) = int_0^h eps(t + r) sigma_bar'(t + r) dr`` and the transfer step
    with a constant estimate eps' is ``(sigma_bar(t + h) - sigma_bar(t)) eps'``. A classical
    weight set built in t (the uniform Adams-Bashforth weights on a t-uniform grid, or the
    pseudo Runge-Kutta weights with the t-midpoint) makes eps' the t-average
    ``(1/h) int_0^h eps``, up to its own high-order error. eps and sigma_bar are written as Taylor
    polynomials with coefficients e_k = eps^(k)(t)/k! and g_k = sigma_bar^(k)(t)/k!.

    Returns ``(series of the error in h, leading term)``: the leading term is
    ``-h^3 e_1 g_2 / 6`` (= -h^3 eps' sigma_bar'' / 12): of order h^3 whenever eps moves along the
    path and sigma_bar is not linear in t.
    """
    r = sp.Symbol("r", real=True)
    e = sp.symbols(f"e0:{terms}")
    g = sp.symbols(f"g0:{terms}")
    eps_poly = sum(e[k] * r**k for k in range(terms))
    sbar_poly = sum(g[k] * r**k for k in range(terms))
    exact = sp.integrate(eps_poly * sp.diff(sbar_poly, r), (r, 0, h))
    t_average = sp.integrate(eps_poly, (r, 0, h)) / h
    pseudo = (sbar_poly.subs(r, h) - sbar_poly.subs(r, 0)) * t_average
    error = sp.expand(pseudo - exact)
    series = sp.collect(sp.series(error, h, 0, 5).removeO(), h)
    leading = sp.factor(sp.expand(error).coeff(h, 3) * h**3)
    return series, leading
