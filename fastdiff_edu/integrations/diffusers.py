"""Use fastdiff_edu's samplers with a diffusers model (and a diffusers scheduler's configuration).

    from fastdiff_edu.integrations.diffusers import from_diffusers
    model = from_diffusers(unet, scheduler)               # a Prediction: schedule, kind, labels
    x_T = model.schedule.prior_sample((4, 3, 32, 32), generator=torch.Generator().manual_seed(0))
    x0 = fd.sample(model, x_T, "dpm-solver++2m", nfe=10)

A diffusers scheduler holds three things a sampler needs, and the adapter maps each one:

* **the noise schedule**: ``num_train_timesteps`` and ``beta_schedule`` (``"linear"``,
  ``"scaled_linear"``, ``"squaredcos_cap_v2"``) or ``trained_betas`` give the training
  ``alphas_cumprod``, which become a :class:`~fastdiff_edu.schedules.DiscreteVP` (recomputed in
  float64 from the same formulas; diffusers keeps them in float32);
* **the parametrisation**: ``prediction_type`` ``"epsilon"`` / ``"v_prediction"`` / ``"sample"``
  is our kind ``"eps"`` / ``"v"`` / ``"x0"``;
* **the time input**: the UNet was trained on integer labels n = 0..N-1, and
  ``DiscreteVP.label(t) = N t - 1`` maps our time to that label (``time="label"``); between
  the training labels the network sees fractional ones, as in DPM-Solver's discrete wrapper.

Everything else in a scheduler (``set_timesteps``, ``step``, its step-index bookkeeping) is what
our samplers replace. diffusers is optional: the functions import it on first use and raise an
:class:`ImportError` naming the extra to install when it is missing.
"""
from __future__ import annotations

import importlib
import math
from typing import Any, Callable, Mapping

import torch

from ..prediction import Prediction
from ..schedules import DiscreteVP

Tensor = torch.Tensor

__all__ = ["require_diffusers", "scheduler_config", "schedule_from_diffusers", "kind_from_diffusers",
           "from_diffusers", "timesteps_from_diffusers", "PREDICTION_TYPES"]

#: diffusers' ``prediction_type`` -> our :class:`Prediction` kind
PREDICTION_TYPES = {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}

INSTALL_HINT = ("fastdiff_edu.integrations.diffusers needs the optional package diffusers: "
                "`pip install fastdiff_edu[test]` (which pins the tested version) or `pip install diffusers`")


def require_diffusers():
    """The ``diffusers`` module, or an ImportError that says what to install."""
    try:
        return importlib.import_module("diffusers")
    except ImportError as err:
        raise ImportError(INSTALL_HINT) from err


def scheduler_config(scheduler) -> dict:
    """A scheduler's configuration as a plain dict (a scheduler object, its ``.config`` or a dict)."""
    if isinstance(scheduler, Mapping):
        return dict(scheduler)
    config = getattr(scheduler, "config", None)
    if isinstance(config, Mapping):
        return dict(config)
    raise TypeError(f"expected a diffusers scheduler or its config (a dict), got {type(scheduler).__name__}")


def _cosine_betas(n: int, max_beta: float = 0.999) -> Tensor:
    """diffusers' ``squaredcos_cap_v2`` (Nichol & Dhariwal 2021, eq. 17, betas clipped at 0.999)."""
    def alpha_bar(s: float) -> float:
        return math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2

    return torch.tensor([min(1 - alpha_bar((i + 1) / n) / alpha_bar(i / n), max_beta) for i in range(n)],
                        dtype=torch.float64)


def schedule_from_diffusers(scheduler) -> DiscreteVP:
    """The :class:`DiscreteVP` of a diffusers scheduler (object, ``.config`` or dict), in float64.

    Raises ValueError for settings we cannot represent (zero terminal SNR, an unknown
    ``beta_schedule``), saying which setting it is.
    """
    require_diffusers()
    config = scheduler_config(scheduler)
    if config.get("rescale_betas_zero_snr"):
        raise ValueError("rescale_betas_zero_snr=True makes alphas_cumprod reach 0 (infinite log-SNR at t = 1), "
                         "which DiscreteVP cannot represent: use a scheduler config without it")
    n = int(config.get("num_train_timesteps", 1000))
    if config.get("trained_betas") is not None:
        betas = torch.as_tensor(config["trained_betas"], dtype=torch.float64)
    else:
        kind = config.get("beta_schedule", "linear")
        start, end = float(config.get("beta_start", 1e-4)), float(config.get("beta_end", 0.02))
        if kind == "linear":
            betas = torch.linspace(start, end, n, dtype=torch.float64)
        elif kind == "scaled_linear":
            betas = torch.linspace(start**0.5, end**0.5, n, dtype=torch.float64) ** 2
        elif kind == "squaredcos_cap_v2":
            betas = _cosine_betas(n)
        elif hasattr(scheduler, "alphas_cumprod"):  # another schedule: take the scheduler's own table
            return DiscreteVP(torch.as_tensor(scheduler.alphas_cumprod, dtype=torch.float64))
        else:
            raise ValueError(f"beta_schedule {kind!r} is not one of linear, scaled_linear, squaredcos_cap_v2; "
                             "pass the scheduler object (its alphas_cumprod are used) or trained_betas")
    return DiscreteVP.from_betas(betas)


def kind_from_diffusers(scheduler) -> str:
    """Our kind for the scheduler's ``prediction_type`` (``"epsilon"`` when unset)."""
    prediction_type = scheduler_config(scheduler).get("prediction_type", "epsilon")
    try:
        return PREDICTION_TYPES[prediction_type]
    except KeyError:
        raise ValueError(f"prediction_type {prediction_type!r} is not supported; fastdiff_edu maps "
                         f"{', '.join(f'{k} -> {v}' for k, v in PREDICTION_TYPES.items())}") from None


def _unwrap(out: Any) -> Tensor:
    """A diffusers model returns an output dataclass (``.sample``) or, with return_dict=False, a tuple."""
    if isinstance(out, Tensor):
        return out
    if hasattr(out, "sample"):
        return out.sample
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], Tensor):
        return out[0]
    raise TypeError(f"the model returned {type(out).__name__}; expected a tensor, an object with .sample or a tuple")


def from_diffusers(unet: Callable, scheduler, *, kind: str | None = None, **unet_kwargs) -> Prediction:
    """A :class:`Prediction` for a diffusers model and its scheduler (object, config or dict).

    ``unet(x, labels, **unet_kwargs)`` is called with the float timestep labels ``N t - 1``
    (shape ``(batch,)``) and its ``.sample`` output unwrapped; ``unet_kwargs`` pass e.g.
    ``class_labels`` or ``encoder_hidden_states``. If ``unet`` is a ``torch.nn.Module`` the
    input is cast to its parameters' dtype and the output back to the sample's dtype, so that
    float64 samplers can drive a float32 (or half) network; the labels stay in float32 for a
    half-precision network. ``kind`` overrides the scheduler's ``prediction_type``.
    """
    schedule = schedule_from_diffusers(scheduler)
    kind = kind_from_diffusers(scheduler) if kind is None else kind
    net_dtype = label_dtype = None
    if isinstance(unet, torch.nn.Module):
        net_dtype = next(iter(unet.parameters()), torch.empty(0)).dtype
        # labels up to N - 1 = 999 lose their fractional part in half precision: keep them in float32
        label_dtype = net_dtype if net_dtype in (torch.float32, torch.float64) else torch.float32

    def fn(x: Tensor, labels: Tensor) -> Tensor:
        if net_dtype is not None:
            x, labels = x.to(net_dtype), labels.to(label_dtype)
        return _unwrap(unet(x, labels, **unet_kwargs))

    def call(x: Tensor, labels: Tensor) -> Tensor:
        return fn(x, labels).to(x.dtype)

    model = Prediction(call, schedule, kind=kind, time="label")
    model.unet = unet
    return model


def timesteps_from_diffusers(scheduler, schedule: DiscreteVP | None = None, *, final: float | None = None) -> Tensor:
    """A scheduler's grid after ``set_timesteps`` as our decreasing times (float64).

    ``scheduler.timesteps`` are labels n; they sit at ``t = (n + 1) / N``. The grid ends at
    ``final`` (default ``schedule.t_min``, the label-0 noise level; pass 0.0 to end at clean
    data as ``final_sigmas_type="zero"`` does).
    """
    schedule = schedule_from_diffusers(scheduler) if schedule is None else schedule
    labels = torch.as_tensor(scheduler.timesteps).to(torch.float64).cpu()
    times = schedule.t_of_label(labels)
    end = schedule.t_min if final is None else float(final)
    if float(times[-1]) > end:
        times = torch.cat([times, torch.tensor([end], dtype=torch.float64)])
    return times
