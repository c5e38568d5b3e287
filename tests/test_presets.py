"""Unit tests of ``fastdiff_edu.presets`` and of the ``euler-ancestral`` sampler (no oracle
library needed except where a test builds a diffusers scheduler; parity lives in
test_parity_presets.py)."""
from __future__ import annotations

import pytest
import torch

import fastdiff_edu as fd
from fastdiff_edu import presets, problems, timesteps
from fastdiff_edu.schedules import EDM, DiscreteVP
from fastdiff_edu.solvers import REGISTRY
from fastdiff_edu.solvers.ancestral import ancestral_eta, euler_ancestral
from tests._helpers import counting_model, single_thread  # noqa: F401

F64 = torch.float64
SCHED = DiscreteVP.ddpm_linear()
DPM_CONFIG = {"_class_name": "DPMSolverMultistepScheduler", "num_train_timesteps": 1000, "beta_start": 1e-4,
              "beta_end": 0.02, "beta_schedule": "linear"}


@pytest.fixture(scope="module")
def bed():
    model = problems.gmm64().prediction(SCHED)
    x_T = SCHED.prior_sample((4, 64), generator=torch.Generator().manual_seed(0), dtype=F64)
    return model, x_T


# -- euler-ancestral ---------------------------------------------------------------------------------------
def test_euler_ancestral_is_registered():
    spec = REGISTRY["euler-ancestral"]
    assert spec.stochastic and spec.default_grid == "karras" and spec.fn is euler_ancestral


def test_euler_ancestral_eta_0_is_ddim_and_eta_1_is_ddpm(bed):
    model, x_T = bed
    grid = timesteps.make(SCHED, "karras", 10, append_zero=True)
    assert torch.allclose(fd.sample(model, x_T, "euler-ancestral", timesteps=grid, eta=0.0),
                          fd.sample(model, x_T, "ddim", timesteps=grid), rtol=0, atol=1e-13)
    a = fd.sample(model, x_T, "euler-ancestral", timesteps=grid, generator=torch.Generator().manual_seed(1))
    b = fd.sample(model, x_T, "ddpm", timesteps=grid, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(a, b, rtol=0, atol=1e-13)


def test_euler_ancestral_cap_keeps_large_eta_finite_and_on_the_target_level(bed):
    """eta > 1/sqrt(1 - e^{-2h}) is capped: sigma_down = 0, all of sigma_next is fresh noise."""
    model, x_T = bed
    grid = timesteps.make(SCHED, "karras", 6)
    capped = ancestral_eta(SCHED, grid, 50.0)
    assert bool((capped < 50.0).all())
    x = fd.sample(model, x_T, "euler-ancestral", timesteps=grid, eta=50.0, generator=torch.Generator().manual_seed(2))
    assert bool(x.isfinite().all())


def test_euler_ancestral_on_edm_is_euler_without_noise():
    model = problems.gmm64().prediction(EDM(), "x0")
    x_T = EDM().prior_sample((4, 64), generator=torch.Generator().manual_seed(3), dtype=F64)
    grid = timesteps.make(EDM(), "karras", 8, append_zero=True)
    assert torch.allclose(fd.sample(model, x_T, "euler-ancestral", timesteps=grid, eta=0.0),
                          fd.sample(model, x_T, "euler-edm", timesteps=grid), rtol=0, atol=1e-12)


def test_euler_ancestral_is_a_sampler_of_the_data_distribution():
    """Stochastic sampling with the exact model reaches the data: sliced Wasserstein to exact samples
    falls with the step count (ring2d, eta = 1)."""
    ring = problems.ring2d()
    model = ring.prediction(SCHED)
    x_T = SCHED.prior_sample((2000, 2), generator=torch.Generator().manual_seed(4), dtype=F64)
    data = ring.sample(2000, generator=torch.Generator().manual_seed(5)).to(F64)
    distances = []
    for steps in (4, 40):
        x = fd.sample(model, x_T, "euler-ancestral", timesteps=timesteps.make(SCHED, "karras", steps, append_zero=True),
                      generator=torch.Generator().manual_seed(6))
        distances.append(float(fd.metrics.sliced_wasserstein(x, data, seed=7)))
    assert distances[1] < distances[0]


@pytest.mark.parametrize("options,match", [({"eta": -1.0}, "eta must be"), ({"eta": float("nan")}, "eta must be"),
                                           ({"s_noise": -0.5}, "s_noise must be")])
def test_euler_ancestral_rejects_bad_options_before_any_model_call(options, match):
    model, counter = counting_model(problems.gmm64(), SCHED)
    x_T = SCHED.prior_sample((2, 64), dtype=F64)
    with pytest.raises(ValueError, match=match):
        fd.sample(model, x_T, "euler-ancestral", nfe=5, **options)
    assert model.nfe == 0 and counter.calls == 0


# -- presets: the API --------------------------------------------------------------------------------------
def test_config_dict_gives_the_same_preset_as_the_scheduler():
    diffusers = pytest.importorskip("diffusers")
    scheduler = diffusers.DPMSolverMultistepScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02,
                                                      beta_schedule="linear")
    a, b = presets.diffusers(scheduler, 10), presets.diffusers(DPM_CONFIG, 10)
    assert a.solver == b.solver == "dpm-solver++2m" and a.options == b.options
    assert torch.equal(a.timesteps, b.timesteps)
    assert a.options == {"final_step": "euler", "lower_order_final": True, "solver_type": "dpmsolver"}
    assert presets.diffusers(DPM_CONFIG, 15).options["lower_order_final"] is False  # diffusers: only below 15


def test_preset_sample_equals_fd_sample(bed):
    model, x_T = bed
    preset = presets.diffusers({**DPM_CONFIG, "solver_order": 3}, 12)
    assert preset.options["third_order"] == "published"
    direct = fd.sample(model, x_T, preset.solver, timesteps=preset.timesteps, **preset.options)
    assert torch.equal(preset.sample(model, x_T), direct)
    changed = preset.sample(model, x_T, third_order="corrected")  # change one thing at a time
    assert not torch.equal(changed, direct)


def test_scaled_linear_config_builds_its_schedule():
    preset = presets.diffusers({**DPM_CONFIG, "beta_start": 0.00085, "beta_end": 0.012,
                                "beta_schedule": "scaled_linear"}, 20)
    sd = DiscreteVP.scaled_linear()
    assert torch.allclose(preset.timesteps[:-1], sd.t_of_label(presets.diffusers_labels(
        "DPMSolverMultistepScheduler", DPM_CONFIG, 20)))


@pytest.mark.parametrize("config,match", [
    ({"beta_start": 1e-4}, "_class_name"),
    ({**DPM_CONFIG, "_class_name": "UniPCMultistepScheduler"}, "supported: DDIMScheduler"),
    ({**DPM_CONFIG, "_class_name": "DPMSolverSinglestepScheduler"}, "fractions r1"),
    ({**DPM_CONFIG, "beta_schedule": "squaredcos_cap_v2"}, "beta_schedule"),
    ({**DPM_CONFIG, "solver_order": 4}, "solver_order=4"),
    ({**DPM_CONFIG, "prediction_type": "flow"}, "prediction_type"),
    ({**DPM_CONFIG, "_class_name": "EulerDiscreteScheduler", "interpolation_type": "log_linear"}, "interpolation_type"),
    ({**DPM_CONFIG, "algorithm_type": "dpmsolver"}, "rejected by diffusers"),
])
def test_clear_errors(config, match):
    with pytest.raises(ValueError, match=match):
        presets.diffusers(config, 10)


def test_schedule_must_fit_the_config():
    with pytest.raises(ValueError, match="DiscreteVP with num_train_timesteps"):
        presets.diffusers(DPM_CONFIG, 10, schedule=EDM())
    with pytest.raises(TypeError, match="scheduler or its config"):
        presets.diffusers(42, 10)


def test_prediction_type_sets_the_kind():
    assert presets.diffusers({**DPM_CONFIG, "prediction_type": "v_prediction"}, 10).kind == "v"
    assert presets.diffusers({**DPM_CONFIG, "prediction_type": "sample"}, 10).kind == "x0"


def test_k_diffusion_steps_give_the_karras_grid_to_zero():
    preset = presets.k_diffusion("sample_dpmpp_2m", 10, SCHED)
    assert torch.equal(preset.timesteps, timesteps.make(SCHED, "karras", 10, append_zero=True))
    assert preset.options["final_step"] == "euler" and preset.options["lower_order_final"] is False
    sigmas = SCHED.sigma_bar(timesteps.make(SCHED, "logsnr", 6))
    assert presets.k_diffusion("sample_dpmpp_2m", sigmas, SCHED).options["final_step"] == "stop"
    edm = presets.k_diffusion("sample_heun", torch.tensor([80.0, 10.0, 1.0, 0.0], dtype=F64), EDM())
    assert torch.allclose(edm.timesteps, torch.tensor([80.0, 10.0, 1.0, 0.0], dtype=F64))


def test_k_diffusion_names_map():
    names = {name: presets.k_diffusion(name, 8, SCHED, **({"eta": 0.0} if "dpmpp_2s" in name or "3m" in name else {}))
             .solver for name in presets.K_DIFFUSION_SAMPLERS}
    assert names == {"sample_euler": "euler-edm", "sample_heun": "heun-edm", "sample_euler_ancestral": "euler-ancestral",
                     "sample_dpmpp_2m": "dpm-solver++2m", "sample_dpmpp_2s_ancestral": "dpm-solver++2s",
                     "sample_dpmpp_2m_sde": "sde-dpm-solver++2m", "sample_dpmpp_3m_sde": "dpm-solver++3m",
                     "sample_lms": "ipndm"}
    assert presets.k_diffusion("sample_dpmpp_2m_sde", 8, SCHED, solver_type="heun").options["solver_type"] == "taylor"


def test_euler_ancestral_keeps_dtype_and_calls_back(bed):
    model, x_T = bed
    seen = []
    x = fd.sample(model, x_T.float(), "euler-ancestral", nfe=6, generator=torch.Generator().manual_seed(0),
                  callback=lambda i, t, x: seen.append(i))
    assert x.dtype == torch.float32 and seen == list(range(6)) and bool(x.isfinite().all())
    x64 = fd.sample(model, x_T, "euler-ancestral", nfe=6, generator=torch.Generator().manual_seed(0))
    assert float((x.double() - x64).abs().max()) < 1e-4  # the same noise in both precisions
