"""Time grids: every kind, diffusers' discrete spacings, and the validator."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fastdiff_edu import timesteps
from fastdiff_edu.schedules import EDM, VE, DiscreteVP, VPCosine, VPLinear
from tests._helpers import single_thread  # noqa: F401

F64 = torch.float64
CONTINUOUS = ["time_uniform", "time_quadratic", "logsnr", "karras"]
DISCRETE = ["leading", "trailing", "linspace"]

def _schedule_params():
    return [
        pytest.param(VPLinear(), id="VPLinear"),
        pytest.param(VPCosine(), id="VPCosine"),
        pytest.param(DiscreteVP.ddpm_linear(), id="DiscreteVP"),
        pytest.param(VE(), id="VE"),
        pytest.param(EDM(), id="EDM"),
    ]


def _continuous_cases():
    for sched in _schedule_params():
        for kind in CONTINUOUS:
            yield pytest.param(sched.values[0], kind, id=f"{sched.id}-{kind}")


def _check_shape(grid, steps, t_start, t_end):
    assert isinstance(grid, torch.Tensor) and grid.dtype == F64 and grid.device.type == "cpu"
    assert grid.shape == (steps + 1,)
    assert bool((grid[1:] < grid[:-1]).all()), "grid must be strictly decreasing"
    assert float(grid[0]) == t_start and float(grid[-1]) == t_end, "end points must be exact"


# -- continuous kinds on their default range ---------------------------------------------------
@pytest.mark.parametrize("sched, kind", list(_continuous_cases()))
@pytest.mark.parametrize("steps", [1, 2, 10, 57])
def test_continuous_grid_default_range(sched, kind, steps):
    grid = timesteps.make(sched, kind, steps)
    _check_shape(grid, steps, sched.t_max, sched.t_min)
    _check_spacing(sched, kind, grid)


@pytest.mark.parametrize("sched", [pytest.param(s.values[0], id=s.id) for s in _schedule_params()])
@pytest.mark.parametrize("kind", CONTINUOUS)
def test_continuous_grid_custom_range(sched, kind):
    lo, hi = sched.t_min, sched.t_max
    t_start, t_end = lo + 0.8 * (hi - lo), lo + 0.05 * (hi - lo)
    grid = timesteps.make(sched, kind, 13, t_start=t_start, t_end=t_end)
    _check_shape(grid, 13, t_start, t_end)
    _check_spacing(sched, kind, grid)


def _check_spacing(sched, kind, grid):
    """Each kind is uniform in its own variable (checked on all points)."""
    if kind == "time_uniform":
        variable = grid
    elif kind == "time_quadratic":
        variable = grid.sqrt()
    elif kind == "logsnr":
        variable = sched.half_log_snr(grid)
    else:
        variable = sched.sigma_bar(grid) ** (1.0 / 7.0)
    diffs = variable[1:] - variable[:-1]
    scale = float(variable.abs().max())
    assert float((diffs - diffs.mean()).abs().max()) < 1e-9 * max(1.0, scale), f"{kind} grid is not uniform"


def test_karras_rho_parameter_is_used():
    sched = EDM()
    grid = timesteps.make(sched, "karras", 8, rho=3.0)
    root = sched.sigma_bar(grid) ** (1 / 3)
    assert torch.allclose(root[1:] - root[:-1], (root[1:] - root[:-1]).mean().expand(8), rtol=1e-9, atol=0)
    # EDM eq. 5 independently: sigma_i = (max^(1/rho) + i/(N-1) (min^(1/rho) - max^(1/rho)))^rho
    i = np.arange(9)
    expected = (80 ** (1 / 7) + i / 8 * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7
    assert np.allclose(timesteps.make(sched, "karras", 8).numpy(), expected, rtol=1e-12, atol=0)


def test_aliases():
    sched = VPLinear()
    for alias, kind in [("uniform", "time_uniform"), ("quadratic", "time_quadratic"), ("lambda", "logsnr"),
                        ("rho", "karras")]:
        assert torch.equal(timesteps.make(sched, alias, 7), timesteps.make(sched, kind, 7))


@pytest.mark.parametrize("sched", [pytest.param(VPLinear(), id="VPLinear"), pytest.param(EDM(), id="EDM"),
                                   pytest.param(DiscreteVP.ddpm_linear(), id="DiscreteVP")])
@pytest.mark.parametrize("kind", ["time_uniform", "time_quadratic"])
def test_time_grids_may_end_at_zero_on_zero_noise_schedules(sched, kind):
    grid = timesteps.make(sched, kind, 5, t_end=0.0)
    _check_shape(grid, 5, sched.t_max, 0.0)


@pytest.mark.parametrize("sched", [pytest.param(VPLinear(), id="VPLinear"), pytest.param(VPCosine(), id="VPCosine"),
                                   pytest.param(DiscreteVP.ddpm_linear(), id="DiscreteVP"),
                                   pytest.param(EDM(), id="EDM")])
@pytest.mark.parametrize("kind", ["logsnr", "karras"])
def test_noise_level_grids_refuse_t_end_zero_with_hint(sched, kind):
    """On a schedule with sigma(0) = 0 the noise-level grids cannot reach t = 0 (lambda = inf)."""
    with pytest.raises(ValueError, match="cannot reach t = 0.*t_min"):
        timesteps.make(sched, kind, 5, t_end=0.0)


# -- discrete spacings (diffusers' timestep_spacing) --------------------------------------------
def expected_labels(kind: str, n: int, steps: int) -> np.ndarray:
    """diffusers' rules, computed here with numpy, descending."""
    if kind == "leading":
        labels = np.arange(steps) * (n // steps)
    elif kind == "trailing":
        # diffusers: np.round(np.arange(n, 0, -n / steps)) - 1. Written with an integer counter
        # so that it always gives ``steps`` labels; it agrees with np.arange whenever np.arange
        # has the right length (see test_trailing_all_step_counts for the cases where it does not).
        labels = np.round(n - np.arange(steps) * (n / steps)) - 1
        arange_rule = np.round(np.arange(n, 0, -n / steps)) - 1
        if arange_rule.size == steps:
            assert np.array_equal(labels, arange_rule)
    else:
        labels = np.round(np.linspace(0, n - 1, steps))
    return np.sort(labels)[::-1].astype(np.float64)


@pytest.mark.parametrize("kind", DISCRETE)
@pytest.mark.parametrize("steps", [1, 2, 3, 7, 10, 20, 25, 50, 100, 333, 999, 1000])
def test_discrete_spacing_matches_diffusers(kind, steps):
    sched = DiscreteVP.ddpm_linear()
    n = sched.num_steps
    grid = timesteps.make(sched, kind, steps)
    labels = expected_labels(kind, n, steps)
    assert labels.size == steps
    assert grid.shape == (steps + 1,)
    assert bool((grid[1:] < grid[:-1]).all())
    assert float(grid[-1]) == 0.0, "discrete spacings end at the clean data, t = 0"
    got = sched.label(grid[:-1]).numpy()
    assert np.abs(got - labels).max() < 1e-9, f"labels {got[:5]}... vs {labels[:5]}..."
    assert np.abs(grid[:-1].numpy() - (labels + 1) / n).max() < 1e-15


def test_discrete_spacing_small_examples_by_hand():
    sched = DiscreteVP.ddpm_linear()
    lab = lambda kind, steps: sched.label(timesteps.make(sched, kind, steps)[:-1]).round().long().tolist()  # noqa: E731
    assert lab("leading", 4) == [750, 500, 250, 0]
    assert lab("trailing", 4) == [999, 749, 499, 249]
    assert lab("linspace", 4) == [999, 666, 333, 0]
    assert lab("trailing", 3) == [999, 666, 332]


def test_discrete_spacing_custom_end():
    sched = DiscreteVP.ddpm_linear()
    grid = timesteps.make(sched, "trailing", 4, t_end=0.1)  # labels 999, 749, 499, 249, then t = 0.1
    assert grid.tolist() == pytest.approx([1.0, 0.75, 0.5, 0.25, 0.1], abs=1e-15)
    with pytest.raises(ValueError, match="strictly decreasing"):
        timesteps.make(sched, "leading", 4, t_end=0.1)  # the last label, 0, sits at t = 0.001 < 0.1


def test_trailing_all_step_counts():
    """diffusers' np.arange(N, 0, -N/steps) has one element too many for 62 step counts of 1..1000
    (61, 103, 121, ...): the grid must still have steps + 1 points."""
    sched = DiscreteVP.ddpm_linear()
    failures = []
    for steps in range(1, sched.num_steps + 1):
        try:
            grid = timesteps.make(sched, "trailing", steps)
            ok = grid.numel() == steps + 1
        except ValueError:
            ok = False
        if not ok:
            failures.append(steps)
    assert not failures, f"{len(failures)} step counts fail, first {failures[:8]}"


@pytest.mark.parametrize("kind", ["leading", "linspace"])
def test_leading_and_linspace_all_step_counts(kind):
    sched = DiscreteVP.ddpm_linear()
    for steps in range(1, sched.num_steps + 1, 3):
        grid = timesteps.make(sched, kind, steps)
        assert grid.numel() == steps + 1


# -- errors ------------------------------------------------------------------------------------------
def test_unknown_kind_lists_the_choices():
    with pytest.raises(ValueError, match="unknown grid kind.*logsnr"):
        timesteps.make(VPLinear(), "log-snr-ish", 10)


@pytest.mark.parametrize("steps", [0, -3, 2.5, "10", None])
def test_steps_must_be_a_positive_integer(steps):
    with pytest.raises(ValueError, match="steps must be a positive integer"):
        timesteps.make(VPLinear(), "time_uniform", steps)


@pytest.mark.parametrize("kind", DISCRETE)
@pytest.mark.parametrize("sched", [pytest.param(VPLinear(), id="VPLinear"), pytest.param(EDM(), id="EDM")])
def test_discrete_kind_needs_discrete_schedule(kind, sched):
    with pytest.raises(ValueError, match="DiscreteVP"):
        timesteps.make(sched, kind, 10)


def test_discrete_kind_errors():
    sched = DiscreteVP.ddpm_linear()
    with pytest.raises(ValueError, match="cannot place"):
        timesteps.make(sched, "leading", 1001)
    with pytest.raises(ValueError, match="t_start"):
        timesteps.make(sched, "trailing", 10, t_start=0.9)


def test_start_must_exceed_end():
    with pytest.raises(ValueError, match="larger than"):
        timesteps.make(VPLinear(), "time_uniform", 10, t_start=0.2, t_end=0.5)
    with pytest.raises(ValueError, match="larger than"):
        timesteps.make(VPLinear(), "logsnr", 10, t_start=0.5, t_end=0.5)


@pytest.mark.parametrize("kind", ["logsnr", "karras"])
def test_ve_noise_level_grids_reach_its_t_min_zero(kind):
    """VE's t_min is 0, where sigma = sigma_min > 0: an ordinary time, so the default grid works."""
    sched = VE()
    grid = timesteps.make(sched, kind, 6)
    _check_shape(grid, 6, 1.0, 0.0)
    _check_spacing(sched, kind, grid)


@pytest.mark.parametrize("kind", CONTINUOUS)
def test_out_of_range_ends_are_rejected(kind):
    with pytest.raises(ValueError, match="outside"):
        timesteps.make(VPLinear(), kind, 10, t_start=1.5)
    with pytest.raises(ValueError, match="outside"):
        timesteps.make(EDM(), kind, 10, t_end=0.001)


# -- validate -------------------------------------------------------------------------------------
@pytest.mark.parametrize("grid, message", [
    pytest.param([1.0, 0.5, 0.7, 0.1], "strictly decreasing", id="non-monotone"),
    pytest.param([1.0, 0.5, 0.5, 0.1], "strictly decreasing", id="repeated"),
    pytest.param([0.1, 0.5, 1.0], "strictly decreasing", id="increasing"),
    pytest.param([1.2, 0.5, 0.1], "outside", id="above-t_max"),
    pytest.param([1.0, 0.5, 0.0005], "outside", id="below-t_min"),
    pytest.param([1.0, -0.5], "outside", id="negative-end"),
    pytest.param([1.0, float("nan"), 0.1], "NaN", id="nan"),
    pytest.param([1.0, 0.5, float("-inf")], "NaN or infinite", id="inf"),
    pytest.param([[1.0, 0.5], [0.4, 0.1]], "1-D", id="2-D"),
    pytest.param([0.5], "at least 1 steps", id="one-point"),
    pytest.param([], "at least", id="empty"),
])
def test_validate_rejects(grid, message):
    with pytest.raises(ValueError, match=message):
        timesteps.validate(VPLinear(), torch.tensor(grid, dtype=F64))


def test_validate_names_the_offending_index():
    with pytest.raises(ValueError, match=r"t\[1\]=0\.5 <= t\[2\]=0\.7"):
        timesteps.validate(VPLinear(), [1.0, 0.5, 0.7, 0.1])
    with pytest.raises(ValueError, match=r"t\[0\]=1\.2"):
        timesteps.validate(VPLinear(), [1.2, 0.5])


def test_validate_min_steps():
    with pytest.raises(ValueError, match="at least 3 steps"):
        timesteps.validate(VPLinear(), [1.0, 0.5, 0.1], min_steps=3)
    assert timesteps.validate(VPLinear(), [1.0, 0.7, 0.5, 0.1], min_steps=3).numel() == 4


def test_validate_returns_float64_cpu_and_accepts_lists_and_float32():
    grid = timesteps.validate(VPLinear(), [1.0, 0.5, 0.001])
    assert grid.dtype == F64 and grid.device.type == "cpu"
    grid32 = timesteps.validate(VPLinear(), torch.tensor([1.0, 0.5, 0.25], dtype=torch.float32))
    assert grid32.dtype == F64


def test_zero_only_as_the_last_point():
    sched = VPLinear()
    timesteps.validate(sched, [1.0, 0.5, 0.0])
    with pytest.raises(ValueError):
        timesteps.validate(sched, [0.0])  # one point anyway
    with pytest.raises(ValueError, match="outside"):
        # 0 in the middle of a grid cannot occur in a decreasing grid unless the end is negative
        timesteps.validate(sched, [1.0, 0.0, -0.1])


def test_validate_tolerates_tiny_roundoff_at_the_range_ends():
    sched = VPLinear()
    timesteps.validate(sched, [1.0 + 1e-14, 0.5, 1e-3 - 1e-16])
    with pytest.raises(ValueError):
        timesteps.validate(sched, [1.0 + 1e-9, 0.5])
    assert math.isclose(sched.t_max, 1.0)
