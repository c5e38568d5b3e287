"""The black-box baseline: an adaptive Runge-Kutta solver on the probability-flow ODE in t.

Song et al. (2021, Sec. 4.3 and App. D.2) sample with scipy's RK45 (Dormand & Prince 1980) at
rtol = atol = 1e-5 from t = 1 to t = 1e-3. It is accurate but spends its evaluations on error
control: the number it needs is what the rest of the book brings down. The NFE reported is the
number of model calls counted by the Prediction, not the solver's own bookkeeping.
"""
from __future__ import annotations

import torch

from ..ode import integrate
from ..prediction import Prediction
from ._common import check_inputs
from .registry import SamplerSpec, register

Tensor = torch.Tensor

__all__ = ["rk45"]


def rk45(model: Prediction, x_T: Tensor, timesteps, *, rtol: float = 1e-5, atol: float = 1e-5,
         method: str = "RK45", return_info: bool = False, callback=None, progress: bool = False):
    """Adaptive RK45 in t from ``timesteps[0]`` to ``timesteps[-1]`` (the grid's interior is
    ignored: the solver chooses its own steps). Returns x, or ``(x, IntegrationInfo)``."""
    grid = check_inputs("rk45", model, x_T, timesteps)
    if float(grid[-1]) == 0.0:
        raise ValueError("rk45: the ODE in t is singular at t = 0; end at schedule.t_min instead")
    if not (rtol > 0 and atol > 0):
        raise ValueError(f"rk45: rtol and atol must be positive, got rtol={rtol}, atol={atol}")
    x, info = integrate(model, x_T, float(grid[0]), float(grid[-1]), variable="t", method=method,
                        rtol=rtol, atol=atol, progress=progress)
    if callback is not None:
        callback(0, grid[-1], x)
    return (x, info) if return_info else x




register(SamplerSpec("rk45", rk45, order=None, default_grid="time_uniform", chapter="recap", adaptive=True,
                     summary="scipy RK45 in t (Song et al. 2021 baseline)"))
