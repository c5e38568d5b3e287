"""The diffusers adapter: schedule, parametrisation and time input of a diffusers model.

The parametrisation test uses a fake "UNet" that knows the answer: the exact gmm64 mixture in
the parametrisation the scheduler config declares, called with diffusers' integer-label time
input and returning a diffusers-style output object. Sampling through the adapter must then
equal sampling with the exact Prediction of that kind, to round-off.
"""
from __future__ import annotations

import sys
from types import SimpleNamespace

import pytest
import torch

import fastdiff_edu as fd
from fastdiff_edu import problems, timesteps
from fastdiff_edu.integrations import diffusers as adapter
from fastdiff_edu.schedules import DiscreteVP
from tests._helpers import single_thread  # noqa: F401
from tests.oracles import diffusers as load_diffusers

F64 = torch.float64
MIXTURE = problems.gmm64()
SCHED = DiscreteVP.ddpm_linear()


@pytest.mark.parametrize("config", [
    dict(beta_schedule="linear"),
    dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012),
    dict(beta_schedule="squaredcos_cap_v2"),
    dict(beta_schedule="linear", num_train_timesteps=500, beta_start=1e-4, beta_end=0.04),
])
def test_schedule_alphas_match_the_scheduler(config):
    diffusers = load_diffusers()
    scheduler = diffusers.DDPMScheduler(**config)
    reference = scheduler.alphas_cumprod.to(F64)  # diffusers computes them in float32
    for source in (scheduler, scheduler.config, dict(scheduler.config)):
        schedule = adapter.schedule_from_diffusers(source)
        assert schedule.num_steps == scheduler.config.num_train_timesteps
        relative = ((schedule.alphas_cumprod - reference) / reference).abs().max()
        assert relative < 3e-5, relative  # float32 cumprod round-off, largest where alphas_cumprod is tiny
        # alpha(t)^2 at the knots t_n = (n + 1)/N is alphas_cumprod[n]
        knots = schedule.t_of_label(torch.arange(schedule.num_steps, dtype=F64))
        assert torch.allclose(schedule.alpha(knots) ** 2, schedule.alphas_cumprod, rtol=1e-12, atol=0)


def test_default_linear_config_is_ddpm_linear_exactly():
    load_diffusers()
    schedule = adapter.schedule_from_diffusers({"num_train_timesteps": 1000, "beta_schedule": "linear",
                                                "beta_start": 1e-4, "beta_end": 0.02})
    assert torch.equal(schedule.alphas_cumprod, SCHED.alphas_cumprod)


def test_trained_betas_and_unsupported_settings():
    load_diffusers()
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=F64)
    schedule = adapter.schedule_from_diffusers({"trained_betas": betas.tolist(), "num_train_timesteps": 1000})
    assert torch.allclose(schedule.alphas_cumprod, SCHED.alphas_cumprod, rtol=1e-12)
    with pytest.raises(ValueError, match="rescale_betas_zero_snr"):
        adapter.schedule_from_diffusers({"rescale_betas_zero_snr": True})
    with pytest.raises(ValueError, match="beta_schedule 'sigmoid'"):
        adapter.schedule_from_diffusers({"beta_schedule": "sigmoid"})
    with pytest.raises(ValueError, match="flow_prediction"):
        adapter.kind_from_diffusers({"prediction_type": "flow_prediction"})
    with pytest.raises(TypeError, match="scheduler or its config"):
        adapter.schedule_from_diffusers(42)


class ExactUNet(torch.nn.Module):
    """gmm64's exact prediction in a diffusers model's clothes: (x, integer-style labels) -> .sample."""

    VIEWS = {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}

    def __init__(self, prediction_type: str):
        super().__init__()
        self.view = getattr(MIXTURE, self.VIEWS[prediction_type])
        self.dummy = torch.nn.Parameter(torch.zeros((), dtype=F64))  # so the adapter sees a float64 net
        self.labels_seen = []

    def forward(self, sample, timestep):
        self.labels_seen.append(timestep)
        t = SCHED.t_of_label(timestep.to(F64))
        return SimpleNamespace(sample=self.view(sample, SCHED.alpha(t), SCHED.sigma(t)))


@pytest.mark.parametrize("prediction_type,kind", [("epsilon", "eps"), ("v_prediction", "v"), ("sample", "x0")])
@pytest.mark.parametrize("solver", ["dpm-solver++2m", "heun-edm", "ddim"])
def test_prediction_types_map_to_kinds(prediction_type, kind, solver):
    load_diffusers()
    config = {"num_train_timesteps": 1000, "beta_schedule": "linear", "beta_start": 1e-4, "beta_end": 0.02,
              "prediction_type": prediction_type}
    assert adapter.kind_from_diffusers(config) == kind
    unet = ExactUNet(prediction_type)
    model = adapter.from_diffusers(unet, config)
    assert (model.kind, model.time) == (kind, "label")
    x_T = SCHED.prior_sample((16, 64), generator=torch.Generator().manual_seed(0), dtype=F64)
    ours = fd.sample(model, x_T, solver, nfe=10)
    exact = fd.sample(MIXTURE.prediction(SCHED, kind), x_T, solver, nfe=10)
    assert model.nfe == 10
    assert float((ours - exact).abs().max()) < 1e-10
    # the network saw diffusers' labels: 999 at t = 1, 0 at t = 1/N
    first = unet.labels_seen[0]
    assert first.shape == (16,) and float(first[0]) == pytest.approx(999.0, abs=1e-9)
    # declaring the wrong parametrisation changes the samples (so the check above can fail)
    wrong = "eps" if kind != "eps" else "v"
    assert float((fd.sample(adapter.from_diffusers(unet, config, kind=wrong), x_T, solver, nfe=10) - exact).abs().max()) > 1e-2


def test_missing_diffusers_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "diffusers", None)  # `import diffusers` now raises ImportError
    with pytest.raises(ImportError, match=r"pip install fastdiff_edu\[test\]") as info:
        adapter.from_diffusers(lambda x, t: x, {"beta_schedule": "linear"})
    assert "pip install diffusers" in str(info.value)
    with pytest.raises(ImportError, match="diffusers"):
        adapter.require_diffusers()


class HalfRecorder(torch.nn.Module):
    """A half-precision "network" returning its input, recording what it was called with."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros((), dtype=torch.float16))
        self.calls = []

    def forward(self, sample, timestep):
        self.calls.append((sample.dtype, timestep.dtype, timestep.clone()))
        return (sample * 0.5,)  # return_dict=False style


def test_dtypes_half_network_keeps_float32_labels():
    load_diffusers()
    net = HalfRecorder()
    model = adapter.from_diffusers(net, {"beta_schedule": "linear"})
    x = torch.randn(3, 2)
    out = model(x, torch.tensor(0.2505, dtype=F64))  # label 249.5: not representable in float16
    assert out.dtype == torch.float32 and torch.equal(out, (x.half() * 0.5).float())
    sample_dtype, label_dtype, labels = net.calls[0]
    assert (sample_dtype, label_dtype) == (torch.float16, torch.float32)
    assert torch.allclose(labels, torch.full((3,), 249.5), atol=1e-4)


def _tiny_unet(diffusers):
    torch.manual_seed(0)
    return diffusers.UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(16, 32),
                                 layers_per_block=1, down_block_types=("DownBlock2D", "DownBlock2D"),
                                 up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=8).eval()


def test_tiny_unet2dmodel_runs_through_fd_sample():
    diffusers = load_diffusers()
    unet = _tiny_unet(diffusers)
    scheduler = diffusers.DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", set_alpha_to_one=True,
                                          clip_sample=False)
    model = adapter.from_diffusers(unet, scheduler)
    x_T = model.schedule.prior_sample((4, 1, 8, 8), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        x0 = fd.sample(model, x_T, "dpm-solver++2m", nfe=6)
        assert x0.shape == x_T.shape and x0.dtype == torch.float32 and bool(torch.isfinite(x0).all())
        assert model.nfe == 6
        # float64 samples drive the float32 network (cast in, cast back)
        assert fd.sample(model, x_T.double(), "ddim", nfe=3).dtype == F64

        # our DDIM on diffusers' DDIM grid (ending at alpha = 1) reproduces diffusers' own loop
        scheduler.set_timesteps(8)
        grid = adapter.timesteps_from_diffusers(scheduler, model.schedule, final=0.0)
        assert grid.numel() == 9 and float(grid[-1]) == 0.0
        assert torch.equal(grid[:-1], (scheduler.timesteps.to(F64) + 1) / 1000)
        ours = fd.sample(model, x_T, "ddim", timesteps=grid)
        x = x_T.clone()
        for label in scheduler.timesteps:
            x = scheduler.step(unet(x, label).sample, label, x).prev_sample
    relative = float((ours - x).abs().max() / x.abs().max())
    assert relative < 1e-4, relative
