"""reference.solve: the truth every error is measured against."""
from __future__ import annotations

import pytest
import torch

from fastdiff_edu import problems, reference
from fastdiff_edu.prediction import Prediction
from fastdiff_edu.schedules import EDM, DiscreteVP, VPLinear
from tests._helpers import counting_model, single_thread, small_gaussian  # noqa: F401

F64 = torch.float64


@pytest.fixture(scope="module")
def gmm64_discrete():
    sched = DiscreteVP.ddpm_linear()
    model, counter = counting_model(problems.gmm64(), sched)
    x_T = sched.prior_sample((16, 64), generator=torch.Generator().manual_seed(0), dtype=F64)
    return model, counter, x_T


def test_halving_rtol_moves_the_answer_by_less_than_1e_8(gmm64_discrete):
    model, counter, x_T = gmm64_discrete
    calls_before = counter.calls
    ref, info = reference.solve(model, x_T, return_info=True)
    calls_used = counter.calls - calls_before
    tighter = reference.solve(model, x_T, rtol=0.5e-10)
    diff = float((ref - tighter).abs().max())
    assert diff < 1e-8, f"halving rtol moved the reference by {diff:.3g}"
    assert ref.shape == x_T.shape and ref.dtype == F64
    assert bool(torch.isfinite(ref).all())
    # the info is counted: it equals the calls the model really received
    assert info.nfe > 0
    assert info.nfe == calls_used
    assert info.method == "DOP853" and info.variable == "half_log_snr" and info.rtol == 1e-10
    assert info.steps > 0


def test_return_info_nfe_is_counted():
    sched = VPLinear()
    model, counter = counting_model(small_gaussian(dim=3), sched)
    x_T = sched.prior_sample((4, 3), generator=torch.Generator().manual_seed(1), dtype=F64)
    _, info = reference.solve(model, x_T, rtol=1e-8, return_info=True)
    assert info.nfe > 0
    assert info.nfe == counter.calls == model.nfe
    out = reference.solve(model, x_T, rtol=1e-8)
    assert isinstance(out, torch.Tensor)


@pytest.mark.parametrize("sched", [pytest.param(VPLinear(), id="VPLinear"),
                                   pytest.param(DiscreteVP.ddpm_linear(), id="DiscreteVP"),
                                   pytest.param(EDM(), id="EDM")])
def test_matches_closed_form_flow_of_a_single_gaussian(sched):
    gaussian = small_gaussian(dim=4, seed=3)
    model = gaussian.prediction(sched)
    x_T = sched.prior_sample((8, 4), generator=torch.Generator().manual_seed(2), dtype=F64)
    t_end = sched.t_min if not isinstance(sched, EDM) else 0.01
    ref = reference.solve(model, x_T, sched.t_max, t_end)
    exact = gaussian.ode_flow(x_T, sched, sched.t_max, t_end)
    assert float((ref - exact).abs().max()) < 1e-8


def test_partial_interval():
    sched = VPLinear()
    gaussian = small_gaussian(dim=2)
    model = gaussian.prediction(sched)
    x = sched.prior_sample((5, 2), generator=torch.Generator().manual_seed(3), dtype=F64)
    out = reference.solve(model, x, 0.7, 0.2)
    exact = gaussian.ode_flow(x, sched, 0.7, 0.2)
    assert float((out - exact).abs().max()) < 1e-9


def _float64_only_model(sched):
    """The exact eps of a 2-D Gaussian, refusing anything but float64 samples."""
    gaussian = small_gaussian(dim=2)
    exact = gaussian.prediction(sched).fn

    def fn(x, t):
        if x.dtype != F64:
            raise TypeError(f"called with {x.dtype}")
        return exact(x, t)

    return gaussian, Prediction(fn, sched, kind="eps", time_dtype=F64)


def test_float32_input_is_solved_in_float64_and_returned_as_float32():
    sched = VPLinear()
    gaussian, model = _float64_only_model(sched)
    x = sched.prior_sample((5, 2), generator=torch.Generator().manual_seed(3), dtype=torch.float32)
    out, info = reference.solve(model, x, 0.7, 0.2, return_info=True)
    assert out.dtype == torch.float32
    assert info.nfe < 1000
    exact = gaussian.ode_flow(x.double(), sched, 0.7, 0.2)
    assert float((out.double() - exact).abs().max()) < 1e-6  # float32 rounding of the result only


@pytest.mark.parametrize("sched", [pytest.param(VPLinear(), id="VPLinear"),
                                   pytest.param(DiscreteVP.ddpm_linear(), id="DiscreteVP"),
                                   pytest.param(EDM(), id="EDM")])
def test_errors_for_t_end_zero_and_wrong_order(sched):
    model, counter = counting_model(small_gaussian(dim=2), sched)
    x_T = torch.zeros(2, 2, dtype=F64)
    with pytest.raises(ValueError, match="positive noise level"):
        reference.solve(model, x_T, sched.t_max, 0.0)
    with pytest.raises(ValueError, match="must be larger"):
        reference.solve(model, x_T, sched.t_min, sched.t_max)
    with pytest.raises(ValueError, match="must be larger"):
        reference.solve(model, x_T, sched.t_max, sched.t_max)
    with pytest.raises(ValueError, match="outside"):
        reference.solve(model, x_T, 2 * sched.t_max, sched.t_min)
    assert counter.calls == 0, "argument errors must come before any model call"
