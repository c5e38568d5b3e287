"""The truth to measure against: a tight-tolerance solution of the probability-flow ODE.

Every error in this book is "sample minus reference" for the same starting noise, the same
model and the same end time, so it measures the sampler's discretisation error alone. The
reference integrates x/alpha in the half-log-SNR lambda with scipy's DOP853 (an 8th-order
Runge-Kutta pair, Hairer, Norsett & Wanner 1993, Sec. II.10) at ``rtol=1e-10``: in lambda the
right-hand side is smooth and of moderate size for every schedule here (see ``fastdiff_edu.ode``).
The test suite checks that halving the tolerance moves the answer by less than 1e-8.
"""
from __future__ import annotations

import torch

from .ode import IntegrationInfo, integrate
from .prediction import Prediction

__all__ = ["solve", "IntegrationInfo"]


def solve(model: Prediction, x_T: torch.Tensor, t_start=None, t_end=None, *, rtol: float = 1e-10,
          atol: float | None = None, return_info: bool = False, progress: bool = False):
    """Solve the probability-flow ODE from ``t_start`` (default ``t_max``) to ``t_end``
    (default ``t_min``) starting at ``x_T``; float64 inside, ``x_T``'s dtype and device out.
    The model is called in float64 (a network must accept it: wrap ``net.double()``), since a
    float32 model cannot meet ``rtol=1e-10`` and would make the solver crawl.

    Returns the end point, or ``(end point, IntegrationInfo)`` with ``return_info=True``.
    """
    sched = model.schedule
    t_start = sched.t_max if t_start is None else t_start
    t_end = sched.t_min if t_end is None else t_end
    x_end, info = integrate(model, x_T, t_start, t_end, variable="half_log_snr", method="DOP853",
                            rtol=rtol, atol=atol, call_dtype=torch.float64, progress=progress)
    return (x_end, info) if return_info else x_end

