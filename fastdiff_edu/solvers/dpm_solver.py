"""DPM-Solver (Lu et al. 2022) and DPM-Solver++ (Lu et al. 2022b): exponential integrators in
the half-log-SNR lambda, extrapolating the noise prediction (eps) or the data prediction (x0).

Both truncate the expansion of ``fastdiff_edu.exponential`` after k terms; they differ only in
the prediction they expand and in how they estimate its derivatives:

- *singlestep* (DPM-Solver-2/3, DPM-Solver++(2S)): extra evaluations at intermediate points
  lambda_s + r h inside each step (Lu et al. 2022, Algorithms 1, 4 and 5 (appendix));
- *multistep* (DPM-Solver-2M/3M, DPM-Solver++(2M)/(3M)): finite differences of the predictions
  of earlier steps (Lu et al. 2022b, Algorithm 2 and Appendix B), one evaluation per step.

For the multistep methods the derivative estimates h^n f^(n) are the derivatives at lambda_i of
the polynomial through the last k predictions (non-uniform in lambda), so every step is
``x_next = c_x x + W_0 F_i + W_1 F_{i-1} + W_2 F_{i-2}`` with weights computed before the loop.

``solver_type="dpmsolver"`` (the papers' form; "midpoint" in diffusers and k-diffusion) uses
(e^h - 1)/2 for the first-derivative coefficient, ``"taylor"`` ("heun") the exact phi_2 term.
``third_order="published"`` reproduces the third-order multistep formula of the reference code
(also in diffusers' and k-diffusion's 3M samplers), whose second-difference term is half of what
the Taylor expansion needs; ``"corrected"`` (default) uses the full term. Book chapter: dpm_solver.
"""
from __future__ import annotations

import math

import torch

from ..exponential import expansion_weights
from ..prediction import Prediction
from ._common import Callback, StepLoop, check_inputs, on_device, predict, run_linear_multistep
from .registry import SamplerSpec, register

Tensor = torch.Tensor

__all__ = ["multistep", "singlestep", "multistep_weights", "step_coefficients", "singlestep_update", "coefficients_on", "dpm_solver_1", "dpm_solver_2", "dpm_solver_3",
           "dpm_solver_2m", "dpm_solver_3m", "dpm_solver_pp_2s", "dpm_solver_pp_2m", "dpm_solver_pp_3m"]

SOLVER_TYPES = ("dpmsolver", "taylor")
THIRD_ORDER = ("corrected", "published")


def _check_options(name: str, solver_type: str, third_order: str = "corrected") -> None:
    if solver_type not in SOLVER_TYPES:
        raise ValueError(f"{name}: solver_type must be one of {SOLVER_TYPES}, got {solver_type!r}")
    if third_order not in THIRD_ORDER:
        raise ValueError(f"{name}: third_order must be one of {THIRD_ORDER}, got {third_order!r}")


def derivative_weights(offsets: Tensor) -> Tensor:
    """Rows n: weights a_nj with h^n f^(n)(0) ~ sum_j a_nj f(u_j) for the interpolating polynomial
    through the nodes ``u_j = offsets[j]`` (in units of the step h; u_0 = 0 is the current point)."""
    m = offsets.numel()
    vandermonde = offsets[:, None] ** torch.arange(m, dtype=torch.float64)[None, :]
    factorials = torch.tensor([math.factorial(n) for n in range(m)], dtype=torch.float64)
    return factorials[:, None] * torch.linalg.inv(vandermonde)


def multistep_weights(schedule, grid: Tensor, prediction: str, order: int, solver_type: str = "dpmsolver",
                      third_order: str = "corrected") -> tuple[Tensor, Tensor]:
    """``(c_x, W)`` with ``x_{i+1} = c_x[i] x_i + sum_j W[i, j] F_{i-j}``, float64.

    Step i uses order min(order, i + 1): the first steps warm up with the history they have.
    """
    lam = schedule.half_log_snr(grid)
    steps = grid.numel() - 1
    c_x, w = expansion_weights(schedule, grid[:-1], grid[1:], prediction, order)
    if solver_type == "dpmsolver" and order >= 2:
        w[:, 1] = 0.5 * w[:, 0]
    if third_order == "published" and order >= 3:
        w[:, 2] = 0.5 * w[:, 2]
    weights = torch.zeros(steps, order, dtype=torch.float64)
    for i in range(steps):
        k = min(order, i + 1)
        h = lam[i + 1] - lam[i]
        offsets = (lam[i - torch.arange(k)] - lam[i]) / h
        weights[i, :k] = w[i, :k] @ derivative_weights(offsets)
    return c_x, weights


def multistep(name: str, model: Prediction, x_T: Tensor, timesteps, *, prediction: str, order: int,
              solver_type: str = "dpmsolver", third_order: str = "corrected", callback: Callback | None = None,
              progress: bool = False) -> Tensor:
    """A k-step exponential integrator in lambda: one evaluation per step."""
    grid = check_inputs(name, model, x_T, timesteps)
    _check_options(name, solver_type, third_order)
    c_x, weights = multistep_weights(model.schedule, grid, prediction, order, solver_type, third_order)
    return run_linear_multistep(name, model, x_T, grid, prediction, c_x, weights, callback, progress)


def step_coefficients(schedule, t_from: Tensor, t_to: Tensor, r1: Tensor, r2: Tensor,
                      solver_type: str = "dpmsolver", prediction: str = "eps") -> dict[str, Tensor]:
    """float64 coefficients of singlestep DPM-Solver steps t_from -> t_to (tensors, one step each)
    with intermediate points at lambda_s + r1 h and lambda_s + r2 h, for ``prediction`` "eps"
    (DPM-Solver) or "x0" (DPM-Solver++).

    ``slope2`` multiplies the estimate of h eps' in a second-order step: (e^h - 1)/2-type for
    ``"dpmsolver"`` (Algorithm 1/4), the phi_2 term for ``"taylor"``; ``slope3`` is the phi_2 term
    of the third-order step (Algorithm 5)."""
    t_from, t_to = t_from.double(), t_to.double()
    r1, r2 = r1.double(), r2.double()
    lam_s = schedule.half_log_snr(t_from)
    h = schedule.half_log_snr(t_to) - lam_s
    mid1 = schedule.t_of_half_log_snr(lam_s + r1 * h)
    mid2 = schedule.t_of_half_log_snr(lam_s + r2 * h)
    c_x, w = expansion_weights(schedule, t_from, t_to, prediction, 2)
    c_x1, w1 = expansion_weights(schedule, t_from, mid1, prediction, 1)
    c_x2, w2 = expansion_weights(schedule, t_from, mid2, prediction, 2)
    return {"t": t_from, "mid1": mid1, "mid2": mid2, "r1": r1, "r2": r2,
            "c_x": c_x, "w0": w[..., 0], "slope2": 0.5 * w[..., 0] if solver_type == "dpmsolver" else w[..., 1],
            "slope3": w[..., 1], "c_x1": c_x1, "w1_0": w1[..., 0], "c_x2": c_x2, "w2_0": w2[..., 0], "w2_1": w2[..., 1]}


def singlestep_update(model: Prediction, x: Tensor, order: int, c: dict[str, Tensor], i, evals: list[Tensor],
                      prediction: str = "eps"):
    """One singlestep DPM-Solver step of ``order`` 1, 2 or 3 (Lu et al. 2022, eq. 3.7 and
    Algorithms 4, 5; DPM-Solver++(2S) for ``prediction="x0"``) with the coefficients ``c[...][i]``
    (from :func:`step_coefficients`, cast by :func:`coefficients_on`).

    ``evals`` holds the evaluations of this step already made ([eps_s], [eps_s, eps_s1], ...):
    they are reused, only the missing ones are computed. Returns ``(x_next, evals)``.
    """
    evals = list(evals)
    if not evals:
        evals.append(predict(model, prediction, x, c["t"][i]))
    f_s = evals[0]
    if order == 1:
        return c["c_x"][i] * x + c["w0"][i] * f_s, evals
    if len(evals) < 2:
        u1 = c["c_x1"][i] * x + c["w1_0"][i] * f_s
        evals.append(predict(model, prediction, u1, c["mid1"][i]))
    if order == 2:
        slope = (evals[1] - f_s) / c["r1"][i]  # ~ h eps'
        return c["c_x"][i] * x + c["w0"][i] * f_s + c["slope2"][i] * slope, evals
    if len(evals) < 3:
        slope1 = (evals[1] - f_s) * (c["r2"][i] / c["r1"][i])  # ~ r2 h eps'
        u2 = c["c_x2"][i] * x + c["w2_0"][i] * f_s + c["w2_1"][i] * slope1
        evals.append(predict(model, prediction, u2, c["mid2"][i]))
    slope = (evals[2] - f_s) / c["r2"][i]  # ~ h eps'
    return c["c_x"][i] * x + c["w0"][i] * f_s + c["slope3"][i] * slope, evals


def coefficients_on(coeffs: dict[str, Tensor], like: Tensor) -> dict[str, Tensor]:
    """Cast the coefficients once to ``like``'s dtype and device; the times stay float64."""
    cast = {key: on_device(value, like) for key, value in coeffs.items()}
    cast.update({key: coeffs[key].to(like.device) for key in ("t", "mid1", "mid2")})
    return cast


def singlestep(name: str, model: Prediction, x_T: Tensor, timesteps, *, prediction: str, order: int,
               solver_type: str = "dpmsolver", r1: float | None = None, r2: float | None = None,
               callback: Callback | None = None, progress: bool = False) -> Tensor:
    """Lu et al. (2022) Algorithms 1 (k=1), 4 (k=2, r1=1/2) and 5 (k=3, r1=1/3, r2=2/3), written for
    either prediction: k evaluations per step, at lambda_s, lambda_s + r1 h (and lambda_s + r2 h)."""
    grid = check_inputs(name, model, x_T, timesteps)
    _check_options(name, solver_type)
    if order not in (1, 2, 3):
        raise ValueError(f"{name}: singlestep order must be 1, 2 or 3, got {order}")
    r1 = (0.5 if order == 2 else 1.0 / 3.0) if r1 is None else r1
    r2 = 2.0 / 3.0 if r2 is None else r2
    if order >= 2 and not 0 < r1 < (r2 if order == 3 else 1.0) <= 1.0:
        raise ValueError(f"{name}: need 0 < r1 < r2 < 1, got r1={r1}, r2={r2}")
    steps = grid.numel() - 1
    coeffs = step_coefficients(model.schedule, grid[:-1], grid[1:], torch.full((steps,), float(r1), dtype=torch.float64),
                               torch.full((steps,), float(r2), dtype=torch.float64), solver_type, prediction)
    c = coefficients_on(coeffs, x_T)
    loop = StepLoop(name, grid, x_T, callback, progress)
    x = x_T
    for i in loop:
        x, _ = singlestep_update(model, x, order, c, i, [], prediction)
        loop.done(i, x)
    loop.check()
    return x


def dpm_solver_1(model, x_T, timesteps, **options):
    """DPM-Solver-1 (Lu et al. 2022, eq. 3.7): the first-order exponential integrator in eps;
    identical to deterministic DDIM."""
    return singlestep("dpm-solver-1", model, x_T, timesteps, prediction="eps", order=1, **options)


def dpm_solver_2(model, x_T, timesteps, *, solver_type="dpmsolver", r1=0.5, **options):
    """DPM-Solver-2 (Lu et al. 2022, Algorithm 4 in the appendix; Algorithm 1 for r1 = 1/2):
    2 evaluations per step."""
    return singlestep("dpm-solver-2", model, x_T, timesteps, prediction="eps", order=2,
                      solver_type=solver_type, r1=r1, **options)


def dpm_solver_3(model, x_T, timesteps, *, r1=1.0 / 3.0, r2=2.0 / 3.0, **options):
    """DPM-Solver-3 (Lu et al. 2022, Algorithm 5): 3 evaluations per step, r1 = 1/3, r2 = 2/3."""
    return singlestep("dpm-solver-3", model, x_T, timesteps, prediction="eps", order=3, r1=r1, r2=r2,
                      solver_type="taylor", **options)


def dpm_solver_2m(model, x_T, timesteps, *, solver_type="dpmsolver", **options):
    """Multistep DPM-Solver-2 in eps (Lu et al. 2022b, Appendix B, with eps for x0)."""
    return multistep("dpm-solver-2m", model, x_T, timesteps, prediction="eps", order=2,
                     solver_type=solver_type, **options)


def dpm_solver_3m(model, x_T, timesteps, *, third_order="corrected", **options):
    """Multistep DPM-Solver-3 in eps (the reference code's ``multistep_dpm_solver_third_update``;
    ``third_order="published"`` keeps its halved second-difference term)."""
    return multistep("dpm-solver-3m", model, x_T, timesteps, prediction="eps", order=3,
                     solver_type="taylor", third_order=third_order, **options)


def dpm_solver_pp_2s(model, x_T, timesteps, *, solver_type="dpmsolver", r1=0.5, **options):
    """DPM-Solver++(2S) (Lu et al. 2022b, Algorithm 1): singlestep, data prediction."""
    return singlestep("dpm-solver++2s", model, x_T, timesteps, prediction="x0", order=2,
                      solver_type=solver_type, r1=r1, **options)


def dpm_solver_pp_2m(model, x_T, timesteps, *, solver_type="dpmsolver", **options):
    """DPM-Solver++(2M) (Lu et al. 2022b, Algorithm 2): multistep, data prediction."""
    return multistep("dpm-solver++2m", model, x_T, timesteps, prediction="x0", order=2,
                     solver_type=solver_type, **options)


def dpm_solver_pp_3m(model, x_T, timesteps, *, third_order="corrected", **options):
    """DPM-Solver++(3M): third-order multistep, data prediction (reference code; see module doc)."""
    return multistep("dpm-solver++3m", model, x_T, timesteps, prediction="x0", order=3,
                     solver_type="taylor", third_order=third_order, **options)


def _steps_of(evaluations_per_step: int):
    return lambda nfe, options: nfe // evaluations_per_step


for _name, _fn, _order, _per_step, _summary in [
    ("dpm-solver-1", dpm_solver_1, 1, 1, "DPM-Solver-1 (= DDIM)"),
    ("dpm-solver-2", dpm_solver_2, 2, 2, "singlestep DPM-Solver-2, eps"),
    ("dpm-solver-3", dpm_solver_3, 3, 3, "singlestep DPM-Solver-3, eps"),
    ("dpm-solver-2m", dpm_solver_2m, 2, 1, "multistep DPM-Solver-2, eps"),
    ("dpm-solver-3m", dpm_solver_3m, 3, 1, "multistep DPM-Solver-3, eps (corrected third-order term)"),
    ("dpm-solver++2s", dpm_solver_pp_2s, 2, 2, "DPM-Solver++(2S), data prediction"),
    ("dpm-solver++2m", dpm_solver_pp_2m, 2, 1, "DPM-Solver++(2M), data prediction"),
    ("dpm-solver++3m", dpm_solver_pp_3m, 3, 1, "DPM-Solver++(3M), data prediction (corrected)"),
]:
    register(SamplerSpec(_name, _fn, order=_order, default_grid="logsnr", chapter="dpm_solver",
                         steps_for_nfe=_steps_of(_per_step), min_nfe=_per_step, summary=_summary))
