"""How a raw network meets a schedule: its time input, its input scaling, its training times.

A network here is ``net(x_in, c_noise)``. :class:`Conditioned` turns it into the ``fn(x, t_in)``
that :class:`~fastdiff_edu.prediction.Prediction` calls, so that the same wrapper serves training
and sampling (no chance of the two disagreeing):

=========  ==================================  =============  ===========================  ==================
name       schedule                            Prediction     c_noise                      c_in
=========  ==================================  =============  ===========================  ==================
``ddpm``   ``DiscreteVP.ddpm_linear()``        time="label"   the label ``N t - 1``         1
``cosine`` ``VPCosine()``                      continuous     ``1000 t``                   1
``edm``    ``EDM()`` (sigma = t)               continuous     ``250 ln sigma``             1/sqrt(s^2+0.25)
=========  ==================================  =============  ===========================  ==================

VP inputs already have unit-order scale; under EDM ``x = x0 + sigma eps`` grows to sigma = 80,
so the input is scaled by EDM's ``c_in`` (Karras et al. 2022, Table 1, sigma_data = 0.5). We do
*not* add EDM's skip/output scaling: the network predicts the raw eps, x0 or v, the
parametrisation a user picks with ``--param``, and :class:`Prediction` converts.

Training times (:func:`sample_times`): the DDPM labels uniformly (Ho et al. 2020, Alg. 1); t
uniform on the cosine schedule's range; EDM's log-normal ln sigma ~ N(-1.2, 1.2^2) (Table 1).
"""
from __future__ import annotations

import torch
from torch import nn

from .. import schedules
from ..prediction import Prediction

Tensor = torch.Tensor

SCHEDULES = ("ddpm", "cosine", "edm")
PARAMS = ("eps", "x0", "v")
SIGMA_DATA = 0.5

def make_schedule(name: str) -> schedules.Schedule:
    if name == "ddpm":
        return schedules.DiscreteVP.ddpm_linear()
    if name == "cosine":
        return schedules.VPCosine()
    if name == "edm":
        return schedules.EDM()
    raise ValueError(f"unknown schedule {name!r}; choose one of {SCHEDULES}")

def time_mode(name: str) -> str:
    """What :class:`Prediction` passes to the network: DDPM labels or the schedule time."""
    return "label" if name == "ddpm" else "continuous"

def check_combination(schedule: str, param: str) -> None:
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; choose one of {SCHEDULES}")
    if param not in PARAMS:
        raise ValueError(f"unknown parametrisation {param!r}; choose one of {PARAMS}")
    if param == "v" and schedule == "edm":
        raise ValueError("v-prediction needs a variance-preserving schedule: use --schedule ddpm or cosine "
                         "with --param v, or --param eps/x0 with --schedule edm")

class Conditioned(nn.Module):
    """``fn(x, t_in)`` for a schedule name: scales the input, computes c_noise, calls ``net``,
    and returns the output in x's dtype (the net runs in its own dtype, float32 by default)."""

    def __init__(self, net: nn.Module, schedule: str):
        super().__init__()
        if schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {schedule!r}; choose one of {SCHEDULES}")
        self.net = net
        self.schedule_name = schedule

    def forward(self, x: Tensor, t_in: Tensor) -> Tensor:
        dtype = next(self.net.parameters()).dtype
        t = t_in.to(torch.float64)
        if self.schedule_name == "ddpm":
            c_noise, c_in = t, None
        elif self.schedule_name == "cosine":
            c_noise, c_in = 1000.0 * t, None
        else:
            c_noise, c_in = 250.0 * torch.log(t), 1.0 / torch.sqrt(t**2 + SIGMA_DATA**2)
        x_in = x.to(dtype)
        if c_in is not None:
            x_in = x_in * c_in.to(dtype).reshape((-1,) + (1,) * (x.ndim - 1))
        return self.net(x_in, c_noise.to(dtype)).to(x.dtype)

def sample_times(name: str, schedule: schedules.Schedule, n: int, generator: torch.Generator) -> Tensor:
    """Training times t (float64, shape (n,)) for schedule ``name``."""
    if name == "ddpm":
        labels = torch.randint(0, schedule.num_steps, (n,), generator=generator)
        return schedule.t_of_label(labels.to(torch.float64))
    if name == "cosine":
        u = torch.rand(n, generator=generator, dtype=torch.float64)
        return schedule.t_min + (schedule.t_max - schedule.t_min) * u
    z = torch.randn(n, generator=generator, dtype=torch.float64)
    return torch.exp(-1.2 + 1.2 * z).clamp(schedule.t_min, schedule.t_max)

def diffuse(schedule: schedules.Schedule, x0: Tensor, t: Tensor, eps: Tensor):
    """x_t = alpha x0 + sigma eps and the per-sample (alpha, sigma) in x0's dtype, broadcastable."""
    shape = (-1,) + (1,) * (x0.ndim - 1)
    alpha = schedule.alpha(t).to(x0.dtype).reshape(shape)
    sigma = schedule.sigma(t).to(x0.dtype).reshape(shape)
    return alpha * x0 + sigma * eps, alpha, sigma

def target(param: str, x0: Tensor, eps: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    """What the network regresses on: eps, x0, or v = alpha eps - sigma x0 (Salimans & Ho 2022)."""
    if param == "eps":
        return eps
    if param == "x0":
        return x0
    return alpha * eps - sigma * x0

def to_prediction(fn: Conditioned, param: str) -> Prediction:
    """The :class:`Prediction` that samplers use: right schedule, kind and time input."""
    return Prediction(fn, make_schedule(fn.schedule_name), kind=param, time=time_mode(fn.schedule_name))

def model_input(schedule_name: str, schedule: schedules.Schedule, t: Tensor) -> Tensor:
    """The ``t_in`` Prediction would pass at time ``t`` (the label for DDPM)."""
    return schedule.label(t) if time_mode(schedule_name) == "label" else t

