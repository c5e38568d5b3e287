"""Shared helpers for the unit and convergence tests (imported, not a conftest).

Use ``from tests._helpers import ...``. Fixtures defined here become active in a test module
once they are imported into it (pytest finds fixtures by name in the module's namespace).
"""
from __future__ import annotations

import pytest
import torch

from fastdiff_edu import metrics, problems, reference, schedules
from fastdiff_edu.solvers import sample as fd_sample
from fastdiff_edu.prediction import Prediction

F64 = torch.float64


@pytest.fixture(scope="module", autouse=True)
def single_thread():
    """Run each test module with one intra-op thread and restore the setting afterwards.

    The mixture evaluations are small batched matmuls: on a shared 2-core machine two torch
    threads fight each other (and other processes) and are 5-15x slower than one.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def all_schedules():
    """One instance of every schedule kind, with ids for parametrisation."""
    return [
        pytest.param(schedules.VPLinear(), id="VPLinear"),
        pytest.param(schedules.VPCosine(), id="VPCosine"),
        pytest.param(schedules.DiscreteVP.ddpm_linear(), id="DiscreteVP"),
        pytest.param(schedules.VE(), id="VE"),
        pytest.param(schedules.EDM(), id="EDM"),
    ]


def vp_schedules():
    return [
        pytest.param(schedules.VPLinear(), id="VPLinear"),
        pytest.param(schedules.VPCosine(), id="VPCosine"),
        pytest.param(schedules.DiscreteVP.ddpm_linear(), id="DiscreteVP"),
        pytest.param(schedules.DiscreteVP.scaled_linear(), id="DiscreteVP-scaled"),
    ]


def zero_end_schedules():
    """Schedules with sigma(0) = 0, where a grid may end at t = 0."""
    return [
        pytest.param(schedules.VPLinear(), id="VPLinear"),
        pytest.param(schedules.VPCosine(), id="VPCosine"),
        pytest.param(schedules.DiscreteVP.ddpm_linear(), id="DiscreteVP"),
        pytest.param(schedules.EDM(), id="EDM"),
    ]


class CountingFn:
    """``fn(x, t)`` wrapper that counts its own calls (independently of ``Prediction.nfe``)
    and, optionally, starts returning NaN from call number ``nan_from`` on (0-based)."""

    def __init__(self, inner, nan_from: int | None = None):
        self.inner = inner
        self.calls = 0
        self.nan_from = nan_from
        self.times = []

    def __call__(self, x, t):
        index = self.calls
        self.calls += 1
        self.times.append(t.detach().clone())
        out = self.inner(x, t)
        if self.nan_from is not None and index >= self.nan_from:
            out = torch.full_like(out, float("nan"))
        return out


def counting_model(mixture, schedule, kind: str = "eps", nan_from: int | None = None):
    """The exact predictor of ``mixture`` wrapped so that calls are counted independently.

    Returns ``(model, counter)``.
    """
    exact = mixture.prediction(schedule, kind=kind)
    counter = CountingFn(exact.fn, nan_from=nan_from)
    model = Prediction(counter, schedule, kind=kind, time="continuous", time_dtype=F64)
    return model, counter


def point_mass_model(schedule, x_point: torch.Tensor):
    """An eps-predictor that is exact when the data is the single point ``x_point``:
    eps(x, t) = (x - alpha(t) x_point) / sigma(t)."""

    def fn(x, t):
        alpha = schedule.alpha(t).to(x.dtype).reshape(-1, *([1] * (x.ndim - 1)))
        sigma = schedule.sigma(t).to(x.dtype).reshape(-1, *([1] * (x.ndim - 1)))
        return (x - alpha * x_point.to(x.dtype)) / sigma

    return Prediction(fn, schedule, kind="eps", time="continuous", time_dtype=F64)


def small_gaussian(dim: int = 3, seed: int = 0) -> problems.GaussianMixture:
    """A single anisotropic, correlated Gaussian (K = 1), whose flow map is known exactly."""
    gen = torch.Generator().manual_seed(seed)
    a = 0.4 * torch.randn(dim, dim, generator=gen, dtype=F64)
    cov = a @ a.T + 0.02 * torch.eye(dim, dtype=F64)
    mean = torch.randn(1, dim, generator=gen, dtype=F64)
    return problems.GaussianMixture(mean, cov[None])


def small_mixture(dim: int = 3, modes: int = 3, seed: int = 1) -> problems.GaussianMixture:
    """A small mixture with full covariances and uneven weights."""
    gen = torch.Generator().manual_seed(seed)
    means = torch.randn(modes, dim, generator=gen, dtype=F64)
    a = 0.3 * torch.randn(modes, dim, dim, generator=gen, dtype=F64)
    cov = a @ a.transpose(1, 2) + 0.05 * torch.eye(dim, dtype=F64)
    weights = torch.arange(1, modes + 1, dtype=F64)
    return problems.GaussianMixture(means, cov, weights)


def gmm64_test_bed(batch: int = 16, seed: int = 0):
    """(schedule, exact model, x_T, reference solution) of the standard test bed: gmm64 under the
    DDPM schedule, float64, from t_max to t_min."""
    sched = schedules.DiscreteVP.ddpm_linear()
    model = problems.gmm64().prediction(sched)
    x_T = sched.prior_sample((batch, 64), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return sched, model, x_T, reference.solve(model, x_T)


def measured_order(model, x_T, reference_solution, name: str, nfes, **options):
    """(fitted order, NFEs really used) of sampler ``name`` over the budgets ``nfes``."""
    used, errors = [], []
    for nfe in nfes:
        x, info = fd_sample(model, x_T, name, nfe=nfe, return_info=True, **options)
        used.append(info.nfe)
        errors.append(metrics.rmse(x, reference_solution))
    return metrics.empirical_order(used, errors), used
