"""GENIE (Dockhorn, Vahdat & Kreis 2022): the second truncated Taylor method (TTM2) on DDIM's ODE.

In the scaled sample ``x_bar = x/alpha`` and the scaled noise level ``sigma_bar = sigma/alpha``
(GENIE's gamma) the probability-flow ODE of every schedule is

    d x_bar / d sigma_bar = eps_hat(x, t),        x = alpha x_bar,  t = t(sigma_bar),

and DDIM is its Euler method, the first truncated Taylor method. GENIE keeps one more term:

    x_bar_{n+1} = x_bar_n + h eps_hat + h^2/2 d eps_hat/d sigma_bar,    h = sigma_bar_{n+1} - sigma_bar_n,

with the *total* derivative along the solution,

    d eps_hat/d sigma_bar = (d eps_hat/d x) (dx/d sigma_bar) + (d eps_hat/d t) (dt/d sigma_bar),
    dx/d sigma_bar = alpha eps_hat + x d log alpha/d sigma_bar,

one Jacobian-vector product (JVP) of the network in its inputs (x, t). In x the step is DDIM's
transfer step plus one term, ``x_{n+1} = c_x x_n + c_eps eps_hat + c_d d eps_hat/d sigma_bar``
with ``c_d = alpha_{n+1} h^2/2`` (:func:`ttm2_coefficients`, :func:`ttm2_step`).

- :func:`genie_exact` (``"genie-exact"``): the derivative computed exactly with forward-mode AD
  (``torch.func.jvp``): per step one evaluation for eps_hat, then one JVP, which the Prediction
  counts as a second evaluation. Works for any differentiable Prediction.
- :func:`genie` (``"genie"``): the derivative from a small distilled head
  (:mod:`fastdiff_edu.genie_head`), one evaluation per step plus one (cheap) head call.

Both have the analytic first step (``afs=True``, GENIE's "AFS"): at the start of sampling the
marginal is close to the Gaussian prior, so the first step uses the noise prediction of
unit-variance Gaussian data, ``eps ~ sigma x/(alpha^2 + sigma^2)`` (``= sigma_T x_T``, ~ ``x_T`` on
VP schedules, the official code's ``eps = x``), with zero derivative: one network call saved.

Pass a dict as ``stats`` to get the counts of one run: ``evaluations`` (model calls, JVPs
included, = what ``model.nfe`` counted), ``jvps`` and ``head_calls``. Book chapter: genie.
"""
from __future__ import annotations

from typing import Callable

import torch

from ..prediction import Prediction
from ..schedules import Schedule
from ._common import Callback, StepLoop, check_inputs, on_device
from .ddim import ddim_coefficients
from .registry import SamplerSpec, register

Tensor = torch.Tensor

__all__ = ["genie_exact", "genie", "ttm2_coefficients", "tangent_coefficients", "afs_coefficient",
           "ttm2_step", "total_derivative", "run_ttm2"]


def ttm2_coefficients(schedule: Schedule, grid: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per step i (grid[i] -> grid[i+1]): ``x_next = c_x x + c_eps eps + c_d d eps/d sigma_bar``, float64.

    Multiplying the TTM2 step in x_bar by alpha_{i+1}: c_x = alpha_{i+1}/alpha_i and
    c_eps = alpha_{i+1} h are DDIM's coefficients (taken from :func:`ddim_coefficients`), and
    c_d = alpha_{i+1} h^2 / 2 with h = sigma_bar_{i+1} - sigma_bar_i (negative while sampling).
    """
    c_x, c_eps, _ = ddim_coefficients(schedule, grid)
    h = schedule.sigma_bar(grid[1:]) - schedule.sigma_bar(grid[:-1])
    h = torch.where(schedule.sigma(grid[1:]) == 0, -schedule.sigma_bar(grid[:-1]), h)  # a step to sigma = 0
    c_d = schedule.alpha(grid[1:]) * h**2 / 2
    return c_x, c_eps, c_d


def tangent_coefficients(schedule: Schedule, times: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """At each time: ``(alpha, d log alpha/d sigma_bar, dt/d sigma_bar)``, float64.

    The tangent of the solution in the model's inputs is ``(dx/d sigma_bar, dt/d sigma_bar)`` with
    ``dx/d sigma_bar = alpha eps + x d log alpha/d sigma_bar`` (from x = alpha x_bar and
    d x_bar/d sigma_bar = eps); with sigma_bar = exp(-lambda), d sigma_bar/dt = -sigma_bar lambda'(t).
    """
    dt_dsb = 1.0 / (-schedule.sigma_bar(times) * schedule.d_half_log_snr(times))
    return schedule.alpha(times), schedule.d_log_alpha(times) * dt_dsb, dt_dsb


def afs_coefficient(schedule: Schedule, t) -> Tensor:
    """The analytic first step's ``eps = c x``: c = sigma/(alpha^2 + sigma^2), exact for N(0, I) data."""
    alpha, sigma = schedule.alpha(t), schedule.sigma(t)
    return sigma / (alpha**2 + sigma**2)


def total_derivative(model: Prediction, x: Tensor, t: Tensor, eps: Tensor, alpha: Tensor, dlog_alpha: Tensor,
                     dt: Tensor) -> Tensor:
    """d eps_hat/d sigma_bar along the ODE through (x, t): one forward-mode JVP of ``model.eps``
    with tangent ``(alpha eps + dlog_alpha x, dt)`` in its inputs (x, t)."""
    _, d_eps = torch.func.jvp(model.eps, (x, t), (alpha * eps + dlog_alpha * x, dt))
    return d_eps


def ttm2_step(x: Tensor, eps: Tensor, d_eps: Tensor, c_x: Tensor, c_eps: Tensor, c_d: Tensor) -> Tensor:
    """x_bar_{n+1} = x_bar_n + h eps + h^2/2 d eps/d sigma_bar, written in x (GENIE's TTM2 update)."""
    return c_x * x + c_eps * eps + c_d * d_eps


Derivative = Callable[[int, Tensor, Tensor, Tensor], Tensor]  # (step, x, t, eps) -> d eps/d sigma_bar


def run_ttm2(name: str, model: Prediction, x_T: Tensor, grid: Tensor, derivative: Derivative, afs: bool,
             callback: Callback | None, progress: bool) -> Tensor:
    """The loop both samplers share: eps from the model (or AFS on step 0), the derivative from
    ``derivative(i, x, t, eps)``, then :func:`ttm2_step`."""
    c_x, c_eps, c_d = (on_device(c, x_T) for c in ttm2_coefficients(model.schedule, grid))
    c_afs = on_device(afs_coefficient(model.schedule, grid[0]), x_T)
    loop = StepLoop(name, grid, x_T, callback, progress)
    x = x_T
    for i in loop:
        t = loop.times[i]
        if i == 0 and afs:
            eps, d_eps = c_afs * x, torch.zeros_like(x)  # analytic first step: no network call
        else:
            eps = model.eps(x, t)
            d_eps = derivative(i, x, t, eps)
        x = ttm2_step(x, eps, d_eps, c_x[i], c_eps[i], c_d[i])
        loop.done(i, x)
    loop.check()
    return x


def _check_afs(name: str, afs) -> None:
    if not isinstance(afs, bool):
        raise ValueError(f"{name}: afs must be True or False, got {afs!r}")


def _record(stats: dict | None, model: Prediction, nfe_before: int, jvps: int, head_calls: int) -> None:
    if stats is not None:
        stats.update(evaluations=model.nfe - nfe_before, jvps=jvps, head_calls=head_calls)


def genie_exact(model: Prediction, x_T: Tensor, timesteps, *, afs: bool = False, stats: dict | None = None,
                callback: Callback | None = None, progress: bool = False) -> Tensor:
    """GENIE's TTM2 (Dockhorn et al. 2022; official code ``sampler.py:get_ttm2``) with the exact d eps/d sigma_bar.

    Each step calls the model once for eps_hat and then takes one JVP of ``model.eps`` in (x, t)
    along the ODE's tangent (:func:`total_derivative`, ``torch.func.jvp``): two counted
    evaluations per step, one of them a JVP (``stats["jvps"]``). The "oracle GENIE" of the book:
    it separates the Taylor method's error from the distillation error of :func:`genie`.
    ``afs=True`` replaces the first step by the analytic first step (no model call).
    """
    grid = check_inputs("genie-exact", model, x_T, timesteps)
    _check_afs("genie-exact", afs)
    alpha, dlog_alpha, dt = tangent_coefficients(model.schedule, grid[:-1])
    alpha, dlog_alpha = on_device(alpha, x_T), on_device(dlog_alpha, x_T)
    dt = dt.to(x_T.device)  # the tangent of t keeps t's dtype, float64
    nfe_before, jvps = model.nfe, 0

    def exact(i, x, t, eps):
        nonlocal jvps
        jvps += 1
        return total_derivative(model, x, t, eps, alpha[i], dlog_alpha[i], dt[i])

    x = run_ttm2("genie-exact", model, x_T, grid, exact, afs, callback, progress)
    _record(stats, model, nfe_before, jvps, 0)
    return x


def genie(model: Prediction, x_T: Tensor, timesteps, *, head=None, afs: bool = False, stats: dict | None = None,
          callback: Callback | None = None, progress: bool = False) -> Tensor:
    """GENIE (Dockhorn et al. 2022): TTM2 with d eps/d sigma_bar from a distilled head (official ``get_ttm2``).

    ``head(x, t, eps)`` predicts the total derivative from the model's input and output; load
    the shipped ones with ``fastdiff_edu.genie_head.load_head("gmm64")`` (or ``"ring2d"``). One
    model evaluation and one head call per step (``stats["head_calls"]``); the head is not
    counted as an NFE, as in the paper, whose head is a small extra output block of the network.
    """
    grid = check_inputs("genie", model, x_T, timesteps)
    _check_afs("genie", afs)
    if head is None:
        raise ValueError("genie needs head=...: load a distilled head with "
                         "fastdiff_edu.genie_head.load_head('gmm64') (or 'ring2d'), or use 'genie-exact'")
    check = getattr(head, "check_compatible", None)
    if check is not None:
        check(model, x_T)  # raises ValueError before any model call
    nfe_before, head_calls = model.nfe, 0

    def distilled(i, x, t, eps):
        nonlocal head_calls
        head_calls += 1
        return head(x, t, eps)

    x = run_ttm2("genie", model, x_T, grid, distilled, afs, callback, progress)
    _record(stats, model, nfe_before, 0, head_calls)
    return x


register(SamplerSpec("genie-exact", genie_exact, order=2, default_grid="time_quadratic", chapter="genie",
                     steps_for_nfe=lambda nfe, options: nfe // 2 + (1 if options.get("afs") else 0), min_nfe=2,
                     summary="GENIE TTM2 with the exact d eps/d sigma_bar by forward-mode AD (eval + JVP per step)"))
register(SamplerSpec("genie", genie, order=2, default_grid="time_quadratic", chapter="genie",
                     steps_for_nfe=lambda nfe, options: nfe + (1 if options.get("afs") else 0), min_nfe=1,
                     summary="GENIE TTM2 with a distilled derivative head (head=load_head(...)); afs option"))
