"""DEIS, the diffusion exponential integrator sampler, derived with sympy (book chapter: deis).

Every function returns sympy expressions and has no side effects; the deis chapter displays them
and ``tests/test_derivations_deis.py`` lambdifies them and compares with the numbers that
:mod:`fastdiff_edu.solvers.deis` uses.

Zhang & Chen (2022) keep the time variable t of the model and write the probability-flow ODE as
``dx/dt = f(t) x + g(t) eps(x, t)`` with ``f = d log alpha/dt`` and ``g = -sigma lambda'``:

(a) :func:`transition` -- the linear part alone is solved by the transition
    ``Psi(t, s) = alpha_t/alpha_s`` (:func:`transition_residual`), and variation of constants gives
    the exact step (their eq. 9) ``x_t = Psi(t, s) x_s + int_s^t Psi(t, tau) g(tau) eps(tau) dtau``
    (:func:`variation_of_constants`; :func:`variation_of_constants_residual` checks it).
(b) :func:`kernel_t` -- the weight ``Psi(t, tau) g(tau)`` of eps in that integral;
    :func:`kernel_in_lambda_difference` shows it is ``-alpha_t e^{-lambda} dlambda/dtau``, i.e. the
    kernel is ``-alpha_t e^{-lambda} dlambda``; :func:`kernel_in_rho_difference` that with
    ``rho = sigma/alpha = e^{-lambda}`` it is ``alpha_t drho``.
(c) :func:`lagrange_basis` and :func:`tab_coefficient` -- tAB-r replaces eps by its Lagrange
    interpolant in t through the last r + 1 predictions, so the weight of ``eps_{i-j}`` is
    ``C_ij = int_{t_i}^{t_{i+1}} K(tau) l_j(tau) dtau`` (eq. 14-15) for the kernel K; for a general
    schedule it has no closed form.
(d) :func:`rhoab_coefficients` -- in rho the kernel is constant, and the same integrals are
    integrals of polynomials: closed forms in rho_{i+1}, rho_i, ..., rho_{i-r}.
    :func:`uniform_ab_weights` shows that for equal steps they are the classical Adams-Bashforth
    weights times the step; :func:`order0_minus_ddim` that order 0 (tAB or rhoAB) is DDIM.

All derivations are one-dimensional: the solvers act on each coordinate alike.
"""
from __future__ import annotations

import sympy as sp

__all__ = [
    "t", "s", "tau", "x", "x_s", "rho", "alpha_next", "h", "K", "eps_fn",
    "alpha", "sigma", "half_log_snr", "pf_ode_t", "transition", "transition_residual",
    "variation_of_constants", "variation_of_constants_residual",
    "kernel_t", "kernel_in_lambda_difference", "kernel_in_rho_difference",
    "grid_symbols", "rho_symbols", "lagrange_basis", "tab_coefficient", "rhoab_coefficients",
    "uniform_ab_weights", "CLASSICAL_AB", "order0_minus_ddim",
]

#: time of the forward process: the end t of a step, its start s, and the integration variable tau
t, s, tau = sp.symbols("t s tau", real=True)
#: a coordinate of the sample and its value at the start of the step
x, x_s = sp.symbols("x x_s", real=True)
#: rho = sigma/alpha (the variable of rhoAB and rhoRK) and alpha at the end of a step
rho = sp.Symbol("rho", real=True)
alpha_next = sp.Symbol(r"\alpha_{i+1}", positive=True)
#: a uniform step (in units of which the classical Adams-Bashforth weights are written)
h = sp.Symbol("h", real=True, nonzero=True)
#: an unspecified kernel K(tau) and noise prediction along the trajectory eps(tau)
K = sp.Function("K")
eps_fn = sp.Function("epsilon")

#: the classical Adams-Bashforth weights in units of the step, orders 0..3
CLASSICAL_AB = (
    (sp.Integer(1),),
    (sp.Rational(3, 2), sp.Rational(-1, 2)),
    (sp.Rational(23, 12), sp.Rational(-16, 12), sp.Rational(5, 12)),
    (sp.Rational(55, 24), sp.Rational(-59, 24), sp.Rational(37, 24), sp.Rational(-9, 24)),
)


def alpha(v):
    """alpha as an unspecified positive function of the time ``v``."""
    return sp.Function("alpha", positive=True)(v)


def sigma(v):
    """sigma as an unspecified positive function of the time ``v``."""
    return sp.Function("sigma", positive=True)(v)


def half_log_snr(v):
    """lambda = log(alpha/sigma) at time ``v``."""
    return sp.log(alpha(v) / sigma(v))


def pf_ode_t(v=t, xx=x, e=None):
    """The eps form of the PF-ODE in t (recap chapter): ``dx/dt = f x + g eps`` with
    ``f = d log alpha/dt`` and ``g = -sigma dlambda/dt``. Returns ``(f, g, rhs)``."""
    e = eps_fn(v) if e is None else e
    f = sp.diff(sp.log(alpha(v)), v)
    g = -sigma(v) * sp.diff(half_log_snr(v), v)
    return f, g, f * xx + g * e


def transition(end=t, start=s):
    """The transition of the linear part, ``Psi(end, start) = alpha_end/alpha_start``."""
    return alpha(end) / alpha(start)


def transition_residual():
    """``(dPsi/dt - f(t) Psi, Psi(s, s) - 1)``: both 0, so Psi solves ``dx/dt = f x`` from s."""
    f, _, _ = pf_ode_t()
    psi = transition()
    return sp.simplify(sp.diff(psi, t) - f * psi), sp.simplify(psi.subs(t, s) - 1)


def kernel_t(end=t, v=tau):
    """The weight of eps(v) in the exact step ending at ``end``: ``Psi(end, v) g(v)``."""
    _, g, _ = pf_ode_t(v)
    return transition(end, v) * g


def variation_of_constants():
    """Zhang & Chen's eq. (9): ``x(t) = Psi(t, s) x_s + int_s^t Psi(t, tau) g(tau) eps(tau) dtau``."""
    return transition() * x_s + sp.Integral(kernel_t() * eps_fn(tau), (tau, s, t))


def variation_of_constants_residual():
    """The two facts that make :func:`variation_of_constants` solve the ODE, as residuals (both 0).

    By Leibniz' rule ``d/dt int_s^t k(t, tau) eps(tau) dtau = k(t, t) eps(t) + int_s^t dk/dt eps dtau``;
    with ``k = Psi(t, tau) g(tau)``: ``dk/dt = f(t) k`` (so the integral term is carried by the linear
    part like ``Psi x_s``) and ``k(t, t) = g(t)`` (the new contribution is ``g eps``). Returns
    ``(dk/dt - f k, k(t, t) - g(t))``; with :func:`transition_residual` this gives
    ``dx/dt = f x + g eps`` and ``x(s) = x_s``."""
    f, g, _ = pf_ode_t()
    k = kernel_t(t, tau)
    return sp.simplify(sp.diff(k, t) - f * k), sp.simplify(kernel_t(t, t) - g)


def kernel_in_lambda_difference():
    """:func:`kernel_t` minus ``-alpha_t e^{-lambda(tau)} dlambda/dtau``, using
    ``sigma = alpha e^{-lambda}`` (the definition of lambda); 0. So in lambda the kernel is
    ``-alpha_t e^{-lambda} dlambda``, whatever the schedule."""
    lam = half_log_snr(tau)
    return sp.simplify(kernel_t() - (-alpha(t) * sp.exp(-lam) * sp.diff(lam, tau)))


def kernel_in_rho_difference():
    """:func:`kernel_t` minus ``alpha_t drho/dtau`` with ``rho = sigma/alpha``; 0: in rho the kernel is
    the constant alpha_t, and ``v = x/alpha`` obeys ``dv/drho = eps`` (DEIS Sec. 4.1)."""
    return sp.simplify(kernel_t() - alpha(t) * sp.diff(sigma(tau) / alpha(tau), tau))


def grid_symbols(order: int):
    """``(t_{i+1}, [t_i, t_{i-1}, ..., t_{i-order}])``: the end of the step and the interpolation nodes."""
    return sp.Symbol("t_{i+1}", real=True), [sp.Symbol(f"t_{{i-{j}}}" if j else "t_i", real=True)
                                              for j in range(order + 1)]


def rho_symbols(order: int):
    """``(rho_{i+1}, [rho_i, rho_{i-1}, ..., rho_{i-order}])``."""
    return sp.Symbol(r"\rho_{i+1}", real=True), [sp.Symbol(rf"\rho_{{i-{j}}}" if j else r"\rho_i", real=True)
                                                 for j in range(order + 1)]


def lagrange_basis(nodes, j: int, var):
    """The Lagrange basis polynomial ``l_j(var) = prod_{m != j} (var - nodes[m])/(nodes[j] - nodes[m])``:
    1 at ``nodes[j]``, 0 at the other nodes."""
    return sp.Mul(*[(var - nodes[m]) / (nodes[j] - nodes[m]) for m in range(len(nodes)) if m != j])


def tab_coefficient(order: int, j: int, kernel=None):
    """tAB-``order`` (eq. 14-15): ``C_ij = int_{t_i}^{t_{i+1}} K(tau) l_j(tau) dtau`` with l_j the
    Lagrange basis in t on ``t_i, ..., t_{i-order}``; K defaults to an unspecified function
    (:func:`kernel_t` is the DEIS kernel). An unevaluated Integral."""
    end, nodes = grid_symbols(order)
    kernel = K(tau) if kernel is None else kernel
    return sp.Integral(kernel * lagrange_basis(nodes, j, tau), (tau, nodes[0], end))


def rhoab_coefficients(order: int):
    """rhoAB-``order``: the exact weights ``alpha_{i+1} int_{rho_i}^{rho_{i+1}} l_j(rho) drho`` of
    ``eps_{i-j}``, j = 0..order, with l_j the Lagrange basis in rho on ``rho_i, ..., rho_{i-order}``
    (symbols from :func:`rho_symbols`, alpha_{i+1} = :data:`alpha_next`)."""
    end, nodes = rho_symbols(order)
    return [sp.factor(alpha_next * sp.integrate(lagrange_basis(nodes, j, rho), (rho, nodes[0], end)))
            for j in range(order + 1)]


def uniform_ab_weights(order: int):
    """:func:`rhoab_coefficients` on equal steps ``rho_{i+1} - rho_i = h``, ``rho_{i-k} = rho_i - k h``,
    divided by ``alpha_{i+1} h``: the classical Adams-Bashforth weights (:data:`CLASSICAL_AB`)."""
    end, nodes = rho_symbols(order)
    subs = {end: nodes[0] + h, **{nodes[k]: nodes[0] - k * h for k in range(1, order + 1)}}
    return [sp.simplify(c.subs(subs) / (alpha_next * h)) for c in rhoab_coefficients(order)]


def order0_minus_ddim():
    """``(tAB-0 weight - DDIM's c_eps, rhoAB-0 weight - DDIM's c_eps)``, both 0.

    tAB-0: l_0 = 1, and the kernel in lambda integrates to ``alpha_{i+1}(e^{-lambda_{i+1}} - e^{-lambda_i})``;
    rhoAB-0: ``alpha_{i+1}(rho_{i+1} - rho_i)``; DDIM: ``sigma_{i+1} - alpha_{i+1} sigma_i/alpha_i``."""
    a_i, s_i, a_n, s_n = sp.symbols("alpha_i sigma_i alpha_{i+1} sigma_{i+1}", positive=True)
    lam = sp.Symbol("lambda", real=True)
    lam_i, lam_n = sp.log(a_i / s_i), sp.log(a_n / s_n)
    tab0 = sp.integrate(-a_n * sp.exp(-lam), (lam, lam_i, lam_n))
    end, nodes = rho_symbols(0)
    rhoab0 = rhoab_coefficients(0)[0].subs({alpha_next: a_n, end: s_n / a_n, nodes[0]: s_i / a_i})
    ddim = s_n - a_n * s_i / a_i
    return sp.simplify(tab0 - ddim), sp.simplify(rhoab0 - ddim)
