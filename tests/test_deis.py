"""DEIS (fastdiff_edu.solvers.deis): identities with DDIM, quadrature accuracy, measured orders."""
from __future__ import annotations

import pytest
import torch

import fastdiff_edu as fd
from tests._helpers import gmm64_test_bed, measured_order, single_thread  # noqa: F401 (autouse)
from fastdiff_edu.solvers.deis import lagrange_integrals

F64 = torch.float64


@pytest.fixture(scope="module")
def bed():
    return gmm64_test_bed()


@pytest.mark.parametrize("name,options", [("deis-tab", {"order": 0}), ("deis-rhoab", {"order": 0}),
                                          ("deis-rhork", {"method": "euler"})])
def test_lowest_order_is_ddim(bed, name, options):
    sched, model, x_T, _ = bed
    grid = fd.timesteps.make(sched, "logsnr", 10)
    diff = fd.sample(model, x_T, name, timesteps=grid, **options) - fd.sample(model, x_T, "ddim", timesteps=grid)
    assert float(diff.abs().max()) < 1e-10


def test_lagrange_integrals_are_exact_for_polynomials():
    nodes = torch.tensor([0.0, -0.5, -1.25, -2.0], dtype=F64)
    weights = lagrange_integrals(nodes, 0.0, 0.8, torch.ones_like, lambda s: s, quadrature_nodes=4)
    cubic = lambda s: 1 - 2 * s + 0.3 * s**3
    exact = 0.8 - 0.8**2 + 0.3 * 0.8**4 / 4
    assert float(weights @ cubic(nodes)) == pytest.approx(exact, rel=1e-14)


@pytest.mark.parametrize("sched", [fd.schedules.DiscreteVP.ddpm_linear(), fd.schedules.VPLinear()],
                         ids=["DiscreteVP", "VPLinear"])
def test_tab_quadrature_is_converged(sched):
    """256 Gauss-Legendre nodes in lambda against 2048: the piecewise-linear log alpha of the
    discrete schedule is the hard case (measured 1e-7 at 10 steps), the smooth VPLinear is exact."""
    model = fd.problems.gmm64().prediction(sched)
    x_T = sched.prior_sample((4, 64), generator=torch.Generator().manual_seed(1), dtype=F64)
    grid = fd.timesteps.make(sched, "logsnr", 10)
    default = fd.sample(model, x_T, "deis-tab", timesteps=grid)
    fine = fd.sample(model, x_T, "deis-tab", timesteps=grid, quadrature_nodes=2048)
    assert float((default - fine).abs().max()) < 5e-7


@pytest.mark.parametrize("name,options,order,nfes", [
    ("deis-tab", {"order": 1}, 2, [96, 192]),
    ("deis-tab", {"order": 2}, 3, [96, 192]),
    ("deis-tab", {"order": 3}, 4, [192, 384]),
    ("deis-rhoab", {"order": 1}, 2, [96, 192]),
    ("deis-rhoab", {"order": 2}, 3, [96, 192]),
    ("deis-rhork", {"method": "heun"}, 2, [96, 192]),
    ("deis-rhork", {}, 4, [96, 192]),
])
def test_measured_order(bed, name, options, order, nfes):
    _, model, x_T, ref = bed
    measured, used = measured_order(model, x_T, ref, name, nfes, **options)
    assert used == nfes
    assert abs(measured - order) < 0.3


def test_options_are_checked_before_any_model_call(bed):
    sched, model, x_T, _ = bed
    before = model.nfe
    with pytest.raises(ValueError, match="order must be"):
        fd.sample(model, x_T, "deis-tab", nfe=10, order=4)
    with pytest.raises(ValueError, match="method must be"):
        fd.sample(model, x_T, "deis-rhork", nfe=8, method="rk3")
    with pytest.raises(ValueError, match="buys no step"):
        fd.sample(model, x_T, "deis-rhork", nfe=1, method="heun")
    assert model.nfe == before
