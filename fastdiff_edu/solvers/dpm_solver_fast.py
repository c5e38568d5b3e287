"""DPM-Solver-fast and adaptive DPM-Solver (Lu et al. 2022, Sec. 3.3 and Appendix C): singlestep
DPM-Solver steps of mixed order, in eps prediction.

- ``dpm-solver-fast`` (the reference code's ``sample(method='singlestep')`` with
  ``get_orders_and_timesteps_for_singlestep_solver``) spends an NFE budget N exactly: for order 3,
  K = N // 3 + 1 outer steps of orders [3,...,3,2,1] (N mod 3 = 0), [3,...,3,1] (N mod 3 = 1) or
  [3,...,3,2] (N mod 3 = 2); for order 2, [2,...,2] or [2,...,2,1].
- ``dpm-solver-adaptive`` (Lu et al. 2022, Algorithm 6 in the appendix; the reference code's
  ``dpm_solver_adaptive``): an embedded pair DPM-Solver-12 or -23 whose lower-order step reuses the
  evaluations of the higher-order one, with the paper's error control in lambda.

Both use the stage function of ``dpm_solver.singlestep``, :func:`.dpm_solver.singlestep_update`
(Algorithms 1, 4, 5), which reuses the evaluations it is given. Book chapter: dpm_solver.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .. import timesteps as _timesteps
from ..prediction import Prediction
from ._common import Callback, StepLoop, check_inputs
from .dpm_solver import SOLVER_TYPES, coefficients_on, singlestep_update, step_coefficients
from .registry import SamplerSpec, register

Tensor = torch.Tensor

__all__ = ["fast_orders", "dpm_solver_fast", "dpm_solver_adaptive", "AdaptiveInfo"]


def fast_orders(nfe: int, order: int = 3) -> list[int]:
    """The order of each outer step of DPM-Solver-fast for a budget of ``nfe`` evaluations
    (Lu et al. 2022, Sec. 3.3; reference code ``get_orders_and_timesteps_for_singlestep_solver``).
    ``sum(fast_orders(nfe, order)) == nfe``."""
    if order == 3:
        k = nfe // 3 + 1
        tail = {0: [2, 1], 1: [1], 2: [2]}[nfe % 3]
        return [3] * (k - len(tail)) + tail
    if order == 2:
        return [2] * (nfe // 2) + [1] * (nfe % 2)
    return [1] * nfe


def _check_solver_type(name: str, solver_type: str) -> None:
    if solver_type not in SOLVER_TYPES:
        raise ValueError(f"{name}: solver_type must be one of {SOLVER_TYPES}, got {solver_type!r}")


OUTER = ("logsnr", "subsample")


def dpm_solver_fast(model: Prediction, x_T: Tensor, timesteps, *, order: int = 3, outer: str = "logsnr",
                    solver_type: str = "dpmsolver", callback: Callback | None = None, progress: bool = False) -> Tensor:
    """DPM-Solver-fast (Lu et al. 2022, Sec. 3.3, "DPM-Solver-fast"; Algorithms 4 and 5).

    ``timesteps`` has N + 1 points, N = the NFE budget (the registry builds it from ``nfe=N``).
    The N evaluations are split into K = N // 3 + 1 outer steps of orders :func:`fast_orders`
    (order 3) or N // 2 (+1) steps (order 2), so exactly N evaluations are spent. The outer grid:
    ``outer="logsnr"`` (default, the paper's choice) K + 1 points uniform in lambda between the
    grid's end points (its interior is ignored); ``outer="subsample"`` the grid's points at the
    cumulative orders (the reference code's choice for other skip types).
    """
    name = "dpm-solver-fast"
    grid = check_inputs(name, model, x_T, timesteps)
    if order not in (1, 2, 3):
        raise ValueError(f"{name}: order must be 1, 2 or 3, got {order!r}")
    if outer not in OUTER:
        raise ValueError(f"{name}: outer must be one of {OUTER}, got {outer!r}")
    _check_solver_type(name, solver_type)
    sched = model.schedule
    orders = fast_orders(grid.numel() - 1, order)
    if outer == "logsnr":
        outer_grid = _timesteps.make(sched, "logsnr", len(orders), grid[0], grid[-1])
    else:
        outer_grid = grid[torch.tensor([0] + orders).cumsum(0)]
    steps = len(orders)
    r1 = torch.tensor([0.5 if k == 2 else 1.0 / 3.0 for k in orders], dtype=torch.float64)
    r2 = torch.full((steps,), 2.0 / 3.0, dtype=torch.float64)
    coeffs = step_coefficients(sched, outer_grid[:-1], outer_grid[1:], r1, r2, solver_type)
    c = coefficients_on(coeffs, x_T)
    loop = StepLoop(name, outer_grid, x_T, callback, progress)
    x = x_T
    for i in loop:
        x, _ = singlestep_update(model, x, orders[i], c, i, [])
        loop.done(i, x)
    loop.check()
    return x


@dataclass
class AdaptiveInfo:
    """What an adaptive DPM-Solver run did: accepted and rejected steps, the model calls it made
    (counted by the Prediction) and the accepted times."""

    steps: int
    rejected: int
    nfe: int
    order: int
    rtol: float
    atol: float
    times: list


def dpm_solver_adaptive(model: Prediction, x_T: Tensor, timesteps, *, order: int = 3, rtol: float = 0.05,
                        atol: float = 0.0078, h_init: float = 0.05, theta: float = 0.9, t_err: float = 1e-5,
                        solver_type: str = "dpmsolver", max_nfe: int = 100_000, return_info: bool = False,
                        callback: Callback | None = None, progress: bool = False):
    """Adaptive DPM-Solver-12 (``order=2``) or -23 (``order=3``): Lu et al. 2022, Algorithm 6
    (appendix) and Sec. 3.3, as the reference code's ``dpm_solver_adaptive``.

    From lambda_s, try the step h (in lambda): x_low by DPM-Solver-(k-1) and x_high by DPM-Solver-k,
    which reuses x_low's evaluations (one -23 try costs 3 NFE, one -12 try 2 NFE). With
    delta = max(atol, rtol * max(|x_low|, |x_prev|)), E = max over the batch of the RMS over
    coordinates of (x_high - x_low) / delta. Accept if E <= 1 (x <- x_high, x_prev <- x_low), then
    h <- min(theta h E^(-1/k), lambda_0 - lambda_s), on rejection too. Only ``timesteps[0]`` and
    ``timesteps[-1]`` are used.

    Host-driven by nature: the accept/reject decision reads E on the host (one sync per try), and
    the step's coefficients are computed on the host for each try. Returns x, or
    ``(x, AdaptiveInfo)`` with ``return_info=True``.
    """
    name = "dpm-solver-adaptive"
    grid = check_inputs(name, model, x_T, timesteps)
    if order not in (2, 3):
        raise ValueError(f"{name}: order must be 2 (DPM-Solver-12) or 3 (DPM-Solver-23), got {order!r}")
    for key, value in (("rtol", rtol), ("atol", atol), ("h_init", h_init), ("t_err", t_err)):
        if not (isinstance(value, (int, float)) and value > 0 and math.isfinite(value)):
            raise ValueError(f"{name}: {key} must be a positive number, got {value!r}")
    if not (isinstance(theta, (int, float)) and 0 < theta <= 1):
        raise ValueError(f"{name}: theta must be in (0, 1] (the paper uses 0.9), got {theta!r}")
    _check_solver_type(name, solver_type)
    sched = model.schedule
    lam_end = sched.half_log_snr(grid[-1:])
    if not torch.isfinite(lam_end).all():
        raise ValueError(f"{name}: lambda is infinite at t_end = {float(grid[-1])}; end at schedule.t_min instead")
    t_end = float(grid[-1])
    lambda_0 = float(lam_end[0])
    r1 = torch.tensor([0.5 if order == 2 else 1.0 / 3.0], dtype=torch.float64)
    r2 = torch.tensor([2.0 / 3.0], dtype=torch.float64)

    nfe_before = model.nfe
    s = float(grid[0])
    lambda_s = float(sched.half_log_snr(grid[:1])[0])
    h = h_init
    x = x_prev = x_T
    accepted, rejected, times = 0, 0, [s]
    while abs(s - t_end) > t_err:
        if model.nfe - nfe_before > max_nfe:
            raise RuntimeError(f"{name}: more than max_nfe={max_nfe} evaluations; loosen rtol/atol")
        t = t_end if lambda_s + h >= lambda_0 else float(sched.t_of_half_log_snr(torch.tensor([lambda_s + h],
                                                                                             dtype=torch.float64))[0])
        coeffs = step_coefficients(sched, torch.tensor([s], dtype=torch.float64), torch.tensor([t], dtype=torch.float64),
                                   r1, r2, solver_type)
        c = coefficients_on(coeffs, x_T)
        x_lower, evals = singlestep_update(model, x, order - 1, c, 0, [])
        x_higher, _ = singlestep_update(model, x, order, c, 0, evals)
        delta = torch.maximum(torch.full_like(x, atol), rtol * torch.maximum(x_lower.abs(), x_prev.abs()))
        ratio = ((x_higher - x_lower) / delta).reshape(x.shape[0], -1)
        error = float(ratio.square().mean(dim=1).sqrt().max())  # the host sync of each try
        if not math.isfinite(error):  # an overflowing trial (large h, low precision): reject and shrink
            if not bool(torch.isfinite(x).all()):
                raise FloatingPointError(f"{name}: NaN or Inf in the state at t={s:.6g}")
            rejected += 1
            h = h / 4.0
            continue
        if error <= 1.0:
            x, x_prev, s = x_higher, x_lower, t
            lambda_s = float(sched.half_log_snr(torch.tensor([s], dtype=torch.float64))[0])
            accepted += 1
            times.append(s)
            if callback is not None:
                callback(accepted - 1, torch.tensor(s, dtype=torch.float64), x)
        else:
            rejected += 1
        h = min(theta * h * max(error, 1e-300) ** (-1.0 / order), lambda_0 - lambda_s)
    if not return_info:
        return x
    return x, AdaptiveInfo(steps=accepted, rejected=rejected, nfe=model.nfe - nfe_before, order=order,
                           rtol=rtol, atol=atol, times=times)


register(SamplerSpec("dpm-solver-fast", dpm_solver_fast, order=3, default_grid="logsnr", chapter="dpm_solver",
                     steps_for_nfe=lambda nfe: nfe, min_nfe=1,
                     summary="DPM-Solver-fast: singlestep orders [3,...,3,2,1] spending the NFE budget exactly"))
register(SamplerSpec("dpm-solver-adaptive", dpm_solver_adaptive, order=3, default_grid="logsnr",
                     chapter="dpm_solver", adaptive=True,
                     summary="adaptive DPM-Solver-23 (order=3) / -12 (order=2) with the paper's error control"))
