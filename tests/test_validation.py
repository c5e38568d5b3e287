"""Bad input gets a clear error, raised before any model call; NaN is reported with its step."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import fastdiff_edu as fd
from fastdiff_edu import problems, solvers, timesteps
from fastdiff_edu.schedules import DiscreteVP, VPLinear
from tests._helpers import counting_model, single_thread  # noqa: F401

F64 = torch.float64
SOLVERS = ["ddim", "euler", "ddpm", "rk45"]
GOOD_GRID = [1.0, 0.5, 0.1, 0.001]
GOOD_X = torch.zeros(4, 2, dtype=F64)

# (case id, x_T, grid, use a non-Prediction model, exception type, message fragments)
BAD_INPUTS = [
    ("integer-x_T", torch.zeros(4, 2, dtype=torch.int64), GOOD_GRID, False, TypeError,
     ["floating-point", "int64", "x_T.float()"]),
    ("bool-x_T", torch.zeros(4, 2, dtype=torch.bool), GOOD_GRID, False, TypeError, ["floating-point"]),
    ("1-D-x_T", torch.zeros(2, dtype=F64), GOOD_GRID, False, ValueError, ["batch dimension", "x_T[None]"]),
    ("0-D-x_T", torch.zeros((), dtype=F64), GOOD_GRID, False, ValueError, ["batch dimension"]),
    ("numpy-x_T", np.zeros((4, 2)), GOOD_GRID, False, TypeError, ["torch.Tensor", "ndarray"]),
    ("list-x_T", [[0.0, 0.0]], GOOD_GRID, False, TypeError, ["torch.Tensor", "list"]),
    ("one-point-grid", GOOD_X, [1.0], False, ValueError, ["1 points", "at least 1 steps"]),
    ("non-monotone-grid", GOOD_X, [1.0, 0.3, 0.5, 0.001], False, ValueError, ["strictly decreasing", "t[1]"]),
    ("increasing-grid", GOOD_X, [0.001, 0.5, 1.0], False, ValueError, ["strictly decreasing", "noise to data"]),
    ("above-range-grid", GOOD_X, [1.5, 0.5, 0.001], False, ValueError, ["outside", "t[0]=1.5", "[0.001, 1.0]"]),
    ("below-range-grid", GOOD_X, [1.0, 0.5, 0.0005], False, ValueError, ["outside", "t[2]=0.0005"]),
    ("nan-grid", GOOD_X, [1.0, float("nan"), 0.001], False, ValueError, ["NaN"]),
    ("2-D-grid", GOOD_X, [[1.0, 0.5], [0.1, 0.001]], False, ValueError, ["1-D"]),
    ("not-a-Prediction", GOOD_X, GOOD_GRID, True, TypeError, ["Prediction", "Prediction(fn, schedule"]),
]


@pytest.fixture
def counted():
    return counting_model(problems.ring2d(), VPLinear())


@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("case, x_T, grid, raw, exc, fragments", [pytest.param(*c, id=c[0]) for c in BAD_INPUTS])
def test_bad_input_raises_before_any_model_call(counted, solver, case, x_T, grid, raw, exc, fragments):
    model, counter = counted
    target = counter if raw else model  # the raw fn is callable but not a Prediction
    with pytest.raises(exc) as info:
        getattr(solvers, solver)(target, x_T, grid)
    message = str(info.value)
    assert message.startswith(f"{solver}:"), f"the message should name the sampler: {message}"
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} missing from: {message}"
    assert counter.calls == 0 and model.nfe == 0


@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("case, x_T, grid, raw, exc, fragments",
                         [pytest.param(*c, id=c[0]) for c in BAD_INPUTS if not c[3]])
def test_bad_input_through_sample(counted, solver, case, x_T, grid, raw, exc, fragments):
    model, counter = counted
    with pytest.raises(exc, match=solver):
        fd.sample(model, x_T, solver, timesteps=grid)
    assert counter.calls == 0 and model.nfe == 0


def test_rk45_refuses_to_integrate_to_t0(counted):
    model, counter = counted
    with pytest.raises(ValueError, match="singular at t = 0.*t_min"):
        solvers.rk45(model, GOOD_X, [1.0, 0.0])
    with pytest.raises(ValueError, match="rtol and atol must be positive"):
        solvers.rk45(model, GOOD_X, GOOD_GRID, rtol=0.0)
    assert counter.calls == 0


def test_good_input_is_accepted(counted):
    """The fixtures above are valid apart from the one thing each case breaks."""
    model, counter = counted
    for solver in SOLVERS:
        out = getattr(solvers, solver)(model, GOOD_X, GOOD_GRID)
        assert out.shape == GOOD_X.shape
    assert counter.calls > 0


def test_model_shape_error_reaches_the_user_as_model_call_error():
    sched = VPLinear()
    model, _ = counting_model(problems.gmm64(), sched)  # expects 64 dimensions
    with pytest.raises(fd.prediction.ModelCallError):
        fd.sample(model, torch.zeros(3, 5, dtype=F64), "ddim", nfe=3)


# -- NaN mid-trajectory -----------------------------------------------------------------------------------
@pytest.mark.parametrize("solver", ["ddim", "euler", "ddpm"])
@pytest.mark.parametrize("k", [0, 3, 9])
def test_nan_mid_trajectory_names_the_step(solver, k):
    sched = DiscreteVP.ddpm_linear()
    model, counter = counting_model(problems.ring2d(), sched, nan_from=k)
    x_T = sched.prior_sample((4, 2), generator=torch.Generator().manual_seed(0), dtype=F64)
    with pytest.raises(FloatingPointError, match=f"^{solver}: NaN or Inf appeared at step {k} of 10 ") as info:
        fd.sample(model, x_T, solver, nfe=10, **({"generator": torch.Generator()} if solver == "ddpm" else {}))
    grid = timesteps.make(sched, "time_uniform", 10)
    assert f"t={float(grid[k]):.6g}" in str(info.value)


@pytest.mark.parametrize("k", [0, 5])
def test_nan_in_rk45_is_a_floating_point_error(k):
    sched = VPLinear()
    model, counter = counting_model(problems.ring2d(), sched, nan_from=k)
    x_T = sched.prior_sample((4, 2), generator=torch.Generator().manual_seed(0), dtype=F64)
    with pytest.raises(FloatingPointError, match="NaN"):
        fd.sample(model, x_T, "rk45")
