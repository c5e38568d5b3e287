"""fd.sample and the solver registry: names, NFE budgets, info, errors, dtypes and devices."""
from __future__ import annotations

import pytest
import torch

import fastdiff_edu as fd
from fastdiff_edu import problems, solvers, timesteps
from fastdiff_edu.schedules import DiscreteVP, VPCosine, VPLinear
from tests._helpers import counting_model, single_thread  # noqa: F401

F64 = torch.float64
BASELINE = ["euler", "ddim", "ddpm", "rk45"]
FIXED_STEP = ["euler", "ddim", "ddpm"]


def _options(solver, seed=0):
    return {"generator": torch.Generator().manual_seed(seed)} if solver == "ddpm" else {}


@pytest.fixture(scope="module")
def ring():
    return problems.ring2d()


def test_baseline_names_are_registered():
    for name in BASELINE:
        assert name in fd.REGISTRY and name in solvers.REGISTRY
        spec = solvers.get(name)
        assert spec.name == name and callable(spec.fn)
        assert spec.default_grid in timesteps.KINDS
        assert spec.min_nfe >= 1
    assert solvers.REGISTRY["euler"].order == 1 and solvers.REGISTRY["ddim"].order == 1
    assert solvers.REGISTRY["ddpm"].stochastic and solvers.REGISTRY["rk45"].adaptive
    assert fd.sample is solvers.sample


def test_register_refuses_duplicates():
    with pytest.raises(ValueError, match="already registered"):
        solvers.register(solvers.REGISTRY["ddim"])


@pytest.mark.parametrize("name, hint", [("ddmi", "ddim"), ("Euler", "euler"), ("rk4", "rk45"), ("dppm", "ddpm")])
def test_unknown_solver_suggests_a_close_name(name, hint):
    with pytest.raises(KeyError, match=f"unknown sampler '{name}'.*Did you mean.*'{hint}'") as info:
        solvers.get(name)
    assert "Available:" in str(info.value) and "ddim" in str(info.value)
    sched = VPLinear()
    model, counter = counting_model(problems.ring2d(), sched)
    with pytest.raises(KeyError, match="Did you mean"):
        fd.sample(model, torch.zeros(2, 2, dtype=F64), name, nfe=10)
    assert counter.calls == 0


def test_unknown_solver_without_a_close_name_lists_the_choices():
    with pytest.raises(KeyError, match="Available: .*ddim.*euler") as info:
        solvers.get("zzzzzz")
    assert "Did you mean" not in str(info.value)


@pytest.mark.parametrize("solver", FIXED_STEP)
@pytest.mark.parametrize("nfe", [1, 7, 25])
def test_nfe_budget_is_spent_exactly_and_reported(ring, solver, nfe):
    sched = DiscreteVP.ddpm_linear()
    model, counter = counting_model(ring, sched)
    x_T = sched.prior_sample((8, 2), generator=torch.Generator().manual_seed(0), dtype=F64)
    x, info = fd.sample(model, x_T, solver, nfe=nfe, return_info=True, **_options(solver))
    assert counter.calls == nfe == model.nfe == info.nfe
    assert info.solver == solver and info.steps == nfe
    spec = solvers.REGISTRY[solver]
    assert torch.equal(info.timesteps, timesteps.make(sched, spec.default_grid, nfe))
    assert x.shape == x_T.shape
    # without return_info: just the tensor, the same result
    again = fd.sample(model, x_T, solver, nfe=nfe, **_options(solver))
    assert isinstance(again, torch.Tensor) and torch.equal(again, x)


@pytest.mark.parametrize("solver", FIXED_STEP)
def test_grid_and_range_options(ring, solver):
    sched = VPLinear()
    model, counter = counting_model(ring, sched)
    x_T = sched.prior_sample((4, 2), generator=torch.Generator().manual_seed(1), dtype=F64)
    _, info = fd.sample(model, x_T, solver, nfe=6, grid="logsnr", t_start=0.8, t_end=0.01, return_info=True,
                        **_options(solver))
    assert torch.equal(info.timesteps, timesteps.make(sched, "logsnr", 6, 0.8, 0.01))
    explicit = timesteps.make(sched, "karras", 5)
    x, info = fd.sample(model, x_T, solver, timesteps=explicit.tolist(), return_info=True, **_options(solver))
    assert info.nfe == 5 and torch.equal(info.timesteps, explicit)
    assert torch.equal(x, fd.sample(model, x_T, solver, timesteps=explicit, **_options(solver)))


def test_rk45_needs_no_budget_and_counts_its_calls(ring):
    sched = VPLinear()
    model, counter = counting_model(ring, sched)
    x_T = sched.prior_sample((4, 2), generator=torch.Generator().manual_seed(2), dtype=F64)
    x, info = fd.sample(model, x_T, "rk45", return_info=True)
    assert info.nfe == counter.calls > 0
    assert info.timesteps.tolist() == [sched.t_max, sched.t_min]
    _, info2 = fd.sample(model, x_T, "rk45", t_start=0.5, t_end=0.1, return_info=True)
    assert info2.timesteps.tolist() == [0.5, 0.1]


@pytest.mark.parametrize("solver", BASELINE)
def test_timesteps_and_nfe_together_is_an_error(ring, solver):
    sched = VPLinear()
    model, counter = counting_model(ring, sched)
    x_T = torch.zeros(2, 2, dtype=F64)
    with pytest.raises(ValueError, match="either timesteps or nfe"):
        fd.sample(model, x_T, solver, timesteps=[1.0, 0.5, 0.1], nfe=2)
    with pytest.raises(ValueError, match="either timesteps or nfe"):
        fd.sample(model, x_T, solver, timesteps=[1.0, 0.5, 0.1], grid="logsnr")
    assert counter.calls == 0


@pytest.mark.parametrize("solver", FIXED_STEP)
@pytest.mark.parametrize("nfe", [None, 0, -1, 2.0])
def test_bad_budget_is_an_error(ring, solver, nfe):
    sched = VPLinear()
    model, counter = counting_model(ring, sched)
    with pytest.raises(ValueError, match=solver):
        fd.sample(model, torch.zeros(2, 2, dtype=F64), solver, nfe=nfe)
    assert counter.calls == 0


def test_schedule_mismatch_is_an_error(ring):
    model, counter = counting_model(ring, VPLinear())
    with pytest.raises(ValueError, match="differs from the model"):
        fd.sample(model, torch.zeros(2, 2, dtype=F64), "ddim", nfe=5, schedule=VPCosine())
    # an equal schedule object is fine
    fd.sample(model, torch.zeros(2, 2, dtype=F64), "ddim", nfe=5, schedule=VPLinear())


def test_non_prediction_model_via_sample(ring):
    with pytest.raises(TypeError, match="Prediction"):
        fd.sample(ring.prediction(VPLinear()).fn, torch.zeros(2, 2, dtype=F64), "ddim", nfe=5)


# -- dtypes and devices ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def gmm64_vplinear():
    sched = VPLinear()
    model = problems.gmm64().prediction(sched)
    x_T = sched.prior_sample((16, 64), generator=torch.Generator().manual_seed(3), dtype=F64)
    results = {s: fd.sample(model, x_T, s, **({} if s == "rk45" else {"nfe": 10}), **_options(s)) for s in BASELINE}
    return dict(sched=sched, model=model, x_T=x_T, results=results)


@pytest.mark.parametrize("solver", BASELINE)
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-3), (torch.float16, 5e-3), (torch.bfloat16, 3e-2)])
def test_low_precision_inputs_keep_their_dtype_and_stay_finite(gmm64_vplinear, solver, dtype, tol):
    """gmm64 under VPLinear at NFE 10 (rk45: adaptive). Deviation from the float64 run: the median
    over samples of the per-sample RMS, as in ``bench precision`` (a maximum is fragile: near the
    boundary between two modes' basins, rounding can send one trajectory to the other mode — in
    bfloat16 one of these 16 samples does, at RMS 0.54). Measured medians: float32 3e-8 (rk45 below
    1e-4), float16 5e-4, bfloat16 3.3e-3."""
    x_T = gmm64_vplinear["x_T"].to(dtype)
    kwargs = {} if solver == "rk45" else {"nfe": 10}
    x = fd.sample(gmm64_vplinear["model"], x_T, solver, **kwargs, **_options(solver))
    assert x.dtype == dtype and x.device == x_T.device and x.shape == x_T.shape
    assert bool(torch.isfinite(x).all()), f"{solver} produced NaN/Inf in {dtype}"
    if solver != "ddpm":  # the same generator draws different noise in different dtypes
        dev = float((x.double() - gmm64_vplinear["results"][solver]).square().mean(dim=1).sqrt().median())
        assert dev < tol, f"{solver} in {dtype} deviates from float64 by {dev:.3g}"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("solver", BASELINE)
@pytest.mark.parametrize("dtype", [F64, torch.float32, torch.float16])
def test_cuda_input_stays_on_cuda(gmm64_vplinear, solver, dtype):
    x_T = gmm64_vplinear["x_T"].to(device="cuda", dtype=dtype)
    kwargs = {} if solver == "rk45" else {"nfe": 10}
    x, info = fd.sample(gmm64_vplinear["model"], x_T, solver, return_info=True, **kwargs,
                        **({"generator": torch.Generator(device="cuda").manual_seed(0)} if solver == "ddpm" else {}))
    assert x.device.type == "cuda" and x.dtype == dtype
    assert bool(torch.isfinite(x).all())
    if solver != "ddpm":
        tol = {F64: 1e-10 if solver != "rk45" else 1e-6, torch.float32: 1e-3, torch.float16: 0.05}[dtype]
        assert float((x.double().cpu() - gmm64_vplinear["results"][solver]).abs().max()) < tol
