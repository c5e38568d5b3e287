"""The probability-flow ODE and a bridge to scipy's adaptive solvers.

Song et al. (2021, eq. 13) turn the forward SDE ``dx = f(t) x dt + g(t) dw`` into an ODE with
the same marginals, ``dx/dt = f x - g^2/2 * score``. Writing ``g^2 = d sigma^2/dt - 2 f sigma^2``
and ``score = -eps/sigma`` gives the form every solver of this package starts from:

    dx/dt = f(t) x - sigma(t) lambda'(t) eps(x, t)                      (in t)

and, with x_bar = x/alpha and the half-log-SNR lambda as time,

    d x_bar / d lambda = -exp(-lambda) eps(alpha x_bar, t(lambda))      (in lambda)

which is DPM-Solver's starting point (Lu et al. 2022, eq. 3.4). The second form is smooth and
well scaled for every schedule in this package, so the reference solution is computed in it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.integrate import solve_ivp
from tqdm import tqdm

from .prediction import Prediction
from .schedules import as_float64

Tensor = torch.Tensor

__all__ = ["drift_t", "drift_half_log_snr", "integrate", "IntegrationInfo"]


def drift_t(model: Prediction, x: Tensor, t) -> Tensor:
    """dx/dt of the probability-flow ODE at (x, t)."""
    sched = model.schedule
    t64 = as_float64(t, device=x.device)
    f = sched.d_log_alpha(t64).to(x.dtype)
    g = (sched.sigma(t64) * sched.d_half_log_snr(t64)).to(x.dtype)
    return f * x - g * model.eps(x, t64)


def drift_half_log_snr(model: Prediction, x_bar: Tensor, lam) -> Tensor:
    """d x_bar / d lambda of the probability-flow ODE in scaled coordinates."""
    sched = model.schedule
    lam64 = as_float64(lam, device=x_bar.device)
    t = sched.t_of_half_log_snr(lam64)
    x = x_bar * sched.alpha(t).to(x_bar.dtype)
    return -torch.exp(-lam64).to(x_bar.dtype) * model.eps(x, t)


@dataclass
class IntegrationInfo:
    """What an adaptive solve cost: model calls (counted), accepted steps, solver status."""

    nfe: int
    steps: int
    method: str
    variable: str
    rtol: float
    atol: float
    message: str


def integrate(model: Prediction, x_start: Tensor, t_start, t_end, *, variable: str = "half_log_snr",
              method: str = "DOP853", rtol: float = 1e-10, atol: float | None = None,
              call_dtype: torch.dtype | None = None, progress: bool = False) -> tuple[Tensor, IntegrationInfo]:
    """Solve the probability-flow ODE from ``t_start`` to ``t_end`` with ``scipy.integrate.solve_ivp``.

    ``variable="half_log_snr"`` integrates x/alpha in lambda (smooth, well scaled);
    ``variable="t"`` integrates x in t, the way Song et al. ran RK45. The state is the whole
    batch flattened into one float64 vector, so the error control is an RMS over all samples.
    The model is called with ``call_dtype`` (default: ``x_start``'s dtype, float32 for half
    precision); the result has the dtype and device of ``x_start``. A non-finite model output
    raises FloatingPointError naming the time. ``progress=True`` shows the share of the time
    span covered.
    """
    sched = model.schedule
    t_start, t_end = float(t_start), float(t_end)
    if variable not in ("half_log_snr", "t"):
        raise ValueError(f"variable must be 'half_log_snr' or 't', got {variable!r}")
    for name, value in (("t_start", t_start), ("t_end", t_end)):
        if not sched.contains(value):
            raise ValueError(f"{name}={value} is outside the schedule's range [{sched.t_min}, {sched.t_max}]; "
                             "an ODE solve must end at a positive noise level (use t_end=schedule.t_min)")
    if not t_start > t_end:
        raise ValueError(f"t_start={t_start} must be larger than t_end={t_end} (sampling goes from noise to data)")
    atol = rtol * 1e-2 if atol is None else atol
    shape, dtype, device = x_start.shape, x_start.dtype, x_start.device
    if call_dtype is None:
        call_dtype = dtype if dtype in (torch.float64, torch.float32) else torch.float32
    nfe_before = model.nfe

    def as_tensor(y: np.ndarray) -> Tensor:
        return torch.from_numpy(y).reshape(shape).to(device=device, dtype=call_dtype)

    if variable == "t":
        y0 = as_float64(x_start).cpu().numpy().ravel()
        span = (t_start, t_end)

        def rhs(time, y):
            return as_float64(drift_t(model, as_tensor(y), time)).cpu().numpy().ravel()

        def finish(y):
            return y
    else:
        alpha_start = float(sched.alpha(t_start))
        y0 = (as_float64(x_start).cpu() / alpha_start).numpy().ravel()
        span = (float(sched.half_log_snr(t_start)), float(sched.half_log_snr(t_end)))

        def rhs(lam, y):
            return as_float64(drift_half_log_snr(model, as_tensor(y), lam)).cpu().numpy().ravel()

        def finish(y):
            return y * float(sched.alpha(t_end))

    bar = tqdm(total=1000, desc=f"{method} in {variable}", disable=not progress, leave=False,
               bar_format="{l_bar}{bar}| {elapsed}")

    def tracked_rhs(time, y):
        derivative = rhs(time, y)
        if not np.all(np.isfinite(derivative)):
            bar.close()
            raise FloatingPointError(f"{method}: the probability-flow ODE's right-hand side is NaN or Inf at "
                                     f"{variable}={time:.6g}; the model produced non-finite values")
        done = int(1000 * (time - span[0]) / (span[1] - span[0]))
        if done > bar.n:
            bar.update(done - bar.n)
        return derivative

    sol = solve_ivp(tracked_rhs, span, y0, method=method, rtol=rtol, atol=atol)
    bar.close()
    if not sol.success:
        raise RuntimeError(f"{method} failed between t={t_start} and t={t_end}: {sol.message}")
    y_end = finish(sol.y[:, -1])
    if not np.all(np.isfinite(y_end)):
        raise FloatingPointError(f"{method} returned NaN/Inf; the model produced non-finite values")
    x_end = torch.from_numpy(y_end).reshape(shape).to(device=device, dtype=dtype)
    info = IntegrationInfo(nfe=model.nfe - nfe_before, steps=len(sol.t) - 1, method=method,
                           variable=variable, rtol=rtol, atol=atol, message=sol.message)
    return x_end, info
