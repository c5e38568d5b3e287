"""Compatibility presets: run our samplers with the defaults of diffusers or k-diffusion.

A preset names the sampler, the grid and the options under which our code reproduces what a
library computes, so that a result from a pipeline can be reproduced here and then changed one
thing at a time (the grid, the final step, the third-order term, ...)::

    preset = presets.diffusers(pipe.scheduler, steps=20)          # or a config dict with "_class_name"
    x0 = fd.sample(model, x_T, preset.solver, timesteps=preset.timesteps, **preset.options)
    preset = presets.k_diffusion("sample_dpmpp_2m", sigmas_or_steps=20, schedule=schedule)

What each library decides, and the preset translates:

- **the grid.** diffusers evaluates the network at integer (Euler/Heun/LMS with ``"linspace"``:
  fractional) labels n of a ``DiscreteVP``; our time is t = (n + 1)/N. Its ``timestep_spacing``
  (``"leading"``, ``"trailing"``, ``"linspace"``) differs per scheduler class: DPM-Solver uses
  steps + 1 points and drops the last one, DDIM/PNDM/Euler use steps points. The final point is
  t = 0 (``set_alpha_to_one=True``, ``final_sigmas_type="zero"``, the Euler-type schedulers) or
  t_min (``alphas_cumprod[0]``, ``final_sigmas_type="sigma_min"``). k-diffusion takes a sigma grid
  in sigma_bar = sigma/alpha (x/alpha coordinates), usually Karras' ending in 0.
- **the final step.** A grid ending at 0 ends with a first-order step (``final_step="euler"``);
  one ending at t_min returns the noisy sample there (``"stop"``).
- **lower-order steps.** diffusers lowers the last multistep steps only below 15 steps
  (``lower_order_final``); k-diffusion only on the step to zero; the reference code below 10.
- **names.** ``solver_type`` ``"midpoint"`` is our ``"dpmsolver"`` (the papers' form), ``"heun"``
  our ``"taylor"``. The 3M of both libraries is our ``third_order="published"``; its warm-up step
  is diffusers' ``solver_type`` form and k-diffusion's ``"taylor"`` (exact phi_2) form.
- **thresholding.** diffusers' ``thresholding=True`` for data prediction is a Prediction with
  ``threshold=dynamic_thresholding_ratio, threshold_max=sample_max_value``
  (``preset.prediction_options``; :meth:`Preset.prepare` applies them to a model).

Configurations that our samplers cannot reproduce raise ValueError saying why and what is
supported: DDIM/PNDM with a spacing whose step target ``t - N//S`` is not the next label (the
library moves x to one label and evaluates the network at another), DDIM's ``clip_sample`` /
``thresholding`` (they clip x0_hat but keep the raw eps), PNDM with v-prediction (it combines
raw v outputs), DPMSolverSinglestepScheduler (its intermediate points are grid points, not the
paper's fixed fractions r1 of each step), and the rarer sigma-space options (``use_beta_sigmas``,
``use_lu_lambdas``, ...). ``use_karras_sigmas`` and ``use_exponential_sigmas`` are supported: the
preset's times are those of diffusers' sigma_bar grid, which its steps use, while diffusers calls the
network at labels rounded (DPM-Solver) or log-interpolated (Euler-type) from them.
"""
from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import torch

from . import timesteps as _timesteps
from .schedules import DiscreteVP, Schedule, as_float64

Tensor = torch.Tensor
F64 = torch.float64

__all__ = ["Preset", "diffusers", "k_diffusion", "DIFFUSERS_SCHEDULERS", "K_DIFFUSION_SAMPLERS",
           "diffusers_labels", "schedule_from_config"]

KIND = {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}
SOLVER_TYPE = {"midpoint": "dpmsolver", "heun": "taylor"}


@dataclass(frozen=True)
class Preset:
    """What to run: ``fd.sample(model, x_T, preset.solver, timesteps=preset.timesteps, **preset.options)``.

    ``kind`` is the Prediction kind of the library's ``prediction_type`` (the network's output);
    ``prediction_options`` are Prediction settings (thresholding) the library applies, see
    :meth:`prepare`; ``notes`` say what else to know to compare (noise, coordinates).
    """

    solver: str
    timesteps: Tensor
    options: dict = field(default_factory=dict)
    library: str = ""
    kind: str = "eps"
    prediction_options: dict = field(default_factory=dict)
    notes: tuple = ()

    def prepare(self, model):
        """A shallow copy of ``model`` (a Prediction) with :attr:`prediction_options` set."""
        if not self.prediction_options:
            return model
        prepared = copy.copy(model)
        for key, value in self.prediction_options.items():
            setattr(prepared, key, value)
        return prepared

    def sample(self, model, x_T: Tensor, **overrides):
        """Run the preset (thresholding applied); ``overrides`` change options one at a time."""
        from .solvers import sample
        return sample(self.prepare(model), x_T, self.solver, timesteps=self.timesteps, **{**self.options, **overrides})


# ----------------------------------------------------------------------------------------------
# diffusers
# ----------------------------------------------------------------------------------------------
DIFFUSERS_SCHEDULERS = ("DDIMScheduler", "DPMSolverMultistepScheduler", "PNDMScheduler", "EulerDiscreteScheduler",
                        "HeunDiscreteScheduler", "EulerAncestralDiscreteScheduler", "LMSDiscreteScheduler")

# the spacing family of each class: how many points set_timesteps places
_SPACING_FAMILY = {"DDIMScheduler": "ddim", "PNDMScheduler": "ddim", "DPMSolverMultistepScheduler": "dpm",
                   "DPMSolverSinglestepScheduler": "dpm", "EulerDiscreteScheduler": "euler",
                   "HeunDiscreteScheduler": "euler", "EulerAncestralDiscreteScheduler": "euler",
                   "LMSDiscreteScheduler": "euler"}
_DEFAULT_SPACING = {"ddim": "leading", "dpm": "linspace", "euler": "linspace"}

# options that change sigma space in ways the presets do not translate (yet): name -> what it does
_UNSUPPORTED_FLAGS = {
    "use_beta_sigmas": "beta sigmas",
    "use_lu_lambdas": "lambda-uniform sigmas", "use_flow_sigmas": "flow-matching sigmas",
    "use_dynamic_shifting": "resolution-dependent shifts", "rescale_betas_zero_snr": "zero terminal SNR betas",
}


def _read(scheduler_or_config) -> tuple[str, dict]:
    if hasattr(scheduler_or_config, "config") and not isinstance(scheduler_or_config, Mapping):
        return type(scheduler_or_config).__name__, dict(scheduler_or_config.config)
    if isinstance(scheduler_or_config, Mapping):
        config = dict(scheduler_or_config)
        if "_class_name" not in config:
            raise ValueError("a diffusers config needs its '_class_name' (as in scheduler_config.json), or pass the "
                             f"scheduler itself; supported: {', '.join(DIFFUSERS_SCHEDULERS)}")
        return str(config["_class_name"]), config
    raise TypeError(f"pass a diffusers scheduler or its config dict, got {type(scheduler_or_config).__name__}")


def schedule_from_config(config: Mapping) -> DiscreteVP:
    """The DiscreteVP of a diffusers config (``beta_schedule`` linear or scaled_linear, or ``trained_betas``)."""
    n = int(config.get("num_train_timesteps", 1000))
    start, end = float(config.get("beta_start", 1e-4)), float(config.get("beta_end", 0.02))
    if config.get("trained_betas") is not None:
        return DiscreteVP.from_betas(torch.as_tensor(np.asarray(config["trained_betas"]), dtype=F64))
    kind = config.get("beta_schedule", "linear")
    if kind == "linear":
        return DiscreteVP.ddpm_linear(n, start, end)
    if kind == "scaled_linear":
        return DiscreteVP.scaled_linear(n, start, end)
    raise ValueError(f"beta_schedule={kind!r}: presets build 'linear' and 'scaled_linear' (or trained_betas); "
                     "for others pass schedule=DiscreteVP(alphas_cumprod) yourself")


def diffusers_labels(class_name: str, config: Mapping, steps: int) -> Tensor:
    """The network labels ``set_timesteps(steps)`` of ``class_name`` produces (descending, float64;
    fractional for the Euler-type schedulers with ``"linspace"``, rounded there to float32 as diffusers does)."""
    family = _SPACING_FAMILY[class_name]
    n = int(config.get("num_train_timesteps", 1000))
    spacing = config.get("timestep_spacing", _DEFAULT_SPACING[family])
    offset = int(config.get("steps_offset", 0) or 0)
    if family == "dpm" and class_name == "DPMSolverSinglestepScheduler":
        spacing = "linspace"  # it has no other
    if spacing not in ("linspace", "leading", "trailing"):
        raise ValueError(f"{class_name}: timestep_spacing={spacing!r} is not one of 'linspace', 'leading', 'trailing'")
    if family == "dpm":
        if spacing == "linspace":
            labels = np.linspace(0, n - 1, steps + 1).round()[::-1][:-1]
        elif spacing == "leading":
            labels = (np.arange(0, steps + 1) * (n // (steps + 1))).round()[::-1][:-1] + offset
        else:
            labels = np.arange(n, 0, -n / steps).round() - 1
    else:
        if spacing == "linspace":
            labels = np.linspace(0, n - 1, steps, dtype=np.float32)[::-1]
            if family == "ddim":
                labels = labels.round()
        elif spacing == "leading":
            labels = (np.arange(0, steps) * (n // steps)).round()[::-1] + offset
        else:
            labels = np.arange(n, 0, -n / steps).round() - 1
    return torch.as_tensor(np.ascontiguousarray(labels), dtype=F64)


def _times_of_labels(schedule: DiscreteVP, labels: Tensor) -> Tensor:
    """Our times of diffusers' labels: t = (n + 1)/N for integers; for fractional labels the t whose
    sigma_bar is diffusers' *linear interpolation of sigma_bar* between the integer labels (what
    its Euler-type steps use; a network would be called at the label itself, see the notes)."""
    integer = labels == labels.round()
    lo = labels.floor().clamp(0, schedule.num_steps - 2)
    frac = labels - lo
    sig = schedule.sigma_bar(schedule.t_of_label(lo)) * (1 - frac) + schedule.sigma_bar(schedule.t_of_label(lo + 1)) * frac
    return torch.where(integer, schedule.t_of_label(labels), schedule.t_of_sigma_bar(sig))


def _sigma_space(name: str, config: Mapping, schedule: DiscreteVP, labels: Tensor, steps: int):
    """``use_karras_sigmas`` / ``use_exponential_sigmas``: the ``steps`` times of diffusers' sigma_bar
    grid (Karras rho = 7, or uniform in log sigma_bar = uniform in lambda) between its sigma_max and
    sigma_min, and a note on the labels the network gets; ``None`` for the plain spacings."""
    kind = "karras" if config.get("use_karras_sigmas") else "exponential" if config.get("use_exponential_sigmas") else None
    if kind is None:
        return None, None
    if _SPACING_FAMILY[name] == "dpm":  # the whole training range
        hi, lo = schedule.sigma_bar(torch.tensor(schedule.t_max)), schedule.sigma_bar(torch.tensor(schedule.t_min))
    else:  # the range of the spacing's labels
        ends = schedule.sigma_bar(_times_of_labels(schedule, labels[[0, -1]]))
        hi, lo = ends[0], ends[1]
    hi = hi if config.get("sigma_max") is None else torch.tensor(float(config["sigma_max"]), dtype=F64)
    lo = lo if config.get("sigma_min") is None else torch.tensor(float(config["sigma_min"]), dtype=F64)
    ramp = torch.linspace(0, 1, steps, dtype=F64)
    if kind == "karras":
        sigmas = (hi ** (1 / 7) + ramp * (lo ** (1 / 7) - hi ** (1 / 7))) ** 7
    else:
        sigmas = torch.exp(torch.log(hi) + ramp * (torch.log(lo) - torch.log(hi)))
    how = "rounded to an integer" if _SPACING_FAMILY[name] == "dpm" else "interpolated in log sigma_bar"
    note = (f"use_{kind}_sigmas: the steps use the {kind} sigma_bar grid (the preset's times), but diffusers calls the "
            f"network at the label of each sigma {how}, which sits at a slightly different noise level "
            "(tests/test_parity_presets.py measures the effect)")
    return schedule.t_of_sigma_bar(sigmas), note


def _check_common(name: str, config: Mapping) -> str:
    for flag, what in _UNSUPPORTED_FLAGS.items():
        if config.get(flag):
            raise ValueError(f"{name}: {flag}=True ({what}) has no preset yet; supported are the plain "
                             "timestep_spacing grids ('linspace', 'leading', 'trailing'), use_karras_sigmas and "
                             "use_exponential_sigmas on a DiscreteVP schedule")
    if config.get("timestep_type", "discrete") != "discrete":
        raise ValueError(f"{name}: timestep_type={config.get('timestep_type')!r}: only discrete timesteps are supported")
    prediction_type = config.get("prediction_type", "epsilon")
    if prediction_type not in KIND:
        raise ValueError(f"{name}: prediction_type={prediction_type!r}; supported: {', '.join(KIND)}")
    return KIND[prediction_type]


def _consistent_ddim_grid(name: str, schedule: DiscreteVP, labels: Tensor, config: Mapping, steps: int) -> Tensor:
    """DDIM/PNDM step from label t to ``t - N // steps`` (or to the final alpha when negative) and
    evaluate the network at the next label; our grid needs the two to agree."""
    n = schedule.num_steps
    targets = labels - n // steps
    if steps > 1 and not bool((targets[:-1] == labels[1:]).all()):
        bad = int(torch.nonzero(targets[:-1] != labels[1:])[0])
        raise ValueError(
            f"{name}: with timestep_spacing={config.get('timestep_spacing', 'leading')!r} and {steps} steps diffusers "
            f"moves x from label {int(labels[bad])} to {int(targets[bad])} (t - N//steps) but evaluates the network "
            f"next at label {int(labels[bad + 1])}: a step to one noise level followed by a network call that assumes "
            "another, which no grid reproduces. Use timestep_spacing='leading', or a step count that divides "
            f"num_train_timesteps={n} with 'trailing'")
    final = 0.0 if config.get("set_alpha_to_one", name == "DDIMScheduler") else schedule.t_min
    last = targets[-1]
    end = schedule.t_of_label(last) if last >= 0 else torch.tensor(final, dtype=F64)
    grid = torch.cat([schedule.t_of_label(labels), end.reshape(1)])
    if grid[-1] == grid[-2]:  # label 0 -> alphas_cumprod[0]: a step of length zero (it still costs diffusers an NFE)
        grid = grid[:-1]
    return grid


def diffusers(scheduler_or_config, steps: int, schedule: Schedule | None = None, *, eta: float = 0.0) -> Preset:
    """The preset reproducing diffusers' ``scheduler.set_timesteps(steps)`` and its ``step`` loop.

    ``schedule`` defaults to the DiscreteVP built from the config's betas; ``eta`` is DDIMScheduler's
    ``step(eta=...)``. Supported: DDIMScheduler, DPMSolverMultistepScheduler, PNDMScheduler,
    EulerDiscreteScheduler, HeunDiscreteScheduler, EulerAncestralDiscreteScheduler, LMSDiscreteScheduler.
    """
    name, config = _read(scheduler_or_config)
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    if name == "DPMSolverSinglestepScheduler":
        raise ValueError(
            "DPMSolverSinglestepScheduler has no preset: a k-th order step of it spans k intervals of its grid and "
            "evaluates the network at the grid points inside, so its intermediate points sit at fractions r1 = "
            "(lambda_{i+1} - lambda_i)/(lambda_{i+2} - lambda_i) that change from step to step (and orders cycle "
            "[1, 2, 3, ...]), while our dpm-solver-2/3 and dpm-solver++2s use the paper's fixed r1 = 1/2 (1/3, 2/3). "
            "Use DPMSolverMultistepScheduler (preset 'dpm-solver++2m'), or see tests/test_parity_presets.py for the "
            "difference")
    if name not in DIFFUSERS_SCHEDULERS:
        raise ValueError(f"no preset for diffusers' {name}; supported: {', '.join(DIFFUSERS_SCHEDULERS)}")
    kind = _check_common(name, config)
    schedule = schedule_from_config(config) if schedule is None else schedule
    if not isinstance(schedule, DiscreteVP) or schedule.num_steps != int(config.get("num_train_timesteps", 1000)):
        raise ValueError(f"{name}: the schedule must be a DiscreteVP with num_train_timesteps="
                         f"{config.get('num_train_timesteps', 1000)} steps, got {schedule!r}")
    labels = diffusers_labels(name, config, steps)
    library = f"diffusers {name}({', '.join(f'{k}={v!r}' for k, v in sorted(config.items()) if not k.startswith('_'))})"
    notes = []

    if name in ("DDIMScheduler", "PNDMScheduler"):
        for flag in ("clip_sample", "thresholding"):
            if config.get(flag, flag == "clip_sample" and name == "DDIMScheduler"):
                raise ValueError(
                    f"{name}: {flag}=True clips x0_hat but keeps the network's raw eps in the same step, a mix "
                    "none of our samplers runs (ours clip the x0 view and derive eps from it, or not at all). "
                    f"Build the scheduler with {flag}=False (pipelines for latent models do), e.g. "
                    f"{name}.from_config(scheduler.config, {flag}=False)")
        if name == "PNDMScheduler" and kind == "v":
            raise ValueError("PNDMScheduler with prediction_type='v_prediction' combines the raw v outputs before "
                             "converting them to noise, which is not the PNDM method (tests/test_parity_pndm.py); "
                             "no preset reproduces it. Use an eps model, or ours with kind='v'")
        grid = _consistent_ddim_grid(name, schedule, labels, config, steps)
        if name == "DDIMScheduler":
            solver, options = "ddim", {"eta": float(eta)}
            if eta > 0:
                notes.append("diffusers draws the noise with randn_tensor(generator): the same seed gives other "
                             "numbers; hand both the same noise to compare")
        else:
            solver, options = ("plms", {}) if config.get("skip_prk_steps", False) else ("f-pndm", {})
        if grid.numel() - 1 < steps:
            notes.append("the last label is 0 and diffusers' final step goes from alphas_cumprod[0] to itself: "
                         "a zero-length step that costs one NFE; the preset leaves it out")
        return Preset(solver, _timesteps.validate(schedule, grid), options, library, kind, {}, tuple(notes))

    if name == "DPMSolverMultistepScheduler":
        return _dpm_multistep(config, steps, schedule, labels, library, kind)

    # Euler-type schedulers: sigma space, x_bar = x/alpha samples, model input x_bar/sqrt(sigma^2 + 1) = x
    if config.get("interpolation_type", "linear") != "linear":
        raise ValueError(f"{name}: interpolation_type={config['interpolation_type']!r} has no preset; supported: 'linear'")
    if config.get("clip_sample"):
        raise ValueError(f"{name}: clip_sample=True has no preset; build the scheduler with clip_sample=False")
    final = config.get("final_sigmas_type", "zero") if name == "EulerDiscreteScheduler" else "zero"
    if final not in ("zero", "sigma_min"):
        raise ValueError(f"{name}: final_sigmas_type={final!r}; supported: 'zero', 'sigma_min'")
    times, note = _sigma_space(name, config, schedule, labels, steps)
    if times is not None:
        notes.append(note)
        labels = labels.round()  # the note replaces the one on fractional labels
    else:
        times = _times_of_labels(schedule, labels)
    grid = torch.cat([times, torch.tensor([0.0 if final == "zero" else schedule.t_min], dtype=F64)])
    if abs(float(grid[-1] - grid[-2])) < 1e-12:  # sigma_min twice: a zero-length step (it still costs diffusers an NFE)
        grid = grid[:-1]
        notes.append("the last sigma is sigma_min and so is the final one: diffusers' last step has length zero "
                     "and costs one NFE; the preset leaves it out")
    if not bool((labels == labels.round()).all()):
        notes.append("fractional labels (timestep_spacing='linspace'): diffusers uses sigma_bar linearly interpolated "
                     "between integer labels but calls the network at the fractional label itself; the preset's "
                     "times are those of the interpolated sigma_bar (a network sees a slightly different label, "
                     "see tests/test_parity_presets.py)")
    notes.append("diffusers' samples are x/alpha (init_noise_sigma = sqrt(sigma_max^2 + 1)): x_T(ours) = "
                 "alpha(t_start) x_T(diffusers); at a final t = 0 both are the data")
    solver, options = {"EulerDiscreteScheduler": ("euler-edm", {}), "HeunDiscreteScheduler": ("heun-edm", {}),
                       "EulerAncestralDiscreteScheduler": ("euler-ancestral", {"eta": 1.0}),
                       "LMSDiscreteScheduler": ("ipndm", {"order": 4, "nonuniform": True})}[name]
    if name == "EulerAncestralDiscreteScheduler":
        notes.append("diffusers draws the noise with randn_tensor(generator), also on the last step (times 0): "
                     "hand both the same noise to compare")
    return Preset(solver, _timesteps.validate(schedule, grid), options, library, kind, {}, tuple(notes))


def _dpm_multistep(config: Mapping, steps: int, schedule: DiscreteVP, labels: Tensor, library: str,
                   kind: str) -> Preset:
    name = "DPMSolverMultistepScheduler"
    algorithm = config.get("algorithm_type", "dpmsolver++")
    order = int(config.get("solver_order", 2))
    solver_type = config.get("solver_type", "midpoint")
    final = config.get("final_sigmas_type", "zero")
    if order not in (1, 2, 3):
        raise ValueError(f"{name}: solver_order={order}; supported: 1, 2, 3")
    if solver_type not in SOLVER_TYPE:
        raise ValueError(f"{name}: solver_type={solver_type!r}; supported: {', '.join(SOLVER_TYPE)}")
    if final not in ("zero", "sigma_min"):
        raise ValueError(f"{name}: final_sigmas_type={final!r}; supported: 'zero', 'sigma_min'")
    if float(config.get("lambda_min_clipped", -float("inf"))) != -float("inf"):
        raise ValueError(f"{name}: lambda_min_clipped has no preset; leave it at -inf")
    if config.get("variance_type") is not None:
        raise ValueError(f"{name}: variance_type={config['variance_type']!r} (learned variance) has no preset")
    names = {("dpmsolver++", 1): "dpm-solver-1", ("dpmsolver++", 2): "dpm-solver++2m",
             ("dpmsolver++", 3): "dpm-solver++3m", ("dpmsolver", 1): "dpm-solver-1",
             ("dpmsolver", 2): "dpm-solver-2m", ("dpmsolver", 3): "dpm-solver-3m",
             ("sde-dpmsolver++", 1): "sde-dpm-solver++1", ("sde-dpmsolver++", 2): "sde-dpm-solver++2m"}
    if (algorithm, order) not in names:
        raise ValueError(f"{name}: algorithm_type={algorithm!r} with solver_order={order} has no preset; supported: "
                         + ", ".join(f"{a} order {k}" for a, k in names)
                         + ("" if algorithm != "sde-dpmsolver++" else
                            " (diffusers' third-order SDE step carries a sign error in its D2 term; we have no "
                            "third-order SDE sampler)"))
    if final == "zero" and algorithm == "dpmsolver":
        raise ValueError(f"{name}: final_sigmas_type='zero' with algorithm_type='dpmsolver' is rejected by diffusers")
    lower = bool(config.get("lower_order_final", True)) and steps < 15
    if config.get("euler_at_final", False) and not (lower or final == "zero" or order == 1):
        raise ValueError(f"{name}: euler_at_final=True lowers only the last step to first order; our lower_order_final "
                         "also lowers the one before, so only steps < 15 (with lower_order_final) or "
                         "final_sigmas_type='zero' have a preset")
    options: dict = {"final_step": "euler" if final == "zero" else "stop"}
    solver = names[(algorithm, order)]
    if order >= 2:
        options["lower_order_final"] = lower
        options["solver_type"] = SOLVER_TYPE[solver_type]
    if order == 3:
        options["third_order"] = "published"
    prediction_options, notes = {}, []
    if config.get("thresholding", False):
        if algorithm == "dpmsolver":
            raise ValueError(f"{name}: thresholding with algorithm_type='dpmsolver' converts the clipped x0 back to "
                             "eps; no preset (our thresholding acts on the x0 view). Use 'dpmsolver++'")
        prediction_options = {"threshold": float(config.get("dynamic_thresholding_ratio", 0.995)),
                              "threshold_max": float(config.get("sample_max_value", 1.0))}
        notes.append("thresholding: apply preset.prediction_options to the model (preset.prepare(model))")
    if algorithm.startswith("sde"):
        notes.append("diffusers draws the noise with randn_tensor(generator): hand both the same noise "
                     "(step(..., variance_noise=z)) to compare")
    end = torch.tensor([0.0 if final == "zero" else schedule.t_min], dtype=F64)
    times, note = _sigma_space(name, config, schedule, labels, steps)
    if times is not None:
        if final != "zero":
            raise ValueError(f"{name}: a sigma-space grid with final_sigmas_type='sigma_min' ends with a zero-length "
                             "step (its last sigma is sigma_min already); no preset, use final_sigmas_type='zero'")
        notes.append(note)
    grid = torch.cat([schedule.t_of_label(labels) if times is None else times, end])
    return Preset(solver, _timesteps.validate(schedule, grid), options, library, kind, prediction_options, tuple(notes))


# ----------------------------------------------------------------------------------------------
# k-diffusion
# ----------------------------------------------------------------------------------------------
K_DIFFUSION_SAMPLERS = ("sample_euler", "sample_heun", "sample_euler_ancestral", "sample_dpmpp_2m",
                        "sample_dpmpp_2s_ancestral", "sample_dpmpp_2m_sde", "sample_dpmpp_3m_sde", "sample_lms")


def _grid_of_sigmas(schedule: Schedule, sigmas) -> Tensor:
    sigmas = as_float64(torch.as_tensor(sigmas)).cpu()
    zero = sigmas == 0
    t = schedule.t_of_sigma_bar(torch.where(zero, torch.ones_like(sigmas), sigmas))
    return _timesteps.validate(schedule, torch.where(zero, torch.zeros_like(t), t))



def _deterministic_only(sampler_name: str, eta: float, ours: str, why: str) -> None:
    """k-diffusion's eta > 0 variants have no preset: say which sampler eta = 0 maps to, and why."""
    if eta != 0.0:
        raise ValueError(f"{sampler_name}: only eta=0 ({ours!r}) has a preset, got eta={eta}; {why}")


def k_diffusion(sampler_name: str, sigmas_or_steps, schedule: Schedule, **kwargs) -> Preset:
    """The preset reproducing ``k_diffusion.sampling.<sampler_name>(model, x, sigmas, **kwargs)``.

    ``sigmas_or_steps``: k-diffusion's sigma grid (sigma_bar = sigma/alpha, decreasing, may end in
    0), or a step count for ``get_sigmas_karras(steps, sigma_bar(t_min), sigma_bar(t_max))``
    followed by 0. k-diffusion runs in x_bar = x/alpha: its input is x_T/alpha(t_start), its output
    ours/alpha(t_end) (the same when the grid ends at 0).
    """
    if sampler_name not in K_DIFFUSION_SAMPLERS:
        raise ValueError(f"no preset for k-diffusion's {sampler_name!r}; supported: {', '.join(K_DIFFUSION_SAMPLERS)}")
    if isinstance(sigmas_or_steps, int):
        grid = _timesteps.make(schedule, "karras", sigmas_or_steps, append_zero=schedule.reaches_zero_noise)
    else:
        grid = _grid_of_sigmas(schedule, sigmas_or_steps)
    final = {"final_step": "euler" if grid[-1] == 0 else "stop"}
    notes = ["k-diffusion works in x_bar = x/alpha and sigma_bar = sigma/alpha: give it x_T/alpha(t_start) and "
             "the sigmas schedule.sigma_bar(preset.timesteps); its result times alpha(t_end) is ours"]
    kw = dict(kwargs)

    def take(key, default):
        return kw.pop(key, default)

    def done():
        if kw:
            raise ValueError(f"{sampler_name}: options {sorted(kw)} have no preset")

    if sampler_name in ("sample_euler", "sample_heun"):
        churn = {"S_churn": float(take("s_churn", 0.0)), "S_tmin": float(take("s_tmin", 0.0)),
                 "S_tmax": float(take("s_tmax", float("inf"))), "S_noise": float(take("s_noise", 1.0))}
        done()
        if sampler_name == "sample_euler":
            solver, options = "euler-edm", churn
        else:
            solver, options = ("edm-stochastic", churn) if churn["S_churn"] > 0 else ("heun-edm", {})
        if churn["S_churn"] > 0:
            notes.append("k-diffusion draws torch.randn_like(x) from the global RNG at every step: hand both the "
                         "same noise to compare")
    elif sampler_name == "sample_euler_ancestral":
        solver, options = "euler-ancestral", {"eta": float(take("eta", 1.0)), "s_noise": float(take("s_noise", 1.0))}
        done()
        notes.append("k-diffusion draws noise_sampler(...) (default randn_like) on every step to sigma > 0")
    elif sampler_name == "sample_dpmpp_2m":
        done()
        solver, options = "dpm-solver++2m", {**final, "lower_order_final": False, "solver_type": "dpmsolver"}
    elif sampler_name == "sample_dpmpp_2s_ancestral":
        eta = float(take("eta", 1.0))
        take("s_noise", 1.0)
        done()
        _deterministic_only(sampler_name, eta, "dpm-solver++2s", "its ancestral noise split has no sampler here")
        solver, options = "dpm-solver++2s", {**final, "r1": 0.5, "solver_type": "dpmsolver"}
    elif sampler_name == "sample_dpmpp_3m_sde":
        eta = float(take("eta", 1.0))
        take("s_noise", 1.0)
        done()
        _deterministic_only(sampler_name, eta, "dpm-solver++3m", "we have no third-order SDE sampler")
        solver, options = "dpm-solver++3m", {**final, "lower_order_final": False, "solver_type": "taylor",
                                             "third_order": "published"}
    elif sampler_name == "sample_dpmpp_2m_sde":
        eta, s_noise = float(take("eta", 1.0)), float(take("s_noise", 1.0))
        solver_type = take("solver_type", "midpoint")
        done()
        if solver_type not in SOLVER_TYPE:
            raise ValueError(f"sample_dpmpp_2m_sde: solver_type={solver_type!r}; supported: {', '.join(SOLVER_TYPE)}")
        if eta == 0.0:
            solver, options = "dpm-solver++2m", {**final, "lower_order_final": False,
                                                 "solver_type": SOLVER_TYPE[solver_type]}
        elif eta == 1.0 and s_noise == 1.0:
            solver, options = "sde-dpm-solver++2m", {**final, "lower_order_final": False,
                                                     "solver_type": SOLVER_TYPE[solver_type]}
            notes.append("k-diffusion's default noise is a Brownian tree (BrownianTreeNoiseSampler): pass "
                         "noise_sampler=... with our draws to compare")
        else:
            raise ValueError(f"sample_dpmpp_2m_sde: eta={eta}, s_noise={s_noise}; presets exist for eta=0 (ODE) "
                             "and eta=1, s_noise=1 (SDE-DPM-Solver++(2M))")
    else:  # sample_lms
        order = int(take("order", 4))
        done()
        solver, options = "ipndm", {"order": order, "nonuniform": True}
    return Preset(solver, grid, options, f"k-diffusion {sampler_name}", "eps", {}, tuple(notes))
