"""Euler's method on the probability-flow ODE in t: the naive baseline of the recap chapter.

    x_{i+1} = x_i + (t_{i+1} - t_i) [ f(t_i) x_i - sigma(t_i) lambda'(t_i) eps_hat(x_i, t_i) ]

(Song et al. 2021, eq. 13, with g^2 score/2 written as -sigma lambda' eps; see
``fastdiff_edu.ode``). First order, one NFE per step. Unlike DDIM it treats the linear term
f x explicitly, and near t_min, where lambda' is large, it needs small steps to stay stable.
"""
from __future__ import annotations

import torch

from ..prediction import Prediction
from ..schedules import Schedule
from ._common import Callback, StepLoop, check_inputs, on_device
from .registry import SamplerSpec, register

Tensor = torch.Tensor

__all__ = ["euler", "euler_coefficients"]


def euler_coefficients(schedule: Schedule, grid: Tensor) -> tuple[Tensor, Tensor]:
    """Per step: ``x_next = c_x x + c_eps eps_hat`` with c_x = 1 + h f(t), c_eps = -h sigma lambda'."""
    t = grid[:-1]
    h = grid[1:] - grid[:-1]
    return 1.0 + h * schedule.d_log_alpha(t), -h * schedule.sigma(t) * schedule.d_half_log_snr(t)


def euler(model: Prediction, x_T: Tensor, timesteps, *, callback: Callback | None = None,
          progress: bool = False) -> Tensor:
    """Explicit Euler in t on the probability-flow ODE. One NFE per step; order 1."""
    grid = check_inputs("euler", model, x_T, timesteps)
    c_x, c_eps = (on_device(c, x_T) for c in euler_coefficients(model.schedule, grid))
    loop = StepLoop("euler", grid, x_T, callback, progress)
    x = x_T
    for i in loop:
        x = c_x[i] * x + c_eps[i] * model.eps(x, loop.times[i])
        loop.done(i, x)
    loop.check()
    return x


register(SamplerSpec("euler", euler, order=1, default_grid="time_uniform", chapter="recap",
                     summary="Euler in t on the probability-flow ODE"))
