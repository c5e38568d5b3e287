"""EDM (Karras, Aittala, Aila & Laine 2022), derived with sympy (book chapter: edm).

Every function returns sympy expressions and has no side effects; the edm chapter displays
them and ``tests/test_edm.py`` lambdifies them and compares with the numbers that
:mod:`fastdiff_edu.solvers.edm` and :mod:`fastdiff_edu.preconditioning` use.

The chain of results:

(a) :func:`general_ode` -- the forward process ``x = s(t) (y + sigma(t) n)`` (data y, noise n)
    is ``x = alpha y + sigma_x n`` with ``alpha = s`` and ``sigma_x = s sigma``; the recap's
    (f, g^2) and Song et al.'s probability-flow ODE give Karras et al.'s eq. 4,
    ``dx/dt = s'/s x - s^2 sigma' sigma grad_x log p(x/s; sigma)``, and with eq. 3
    (``grad log p(x; sigma) = (D(x; sigma) - x)/sigma^2``) the denoiser form
    ``dx/dt = (sigma'/sigma + s'/s) x - sigma' s/sigma D(x/s; sigma)``.
(b) :func:`special_cases` -- Table 1's VP, VE and EDM choices of (s, sigma); VP's s is the
    package's ``VPLinear`` alpha and its sigma is ``sigma_bar``.
(c) :func:`coordinate_change_residual` -- all of them are the one ODE
    ``d x_bar / d sigma = (x_bar - D)/sigma = eps_hat`` for ``x_bar = x/s``, written in other
    coordinates: the three special cases have the same solutions and differ only in the
    coordinates a solver steps in.
(d) :func:`straight_line_residual`, :func:`vp_constant_denoiser_curvature` -- where D does not
    change, the EDM solution is a straight line in sigma (Euler is exact), the VP one is not.
(e) :func:`rk2_weights` -- the second-order conditions of a two-stage explicit Runge-Kutta
    method with its second stage at ``alpha h`` (EDM's ablation family, alpha = 1 Heun,
    alpha = 1/2 midpoint), from Taylor expansion.
(f) :func:`churn_gamma_cap` -- Algorithm 2's ``gamma <= sqrt(2) - 1``: the churn adds at most as
    much noise as the sample already has.
(g) :func:`karras_sigma`, :func:`karras_limit` -- the rho grid (eq. 5) and its rho -> infinity
    limit, the geometric (log-sigma uniform, i.e. logSNR-uniform) grid.
(h) :func:`edm_preconditioning` -- c_in, c_skip, c_out and the loss weight from the
    unit-variance requirements of Sec. 5 and Appendix B.6.

All derivations are one-dimensional: the ODE acts on each coordinate alike.
"""
from __future__ import annotations

import sympy as sp

from . import pf_ode

__all__ = [
    "t", "x", "s", "sigma", "D", "score_bar", "sigma_data",
    "general_ode", "karras_eq4", "general_ode_difference", "denoiser_form", "denoiser_form_difference",
    "special_cases", "special_case_odes", "coordinate_change_residual",
    "straight_line_solution", "straight_line_residual", "vp_constant_denoiser_curvature",
    "rk2_weights", "rk2_step_expansion", "churn_gamma_cap", "churn_noise_std",
    "karras_sigma", "karras_limit", "edm_preconditioning",
]

#: time (the solver's variable) and one coordinate of the sample
t = pf_ode.t
x = pf_ode.x
#: Karras et al.'s scale s(t) and noise level sigma(t), as unspecified positive functions
s = sp.Function("s", positive=True)(t)
sigma = sp.Function("sigma", positive=True)(t)
#: the denoiser D(x/s; sigma) and the score of p(.; sigma) at x/s, both as plain symbols
D = sp.Symbol("D", real=True)
score_bar = sp.Symbol(r"\nabla\log p", real=True)
#: the data's standard deviation (EDM's sigma_data)
sigma_data = sp.Symbol("sigma_data", positive=True)


# -- (a) the general ODE, eq. 4 ----------------------------------------------------------------
def general_ode():
    """The probability-flow drift of ``x = s (y + sigma n)``, from the recap's derivation.

    ``pf_ode.forward_sde_coefficients(s, s sigma)`` gives f = s'/s and g^2 = 2 s^2 sigma sigma'.
    The marginal of x is ``p_t(x) = s^{-d} p(x/s; sigma)``, so ``grad_x log p_t(x) =
    (1/s) score_bar`` where ``score_bar`` is the score of ``p(.; sigma)`` at ``x/s``.
    Returns a dict with ``f``, ``g2`` and ``drift`` (= f x - g^2/2 grad_x log p_t).
    """
    f, g2 = pf_ode.forward_sde_coefficients(s, s * sigma)
    drift = pf_ode.pf_ode_drift(f, g2, score_bar / s)
    return {"f": sp.simplify(f), "g2": sp.simplify(g2), "drift": drift}


def karras_eq4():
    """Karras et al. (2022), eq. 4: ``s'/s x - s^2 sigma' sigma grad_x log p(x/s; sigma)``, with
    the chain rule ``grad_x [log p(x/s; sigma)] = score_bar / s``."""
    return sp.diff(s, t) / s * x - s**2 * sp.diff(sigma, t) * sigma * score_bar / s


def general_ode_difference():
    """:func:`general_ode`'s drift minus :func:`karras_eq4`; simplifies to 0."""
    return sp.simplify(general_ode()["drift"] - karras_eq4())


def denoiser_form():
    """Eq. 4 with eq. 3's ``score_bar = (D - x/s)/sigma^2``:
    ``(sigma'/sigma + s'/s) x - sigma' s/sigma D`` (the drift of EDM's ``ablation_sampler``)."""
    return sp.expand(karras_eq4().subs(score_bar, (D - x / s) / sigma**2))


def denoiser_form_difference():
    """:func:`denoiser_form` minus the form the EDM code writes; simplifies to 0."""
    ds, dsigma = sp.diff(s, t), sp.diff(sigma, t)
    code = (dsigma / sigma + ds / s) * x - dsigma * s / sigma * D
    return sp.simplify(denoiser_form() - code)


# -- (b) the three special cases of Table 1 -------------------------------------------------------
def special_cases(beta_d=sp.Rational(199, 10), beta_min=sp.Rational(1, 10)):
    """Karras et al. (2022), Table 1: ``{name: (s(t), sigma(t))}`` for VP, VE and EDM.

    VP: ``sigma = sqrt(exp(beta_d t^2/2 + beta_min t) - 1)``, ``s = 1/sqrt(exp(...))`` (Song et al.'s
    VP SDE with beta(t) = beta_min + beta_d t; beta_d = 19.9, beta_min = 0.1 by default);
    VE: ``sigma = sqrt(t)``, ``s = 1`` (time is the variance); EDM: ``sigma = t``, ``s = 1``.
    """
    exponent = beta_d * t**2 / 2 + beta_min * t
    return {
        "vp": (1 / sp.sqrt(sp.exp(exponent)), sp.sqrt(sp.exp(exponent) - 1)),
        "ve": (sp.Integer(1), sp.sqrt(t)),
        "edm": (sp.Integer(1), t),
    }


def special_case_odes(beta_d=sp.Rational(199, 10), beta_min=sp.Rational(1, 10)):
    """``{name: dx/dt}`` of :func:`denoiser_form` for each case of :func:`special_cases`."""
    out = {}
    for name, (s_expr, sigma_expr) in special_cases(beta_d, beta_min).items():
        expr = denoiser_form().subs({s: s_expr, sigma: sigma_expr}).doit()
        out[name] = sp.simplify(expr)
    return out


# -- (c) one ODE, three coordinate systems ---------------------------------------------------------
def coordinate_change_residual():
    """Take a solution ``x_bar(sigma)`` of ``d x_bar/d sigma = (x_bar - D)/sigma`` (the EDM ODE,
    s = 1, in the noise level itself) and set ``x(t) = s(t) x_bar(sigma(t))``. Then
    ``dx/dt`` minus :func:`denoiser_form` at that x simplifies to 0 for *any* s(t), sigma(t):
    VP, VE and EDM share their solutions; only the coordinates differ."""
    xbar = sp.Function("xbar")
    u = sp.Symbol("u", positive=True)  # the noise level as an independent variable
    x_of_t = s * xbar(sigma)
    dxbar_dsigma = (xbar(sigma) - D) / sigma
    dx_dt = sp.diff(x_of_t, t).subs(sp.Subs(sp.Derivative(xbar(u), u), u, sigma), dxbar_dsigma)
    dx_dt = dx_dt.subs(sp.Derivative(xbar(sigma), sigma), dxbar_dsigma).doit()
    dx_dt = dx_dt.subs(sp.Derivative(xbar(sigma), sigma), dxbar_dsigma)
    return sp.simplify(dx_dt - denoiser_form().subs(x, x_of_t))


# -- (d) straight lines ---------------------------------------------------------------------------------
def straight_line_solution(x_start=sp.Symbol("x_start", real=True), sigma_start=sp.Symbol("sigma_0", positive=True)):
    """EDM's ODE ``dx/dsigma = (x - D)/sigma`` with a *constant* D: ``x(sigma) = D + sigma/sigma_0 (x_start - D)``,
    a straight line in sigma that points at D (Karras et al., Sec. 3)."""
    u = sp.Symbol("sigma", positive=True)
    return D + u / sigma_start * (x_start - D), u


def straight_line_residual():
    """``(dx/dsigma - (x - D)/sigma, d^2x/dsigma^2)`` of :func:`straight_line_solution`: both 0,
    so one Euler step is exact while D stays constant."""
    sol, u = straight_line_solution()
    return sp.simplify(sp.diff(sol, u) - (sol - D) / u), sp.diff(sol, u, 2)


def vp_constant_denoiser_curvature(beta_d=sp.Rational(199, 10), beta_min=sp.Rational(1, 10)):
    """The same solution in VP coordinates, ``x(t) = s(t) x_bar(sigma(t))``: its second
    derivative d^2x/dt^2 (not 0: Euler and Heun make an error even where D is constant)."""
    sol, u = straight_line_solution()
    s_vp, sigma_vp = special_cases(beta_d, beta_min)["vp"]
    x_vp = s_vp * sol.subs(u, sigma_vp)
    return sp.simplify(sp.diff(x_vp, t, 2))


# -- (e) the second-order Runge-Kutta family --------------------------------------------------------
def rk2_step_expansion(alpha=sp.Symbol("alpha", positive=True), b1=sp.Symbol("b_1"), b2=sp.Symbol("b_2")):
    """One step ``y + h (b1 k1 + b2 k2)``, ``k1 = f(t, y)``, ``k2 = f(t + alpha h, y + alpha h k1)``,
    minus the exact solution's Taylor series ``y + h f + h^2/2 (f_t + f_y f)``, to order h^2.
    Returns ``(difference, h)``; the coefficients of h and h^2 must vanish for order 2."""
    h, y = sp.symbols("h y", real=True)
    f = sp.Function("f")
    k1 = f(t, y)
    k2 = sp.series(f(t + alpha * h, y + alpha * h * k1), h, 0, 2).removeO().doit()
    step = y + h * (b1 * k1 + b2 * k2)
    path = sp.Function("Y")(t)
    second = sp.diff(f(t, path), t).subs(sp.Derivative(path, t), f(t, path)).subs(path, y).doit()
    exact = y + h * k1 + h**2 / 2 * second
    return sp.expand(step - exact), h


def rk2_weights(alpha=sp.Symbol("alpha", positive=True)):
    """Solve the order conditions of :func:`rk2_step_expansion` for (b1, b2):
    ``b1 = 1 - 1/(2 alpha)``, ``b2 = 1/(2 alpha)`` (alpha = 1: Heun; alpha = 1/2: midpoint;
    EDM's ablation sampler, Karras et al. 2022, Appendix D.2 / Algorithm 2's generalisation)."""
    b1, b2 = sp.symbols("b_1 b_2")
    diff, h = rk2_step_expansion(alpha, b1, b2)
    f_value = sp.Function("f")(t, sp.Symbol("y", real=True))
    # every coefficient of h^1 and h^2 (as a polynomial in f and its derivatives) must vanish
    eqs = []
    for power in (1, 2):
        coeff = sp.expand(diff.coeff(h, power))
        atoms = sorted(coeff.atoms(sp.Derivative), key=str) + [f_value]
        poly = sp.Poly(coeff, *atoms)
        eqs += [c for c in poly.coeffs() if c != 0]
    sol = sp.solve(eqs, [b1, b2], dict=True)[0]
    return sp.simplify(sol[b1]), sp.simplify(sol[b2])


# -- (f) the churn of Algorithm 2 -------------------------------------------------------------------
def churn_noise_std(gamma=sp.Symbol("gamma", nonnegative=True), sigma_i=sp.Symbol("sigma_i", positive=True)):
    """Algorithm 2, lines 5-6: ``sigma_hat = (1 + gamma) sigma_i`` and the added noise has std
    ``sqrt(sigma_hat^2 - sigma_i^2) = sigma_i sqrt(gamma (2 + gamma))``."""
    sigma_hat = (1 + gamma) * sigma_i
    return sp.sqrt(sp.factor(sp.expand(sigma_hat**2 - sigma_i**2)))


def churn_gamma_cap():
    """The gamma at which the added noise equals the existing noise, ``sigma_hat^2 - sigma_i^2 =
    sigma_i^2``: ``sqrt(2) - 1``, Algorithm 2's cap on gamma."""
    gamma, sigma_i = sp.Symbol("gamma", nonnegative=True), sp.Symbol("sigma_i", positive=True)
    return sp.solve(sp.Eq(churn_noise_std(gamma, sigma_i) ** 2, sigma_i**2), gamma)[0]


# -- (g) the rho grid ---------------------------------------------------------------------------------
def karras_sigma(rho=sp.Symbol("rho", positive=True)):
    """Karras et al. (2022), eq. 5, with ``u = i/(N-1)`` in [0, 1]:
    ``(sigma_max^(1/rho) + u (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho``. Returns (expr, u)."""
    smax, smin = sp.symbols("sigma_max sigma_min", positive=True)
    u = sp.Symbol("u", nonnegative=True)
    return (smax ** (1 / rho) + u * (smin ** (1 / rho) - smax ** (1 / rho))) ** rho, u


def karras_limit():
    """The rho -> infinity limit of :func:`karras_sigma`: ``sigma_max (sigma_min/sigma_max)^u``,
    uniform in log sigma, i.e. the logSNR-uniform grid for alpha = 1 (k-diffusion #85)."""
    rho = sp.Symbol("rho", positive=True)
    expr, _ = karras_sigma(rho)
    return sp.simplify(sp.powsimp(sp.limit(expr, rho, sp.oo), force=True))


# -- (h) preconditioning ------------------------------------------------------------------------------
def edm_preconditioning():
    """c_in, c_skip, c_out and the loss weight of Karras et al. (2022), Sec. 5 and Appendix B.6.

    The denoiser is ``D(x; sigma) = c_skip x + c_out F(c_in x; c_noise)`` with ``x = y + n``,
    ``y`` the data (variance sigma_data^2) and ``n ~ N(0, sigma^2)``. Requirements:

    1. the network's input has unit variance: ``Var[c_in (y + n)] = c_in^2 (sigma^2 + sigma_data^2) = 1``;
    2. its training target ``F_target = (y - c_skip (y + n))/c_out`` has unit variance:
       ``c_out^2 = (1 - c_skip)^2 sigma_data^2 + c_skip^2 sigma^2``;
    3. c_skip minimises c_out, so that the network's errors are amplified as little as possible;
    4. the loss weight ``lambda = 1/c_out^2`` makes the effective weight of ``|F - F_target|^2`` one.

    ``c_noise = ln(sigma)/4`` is an empirical choice (Table 1), not derived. Returns a dict with
    the expressions in ``sigma`` and :data:`sigma_data`, and the intermediate ``target_variance``.
    """
    sig = sp.Symbol("sigma", positive=True)
    c_in, c_skip, c_out = sp.symbols("c_in c_skip c_out", positive=True)
    c_in_expr = sp.solve(sp.Eq(c_in**2 * (sig**2 + sigma_data**2), 1), c_in)[0]
    target_variance = ((1 - c_skip) ** 2 * sigma_data**2 + c_skip**2 * sig**2) / c_out**2
    c_out_sq = sp.solve(sp.Eq(target_variance, 1), c_out)[0] ** 2      # requirement 2, solved for c_out
    c_skip_expr = sp.solve(sp.diff(c_out_sq, c_skip), c_skip)[0]          # requirement 3
    c_out_expr = sp.simplify(sp.sqrt(sp.factor(sp.simplify(c_out_sq.subs(c_skip, c_skip_expr)))))
    return {
        "sigma": sig,
        "c_in": sp.simplify(c_in_expr),
        "c_skip": sp.simplify(c_skip_expr),
        "c_out": c_out_expr,
        "c_noise": sp.log(sig) / 4,
        "loss_weight": sp.simplify(1 / c_out_expr**2),
        "target_variance": target_variance,
        "c_out_squared_of_c_skip": c_out_sq,
    }
