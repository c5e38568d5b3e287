"""GENIE (fastdiff_edu.solvers.genie, fastdiff_edu.genie_head): the exact JVP, order 2, the shipped
heads, the analytic first step, validation and dtypes."""
from __future__ import annotations

import shutil

import pytest
import torch

import fastdiff_edu as fd
from fastdiff_edu import genie_head, metrics, problems, schedules, timesteps, weights
from fastdiff_edu.solvers import genie as sg
from tests._helpers import gmm64_test_bed, point_mass_model, single_thread  # noqa: F401 (autouse)

F64 = torch.float64


@pytest.fixture(scope="module")
def bed():
    return gmm64_test_bed(batch=16)


@pytest.fixture(scope="module")
def head():
    return genie_head.load_head("gmm64")


@pytest.mark.parametrize("sched", [schedules.DiscreteVP.ddpm_linear(), schedules.VPLinear(), schedules.EDM()],
                         ids=["DiscreteVP", "VPLinear", "EDM"])
def test_jvp_is_the_total_derivative_along_the_ode(sched):
    """The JVP equals a central finite difference of eps along the ODE in (x_bar, sigma_bar)."""
    mixture = problems.gmm64()
    model = mixture.prediction(sched)
    t = sched.t_of_sigma_bar(torch.tensor(0.8, dtype=F64))
    x = mixture.marginal_at(sched, t).sample(4, torch.Generator().manual_seed(0))
    alpha, dlog, dt = sg.tangent_coefficients(sched, t)
    eps = model.eps(x, t)
    d_eps = sg.total_derivative(model, x, t, eps, alpha, dlog, dt)
    sb, delta = sched.sigma_bar(t), 1e-4
    x_bar = x / alpha

    def eps_at(sign):  # x_bar(sb +- delta) = x_bar +- delta eps + O(delta^2) (the common O(delta^2) cancels)
        t_s = sched.t_of_sigma_bar(sb + sign * delta)
        return model.eps(sched.alpha(t_s) * (x_bar + sign * delta * eps), t_s)

    fd_derivative = (eps_at(1) - eps_at(-1)) / (2 * delta)
    assert float((d_eps - fd_derivative).norm() / d_eps.norm()) < 1e-5


def test_point_mass_makes_ttm2_ddim():
    """For a single data point eps is constant along the ODE: the derivative is 0 and TTM2 = DDIM (exact)."""
    sched = schedules.DiscreteVP.ddpm_linear()
    model = point_mass_model(sched, torch.linspace(-1, 1, 5, dtype=F64))
    x_T = sched.prior_sample((3, 5), generator=torch.Generator().manual_seed(1), dtype=F64)
    grid = timesteps.make(sched, "time_uniform", 6)
    diff = fd.sample(model, x_T, "genie-exact", timesteps=grid) - fd.sample(model, x_T, "ddim", timesteps=grid)
    assert float(diff.abs().max()) < 1e-10


def test_genie_exact_is_second_order_and_counts_its_jvps(bed):
    sched, model, x_T, x_ref = bed
    errors, used = [], []
    for nfe in (80, 160):
        stats = {}
        x, info = fd.sample(model, x_T, "genie-exact", nfe=nfe, return_info=True, stats=stats)
        errors.append(metrics.rmse(x, x_ref))
        used.append(info.nfe)
        assert stats == {"evaluations": nfe, "jvps": nfe // 2, "head_calls": 0}
    assert used == [80, 160]
    order = metrics.empirical_order(used, errors)
    assert abs(order - 2) < 0.3, order


def test_shipped_head_loads_with_hash_check(tmp_path, head):
    assert head.dim == 64 and head.card_info["problem"] == "gmm64"
    assert sum(p.numel() * 4 for p in head.parameters()) < 300_000
    for name in ("gmm64", "ring2d"):
        assert (weights.SHIPPED_DIR / f"genie-head-{name}.safetensors").stat().st_size < 300_000
    copy = tmp_path / "genie-head-gmm64.safetensors"
    shutil.copy(weights.SHIPPED_DIR / "genie-head-gmm64.safetensors", copy)
    shutil.copy(weights.SHIPPED_DIR / "genie-head-gmm64.json", tmp_path / "genie-head-gmm64.json")
    assert genie_head.load_head(str(copy)).dim == 64
    data = bytearray(copy.read_bytes())
    data[-1] ^= 1
    copy.write_bytes(bytes(data))
    with pytest.raises(weights.WeightsError):
        genie_head.load_head(str(copy))


def test_genie_with_the_head_beats_ddim_at_nfe_10(bed, head):
    sched, model, x_T, x_ref = bed
    stats = {}
    x, info = fd.sample(model, x_T, "genie", nfe=10, return_info=True, head=head, stats=stats)
    assert info.nfe == 10 and stats["head_calls"] == 10
    ddim = metrics.rmse(fd.sample(model, x_T, "ddim", nfe=10, grid="time_quadratic"), x_ref)
    assert metrics.rmse(x, x_ref) < 0.75 * ddim  # measured: 0.61
    with_afs = fd.sample(model, x_T, "genie", nfe=10, head=head, afs=True)
    assert metrics.rmse(with_afs, x_ref) < 0.7 * ddim  # measured: 0.56


def test_ring2d_head_beats_ddim_at_nfe_10():
    sched = schedules.DiscreteVP.ddpm_linear()
    model = problems.ring2d().prediction(sched)
    x_T = sched.prior_sample((64, 2), generator=torch.Generator().manual_seed(0), dtype=F64)
    x_ref = fd.reference.solve(model, x_T)
    x = fd.sample(model, x_T, "genie", nfe=10, head=genie_head.load_head("ring2d"))
    ddim = fd.sample(model, x_T, "ddim", nfe=10, grid="time_quadratic")
    assert metrics.rmse(x, x_ref) < metrics.rmse(ddim, x_ref)


def test_analytic_first_step(bed, head):
    sched, model, x_T, _ = bed
    grid = timesteps.make(sched, "time_quadratic", 1)
    model.reset_nfe()
    x = fd.sample(model, x_T, "genie-exact", timesteps=grid, afs=True)  # one step, all analytic
    assert model.nfe == 0
    c_x, c_eps, _ = sg.ttm2_coefficients(sched, grid)
    expected = c_x[0] * x_T + c_eps[0] * sg.afs_coefficient(sched, grid[0]) * x_T
    assert torch.allclose(x, expected, rtol=1e-9, atol=1e-12)
    # with a budget, AFS buys one extra step for the same counted evaluations
    for name, options, steps in [("genie", {"head": head}, 11), ("genie-exact", {}, 6)]:
        _, info = fd.sample(model, x_T, name, nfe=10, return_info=True, afs=True, **options)
        assert info.nfe == 10 and info.steps == steps


@pytest.mark.parametrize("name,options,match", [
    ("genie", {}, "head="),
    ("genie", {"afs": "yes"}, "afs"),
    ("genie-exact", {"afs": 1}, "afs"),
])
def test_bad_options_raise_before_any_model_call(bed, head, name, options, match):
    sched, model, x_T, _ = bed
    if name == "genie" and "afs" in options:
        options = dict(options, head=head)
    model.reset_nfe()
    with pytest.raises(ValueError, match=match):
        fd.sample(model, x_T, name, nfe=10, **options)
    assert model.nfe == 0


def test_head_mismatch_and_bad_grid_raise_before_any_model_call(head):
    sched = schedules.DiscreteVP.ddpm_linear()
    ring = problems.ring2d().prediction(sched)
    x2 = torch.zeros(3, 2, dtype=F64)
    with pytest.raises(ValueError, match="shape"):
        fd.sample(ring, x2, "genie", nfe=10, head=head)
    other = problems.gmm64().prediction(schedules.VPLinear())
    with pytest.raises(ValueError, match="schedule"):
        fd.sample(other, torch.zeros(3, 64, dtype=F64), "genie", nfe=10, head=head)
    with pytest.raises(ValueError):
        fd.sample(ring, x2, "genie-exact", timesteps=torch.tensor([0.5, 0.7], dtype=F64))
    assert ring.nfe == 0 and other.nfe == 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dtype_and_device_are_kept(head, dtype):
    sched = schedules.DiscreteVP.ddpm_linear()
    model = problems.gmm64().prediction(sched)
    x_T = sched.prior_sample((4, 64), generator=torch.Generator().manual_seed(0), dtype=dtype)
    ref = fd.sample(model, x_T.double(), "genie", nfe=6, head=head)
    for name, options in [("genie-exact", {}), ("genie", {"head": head}), ("genie", {"head": head, "afs": True})]:
        x = fd.sample(model, x_T, name, nfe=6, **options)
        assert x.dtype == dtype and x.device == x_T.device and torch.isfinite(x).all()
    x = fd.sample(model, x_T, "genie", nfe=6, head=head)
    tol = 1e-4 if dtype == torch.float32 else 5e-2
    assert float((x.double() - ref).abs().max()) < tol * float(ref.abs().max())
