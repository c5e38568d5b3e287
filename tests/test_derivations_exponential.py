"""Derivations vs code for the exponential integrators: the sympy results of
fastdiff_edu.derivations.exponential, lambdified and compared with the numbers that
fastdiff_edu.exponential and fastdiff_edu.solvers.dpm_solver use."""
from __future__ import annotations

import math

import mpmath
import pytest
import sympy as sp
import torch

from fastdiff_edu import schedules, timesteps
from fastdiff_edu.derivations import exponential as ex
from fastdiff_edu.exponential import expansion_weights, phi
from fastdiff_edu.solvers.dpm_solver import derivative_weights, multistep_weights
from tests._helpers import single_thread  # noqa: F401

F64 = torch.float64


# -- (a) the ODE in lambda and its exact solution --------------------------------------------------------
def test_lambda_form_of_the_pf_ode():
    assert ex.lambda_form_difference() == 0
    assert ex.data_form_difference() == 0
    _, in_lambda = ex.lambda_form()
    f, lam_t = sp.Function("f")(ex.t), sp.Function("lambda")(ex.t)
    sigma = sp.Function("sigma", positive=True)(ex.t)
    assert sp.simplify(in_lambda.rhs - (f * ex.x / sp.diff(lam_t, ex.t) - sigma * ex.eps)) == 0


@pytest.mark.parametrize("prediction", ex.PREDICTIONS)
def test_variation_of_constants(prediction):
    c_prime = ex.variation_of_constants(prediction).rhs
    pred = sp.Function(r"\epsilon" if prediction == "eps" else "x_0")(ex.lam)
    expected = -sp.exp(-ex.lam) * pred if prediction == "eps" else sp.exp(ex.lam) * pred
    assert sp.simplify(c_prime - expected) == 0
    assert ex.solution_residual(prediction) == (0, 0)


# -- (b) phi functions --------------------------------------------------------------------------------------
@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_lambdified_phi_matches_the_package(k):
    """The closed form, lambdified in 50-digit arithmetic, against the package's stable phi."""
    mpmath.mp.dps = 50
    closed = sp.lambdify(ex.z, ex.phi(k), modules="mpmath")
    for zval in [-30.0, -3.0, -0.7, -0.3, -1e-3, -1e-7, 1e-7, 1e-3, 0.25, 0.49, 0.51, 1.0, 4.0]:
        exact = float(closed(mpmath.mpf(zval)))
        assert abs(float(phi(k, zval)) - exact) <= 1e-13 * abs(exact), (k, zval)


@pytest.mark.parametrize("k", [0, 1, 2, 3])
def test_phi_recursion_integral_form_and_series(k):
    assert ex.phi_recursion_residual(k) == 0
    assert sp.simplify(ex.phi_recursion(k + 1) - ex.phi(k + 1)) == 0
    assert sp.simplify(ex.phi_integral_form(k + 1) - ex.phi(k + 1)) == 0
    series = ex.phi_series(k + 1, order=5).removeO()
    assert sp.expand(series - ex.phi_series_terms(k + 1, 5)) == 0


@pytest.mark.parametrize("prediction", ex.PREDICTIONS)
@pytest.mark.parametrize("n", [0, 1, 2, 3])
def test_taylor_integrals_are_phi_functions(n, prediction):
    assert ex.taylor_integral_difference(n, prediction) == 0


@pytest.mark.parametrize("prediction", ex.PREDICTIONS)
@pytest.mark.parametrize("sched", [schedules.VPCosine(), schedules.DiscreteVP.ddpm_linear()],
                         ids=["VPCosine", "DiscreteVP"])
def test_taylor_weights_equal_expansion_weights(sched, prediction):
    """The sympy weight of h^n F^(n) (in alpha_t, sigma_t, h) equals the package's, column n."""
    mpmath.mp.dps = 40
    weights = [sp.lambdify((ex.alpha_t, ex.sigma_t, ex.h), ex.expansion_weight(n, prediction), modules="mpmath")
               for n in range(4)]
    for t_from, t_to in [(0.9, 0.6), (0.5, 0.45), (0.2, 0.05), (0.03, 0.0011)]:
        c_x, w = expansion_weights(sched, t_from, t_to, prediction, 4)
        a_t, s_t = float(sched.alpha(t_to)), float(sched.sigma(t_to))
        hh = float(sched.half_log_snr(t_to) - sched.half_log_snr(t_from))
        for n in range(4):
            expected = float(weights[n](mpmath.mpf(a_t), mpmath.mpf(s_t), mpmath.mpf(hh)))
            assert float(w[n]) == pytest.approx(expected, rel=1e-12, abs=1e-300), (t_from, t_to, n)


# -- (c) multistep weights -------------------------------------------------------------------------------------
def test_derivative_weights_match_the_package_for_random_offsets():
    gen = torch.Generator().manual_seed(0)
    symbolic = sp.lambdify((ex.r0, ex.r1), ex.derivative_weight_matrix(ex.interpolation_nodes(3)).tolist(),
                           modules="math")
    for _ in range(10):
        a, b = (0.2 + 2.5 * torch.rand(2, generator=gen, dtype=F64)).tolist()
        offsets = torch.tensor([0.0, -a, -(a + b)], dtype=F64)
        package = derivative_weights(offsets)
        numeric = torch.tensor(symbolic(a, b), dtype=F64)
        assert torch.allclose(package, numeric, rtol=1e-12, atol=1e-12)
        # the same through numeric nodes (no r0, r1 symbols)
        direct = torch.tensor(ex.derivative_weight_matrix([0, -sp.Float(a), -sp.Float(a + b)]).tolist(), dtype=F64)
        assert torch.allclose(package, direct, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("k", [1, 2, 3])
@pytest.mark.parametrize("prediction", ex.PREDICTIONS)
def test_k_step_method_is_exact_for_polynomials_of_degree_k_minus_1(k, prediction):
    assert ex.multistep_exactness_residual(k, prediction) == 0


def _step_geometry(sched, grid, i):
    lam = sched.half_log_snr(grid)
    h = float(lam[i + 1] - lam[i])
    r0 = float(lam[i] - lam[i - 1]) / h
    r1 = float(lam[i - 1] - lam[i - 2]) / h
    return float(sched.alpha(grid[i + 1])), float(sched.sigma(grid[i + 1])), h, r0, r1


@pytest.mark.parametrize("prediction", ex.PREDICTIONS)
def test_sympy_multistep_weights_equal_the_package(prediction):
    """Three-step weights on a grid that is far from uniform in lambda (time_uniform), steps >= 2."""
    sched = schedules.DiscreteVP.ddpm_linear()
    grid = timesteps.make(sched, "time_uniform", 12)
    _, package = multistep_weights(sched, grid, prediction, 3, solver_type="taylor")
    symbolic = sp.lambdify((ex.alpha_t, ex.sigma_t, ex.h, ex.r0, ex.r1), ex.multistep_weights(3, prediction),
                           modules="mpmath")
    mpmath.mp.dps = 40
    for i in range(2, 12):
        expected = [float(v) for v in symbolic(*map(mpmath.mpf, _step_geometry(sched, grid, i)))]
        assert torch.allclose(package[i], torch.tensor(expected, dtype=F64), rtol=1e-10, atol=1e-14), i


@pytest.mark.parametrize("prediction", ex.PREDICTIONS)
@pytest.mark.parametrize("variant", ["published", "corrected"])
def test_reference_formula_equals_the_package_variants(variant, prediction):
    """The reference code's third-order update (D1, D2 and its phis), written out in sympy, has the
    weights of the package's ``third_order=variant`` on every three-step step of a grid."""
    sched = schedules.DiscreteVP.ddpm_linear()
    grid = timesteps.make(sched, "time_quadratic", 10)
    _, package = multistep_weights(sched, grid, prediction, 3, solver_type="taylor", third_order=variant)
    values = sp.symbols("F_s F_p1 F_p2", real=True)
    step = ex.third_order_step(variant, prediction, values, x_s=sp.Integer(0))
    coeffs = [sp.lambdify((ex.alpha_t, ex.sigma_t, ex.h, ex.r0, ex.r1), sp.diff(step, v), modules="mpmath")
              for v in values]
    mpmath.mp.dps = 40
    for i in range(2, 10):
        geometry = list(map(mpmath.mpf, _step_geometry(sched, grid, i)))
        expected = torch.tensor([float(c(*geometry)) for c in coeffs], dtype=F64)
        assert torch.allclose(package[i], expected, rtol=1e-10, atol=1e-14), (variant, i)


def test_reference_phis_in_terms_of_phi_functions():
    p1, p2, p3 = ex.reference_code_phis("eps")
    assert [sp.simplify(p - ex.h * ex.phi(k, ex.h)) for p, k in [(p1, 1), (p2, 2), (p3, 3)]] == [0, 0, 0]
    p1, p2, p3 = ex.reference_code_phis("x0")
    assert [sp.simplify(p - s * ex.h * ex.phi(k, -ex.h)) for p, s, k in [(p1, -1, 1), (p2, 1, 2), (p3, -1, 3)]] \
        == [0, 0, 0]


# -- the key result: D2 is half the second derivative ---------------------------------------------------------------
def test_D1_is_the_interpolant_slope_and_D2_half_its_curvature():
    assert ex.divided_difference_identities() == (0, 0)
    exp = ex.difference_expansions()
    d1, d2 = exp["D1"], exp["D2"]
    assert d1.coeff(ex.h, 0) == 0 and d1.coeff(ex.h, 1) == ex.F[1] and d1.coeff(ex.h, 2) == 0
    assert d2.coeff(ex.h, 0) == 0 and d2.coeff(ex.h, 1) == 0 and d2.coeff(ex.h, 2) == ex.F[2] / 2


@pytest.mark.parametrize("prediction", ex.PREDICTIONS)
@pytest.mark.parametrize("test_function", ["generic", "exp", "cubic"])
def test_leading_local_error(prediction, test_function):
    coeffs = {"generic": None, "exp": ex.exp_taylor_coefficients(), "cubic": ex.cubic_taylor_coefficients()}
    coeffs = coeffs[test_function]
    second = {"generic": ex.F[2], "exp": sp.Symbol("c", real=True) ** 2,
              "cubic": 2 * sp.Symbol("a_2", real=True)}[test_function]
    sign = 1 if prediction == "eps" else -1
    published, leading = ex.third_order_local_error("published", prediction, coeffs)
    assert [published.coeff(ex.h, p) for p in range(3)] == [0, 0, 0]
    assert sp.simplify(leading - sign * second * ex.h**3 / 12) == 0      # nonzero at h^3: order 2
    corrected, leading = ex.third_order_local_error("corrected", prediction, coeffs)
    assert [corrected.coeff(ex.h, p) for p in range(4)] == [0, 0, 0, 0]  # zero at h^3: order 3
    assert sp.Poly(leading, ex.h).degree() == 4
    assert leading.coeff(ex.h, 4) != 0


@pytest.mark.parametrize("variant", ["published", "corrected"])
def test_package_one_step_error_follows_the_symbolic_series(variant):
    """One step of the package's 3M weights on F(lambda) = exp(c (lambda - lambda_s)) with exact
    history, against the exact step: (step - exact)/sigma_t matches the symbolic local error
    (its h^3 and h^4 terms) at two step sizes, to a relative O(h)."""
    c = 0.8
    series, _ = ex.third_order_local_error(variant, "eps", ex.exp_taylor_coefficients())
    predicted = sp.lambdify((ex.h, ex.r0, ex.r1), series.subs(sp.Symbol("c", real=True), c), modules="math")
    sched = schedules.DiscreteVP.ddpm_linear()
    for steps in [100, 200]:
        grid = timesteps.make(sched, "logsnr", steps)
        lam = sched.half_log_snr(grid)
        _, w = multistep_weights(sched, grid, "eps", 3, solver_type="taylor", third_order=variant)
        i = steps // 2
        f = lambda l: math.exp(c * (l - float(lam[i])))  # noqa: E731
        step = sum(float(w[i, j]) * f(float(lam[i - j])) for j in range(3))
        # exact: -alpha_t int_{lam_s}^{lam_t} e^{-l} e^{c (l - lam_s)} dl
        ls, lt = float(lam[i]), float(lam[i + 1])
        exact = -float(sched.alpha(grid[i + 1])) * math.exp(-c * ls) * (
            math.exp((c - 1) * lt) - math.exp((c - 1) * ls)) / (c - 1)
        measured = (step - exact) / float(sched.sigma(grid[i + 1]))
        _, _, hh, r0, r1 = _step_geometry(sched, grid, i)
        expected = predicted(hh, r0, r1)
        assert measured == pytest.approx(expected, rel=hh), (steps, measured, expected)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="prediction"):
        ex.expansion_weight(1, "v")
    with pytest.raises(ValueError, match="variant"):
        ex.third_order_step("new")
    with pytest.raises(ValueError, match="k must"):
        ex.interpolation_nodes(4)
