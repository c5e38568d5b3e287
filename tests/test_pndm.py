"""PNDM, PLMS, iPNDM, PRK and FON (fastdiff_edu.solvers.pndm; book chapter: pndm).

- derivations vs code: the sympy Adams-Bashforth weights (uniform and non-uniform) lambdified
  and compared with the numbers the samplers use; PNDM's transfer (eq. 9) equals DDIM's step;
- NFE accounting (counted) and the budget checks, raised before any model call;
- identities: eps/x0/v parametrisations give the same samples; every pseudo method is exact for
  a point mass; on EDM (sigma_bar = t) the classical and the sigma_bar weights coincide;
- convergence orders on gmm64 (float64) against reference.solve.
"""
from __future__ import annotations

import numpy as np
import pytest
import sympy as sp
import torch

import fastdiff_edu as fd
from fastdiff_edu import metrics, problems, reference, solvers, timesteps
from fastdiff_edu.derivations import linear_multistep as lm
from fastdiff_edu.schedules import EDM, DiscreteVP, VPLinear
from fastdiff_edu.solvers import pndm
from fastdiff_edu.solvers.ddim import ddim_coefficients
from tests._helpers import counting_model, point_mass_model, single_thread  # noqa: F401

F64 = torch.float64
PSEUDO = ["f-pndm", "s-pndm", "plms", "ipndm", "prk"]
ALL = PSEUDO + ["fon"]
#: NFE for a grid of S steps, and the smallest budget
NFE_OF = {"f-pndm": lambda s: s + 9, "fon": lambda s: s + 9, "s-pndm": lambda s: s + 1, "plms": lambda s: s + 1,
          "ipndm": lambda s: s, "prk": lambda s: 4 * s}
MIN_NFE = {"f-pndm": 13, "fon": 13, "s-pndm": 3, "plms": 3, "ipndm": 1, "prk": 4}


# -- derivations vs code ------------------------------------------------------------------------------
def test_uniform_adams_bashforth_weights_are_the_classical_numbers():
    classical = {1: [1], 2: [3, -1], 3: [23, -16, 5], 4: [55, -59, 37, -9]}
    denominators = {1: 1, 2: 2, 3: 12, 4: 24}
    for k in range(1, 5):
        derived = lm.adams_bashforth_uniform(k)
        assert derived == [sp.Rational(c, denominators[k]) for c in classical[k]]
        assert np.allclose([float(w) for w in derived], pndm.AB_UNIFORM[k], rtol=0, atol=1e-15)
        assert lm.order_conditions(lm.adams_bashforth(k), k) == [0] * k


@pytest.mark.parametrize("order", [2, 3, 4])
def test_nonuniform_weights_match_the_sampler_numbers(order):
    """lambdify the symbolic variable-step weights; compare with adams_bashforth_weights on random
    step sequences (in either direction of time)."""
    symbols = (lm.h,) + lm.previous_steps[: order - 1]
    fns = [sp.lambdify(symbols, w, modules="numpy") for w in lm.adams_bashforth(order)]
    rng = np.random.default_rng(order)
    for _ in range(20):
        steps = rng.uniform(0.05, 3.0, size=order)  # h, h1, h2, ...
        sign = rng.choice([-1.0, 1.0])
        start = rng.uniform(-5, 5)
        nodes = start - sign * np.concatenate([[0.0], np.cumsum(steps[1:])])   # newest first
        end = start + sign * steps[0]
        numeric = pndm.adams_bashforth_weights(nodes, end)
        symbolic = np.array([f(*steps) for f in fns])
        assert np.allclose(numeric, symbolic, rtol=1e-12, atol=1e-12), (numeric, symbolic)


def test_multistep_weights_table_for_each_setting():
    sched = DiscreteVP.ddpm_linear()
    grid = timesteps.make(sched, "logsnr", 6)
    orders = [0, 2, 3, 4, 4, 4]
    classical = pndm.multistep_weights(sched, grid, orders, nonuniform=False)
    assert torch.equal(classical[0], torch.zeros(4, dtype=F64))
    for i, k in enumerate(orders[1:], start=1):
        assert torch.allclose(classical[i, :k], torch.tensor(pndm.AB_UNIFORM[k], dtype=F64), rtol=0, atol=1e-15)
    # the sigma_bar weights: the symbolic formula evaluated at the sigma_bar steps
    sbar = sched.sigma_bar(grid).numpy()
    fns = [sp.lambdify((lm.h,) + lm.previous_steps[:3], w) for w in lm.adams_bashforth(4)]
    i = 4
    steps = [sbar[i] - sbar[i + 1], sbar[i - 1] - sbar[i], sbar[i - 2] - sbar[i - 1], sbar[i - 3] - sbar[i - 2]]
    expected = np.array([f(*steps) for f in fns])
    table = pndm.multistep_weights(sched, grid, orders, nonuniform=True)
    assert np.allclose(table[i].numpy(), expected, rtol=1e-12)
    assert abs(float(table[i].sum()) - 1.0) < 1e-12                   # weights of a consistent method sum to 1
    # on a grid uniform in sigma_bar the sigma_bar weights are the classical ones
    uniform_sbar = sched.t_of_sigma_bar(torch.linspace(float(sbar[0]), float(sbar[-1]), 7, dtype=F64))
    uniform_sbar[0], uniform_sbar[-1] = grid[0], grid[-1]
    table = pndm.multistep_weights(sched, uniform_sbar, orders, nonuniform=True)
    assert torch.allclose(table, classical, atol=1e-6)


def test_transfer_is_the_ddim_step():
    """Liu et al. eq. 9 equals DDIM symbolically, and lambdified it equals ddim_coefficients."""
    assert lm.transfer_difference() == (0, 0)
    sched = DiscreteVP.ddpm_linear()
    grid = timesteps.make(sched, "time_uniform", 25)
    abar = sched.alpha(grid) ** 2
    c_x, c_eps, _ = ddim_coefficients(sched, grid)
    phi = sp.lambdify((lm.x, lm.eps, lm.abar_t, lm.abar_s), lm.pndm_transfer(), modules="numpy")
    a_t, a_s = abar[:-1].numpy(), abar[1:].numpy()
    assert np.allclose(phi(1.0, 0.0, a_t, a_s), c_x.numpy(), rtol=1e-12)
    assert np.allclose(phi(0.0, 1.0, a_t, a_s), c_eps.numpy(), rtol=1e-9)


def test_pseudo_step_local_error_leading_term():
    series, leading = lm.pseudo_step_local_error()
    e1, g2 = sp.Symbol("e1"), sp.Symbol("g2")
    assert sp.simplify(leading + e1 * g2 * lm.h**3 / 6) == 0
    assert sp.expand(series).coeff(lm.h, 2) == 0 and sp.expand(series).coeff(lm.h, 1) == 0


def test_midpoints():
    sched = DiscreteVP.ddpm_linear()
    grid = timesteps.make(sched, "time_uniform", 4)
    assert torch.allclose(pndm.midpoints(sched, grid), 0.5 * (grid[:-1] + grid[1:]))
    sbar = sched.sigma_bar(grid)
    mid = pndm.midpoints(sched, grid, nonuniform=True)
    assert torch.allclose(sched.sigma_bar(mid), 0.5 * (sbar[:-1] + sbar[1:]), rtol=1e-10)


# -- registry, NFE and budgets ----------------------------------------------------------------------------
def test_registered():
    for name in ALL:
        spec = solvers.REGISTRY[name]
        assert spec.chapter == "pndm" and spec.min_nfe == MIN_NFE[name]
        assert spec.default_grid in timesteps.KINDS


@pytest.mark.parametrize("name", ALL)
def test_nfe_is_counted_for_a_grid(name):
    sched = VPLinear()
    model, counter = counting_model(problems.ring2d(), sched)
    x_T = sched.prior_sample((4, 2), generator=torch.Generator().manual_seed(0), dtype=F64)
    steps_seen = []
    for steps in [4, 7]:
        counter.calls = 0
        model.reset_nfe()
        grid = timesteps.make(sched, "time_uniform", steps)
        x = getattr(solvers.pndm, name.replace("-", "_"))(model, x_T, grid,
                                                          callback=lambda i, t, x: steps_seen.append(i))
        assert counter.calls == model.nfe == NFE_OF[name](steps)
        assert x.shape == x_T.shape and torch.isfinite(x).all()
    assert steps_seen == list(range(4)) + list(range(7))


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("nfe", [13, 14, 20, 31])
def test_sample_never_exceeds_the_budget(name, nfe):
    sched = DiscreteVP.ddpm_linear()
    model, counter = counting_model(problems.ring2d(), sched)
    x_T = sched.prior_sample((4, 2), generator=torch.Generator().manual_seed(0), dtype=F64)
    _, info = fd.sample(model, x_T, name, nfe=nfe, return_info=True)
    assert info.nfe == counter.calls <= nfe
    if name != "prk":
        assert info.nfe == nfe                      # the others spend the budget exactly
    else:
        assert info.nfe == 4 * (nfe // 4)


@pytest.mark.parametrize("name", ALL)
def test_budget_too_small_is_refused_before_any_model_call(name):
    sched = DiscreteVP.ddpm_linear()
    model, counter = counting_model(problems.ring2d(), sched)
    x_T = torch.zeros(3, 2, dtype=F64)
    smallest = MIN_NFE[name]
    if smallest > 1:
        with pytest.raises(ValueError, match=f"nfe >= {smallest}"):
            fd.sample(model, x_T, name, nfe=smallest - 1)
        steps = solvers.REGISTRY[name].steps_for_nfe(smallest, {}) - 1
        grid = timesteps.make(sched, "time_uniform", max(steps, 1)) if steps >= 1 else None
        if grid is not None:
            with pytest.raises(ValueError) as info:
                fd.sample(model, x_T, name, timesteps=grid)
            message = str(info.value)
            assert message.startswith(f"{name}:") and f"nfe >= {smallest}" in message, message
    assert counter.calls == model.nfe == 0
    fd.sample(model, x_T, name, nfe=smallest)       # the smallest budget named works
    assert counter.calls == smallest


@pytest.mark.parametrize("name", PSEUDO)
def test_bad_options_are_refused_before_any_model_call(name):
    sched = VPLinear()
    model, counter = counting_model(problems.ring2d(), sched)
    x_T = torch.zeros(3, 2, dtype=F64)
    with pytest.raises(ValueError, match="nonuniform must be"):
        fd.sample(model, x_T, name, nfe=20, nonuniform="lambda")
    with pytest.raises(ValueError, match="t_min"):   # a pseudo-RK4 last step would evaluate at t = 0
        solvers.pndm.prk(model, x_T, [1.0, 0.5, 0.0])
    with pytest.raises(ValueError, match="order must be"):
        solvers.pndm.ipndm(model, x_T, [1.0, 0.5, 0.1], order=5)
    with pytest.raises(ValueError, match="gradient must be"):
        solvers.pndm.fon(model, x_T, timesteps.make(sched, "time_uniform", 5), gradient="paper")
    assert counter.calls == model.nfe == 0


def test_nan_is_reported_with_its_step():
    sched = VPLinear()
    model, _ = counting_model(problems.ring2d(), sched, nan_from=16)   # F-PNDM: 12 warm-up calls, then 1/step
    x_T = torch.zeros(3, 2, dtype=F64)
    with pytest.raises(FloatingPointError, match="step 7 of 10"):
        solvers.pndm.f_pndm(model, x_T, timesteps.make(sched, "time_uniform", 10))


@pytest.mark.parametrize("name", ["plms", "f-pndm"])
def test_float32_input_keeps_its_dtype(name):
    sched = DiscreteVP.ddpm_linear()
    mixture = problems.ring2d()
    x_T = sched.prior_sample((16, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float32)
    x32 = fd.sample(mixture.prediction(sched), x_T, name, nfe=20)
    x64 = fd.sample(mixture.prediction(sched), x_T.double(), name, nfe=20)
    assert x32.dtype == torch.float32
    assert float((x32.double() - x64).abs().max()) < 1e-4


# -- identities --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", PSEUDO + ["fon"])
def test_parametrisations_give_the_same_samples(name):
    """An exact v- (or x0-) model gives the same PNDM samples as the eps-model: the noise values
    are combined after conversion, never the raw outputs (compare test_parity_pndm for diffusers)."""
    sched = DiscreteVP.ddpm_linear()
    mixture = problems.gmm64()
    x_T = sched.prior_sample((8, 64), generator=torch.Generator().manual_seed(2), dtype=F64)
    out = {kind: fd.sample(mixture.prediction(sched, kind=kind), x_T, name, nfe=20) for kind in ["eps", "x0", "v"]}
    scale = float(out["eps"].abs().max())
    assert float((out["v"] - out["eps"]).abs().max()) < 1e-10 * scale
    assert float((out["x0"] - out["eps"]).abs().max()) < 1e-10 * scale


@pytest.mark.parametrize("name", PSEUDO)
@pytest.mark.parametrize("nonuniform", [False, True])
def test_exact_for_a_point_mass(name, nonuniform):
    """Data = one point: eps is constant along the exact path, every weight set sums to 1, so each
    pseudo method reproduces it exactly (and ends at the point when the grid ends at t = 0)."""
    sched = DiscreteVP.ddpm_linear()
    point = torch.linspace(-1, 1, 5, dtype=F64)
    model = point_mass_model(sched, point)
    x_T = sched.prior_sample((3, 5), generator=torch.Generator().manual_seed(0), dtype=F64)
    end_zero = name != "prk"
    grid = timesteps.make(sched, "leading", 12) if end_zero else timesteps.make(sched, "logsnr", 5)
    x = fd.sample(model, x_T, name, timesteps=grid, nonuniform=nonuniform)
    if end_zero:
        assert float((x - point).abs().max()) < 1e-10
    exact = sched.alpha(grid[-1]) * point + sched.sigma(grid[-1]) / sched.sigma(grid[0]) * (
        x_T - sched.alpha(grid[0]) * point)
    assert float((x - exact).abs().max()) < 1e-10


def test_fon_is_not_exact_for_a_point_mass():
    sched = DiscreteVP.ddpm_linear()
    point = torch.linspace(-1, 1, 5, dtype=F64)
    x_T = sched.prior_sample((3, 5), generator=torch.Generator().manual_seed(0), dtype=F64)
    x = fd.sample(point_mass_model(sched, point), x_T, "fon", timesteps=timesteps.make(sched, "leading", 12))
    assert float((x - point).abs().max()) > 1e-3


@pytest.mark.parametrize("name", PSEUDO)
def test_classical_weights_are_the_sigma_bar_weights_on_a_uniform_edm_grid(name):
    """EDM: sigma_bar = t, so on a t-uniform grid the equal-step weights and midpoints are exact."""
    sched = EDM()
    mixture = problems.ring2d()
    x_T = sched.prior_sample((8, 2), generator=torch.Generator().manual_seed(0), dtype=F64)
    model = mixture.prediction(sched)
    a = fd.sample(model, x_T, name, nfe=24)
    b = fd.sample(model, x_T, name, nfe=24, nonuniform=True)
    assert float((a - b).abs().max()) < 1e-9


def test_ipndm_order_1_is_ddim_and_plms_starts_with_heun():
    sched = DiscreteVP.ddpm_linear()
    model = problems.ring2d().prediction(sched)
    x_T = sched.prior_sample((8, 2), generator=torch.Generator().manual_seed(0), dtype=F64)
    grid = timesteps.make(sched, "time_uniform", 8)
    assert torch.allclose(solvers.pndm.ipndm(model, x_T, grid, order=1), solvers.ddim(model, x_T, grid),
                          rtol=0, atol=1e-13)
    # the first step of s-pndm and plms is the same pseudo improved-Euler step
    a = solvers.pndm.plms(model, x_T, grid[:3])
    b = solvers.pndm.s_pndm(model, x_T, grid[:3])
    assert torch.equal(a, b)


# -- convergence orders on the standard test bed -------------------------------------------------------------
@pytest.fixture(scope="module")
def testbed():
    sched = DiscreteVP.ddpm_linear()
    model = problems.gmm64().prediction(sched)
    x_T = sched.prior_sample((32, 64), generator=torch.Generator().manual_seed(0), dtype=F64)
    return dict(model=model, x_T=x_T, ref=reference.solve(model, x_T))


def _order(testbed, name, nfes, grid="logsnr", **options):
    errors = [metrics.rmse(fd.sample(testbed["model"], testbed["x_T"], name, nfe=n, grid=grid, **options),
                           testbed["ref"]) for n in nfes]
    return metrics.empirical_order(nfes, errors), errors


# measured on the logsnr grid, NFE 40/80/160: plms 2.10, ipndm 2.07, s-pndm 1.90 (f-pndm 2.11 at NFE
# 89/169/329); with nonuniform=True at NFE 80/160/320: prk 3.84, plms 3.80, ipndm 3.77 (f-pndm 4.01 at 89/169/329).
@pytest.mark.parametrize("name", ["plms", "ipndm", "s-pndm", "f-pndm"])
def test_classical_weights_give_order_two(testbed, name):
    """Equal-step weights on a grid that is not uniform in sigma_bar: the local error is
    O(h^3) (derivations.linear_multistep.pseudo_step_local_error), so the order is 2."""
    nfes = [89, 169, 329] if name == "f-pndm" else [40, 80, 160]
    order, errors = _order(testbed, name, nfes)
    assert abs(order - 2.0) < 0.3, (name, order, errors)


@pytest.mark.parametrize("name, nfes, low", [("f-pndm", [89, 169, 329], 3.7), ("prk", [80, 160, 320], 3.5),
                                              ("plms", [80, 160, 320], 3.4), ("ipndm", [80, 160, 320], 3.4)])
def test_sigma_bar_weights_restore_the_order(testbed, name, nfes, low):
    """nonuniform=True: a true AB/RK method in (x/alpha, sigma/alpha); F-PNDM and PRK are 4th order.
    PLMS and iPNDM show ~3.8 here: their low-order start (Heun, Euler) is taken at high noise,
    where eps hardly changes, so it does not yet limit the order at these NFE."""
    order, errors = _order(testbed, name, nfes, nonuniform=True)
    assert low < order < 4.3, (name, order, errors)


def test_fon_is_fourth_order_in_t_on_a_smooth_schedule():
    """FON is classical RK4/AB4 in t: 4th order on a t-uniform grid of the smooth VPLinear schedule
    (measured 4.08 at NFE 89/169/329, error 3.2e-6 at 329); the official one-step-difference gradient
    stalls (7.6e-4 at NFE 329)."""
    sched = VPLinear()
    model = problems.gmm64().prediction(sched)
    x_T = sched.prior_sample((16, 64), generator=torch.Generator().manual_seed(1), dtype=F64)
    ref = reference.solve(model, x_T)
    nfes = [89, 169, 329]
    errors = [metrics.rmse(fd.sample(model, x_T, "fon", nfe=n), ref) for n in nfes]
    assert abs(metrics.empirical_order(nfes, errors) - 4.0) < 0.3, errors
    official = metrics.rmse(fd.sample(model, x_T, "fon", nfe=329, gradient="transfer"), ref)
    assert official > 50 * errors[-1]
