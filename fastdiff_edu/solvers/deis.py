"""DEIS: the diffusion exponential integrator sampler (Zhang & Chen 2022).

Variation of constants on the probability-flow ODE from t_i to t_{i+1} gives (eq. 9, 11)

    x_{i+1} = (alpha_{i+1}/alpha_i) x_i + int_{t_i}^{t_{i+1}} (alpha_{i+1}/alpha_tau) (-sigma_tau lambda'_tau) eps(tau) dtau,

and the kernel is ``-alpha_{i+1} e^{-lambda} dlambda`` written in lambda. DEIS replaces eps by a
polynomial through the last r + 1 predictions and integrates the Lagrange basis against the kernel:

- ``"deis-tab"`` (tAB-r, eq. 14-15): the polynomial in t; the integrals have no closed form for a
  general schedule, so we compute them by Gauss-Legendre quadrature in lambda (256 nodes per step;
  the tests check them against 2048 nodes). Order r + 1; r = 0 is DDIM.
- ``"deis-rhoab"`` (rho AB, Sec. 4.1): the polynomial in rho = sigma/alpha, where the ODE is
  d(x/alpha)/d rho = eps: the integrals are integrals of polynomials, exact with Gauss-Legendre.
- ``"deis-rhork"`` (rho RK): a classical explicit Runge-Kutta method on that ODE in rho
  (``method="heun"`` order 2, ``"rk4"`` order 4; each stage is one evaluation).

Book chapter: deis.
"""
from __future__ import annotations

import functools

import numpy as np
import torch

from ..prediction import Prediction
from ._common import Callback, StepLoop, check_inputs, on_device, run_linear_multistep
from .registry import SamplerSpec, register

Tensor = torch.Tensor

__all__ = ["deis_tab", "deis_rhoab", "deis_rhork", "lagrange_integrals", "TABLEAUS"]

#: explicit Butcher tableaus (A, b, c) of the rho-RK variants
TABLEAUS = {
    "euler": ([[0.0]], [1.0], [0.0]),
    "heun": ([[0.0, 0.0], [1.0, 0.0]], [0.5, 0.5], [0.0, 1.0]),
    "rk4": ([[0.0, 0.0, 0.0, 0.0], [0.5, 0.0, 0.0, 0.0], [0.0, 0.5, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]],
            [1 / 6, 1 / 3, 1 / 3, 1 / 6], [0.0, 0.5, 0.5, 1.0]),
}


def _lagrange_basis(nodes: Tensor, points: Tensor) -> Tensor:
    """L_j(points) for the Lagrange basis over ``nodes``: shape (len(nodes), len(points))."""
    basis = torch.ones(nodes.numel(), points.numel(), dtype=torch.float64)
    for j in range(nodes.numel()):
        for m in range(nodes.numel()):
            if m != j:
                basis[j] *= (points - nodes[m]) / (nodes[j] - nodes[m])
    return basis


@functools.lru_cache(maxsize=8)
def _gauss_legendre(nodes: int) -> tuple[np.ndarray, np.ndarray]:
    """Gauss-Legendre nodes and weights on [-1, 1]; numpy's eigenvalue solve for 256 nodes costs
    ~10 ms, so it is done once per node count, not once per step."""
    return np.polynomial.legendre.leggauss(nodes)


def lagrange_integrals(nodes: Tensor, lo: float, hi: float, kernel, node_variable, quadrature_nodes: int = 256) -> Tensor:
    """``int_lo^hi kernel(s) L_j(node_variable(s)) ds`` for each Lagrange basis polynomial L_j over
    ``nodes``, by Gauss-Legendre quadrature in s."""
    xi, wq = _gauss_legendre(quadrature_nodes)
    s = torch.as_tensor(0.5 * (hi - lo) * xi + 0.5 * (hi + lo), dtype=torch.float64)
    weights = torch.as_tensor(0.5 * (hi - lo) * wq, dtype=torch.float64)
    return _lagrange_basis(nodes, node_variable(s)) @ (weights * kernel(s))


def _check_order(name: str, order: int) -> None:
    if order not in (0, 1, 2, 3):
        raise ValueError(f"{name}: order must be 0, 1, 2 or 3 (the degree of the eps polynomial), got {order!r}")


def _multistep_table(schedule, grid: Tensor, order: int, step_integrals) -> tuple[Tensor, Tensor]:
    """``(c_x, W)`` for ``x_{i+1} = (alpha_{i+1}/alpha_i) x_i + sum_j W[i, j] eps_{i-j}`` where row i
    holds ``step_integrals(i, k)``: the integrals of the k Lagrange basis polynomials over step i
    (k = min(order + 1, i + 1): the first steps use the history they have)."""
    alpha = schedule.alpha(grid)
    weights = torch.zeros(grid.numel() - 1, order + 1, dtype=torch.float64)
    for i in range(grid.numel() - 1):
        k = min(order + 1, i + 1)
        weights[i, :k] = step_integrals(i, k)
    return alpha[1:] / alpha[:-1], weights


def tab_weights(schedule, grid: Tensor, order: int, quadrature_nodes: int = 256) -> tuple[Tensor, Tensor]:
    """DEIS tAB-``order``: the Lagrange basis in t against the kernel -alpha_{i+1} e^{-lambda}."""
    lam, alpha = schedule.half_log_snr(grid), schedule.alpha(grid)

    def step_integrals(i: int, k: int) -> Tensor:
        a_next = float(alpha[i + 1])
        return lagrange_integrals(grid[i - torch.arange(k)], float(lam[i]), float(lam[i + 1]),
                                  lambda l: -a_next * torch.exp(-l), schedule.t_of_half_log_snr, quadrature_nodes)

    return _multistep_table(schedule, grid, order, step_integrals)


def rhoab_weights(schedule, grid: Tensor, order: int) -> tuple[Tensor, Tensor]:
    """DEIS rho-AB-``order``: exact integrals of the Lagrange basis in rho, times alpha_{i+1}."""
    rho, alpha = schedule.sigma_bar(grid), schedule.alpha(grid)

    def step_integrals(i: int, k: int) -> Tensor:
        return float(alpha[i + 1]) * lagrange_integrals(rho[i - torch.arange(k)], float(rho[i]), float(rho[i + 1]),
                                                        torch.ones_like, lambda r: r, quadrature_nodes=max(2, order + 1))

    return _multistep_table(schedule, grid, order, step_integrals)


def deis_tab(model: Prediction, x_T: Tensor, timesteps, *, order: int = 3, quadrature_nodes: int = 256,
             callback: Callback | None = None, progress: bool = False) -> Tensor:
    """DEIS tAB-``order`` (Zhang & Chen 2022, eq. 14-15): eps extrapolated in t. One NFE per step."""
    grid = check_inputs("deis-tab", model, x_T, timesteps)
    _check_order("deis-tab", order)
    c_x, weights = tab_weights(model.schedule, grid, order, quadrature_nodes)
    return run_linear_multistep("deis-tab", model, x_T, grid, "eps", c_x, weights, callback, progress)


def deis_rhoab(model: Prediction, x_T: Tensor, timesteps, *, order: int = 3, callback: Callback | None = None,
               progress: bool = False) -> Tensor:
    """DEIS rho-AB-``order`` (Zhang & Chen 2022, Sec. 4.1): Adams-Bashforth in rho = sigma/alpha."""
    grid = check_inputs("deis-rhoab", model, x_T, timesteps)
    _check_order("deis-rhoab", order)
    c_x, weights = rhoab_weights(model.schedule, grid, order)
    return run_linear_multistep("deis-rhoab", model, x_T, grid, "eps", c_x, weights, callback, progress)


def deis_rhork(model: Prediction, x_T: Tensor, timesteps, *, method: str = "rk4", callback: Callback | None = None,
               progress: bool = False) -> Tensor:
    """DEIS rho-RK (Zhang & Chen 2022, Sec. 4.1): an explicit Runge-Kutta method (Butcher
    tableau ``TABLEAUS[method]``) on d x_bar / d rho = eps(alpha x_bar, t(rho)), x_bar = x/alpha."""
    if method not in TABLEAUS:
        raise ValueError(f"deis-rhork: method must be one of {sorted(TABLEAUS)}, got {method!r}")
    grid = check_inputs("deis-rhork", model, x_T, timesteps)
    sched = model.schedule
    a, b, c = (torch.tensor(v, dtype=torch.float64) for v in TABLEAUS[method])
    rho = sched.sigma_bar(grid)
    step = rho[1:] - rho[:-1]                                          # (steps,)
    stage_t = sched.t_of_sigma_bar(rho[:-1, None] + c[None, :] * step[:, None])  # (steps, stages)
    stage_t[:, c == 0] = grid[:-1, None]
    stage_t[:, c == 1] = grid[1:, None]
    stage_alpha = sched.alpha(stage_t)
    # increments h a_ml and h b_m, and the scalings between x and x_bar, cast once
    h_a = on_device(step[:, None, None] * a[None], x_T)
    h_b = on_device(step[:, None] * b[None], x_T)
    alpha_stage = on_device(stage_alpha, x_T)
    alpha_grid = on_device(sched.alpha(grid), x_T)
    times = stage_t.to(x_T.device)
    loop = StepLoop("deis-rhork", grid, x_T, callback, progress)
    x_bar = x_T / alpha_grid[0]
    for i in loop:
        slopes = []
        for m in range(b.numel()):
            stage = x_bar
            for l, slope in enumerate(slopes):
                stage = stage + h_a[i, m, l] * slope
            slopes.append(model.eps(alpha_stage[i, m] * stage, times[i, m]))
        for m, slope in enumerate(slopes):
            x_bar = x_bar + h_b[i, m] * slope
        loop.done(i, x_bar * alpha_grid[i + 1])
    loop.check()
    return x_bar * alpha_grid[-1]


def _rk_steps(nfe: int, options: dict) -> int:
    """Steps an NFE budget buys: one evaluation per stage (an unknown method is left for the
    sampler to reject with its own message)."""
    tableau = TABLEAUS.get(options.get("method", "rk4"))
    return nfe if tableau is None else nfe // len(tableau[1])


register(SamplerSpec("deis-tab", deis_tab, order=4, default_grid="logsnr", chapter="deis",
                     summary="DEIS tAB (order option 0-3; convergence order = order + 1)", defaults={"order": 3}))
register(SamplerSpec("deis-rhoab", deis_rhoab, order=4, default_grid="logsnr", chapter="deis",
                     summary="DEIS rho-AB (Adams-Bashforth in sigma/alpha)", defaults={"order": 3}))
register(SamplerSpec("deis-rhork", deis_rhork, order=4, default_grid="logsnr", chapter="deis",
                     steps_for_nfe=_rk_steps,
                     summary="DEIS rho-RK (classical RK4 in sigma/alpha; method='heun' for order 2)"))
