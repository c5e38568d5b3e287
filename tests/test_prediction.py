"""Prediction: one model, every view; honest NFE; time inputs; errors; thresholding; guidance."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from fastdiff_edu import problems
from fastdiff_edu.prediction import (ModelCallError, Prediction, classifier_free_guidance,
                                     dynamic_threshold)
from fastdiff_edu.schedules import EDM, VE, DiscreteVP, VPCosine, VPLinear
from tests._helpers import CountingFn, single_thread, small_mixture  # noqa: F401

F64 = torch.float64


@pytest.fixture(scope="module")
def mixture():
    return small_mixture(dim=4, modes=3)


def _points(sched, batch=12, dim=4, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, dim, generator=gen, dtype=F64) * 1.5
    lo, hi = sched.t_min, sched.t_max
    times = [lo, lo + 0.01 * (hi - lo), 0.5 * (lo + hi), hi]
    return x, times


def _views(model, x, t):
    eps, x0 = model.eps_and_x0(x, t)
    out = {"eps": model.eps(x, t), "x0": model.x0(x, t), "score": model.score(x, t), "pair_eps": eps, "pair_x0": x0}
    if model.schedule.variance_preserving:
        out["v"] = model.v(x, t)
    return out


VP = [pytest.param(VPLinear(), id="VPLinear"), pytest.param(VPCosine(), id="VPCosine"),
      pytest.param(DiscreteVP.ddpm_linear(), id="DiscreteVP")]
UNSCALED = [pytest.param(VE(), id="VE"), pytest.param(EDM(), id="EDM")]


@pytest.mark.parametrize("sched", VP + UNSCALED)
def test_all_kinds_give_identical_views(mixture, sched):
    kinds = ["eps", "x0", "score"] + (["v"] if sched.variance_preserving else [])
    x, times = _points(sched)
    for t in times:
        views = {kind: _views(mixture.prediction(sched, kind=kind), x, t) for kind in kinds}
        base = views["eps"]
        scale = max(1.0, float(sched.sigma(t)))  # VE/EDM work with x of size sigma
        for kind in kinds[1:]:
            for name, value in views[kind].items():
                err = float((value - base[name]).abs().max())
                assert err < 1e-10 * scale, f"{kind}-model {name} view at t={t}: {err:.3g}"
        # and the views are what the definitions say
        alpha, sigma = float(sched.alpha(t)), float(sched.sigma(t))
        assert torch.allclose(base["x0"], (x - sigma * base["eps"]) / alpha, rtol=0, atol=1e-10 * scale)
        assert torch.allclose(base["score"], -base["eps"] / sigma, rtol=1e-12, atol=0)
        assert torch.allclose(base["eps"], mixture.eps(x, alpha, sigma), rtol=0, atol=1e-12)
        if sched.variance_preserving:
            assert torch.allclose(base["v"], alpha * base["eps"] - sigma * base["x0"], rtol=0, atol=1e-12)


def test_per_sample_times(mixture):
    sched = VPLinear()
    model = mixture.prediction(sched, kind="x0")
    x, _ = _points(sched, batch=5)
    t = torch.tensor([0.01, 0.2, 0.4, 0.6, 0.99], dtype=F64)
    eps_batched = model.eps(x, t)
    eps_rows = torch.cat([model.eps(x[i:i + 1], float(t[i])) for i in range(5)])
    assert torch.allclose(eps_batched, eps_rows, rtol=0, atol=1e-12)


@pytest.mark.parametrize("sched", UNSCALED)
def test_v_prediction_needs_a_vp_schedule(mixture, sched):
    with pytest.raises(ValueError, match="variance-preserving"):
        Prediction(lambda x, t: x, sched, kind="v")
    with pytest.raises(ValueError, match="variance-preserving"):
        mixture.prediction(sched, kind="v")
    model = Prediction(lambda x, t: x, sched, kind="eps")
    with pytest.raises(ValueError, match="variance-preserving"):
        model.v(torch.zeros(2, 4, dtype=F64), 1.0)


@pytest.mark.parametrize("kwargs, match", [
    (dict(kind="noise"), "kind must be one of"),
    (dict(time="discrete"), "time must be one of"),
    (dict(threshold=1.5), "threshold"),
    (dict(threshold=0.0), "threshold"),
])
def test_constructor_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Prediction(lambda x, t: x, VPLinear(), **kwargs)


# -- NFE counting -------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["eps", "x0", "v", "score"])
def test_nfe_counts_calls_not_views(mixture, kind):
    sched = VPLinear()
    counter = CountingFn(mixture.prediction(sched, kind=kind).fn)
    model = Prediction(counter, sched, kind=kind, time_dtype=F64)
    x, _ = _points(sched)
    assert model.nfe == 0
    model.eps_and_x0(x, 0.5)
    assert model.nfe == 1 == counter.calls, "eps_and_x0 must cost one evaluation"
    for view in ("eps", "x0", "score", "v"):
        before = model.nfe
        getattr(model, view)(x, 0.5)
        assert model.nfe - before == 1, f"the {view} view must cost exactly one evaluation"
    model(x, 0.5)
    assert model.nfe == 6 == counter.calls
    model.reset_nfe()
    assert model.nfe == 0
    assert "nfe=0" in repr(model)


# -- the time input ---------------------------------------------------------------------------------
def test_time_label_passes_schedule_label():
    sched = DiscreteVP.ddpm_linear()
    seen = []

    def fn(x, t):
        seen.append(t.clone())
        return torch.zeros_like(x)

    model = Prediction(fn, sched, kind="eps", time="label")
    x = torch.zeros(3, 2, dtype=F64)
    model.eps(x, 0.5)
    model.eps(x, torch.tensor([1.0, 0.001, 0.25], dtype=F64))
    assert seen[0].shape == (3,) and seen[0].dtype == F64
    assert torch.allclose(seen[0], torch.full((3,), 499.0, dtype=F64), rtol=0, atol=1e-9)
    assert torch.allclose(seen[1], torch.tensor([999.0, 0.0, 249.0], dtype=F64), rtol=0, atol=1e-9)
    # continuous time passes t itself
    seen.clear()
    Prediction(fn, sched, kind="eps", time="continuous").eps(x, 0.5)
    assert torch.equal(seen[0], torch.full((3,), 0.5, dtype=F64))


def test_time_dtype_follows_the_sample_or_is_forced():
    seen = []

    def fn(x, t):
        seen.append(t)
        return torch.zeros_like(x)

    sched = VPLinear()
    Prediction(fn, sched)(torch.zeros(2, 3, dtype=torch.float32), 0.5)
    Prediction(fn, sched)(torch.zeros(2, 3, dtype=F64), 0.5)
    Prediction(fn, sched)(torch.zeros(2, 3, dtype=torch.float16), 0.5)
    Prediction(fn, sched, time_dtype=F64)(torch.zeros(2, 3, dtype=torch.float32), 0.5)
    assert [t.dtype for t in seen] == [torch.float32, F64, torch.float32, F64]
    assert all(t.shape == (2,) for t in seen)


# -- errors from the model ----------------------------------------------------------------------------
def test_wrong_shape_raises_model_call_error():
    model = Prediction(lambda x, t: x[:, :2], VPLinear())
    with pytest.raises(ModelCallError, match=r"returned \(4, 2\) for an input of shape \(4, 3\).*input's shape"):
        model.eps(torch.zeros(4, 3), 0.5)


def test_non_tensor_output_raises_model_call_error():
    model = Prediction(lambda x, t: x.numpy(), VPLinear())
    with pytest.raises(ModelCallError, match="ndarray"):
        model.eps(torch.zeros(4, 3), 0.5)


def test_model_exception_is_wrapped_with_context():
    def broken(x, t):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    model = Prediction(broken, VPLinear())
    with pytest.raises(ModelCallError, match=r"raised RuntimeError.*shape \(4, 3\).*mat1 and mat2") as info:
        model.x0(torch.zeros(4, 3), 0.5)
    assert isinstance(info.value.__cause__, RuntimeError)
    assert issubclass(ModelCallError, RuntimeError)


# -- dynamic thresholding ----------------------------------------------------------------------------
def test_dynamic_threshold_default_clips_to_unit_box():
    gen = torch.Generator().manual_seed(0)
    x0 = 3 * torch.randn(6, 2, 8, 8, generator=gen, dtype=F64)
    out = dynamic_threshold(x0, 0.995)  # max_value = 1: s = 1 for every sample
    assert out.shape == x0.shape and out.dtype == x0.dtype
    assert torch.equal(out, x0.clamp(-1, 1))


def test_dynamic_threshold_percentile_semantics():
    gen = torch.Generator().manual_seed(1)
    n = 1000
    big = 4 * torch.randn(n, generator=gen, dtype=F64)   # percentile of |x| far above 1
    small = 0.3 * torch.rand(n, generator=gen, dtype=F64)  # percentile below 1: s clamps to 1
    huge = 100 * torch.randn(n, generator=gen, dtype=F64)  # percentile above max_value
    x0 = torch.stack([big, small, huge])
    p, max_value = 0.9, 20.0
    out = dynamic_threshold(x0, p, max_value)
    # independently: numpy percentile (linear interpolation) per sample, clamped to [1, max_value]
    s = np.clip(np.percentile(np.abs(x0.numpy()), 100 * p, axis=1), 1.0, max_value)
    expected = np.clip(x0.numpy(), -s[:, None], s[:, None]) / s[:, None]
    assert np.abs(out.numpy() - expected).max() < 1e-5  # the quantile is taken in float32
    assert float(out.abs().max()) <= 1.0 + 1e-12
    # the share of saturated entries is 1 - p for the first sample
    saturated = (out[0].abs() >= 1 - 1e-6).double().mean()
    assert float(saturated) == pytest.approx(1 - p, abs=2.0 / n)
    assert torch.allclose(out[1], small, rtol=0, atol=0), "below the threshold nothing changes"
    assert torch.allclose(out[2], (huge.clamp(-max_value, max_value) / max_value), rtol=0, atol=1e-12)


def test_thresholding_applies_to_x0_view_only():
    sched = VPLinear()
    fn = lambda x, t: 3.0 * x  # noqa: E731  an x0-predictor that saturates
    plain = Prediction(fn, sched, kind="x0")
    thresholded = Prediction(fn, sched, kind="x0", threshold=0.995)
    x = torch.randn(8, 4, generator=torch.Generator().manual_seed(2), dtype=F64)
    t = 0.5
    assert float(plain.x0(x, t).abs().max()) > 1, "the test needs x0 outside [-1, 1]"
    assert torch.equal(thresholded.eps(x, t), plain.eps(x, t))
    eps, x0 = thresholded.eps_and_x0(x, t)
    assert torch.equal(eps, plain.eps(x, t)), "eps stays the network's, unthresholded"
    assert torch.equal(x0, plain.x0(x, t).clamp(-1, 1))
    assert torch.equal(thresholded.x0(x, t), x0)


# -- classifier-free guidance -------------------------------------------------------------------------
def test_classifier_free_guidance_scales():
    cond = lambda x, t: 2.0 * x + t[:, None]  # noqa: E731
    uncond = lambda x, t: -x  # noqa: E731
    x = torch.randn(5, 3, generator=torch.Generator().manual_seed(3), dtype=F64)
    t = torch.full((5,), 0.3, dtype=F64)
    assert torch.allclose(classifier_free_guidance(cond, uncond, 1.0)(x, t), cond(x, t), rtol=1e-15, atol=1e-15)
    assert torch.equal(classifier_free_guidance(cond, uncond, 0.0)(x, t), uncond(x, t))
    guided = classifier_free_guidance(cond, uncond, 7.5)(x, t)
    assert torch.allclose(guided, uncond(x, t) + 7.5 * (cond(x, t) - uncond(x, t)), rtol=1e-14, atol=1e-14)


def test_guided_model_counts_one_nfe_per_call(mixture):
    sched = VPLinear()
    a = mixture.prediction(sched, kind="x0").fn
    b = problems.GaussianMixture(mixture.means + 1, mixture.covariances).prediction(sched, kind="x0").fn
    model = Prediction(classifier_free_guidance(a, b, 1.0), sched, kind="x0", time_dtype=F64)
    x = torch.randn(3, 4, generator=torch.Generator().manual_seed(4), dtype=F64)
    assert torch.allclose(model.eps(x, 0.4), mixture.prediction(sched, kind="x0").eps(x, 0.4), rtol=0, atol=1e-12)
    assert model.nfe == 1
