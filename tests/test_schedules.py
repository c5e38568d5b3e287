"""Noise schedules: identities, inverses, the discrete DDPM table, derivatives, the prior."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fastdiff_edu import schedules, timesteps
from fastdiff_edu.schedules import EDM, VE, DiscreteVP, VPCosine, VPLinear
from tests._helpers import all_schedules, single_thread, vp_schedules, zero_end_schedules  # noqa: F401

F64 = torch.float64


def dense_times(sched, n=20001):
    """Times covering the whole sampling range [t_min, t_max], both ends included."""
    return torch.linspace(sched.t_min, sched.t_max, n, dtype=F64)


# -- identities ------------------------------------------------------------------------
@pytest.mark.parametrize("sched", vp_schedules())
def test_vp_alpha_squared_plus_sigma_squared_is_one(sched):
    t = dense_times(sched)
    total = sched.alpha(t) ** 2 + sched.sigma(t) ** 2
    assert float((total - 1).abs().max()) < 1e-14
    assert sched.variance_preserving


@pytest.mark.parametrize("sched", all_schedules())
def test_half_log_snr_is_log_alpha_over_sigma_and_decreasing(sched):
    t = dense_times(sched, 2001)
    lam = sched.half_log_snr(t)
    direct = torch.log(sched.alpha(t)) - torch.log(sched.sigma(t))
    assert float((lam - direct).abs().max()) < 1e-12
    assert bool((lam[1:] < lam[:-1]).all()), "lambda must decrease strictly in t"
    assert torch.allclose(sched.sigma_bar(t), sched.sigma(t) / sched.alpha(t), rtol=1e-12, atol=0)


@pytest.mark.parametrize("sched", [pytest.param(VE(), id="VE"), pytest.param(EDM(), id="EDM")])
def test_unscaled_schedules_have_alpha_one(sched):
    t = dense_times(sched, 101)
    assert bool((sched.alpha(t) == 1).all())
    assert not sched.variance_preserving


def test_edm_sigma_is_t_and_ve_is_geometric():
    t = torch.tensor([0.002, 0.5, 3.0, 80.0], dtype=F64)
    assert torch.equal(EDM().sigma(t), t)
    ve = VE(sigma_min=0.01, sigma_max=50.0)
    u = torch.tensor([0.0, 0.25, 1.0], dtype=F64)
    expected = 0.01 * (50.0 / 0.01) ** u
    assert torch.allclose(ve.sigma(u), expected, rtol=1e-14, atol=0)


# -- the inverse of lambda --------------------------------------------------------------
@pytest.mark.parametrize("sched", all_schedules())
def test_lambda_inverse_round_trips_over_whole_range(sched):
    t = dense_times(sched)
    back = sched.t_of_half_log_snr(sched.half_log_snr(t))
    err = (back - t).abs() / t.abs().clamp(min=1.0)
    assert float(err.max()) < 1e-10, f"worst t={float(t[err.argmax()])}"
    # and the other way round: lambda -> t -> lambda over the lambda range
    lam = torch.linspace(float(sched.half_log_snr(sched.t_max)), float(sched.half_log_snr(sched.t_min)), 2001,
                         dtype=F64)
    lam_back = sched.half_log_snr(sched.t_of_half_log_snr(lam))
    assert float((lam_back - lam).abs().max()) < 1e-10


@pytest.mark.parametrize("sched", all_schedules())
def test_sigma_bar_inverse_round_trips(sched):
    t = dense_times(sched, 1001)
    back = sched.t_of_sigma_bar(sched.sigma_bar(t))
    assert float(((back - t).abs() / t.abs().clamp(min=1.0)).max()) < 1e-10


_ROUND_TRIP_SCHEDULES = {
    "VPLinear": VPLinear(), "VPCosine": VPCosine(), "DiscreteVP": DiscreteVP.ddpm_linear(),
    "VE": VE(), "EDM": EDM(),
}


@settings(max_examples=300, deadline=None, database=None)
@given(name=st.sampled_from(sorted(_ROUND_TRIP_SCHEDULES)), u=st.floats(0.0, 1.0))
def test_lambda_inverse_round_trips_at_random_points(name, u):
    sched = _ROUND_TRIP_SCHEDULES[name]
    t = sched.t_min + u * (sched.t_max - sched.t_min)
    t = min(max(t, sched.t_min), sched.t_max)
    back = float(sched.t_of_half_log_snr(sched.half_log_snr(t)))
    assert abs(back - t) <= 1e-10 * max(1.0, abs(t))


@pytest.mark.parametrize("t", [1e-14, 1e-12, 1e-10, 1e-8, 1e-6, 1e-4, 1e-3])
def test_vplinear_inverse_is_accurate_at_tiny_t(t):
    """The cancellation-free root keeps full *relative* accuracy far below t_min."""
    sched = VPLinear()
    tt = torch.tensor(t, dtype=F64)
    lam = sched.half_log_snr(tt)
    assert math.isfinite(float(lam)) and float(lam) > 0
    back = float(sched.t_of_half_log_snr(lam))
    assert abs(back - t) / t < 1e-10


# -- the discrete DDPM schedule ----------------------------------------------------------
def test_discrete_matches_ddpm_alphas_cumprod_at_knots():
    sched = DiscreteVP.ddpm_linear()
    n = 1000
    betas = np.linspace(1e-4, 0.02, n, dtype=np.float64)
    alphas_cumprod = np.cumprod(1.0 - betas)  # Ho et al. 2020, computed independently
    labels = np.arange(n)
    t_n = torch.tensor((labels + 1) / n, dtype=F64)
    assert sched.num_steps == n and sched.t_min == 1.0 / n and sched.t_max == 1.0
    assert np.abs(sched.alpha(t_n).numpy() ** 2 - alphas_cumprod).max() < 1e-12
    assert np.abs(sched.alphas_cumprod.numpy() - alphas_cumprod).max() < 1e-12
    assert np.abs(sched.label(t_n).numpy() - labels).max() < 1e-12
    assert np.abs(sched.t_of_label(torch.tensor(labels, dtype=F64)).numpy() - (labels + 1) / n).max() < 1e-15


def test_discrete_label_is_linear_and_starts_at_zero_data():
    sched = DiscreteVP.ddpm_linear()
    assert float(sched.label(0.0)) == -1.0
    assert float(sched.alpha(0.0)) == 1.0 and float(sched.sigma(0.0)) == 0.0
    t = torch.tensor([0.0005, 0.0123, 0.5, 0.99], dtype=F64)
    assert torch.allclose(sched.label(t), 1000 * t - 1, rtol=0, atol=1e-12)


def test_discrete_log_alpha_is_piecewise_linear_between_knots():
    sched = DiscreteVP.ddpm_linear()
    n = 1000
    k = torch.arange(1, n, dtype=F64)
    mid = (k + 0.5) / n
    left, right = k / n, (k + 1) / n
    interp = 0.5 * (sched.log_alpha(left) + sched.log_alpha(right))
    assert float((sched.log_alpha(mid) - interp).abs().max()) < 1e-14


def test_discrete_from_betas_and_alphas_cumprod_agree():
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=F64)
    a = DiscreteVP.from_betas(betas)
    b = DiscreteVP(torch.cumprod(1 - betas, 0))
    t = torch.linspace(0.001, 1.0, 777, dtype=F64)
    assert torch.allclose(a.alpha(t), b.alpha(t), rtol=1e-12, atol=0)


@pytest.mark.parametrize("bad", [[0.9], [[0.9, 0.8]], [0.9, 0.95], [1.0, 0.5], [0.5, 0.0]])
def test_discrete_rejects_bad_tables(bad):
    with pytest.raises(ValueError):
        DiscreteVP(torch.tensor(bad, dtype=F64))


# -- derivatives against finite differences ----------------------------------------------
def _interior_points(sched):
    if isinstance(sched, DiscreteVP):
        # segment midpoints, so that t +- h stays inside one linear piece
        k = torch.tensor([1, 7, 100, 499, 998], dtype=F64)
        return (k + 0.5) / sched.num_steps, 1e-6 / sched.num_steps
    lo, hi = sched.t_min, sched.t_max
    u = torch.tensor([0.01, 0.1, 0.3, 0.5, 0.8, 0.97], dtype=F64)
    return lo + u * (hi - lo), 1e-6 * max(1.0, hi)


@pytest.mark.parametrize("sched", all_schedules())
def test_derivatives_match_finite_differences(sched):
    t, h = _interior_points(sched)
    fd_log_alpha = (sched.log_alpha(t + h) - sched.log_alpha(t - h)) / (2 * h)
    fd_lam = (sched.half_log_snr(t + h) - sched.half_log_snr(t - h)) / (2 * h)
    d_log_alpha = sched.d_log_alpha(t)
    d_lam = sched.d_half_log_snr(t)
    scale_a = d_log_alpha.abs().clamp(min=1.0)
    scale_l = d_lam.abs().clamp(min=1.0)
    assert float(((d_log_alpha - fd_log_alpha).abs() / scale_a).max()) < 1e-6
    assert float(((d_lam - fd_lam).abs() / scale_l).max()) < 1e-6
    assert bool((d_lam < 0).all()), "lambda decreases in t"


def test_discrete_derivative_at_a_knot_is_the_left_segment_slope():
    """Documented: a knot belongs to the segment on its left (the one a sampler enters next)."""
    sched = DiscreteVP.ddpm_linear()
    n = sched.num_steps
    k = torch.tensor([2, 10, 500, 1000], dtype=F64)
    left_slope = (sched.log_alpha(k / n) - sched.log_alpha((k - 1) / n)) * n
    assert torch.allclose(sched.d_log_alpha(k / n), left_slope, rtol=1e-9, atol=0)


# -- dtypes ---------------------------------------------------------------------------------
@pytest.mark.parametrize("sched", all_schedules())
def test_float32_times_give_float64_results(sched):
    t32 = torch.linspace(max(sched.t_min, 1e-3), sched.t_max, 11, dtype=torch.float32)
    for name in ("log_alpha", "alpha", "sigma", "half_log_snr", "sigma_bar", "d_log_alpha",
                 "d_half_log_snr", "label"):
        out = getattr(sched, name)(t32)
        assert out.dtype == F64, name
    lam32 = sched.half_log_snr(t32).to(torch.float32)
    assert sched.t_of_half_log_snr(lam32).dtype == F64
    # python numbers too
    assert sched.alpha(0.5 * sched.t_max).dtype == F64


# -- t = 0 --------------------------------------------------------------------------------------
@pytest.mark.parametrize("sched", zero_end_schedules())
def test_zero_noise_at_t0_for_vp_and_edm(sched):
    assert sched.reaches_zero_noise
    assert float(sched.sigma(0.0)) == 0.0
    assert float(sched.sigma(torch.tensor([0.0, 1e-300], dtype=F64)).isnan().sum()) == 0
    assert float(sched.alpha(0.0)) == 1.0
    assert float(sched.half_log_snr(0.0)) == math.inf
    grid = torch.tensor([sched.t_max, sched.t_min, 0.0], dtype=F64)
    assert torch.equal(timesteps.validate(sched, grid), grid)
    assert sched.contains(0.0, allow_zero_end=True)
    # t = 0 is allowed only as the *end* of a grid (below t_min otherwise)
    if sched.t_min > 0:
        assert not sched.contains(0.0)


@pytest.mark.parametrize("s", [1e-4, 0.003, 0.008, 0.02, 0.1])
def test_vpcosine_sigma_is_exactly_zero_at_t0_for_any_offset(s):
    sched = VPCosine(s=s)
    assert float(sched.log_alpha(0.0)) == 0.0
    assert float(sched.sigma(0.0)) == 0.0


def test_ve_never_reaches_zero_noise():
    """VE's sigma stops at sigma_min: t = 0 is an ordinary time (noise sigma_min), not data,
    and nothing below it is accepted."""
    sched = VE()
    assert not sched.reaches_zero_noise
    assert float(sched.sigma(0.0)) == pytest.approx(sched.sigma_min, rel=1e-15)
    assert math.isfinite(float(sched.half_log_snr(0.0)))
    with pytest.raises(ValueError, match="outside"):
        timesteps.validate(sched, torch.tensor([1.0, 0.5, -1e-3], dtype=F64))
    assert not sched.contains(-1e-6, allow_zero_end=True)


@pytest.mark.parametrize("kwargs", [dict(sigma_min=0.0), dict(sigma_min=2.0, sigma_max=1.0)])
@pytest.mark.parametrize("cls", [VE, EDM])
def test_unscaled_schedules_validate_their_parameters(cls, kwargs):
    with pytest.raises(ValueError):
        cls(**kwargs)


# -- the prior -------------------------------------------------------------------------------
@pytest.mark.parametrize("sched, std", [
    pytest.param(VPLinear(), 1.0, id="VPLinear"),
    pytest.param(DiscreteVP.ddpm_linear(), 1.0, id="DiscreteVP"),
    pytest.param(VE(sigma_max=50.0), 50.0, id="VE"),
    pytest.param(EDM(sigma_max=80.0), 80.0, id="EDM"),
])
def test_prior_sample_shape_dtype_std_and_generator(sched, std):
    assert sched.prior_std == pytest.approx(std, rel=1e-12)
    x = sched.prior_sample((400, 250), generator=torch.Generator().manual_seed(0))
    assert x.shape == (400, 250) and x.dtype == torch.float32
    # 1e5 draws: the sample std has relative standard error 1/sqrt(2n) = 0.0022; allow 5 of them
    assert float(x.double().std()) == pytest.approx(std, rel=0.011)
    assert abs(float(x.double().mean())) < 5 * std / math.sqrt(x.numel())
    x64 = sched.prior_sample([3, 2, 5], generator=torch.Generator().manual_seed(0), dtype=F64)
    assert x64.shape == (3, 2, 5) and x64.dtype == F64
    again = sched.prior_sample((400, 250), generator=torch.Generator().manual_seed(0))
    other = sched.prior_sample((400, 250), generator=torch.Generator().manual_seed(1))
    assert torch.equal(x, again)
    assert not torch.equal(x, other)


def test_as_float64_keeps_values_and_device():
    t = torch.tensor([0.25, 0.5], dtype=torch.float32)
    out = schedules.as_float64(t)
    assert out.dtype == F64 and out.device == t.device
    assert torch.equal(out, t.double())
    assert schedules.as_float64(0.1).dtype == F64
