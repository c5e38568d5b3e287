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
(e^h - 1)/2 for the first-derivative coefficient of a second-order step, ``"taylor"`` ("heun")
the exact phi_2 term; third-order steps always use the exact term, so for 3M the option only
chooses its second-order warm-up step (the reference code and diffusers use "dpmsolver").
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
from .ddim import ddim_coefficients
from .registry import SamplerSpec, register

Tensor = torch.Tensor

__all__ = ["multistep", "singlestep", "multistep_weights", "step_coefficients", "singlestep_update", "coefficients_on", "dpm_solver_1", "dpm_solver_2", "dpm_solver_3",
           "dpm_solver_2m", "dpm_solver_3m", "dpm_solver_pp_2s", "dpm_solver_pp_2m", "dpm_solver_pp_3m",
           "sde_dpm_solver_pp_1", "sde_dpm_solver_pp_2m", "step_orders", "resolve_final_step", "finish", "FINAL_STEPS"]

SOLVER_TYPES = ("dpmsolver", "taylor")
THIRD_ORDER = ("corrected", "published")


def _check_options(name: str, solver_type: str, third_order: str = "corrected") -> None:
    if solver_type not in SOLVER_TYPES:
        raise ValueError(f"{name}: solver_type must be one of {SOLVER_TYPES}, got {solver_type!r}")
    if third_order not in THIRD_ORDER:
        raise ValueError(f"{name}: third_order must be one of {THIRD_ORDER}, got {third_order!r}")


def derivative_weights(offsets: Tensor) -> Tensor:
    """Rows n: weights a_nj with h^n f^(n)(0) ~ sum_j a_nj f(u_j) for the interpolating polynomial
    through the nodes ``u_j = offsets[..., j]`` (in units of the step h; u_0 = 0 is the current
    point); a batch of node sets gives a batch of matrices."""
    m = offsets.shape[-1]
    vandermonde = offsets[..., :, None] ** torch.arange(m, dtype=torch.float64)
    factorials = torch.tensor([math.factorial(n) for n in range(m)], dtype=torch.float64)
    return factorials[:, None] * torch.linalg.inv(vandermonde)


def step_orders(grid: Tensor, order: int, lower_order_final: bool = False) -> list[int]:
    """The order of each step of a k-step method on ``grid``.

    Warm-up: step i has i + 1 predictions, so order min(order, i + 1). A step that ends at zero
    noise is first order (its higher weights diverge). ``lower_order_final`` also lowers the last
    step to 1 and the one before to at most 2, as diffusers does for short grids: the final
    steps are the largest in lambda and the least stable.
    """
    steps = grid.numel() - 1
    orders = [min(order, i + 1) for i in range(steps)]
    if lower_order_final:
        orders[-1] = 1
        if steps >= 2:
            orders[-2] = min(orders[-2], 2)
    if grid[-1] == 0:
        orders[-1] = 1
    return orders


def multistep_weights(schedule, grid: Tensor, prediction: str, order: int, solver_type: str = "dpmsolver",
                      third_order: str = "corrected", *, lower_order_final: bool = False,
                      stochastic: bool = False) -> tuple[Tensor, Tensor]:
    """``(c_x, W)`` with ``x_{i+1} = c_x[i] x_i + sum_j W[i, j] F_{i-j}``, float64, with the orders
    of :func:`step_orders`; ``stochastic=True`` gives the mean of SDE-DPM-Solver++ steps."""
    lam = schedule.half_log_snr(grid)
    c_x, w = expansion_weights(schedule, grid[:-1], grid[1:], prediction, order, stochastic)
    orders = torch.tensor(step_orders(grid, order, lower_order_final))
    weights = torch.zeros(len(orders), order, dtype=torch.float64)
    for k in range(1, order + 1):  # all steps of one order at once
        rows = torch.nonzero(orders == k).flatten()
        if rows.numel() == 0:
            continue
        w_k = w[rows, :k].clone()
        if k == 1:  # also the step to zero noise, whose h is infinite
            weights[rows, 0] = w_k[:, 0]
            continue
        if k == 2 and solver_type == "dpmsolver":  # second-order steps only, warm-up of 3M included
            w_k[:, 1] = 0.5 * w_k[:, 0]
        if k == 3 and third_order == "published":
            w_k[:, 2] = 0.5 * w_k[:, 2]
        h = lam[rows + 1] - lam[rows]
        offsets = (lam[rows[:, None] - torch.arange(k)] - lam[rows, None]) / h[:, None]
        weights[rows, :k] = (w_k[:, None, :] @ derivative_weights(offsets))[:, 0]
    return c_x, weights


FINAL_STEPS = ("stop", "denoise", "euler")


def resolve_final_step(name: str, grid: Tensor, final_step: str | None) -> str:
    """How a trajectory ends, named (the libraries disagree, and at low NFE it shows):

    - ``"stop"``: return the sample at the grid's last time t_min > 0, noise and all
      (DPM-Solver's reference code, diffusers' ``final_sigmas_type="sigma_min"``);
    - ``"denoise"``: one more evaluation at t_min and return its x0 prediction, +1 NFE
      (the reference code's ``denoise_to_zero``, EDM-style "denoise at the end");
    - ``"euler"``: the grid ends at t = 0 and its last step is a first-order (DDIM = Euler in
      sigma/alpha) step there, which returns the x0 prediction of the last evaluation, no extra
      NFE (k-diffusion's zero-terminated sigmas, diffusers' ``final_sigmas_type="zero"``).

    ``None`` picks "euler" for a grid ending at 0 and "stop" otherwise.
    """
    ends_at_zero = bool(grid[-1] == 0)
    if final_step is None:
        return "euler" if ends_at_zero else "stop"
    if final_step not in FINAL_STEPS:
        raise ValueError(f"{name}: final_step must be one of {FINAL_STEPS} (or None), got {final_step!r}")
    if final_step == "euler" and not ends_at_zero:
        raise ValueError(f"{name}: final_step='euler' steps to t = 0, but the grid ends at {float(grid[-1]):.4g}; "
                         "end it with 0 (timesteps.make(..., append_zero=True))")
    if final_step != "euler" and ends_at_zero:
        raise ValueError(f"{name}: the grid ends at t = 0, where final_step={final_step!r} is undefined; "
                         "use final_step='euler' or end the grid at t_min")
    return final_step


def finish(model: Prediction, x: Tensor, grid: Tensor, final_step: str) -> Tensor:
    """Apply the ``"denoise"`` ending (an x0 prediction at the last time); others return x."""
    if final_step != "denoise":
        return x
    return model.x0(x, grid[-1:].to(x.device)[0])


def multistep(name: str, model: Prediction, x_T: Tensor, timesteps, *, prediction: str, order: int,
              solver_type: str = "dpmsolver", third_order: str = "corrected", lower_order_final: bool = False,
              final_step: str | None = None, stochastic: bool = False, generator: torch.Generator | None = None,
              callback: Callback | None = None, progress: bool = False) -> Tensor:
    """A k-step exponential integrator in lambda: one evaluation per step (plus one for
    ``final_step="denoise"``); ``stochastic`` adds SDE-DPM-Solver++'s fresh noise."""
    grid = check_inputs(name, model, x_T, timesteps)
    _check_options(name, solver_type, third_order)
    final_step = resolve_final_step(name, grid, final_step)
    c_x, weights = multistep_weights(model.schedule, grid, prediction, order, solver_type, third_order,
                                     lower_order_final=lower_order_final, stochastic=stochastic)
    # SDE-DPM-Solver++'s fresh noise sigma_t sqrt(1 - e^{-2h}) is DDPM's posterior noise (eta = 1)
    c_noise = ddim_coefficients(model.schedule, grid, eta=1.0)[2] if stochastic else None
    x = run_linear_multistep(name, model, x_T, grid, prediction, c_x, weights, callback, progress,
                             c_noise=c_noise, generator=generator)
    return finish(model, x, grid, final_step)


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
    to_zero = schedule.sigma(t_to) == 0  # a first-order step to t = 0: no intermediate points
    h = torch.where(to_zero, torch.zeros_like(lam_s), schedule.half_log_snr(torch.where(to_zero, t_from, t_to)) - lam_s)
    mid1 = schedule.t_of_half_log_snr(lam_s + r1 * h)
    mid2 = schedule.t_of_half_log_snr(lam_s + r2 * h)
    c_x, w = expansion_weights(schedule, t_from, t_to, prediction, 2)
    c_x1, w1 = expansion_weights(schedule, t_from, mid1, prediction, 1)
    c_x2, w2 = expansion_weights(schedule, t_from, mid2, prediction, 2)
    views = {f"{point}_{name}": getattr(schedule, name)(time) for point, time in
             (("t", t_from), ("mid1", mid1), ("mid2", mid2)) for name in ("alpha", "sigma")}
    return {"t": t_from, "mid1": mid1, "mid2": mid2, "r1": r1, "r2": r2, **views,
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
    at = lambda point: (c[f"{point}_alpha"][i], c[f"{point}_sigma"][i])  # noqa: E731 (the views' coefficients)
    if not evals:
        evals.append(predict(model, prediction, x, c["t"][i], at("t")))
    f_s = evals[0]
    if order == 1:
        return c["c_x"][i] * x + c["w0"][i] * f_s, evals
    if len(evals) < 2:
        u1 = c["c_x1"][i] * x + c["w1_0"][i] * f_s
        evals.append(predict(model, prediction, u1, c["mid1"][i], at("mid1")))
    if order == 2:
        slope = (evals[1] - f_s) / c["r1"][i]  # ~ h eps'
        return c["c_x"][i] * x + c["w0"][i] * f_s + c["slope2"][i] * slope, evals
    if len(evals) < 3:
        slope1 = (evals[1] - f_s) * (c["r2"][i] / c["r1"][i])  # ~ r2 h eps'
        u2 = c["c_x2"][i] * x + c["w2_0"][i] * f_s + c["w2_1"][i] * slope1
        evals.append(predict(model, prediction, u2, c["mid2"][i], at("mid2")))
    slope = (evals[2] - f_s) / c["r2"][i]  # ~ h eps'
    return c["c_x"][i] * x + c["w0"][i] * f_s + c["slope3"][i] * slope, evals


def coefficients_on(coeffs: dict[str, Tensor], like: Tensor) -> dict[str, Tensor]:
    """Cast the coefficients once to ``like``'s dtype and device; the times stay float64."""
    cast = {key: on_device(value, like) for key, value in coeffs.items()}
    cast.update({key: coeffs[key].to(like.device) for key in ("t", "mid1", "mid2")})
    return cast


def singlestep(name: str, model: Prediction, x_T: Tensor, timesteps, *, prediction: str, order: int,
               solver_type: str = "dpmsolver", r1: float | None = None, r2: float | None = None,
               final_step: str | None = None, callback: Callback | None = None, progress: bool = False) -> Tensor:
    """Lu et al. (2022) Algorithms 1 (k=1), 4 (k=2, r1=1/2) and 5 (k=3, r1=1/3, r2=2/3), written for
    either prediction: k evaluations per step, at lambda_s, lambda_s + r1 h (and lambda_s + r2 h).
    A last step to t = 0 (``final_step="euler"``) is first order: one evaluation."""
    grid = check_inputs(name, model, x_T, timesteps)
    _check_options(name, solver_type)
    if order not in (1, 2, 3):
        raise ValueError(f"{name}: singlestep order must be 1, 2 or 3, got {order}")
    r1 = (0.5 if order == 2 else 1.0 / 3.0) if r1 is None else r1
    r2 = 2.0 / 3.0 if r2 is None else r2
    if order >= 2 and not 0 < r1 < (r2 if order == 3 else 1.0) <= 1.0:
        raise ValueError(f"{name}: need 0 < r1 < r2 < 1, got r1={r1}, r2={r2}")
    final_step = resolve_final_step(name, grid, final_step)
    steps = grid.numel() - 1
    orders = [order] * (steps - 1) + [1 if final_step == "euler" else order]
    coeffs = step_coefficients(model.schedule, grid[:-1], grid[1:], torch.full((steps,), float(r1), dtype=torch.float64),
                               torch.full((steps,), float(r2), dtype=torch.float64), solver_type, prediction)
    c = coefficients_on(coeffs, x_T)
    loop = StepLoop(name, grid, x_T, callback, progress)
    x = x_T
    for i in loop:
        x, _ = singlestep_update(model, x, orders[i], c, i, [], prediction)
        loop.done(i, x)
    loop.check()
    return finish(model, x, grid, final_step)


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


def dpm_solver_3m(model, x_T, timesteps, *, third_order="corrected", solver_type="dpmsolver", **options):
    """Multistep DPM-Solver-3 in eps (the reference code's ``multistep_dpm_solver_third_update``;
    ``third_order="published"`` keeps its halved second-difference term)."""
    return multistep("dpm-solver-3m", model, x_T, timesteps, prediction="eps", order=3,
                     solver_type=solver_type, third_order=third_order, **options)


def dpm_solver_pp_2s(model, x_T, timesteps, *, solver_type="dpmsolver", r1=0.5, **options):
    """DPM-Solver++(2S) (Lu et al. 2022b, Algorithm 1): singlestep, data prediction."""
    return singlestep("dpm-solver++2s", model, x_T, timesteps, prediction="x0", order=2,
                      solver_type=solver_type, r1=r1, **options)


def dpm_solver_pp_2m(model, x_T, timesteps, *, solver_type="dpmsolver", **options):
    """DPM-Solver++(2M) (Lu et al. 2022b, Algorithm 2): multistep, data prediction."""
    return multistep("dpm-solver++2m", model, x_T, timesteps, prediction="x0", order=2,
                     solver_type=solver_type, **options)


def dpm_solver_pp_3m(model, x_T, timesteps, *, third_order="corrected", solver_type="dpmsolver", **options):
    """DPM-Solver++(3M): third-order multistep, data prediction (reference code; see module doc)."""
    return multistep("dpm-solver++3m", model, x_T, timesteps, prediction="x0", order=3,
                     solver_type=solver_type, third_order=third_order, **options)


def sde_dpm_solver_pp_1(model, x_T, timesteps, *, generator=None, **options):
    """SDE-DPM-Solver-1 in data prediction (Lu et al. 2022b, Appendix; diffusers'
    ``sde-dpmsolver++``, order 1): the exact linear part of the reverse SDE in lambda plus fresh
    noise sigma_t sqrt(1 - e^{-2h}) z. It equals DDPM's posterior step (DDIM with eta = 1)."""
    return multistep("sde-dpm-solver++1", model, x_T, timesteps, prediction="x0", order=1, stochastic=True,
                     generator=generator, **options)


def sde_dpm_solver_pp_2m(model, x_T, timesteps, *, solver_type="dpmsolver", generator=None, **options):
    """SDE-DPM-Solver++(2M) (Lu et al. 2022b, Appendix): the 2M finite difference with the SDE
    kernel; ``solver_type="dpmsolver"`` ("midpoint", diffusers' default) or ``"taylor"`` ("heun")."""
    return multistep("sde-dpm-solver++2m", model, x_T, timesteps, prediction="x0", order=2, stochastic=True,
                     solver_type=solver_type, generator=generator, **options)


def _steps_of(evaluations_per_step: int):
    """Steps an NFE budget buys: k evaluations per step, one for a final first-order step to
    zero, one more for the "denoise" ending."""
    def steps(nfe: int, options: dict) -> int:
        final_step = options.get("final_step")
        if final_step == "denoise":
            return (nfe - 1) // evaluations_per_step
        if final_step == "euler":
            return (nfe - 1) // evaluations_per_step + 1
        return nfe // evaluations_per_step
    return steps


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

for _name, _fn, _summary in [
    ("sde-dpm-solver++1", sde_dpm_solver_pp_1, "SDE-DPM-Solver-1, data prediction (= DDPM posterior step)"),
    ("sde-dpm-solver++2m", sde_dpm_solver_pp_2m, "SDE-DPM-Solver++(2M), data prediction"),
]:
    register(SamplerSpec(_name, _fn, order=None, default_grid="logsnr", chapter="dpm_solver_pp", stochastic=True,
                         steps_for_nfe=_steps_of(1), min_nfe=1, summary=_summary))
