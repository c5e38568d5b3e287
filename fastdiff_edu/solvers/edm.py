"""EDM samplers (Karras, Aittala, Aila & Laine 2022): Heun's method in the noise level.

Karras et al. write the probability-flow ODE of ``x = s(t) (y + sigma(t) n)`` as (eq. 4)

    dx/dt = s'/s x - s^2 sigma' sigma grad_x log p(x/s; sigma)
          = (sigma'/sigma + s'/s) x - sigma' s/sigma D(x/s; sigma),

and choose ``s = 1``, ``sigma(t) = t``, where it reads ``dx/dsigma = (x - D(x; sigma))/sigma``.
In this package's notation (``fastdiff_edu.ode``) that is the ODE of the scaled sample
``x_bar = x/alpha`` in the scaled noise level ``sigma_bar = sigma/alpha``,

    d x_bar / d sigma_bar = eps_hat(alpha x_bar, t(sigma_bar)) = (x_bar - D(x_bar; sigma_bar)) / sigma_bar,

which holds for *every* schedule. The samplers here step in ``(x_bar, sigma_bar)``, so they run
on any schedule: natively on :class:`~fastdiff_edu.schedules.EDM` (alpha = 1, sigma = t), on VP
schedules through the scaling. Grids are in the schedule's time t like everywhere in the
package (``sigma_bar = schedule.sigma_bar(t)``). A step whose next noise level is 0 (a grid
ending at t = 0, see ``timesteps.make(..., append_zero=True)``) is an Euler step, as in EDM's
Algorithm 1; on a grid that ends at sigma > 0 (VE, or a grid ending at t_min) every step is a
full step of the method.

- :func:`heun_edm` -- Algorithm 1: Heun steps (NFE = 2N - 1 for N steps to sigma = 0, 2N otherwise).
- :func:`edm_stochastic` -- Algorithm 2: "churn" (raise the noise to sigma_hat = (1 + gamma) sigma
  with fresh noise), then a Heun step from sigma_hat.
- :func:`euler_edm` -- Euler steps, optional churn (k-diffusion's ``sample_euler``); without
  churn it is DDIM.
- :func:`edm_rk2` -- the second-order Runge-Kutta family of EDM's ablations (``alpha`` = 1 Heun,
  1/2 midpoint).
- :func:`sample_in_coordinates` -- the same Heun step in Table 1's VP, VE or EDM coordinates (s, sigma):
  one ODE, three discretisations (for the book).

Book chapter: edm.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from ..prediction import Prediction
from ..schedules import Schedule, as_float64
from ._common import Callback, StepLoop, check_inputs, noise_like, on_device
from .registry import SamplerSpec, register

Tensor = torch.Tensor

__all__ = ["heun_edm", "edm_stochastic", "euler_edm", "edm_rk2", "sample_in_coordinates", "rk2_step",
           "edm_steps", "EDMSteps", "Coordinates", "COORDINATES", "heun_nfe"]

GAMMA_CAP = math.sqrt(2.0) - 1.0  # Algorithm 2: sigma_hat <= sqrt(2) sigma, i.e. at most as much new noise as old


def heun_nfe(steps: int, ends_at_zero: bool = True) -> int:
    """Model calls of Heun on ``steps`` steps: 2 per step, minus 1 for an Euler last step to sigma = 0."""
    return 2 * steps - (1 if ends_at_zero else 0)


def rk2_step(derivative: Callable[[Tensor, int], Tensor], x: Tensor, h, alpha: float = 1.0,
             second_order: bool = True) -> Tensor:
    """One step of the explicit second-order Runge-Kutta family of Karras et al. (2022):

        d      = derivative(x, 0)                                   slope at the start (Alg. 1, line 7)
        x'     = x + alpha h d                                      Euler to the second stage (line 8)
        x_next = x + h [(1 - 1/(2 alpha)) d + 1/(2 alpha) derivative(x', 1)]       (lines 10-11)

    ``alpha = 1`` is Heun's method (x' is the Euler step to the step's end), ``alpha = 1/2`` the
    midpoint method; the weights are the order-2 conditions of
    ``derivations.edm.rk2_weights``. ``second_order=False`` stops after the Euler part,
    ``x + h d`` (the last step to sigma = 0, line 9). ``derivative(x, k)`` is the ODE's right-hand
    side at the start (k = 0) or at the second stage (k = 1) of the step.
    """
    d = derivative(x, 0)
    if not second_order:
        return x + h * d
    x_prime = x + (alpha * h) * d
    d_prime = derivative(x_prime, 1)
    return x + h * ((1.0 - 0.5 / alpha) * d + (0.5 / alpha) * d_prime)


@dataclass
class EDMSteps:
    """Everything an EDM sampler needs per step i (grid[i] -> grid[i + 1]), float64 on the CPU.

    ``sigma_bar``: the grid's noise levels (N + 1); ``gamma``, ``sigma_hat``: the churned level of
    Algorithm 2 (``sigma_hat = sigma_bar[i]`` where gamma = 0); ``noise_std``: the std of the churn
    noise, ``S_noise sqrt(sigma_hat^2 - sigma^2)``; ``h = sigma_bar[i + 1] - sigma_hat``; the model
    times and input scales ``alpha(t)`` (the model sees ``x = alpha x_bar``) at the step's start
    (``t_hat``, ``scale_hat``) and at its second stage ``sigma_hat + alpha h`` (``t_prime``,
    ``scale_prime``); ``scale`` = alpha at the grid's points; ``second_order[i]`` is False where
    the step ends at sigma = 0.
    """

    sigma_bar: Tensor
    gamma: Tensor
    sigma_hat: Tensor
    noise_std: Tensor
    h: Tensor
    t_hat: Tensor
    scale_hat: Tensor
    t_prime: Tensor
    scale_prime: Tensor
    scale: Tensor
    second_order: list


def edm_steps(schedule: Schedule, grid: Tensor, *, alpha: float = 1.0, S_churn: float = 0.0,
              S_tmin: float = 0.0, S_tmax: float = math.inf, S_noise: float = 1.0) -> EDMSteps:
    """Precompute :class:`EDMSteps` for a (validated, float64 CPU) grid in the schedule's time.

    gamma_i = min(S_churn / N, sqrt(2) - 1) where S_tmin <= sigma_bar_i <= S_tmax, else 0
    (Algorithm 2, line 3; N = number of steps, as in EDM's and k-diffusion's code). S_tmin and
    S_tmax are noise levels in sigma_bar units.
    """
    grid = as_float64(grid).cpu()
    n = grid.numel() - 1
    sigma_bar = schedule.sigma_bar(grid)  # 0 at t = 0 on schedules that reach zero noise
    sigma_i, sigma_next = sigma_bar[:-1], sigma_bar[1:]
    in_range = (sigma_i >= S_tmin) & (sigma_i <= S_tmax)
    gamma = torch.where(in_range, torch.full_like(sigma_i, min(S_churn / n, GAMMA_CAP)), torch.zeros_like(sigma_i))
    sigma_hat = sigma_i * (1.0 + gamma)
    churned = gamma > 0
    t_hat = torch.where(churned, schedule.t_of_sigma_bar(sigma_hat), grid[:-1])
    h = sigma_next - sigma_hat
    second_order = sigma_next > 0
    # the second stage sits at sigma_hat + alpha h; for Heun (alpha = 1) that is the next grid point
    sigma_prime = torch.where(second_order, sigma_hat + alpha * h, sigma_next)
    t_prime = grid[1:].clone() if alpha == 1.0 else torch.where(
        second_order, schedule.t_of_sigma_bar(sigma_prime.clamp(min=1e-300)), grid[1:])
    return EDMSteps(
        sigma_bar=sigma_bar, gamma=gamma, sigma_hat=sigma_hat,
        noise_std=S_noise * torch.sqrt(sigma_hat**2 - sigma_i**2), h=h,
        t_hat=t_hat, scale_hat=schedule.alpha(t_hat), t_prime=t_prime, scale_prime=schedule.alpha(t_prime),
        scale=schedule.alpha(grid), second_order=second_order.tolist())


def _check_options(name: str, alpha: float, S_churn: float, S_tmin: float, S_tmax: float, S_noise: float) -> None:
    if not (isinstance(alpha, (int, float)) and 0.0 < alpha <= 1.0):
        raise ValueError(f"{name}: alpha must lie in (0, 1] (1 = Heun, 0.5 = midpoint) so that the second stage "
                         f"stays inside the step, got {alpha!r}")
    if not (math.isfinite(S_churn) and S_churn >= 0.0):
        raise ValueError(f"{name}: S_churn must be a finite number >= 0 (0 = deterministic), got {S_churn!r}")
    if not (S_tmin >= 0.0 and S_tmax >= S_tmin):
        raise ValueError(f"{name}: need 0 <= S_tmin <= S_tmax (noise levels sigma_bar where churn applies), "
                         f"got S_tmin={S_tmin!r}, S_tmax={S_tmax!r}")
    if not (math.isfinite(S_noise) and S_noise >= 0.0):
        raise ValueError(f"{name}: S_noise must be a finite number >= 0 (1 = exact noise), got {S_noise!r}")


def _edm_sample(name: str, model: Prediction, x_T: Tensor, timesteps, *, second_order: bool, alpha: float = 1.0,
                S_churn: float = 0.0, S_tmin: float = 0.0, S_tmax: float = math.inf, S_noise: float = 1.0,
                generator: torch.Generator | None = None, callback: Callback | None = None,
                progress: bool = False) -> Tensor:
    """The loop all EDM samplers share (Algorithm 2; Algorithm 1 is S_churn = 0), in (x_bar, sigma_bar)."""
    grid = check_inputs(name, model, x_T, timesteps)
    _check_options(name, alpha, S_churn, S_tmin, S_tmax, S_noise)
    c = edm_steps(model.schedule, grid, alpha=alpha, S_churn=S_churn, S_tmin=S_tmin, S_tmax=S_tmax, S_noise=S_noise)
    noise_std, h, scale = (on_device(v, x_T) for v in (c.noise_std, c.h, c.scale))
    scales = (on_device(c.scale_hat, x_T), on_device(c.scale_prime, x_T))      # model input x = alpha x_bar
    times = (c.t_hat.to(x_T.device), c.t_prime.to(x_T.device))                 # model times, float64
    heun = [second_order and s for s in c.second_order]                        # Euler where sigma_{i+1} = 0
    churn = S_churn > 0  # then noise is drawn at every step (times 0 where gamma = 0), as EDM and k-diffusion do
    loop = StepLoop(name, grid, x_T, callback, progress)
    x = x_T / scale[0]                                                         # x_bar
    for i in loop:
        if churn:                                                              # Alg. 2, lines 4-6: x_hat
            x = x + noise_std[i] * noise_like(x, generator)
        x = rk2_step(lambda x_bar, k: model.eps(scales[k][i] * x_bar, times[k][i]), x, h[i], alpha, heun[i])
        loop.done(i, scale[i + 1] * x)
    loop.check()
    return scale[-1] * x


def heun_edm(model: Prediction, x_T: Tensor, timesteps, *, callback: Callback | None = None,
             progress: bool = False) -> Tensor:
    """Karras et al. (2022), Algorithm 1: Heun's method on d x_bar/d sigma_bar = eps_hat.

    Each step evaluates the slope at sigma_i, takes an Euler step to sigma_{i+1}, evaluates the
    slope there and averages the two; the last step to sigma = 0 keeps the Euler step (the slope
    at sigma = 0 is 0/0). NFE = 2N - 1 for N steps ending at t = 0, 2N when the grid ends at a
    positive noise level. Order 2. Grid: ``timesteps.make(schedule, "karras", N, append_zero=True)``
    is EDM's (eq. 5, rho = 7, sigma_N = 0).
    """
    return _edm_sample("heun-edm", model, x_T, timesteps, second_order=True, callback=callback, progress=progress)


def edm_stochastic(model: Prediction, x_T: Tensor, timesteps, *, S_churn: float = 40.0, S_tmin: float = 0.05,
                   S_tmax: float = 50.0, S_noise: float = 1.0, generator: torch.Generator | None = None,
                   callback: Callback | None = None, progress: bool = False) -> Tensor:
    """Karras et al. (2022), Algorithm 2: churn, then a Heun step.

    Per step: gamma_i = min(S_churn/N, sqrt(2) - 1) if S_tmin <= sigma_i <= S_tmax else 0;
    sigma_hat = (1 + gamma_i) sigma_i; x_hat = x_i + sqrt(sigma_hat^2 - sigma_i^2) S_noise z with
    z ~ N(0, I) from ``generator``; then the Heun step of Algorithm 1 from (x_hat, sigma_hat) to
    sigma_{i+1} (Euler when sigma_{i+1} = 0). The noise levels are sigma_bar (x_bar units) and
    may rise above the schedule's top (the model is called there, as in EDM's code).

    Defaults: EDM's ImageNet-64 settings (S_churn = 40, S_tmin = 0.05, S_tmax = 50) with
    S_noise = 1, which is exact for a perfect denoiser (EDM's 1.003 counters a trained network's
    loss of detail). A fresh z is drawn at every step, also where gamma_i = 0, so that the noise
    stream matches EDM's ``edm_sampler`` and k-diffusion's ``sample_heun``. NFE as :func:`heun_edm`.
    """
    return _edm_sample("edm-stochastic", model, x_T, timesteps, second_order=True, S_churn=S_churn, S_tmin=S_tmin,
                       S_tmax=S_tmax, S_noise=S_noise, generator=generator, callback=callback, progress=progress)


def euler_edm(model: Prediction, x_T: Tensor, timesteps, *, S_churn: float = 0.0, S_tmin: float = 0.0,
              S_tmax: float = math.inf, S_noise: float = 1.0, generator: torch.Generator | None = None,
              callback: Callback | None = None, progress: bool = False) -> Tensor:
    """Euler's method on d x_bar/d sigma_bar = eps_hat (Algorithm 2 with Euler steps, k-diffusion's
    ``sample_euler``). One NFE per step; order 1. Without churn (default) it is DDIM: an Euler step
    in (x/alpha, sigma/alpha) is eq. 12 of Song et al. (2021) with eta = 0 (see the recap chapter).
    The churn options are those of :func:`edm_stochastic`, off by default.
    """
    return _edm_sample("euler-edm", model, x_T, timesteps, second_order=False, S_churn=S_churn, S_tmin=S_tmin,
                       S_tmax=S_tmax, S_noise=S_noise, generator=generator, callback=callback, progress=progress)


def edm_rk2(model: Prediction, x_T: Tensor, timesteps, *, alpha: float = 1.0, callback: Callback | None = None,
            progress: bool = False) -> Tensor:
    """The alpha-family of explicit second-order Runge-Kutta methods of EDM's ablations
    (official ``ablation_sampler``, option ``alpha``) on d x_bar/d sigma_bar = eps_hat.

    The second stage sits at sigma_i + alpha h: alpha = 1 is Heun (= :func:`heun_edm`), alpha = 1/2
    the midpoint method, alpha = 2/3 Ralston's. Weights (1 - 1/(2 alpha), 1/(2 alpha)), from the
    order conditions (``derivations.edm.rk2_weights``). Euler for a last step to sigma = 0.
    """
    return _edm_sample("edm-rk2", model, x_T, timesteps, second_order=True, alpha=alpha, callback=callback,
                       progress=progress)


# ---------------------------------------------------------------------------------------------
# One ODE, three coordinate systems: Karras et al.'s Table 1 (s(tau), sigma(tau)).
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Coordinates:
    """A choice of scale s(tau) and noise level sigma(tau) (Karras et al. 2022, Table 1), float64.

    ``sigma``, ``d_sigma``, ``s``, ``d_log_s`` = s'/s and the inverse ``tau_of_sigma``, as functions
    of float64 tensors. In these coordinates the ODE is eq. 4 in eps form:
    ``dx/dtau = s'/s x + s sigma' eps_hat(x/s; sigma)``.
    """

    name: str
    sigma: Callable[[Tensor], Tensor]
    d_sigma: Callable[[Tensor], Tensor]
    s: Callable[[Tensor], Tensor]
    d_log_s: Callable[[Tensor], Tensor]
    tau_of_sigma: Callable[[Tensor], Tensor]


def _vp_coordinates(beta_d: float = 19.9, beta_min: float = 0.1) -> Coordinates:
    exponent = lambda tau: 0.5 * beta_d * tau**2 + beta_min * tau  # noqa: E731
    d_exponent = lambda tau: beta_d * tau + beta_min  # noqa: E731
    sigma = lambda tau: torch.sqrt(torch.expm1(exponent(tau)))  # noqa: E731
    return Coordinates(
        name="vp", sigma=sigma,
        d_sigma=lambda tau: 0.5 * d_exponent(tau) * torch.exp(exponent(tau)) / sigma(tau),
        s=lambda tau: torch.exp(-0.5 * exponent(tau)),
        d_log_s=lambda tau: -0.5 * d_exponent(tau),
        tau_of_sigma=lambda sig: (torch.sqrt(beta_min**2 + 2 * beta_d * torch.log1p(sig**2)) - beta_min) / beta_d)


COORDINATES: dict[str, Coordinates] = {
    "vp": _vp_coordinates(),
    "ve": Coordinates(name="ve", sigma=torch.sqrt, d_sigma=lambda tau: 0.5 / torch.sqrt(tau),
                      s=torch.ones_like, d_log_s=torch.zeros_like, tau_of_sigma=lambda sig: sig**2),
    "edm": Coordinates(name="edm", sigma=lambda tau: tau.clone(), d_sigma=torch.ones_like,
                       s=torch.ones_like, d_log_s=torch.zeros_like, tau_of_sigma=lambda sig: sig.clone()),
}


def sample_in_coordinates(model: Prediction, x_T: Tensor, timesteps, *, coordinates: str = "edm",
                          solver: str = "heun", callback: Callback | None = None, progress: bool = False) -> Tensor:
    """Heun's (or Euler's) method on eq. 4 in the coordinates (s, sigma) of Table 1 (``"vp"``, ``"ve"``,
    ``"edm"``), at the noise levels of ``timesteps`` -- EDM's ``ablation_sampler`` (``solver``,
    ``schedule`` and ``scaling``) without churn.

    The model's grid gives noise levels sigma_bar_i = schedule.sigma_bar(t_i); each becomes a
    time tau_i = tau_of_sigma(sigma_bar_i) of the chosen coordinates, and Heun steps in tau on
    ``dx/dtau = s'/s x + s sigma' eps_hat``, with ``x = s(tau) x_bar``. All three see the model at the
    same noise levels and solve the same ODE (``derivations.edm.coordinate_change_residual``);
    only the variables in which the steps are linear differ. ``"edm"`` equals :func:`heun_edm`
    (:func:`euler_edm` for ``solver="euler"``). The last step to sigma = 0, if any, is Euler.
    Returns x in the model's own coordinates.
    """
    if coordinates not in COORDINATES:
        raise ValueError(f"coordinates must be one of {sorted(COORDINATES)}, got {coordinates!r}")
    if solver not in ("heun", "euler"):
        raise ValueError(f"solver must be 'heun' or 'euler', got {solver!r}")
    coords = COORDINATES[coordinates]
    grid = check_inputs("sample_in_coordinates", model, x_T, timesteps)
    sched = model.schedule
    sigma_bar = sched.sigma_bar(grid)
    tau = coords.tau_of_sigma(sigma_bar)
    heun = ((sigma_bar[1:] > 0) & (solver == "heun")).tolist()   # Euler for a last step to sigma = 0
    at = tau.clone()
    if not heun[-1]:
        at[-1] = tau[-2]                         # sigma'(tau) may be infinite at sigma = 0 (VE, VP): never used
    s = coords.s(tau)
    lin, gain = coords.d_log_s(at), coords.s(at) * coords.d_sigma(at)   # dx/dtau = lin x + gain eps_hat
    to_model = sched.alpha(grid) / s                                             # model input = (alpha/s) x
    lin, gain, to_model, h = (on_device(v, x_T) for v in (lin, gain, to_model, tau[1:] - tau[:-1]))
    times = grid.to(x_T.device)
    loop = StepLoop(f"{solver}-{coordinates}", grid, x_T, callback, progress)
    x = x_T * on_device(s[0] / sched.alpha(grid[0]), x_T)
    for i in loop:
        x = rk2_step(lambda y, k: lin[i + k] * y + gain[i + k] * model.eps(to_model[i + k] * y, times[i + k]),
                     x, h[i], 1.0, heun[i])
        loop.done(i, to_model[i + 1] * x)
    loop.check()
    return to_model[-1] * x


def _heun_steps(nfe: int) -> int:
    """The most steps whose Heun NFE fits the budget: 2 per step (a grid ending at sigma > 0;
    a grid ending at t = 0 then uses nfe - 1 or nfe - 2)."""
    return nfe // 2


_HEUN_BUDGET = dict(steps_for_nfe=_heun_steps, min_nfe=2)
register(SamplerSpec("heun-edm", heun_edm, order=2, default_grid="karras", chapter="edm", **_HEUN_BUDGET,
                     summary="EDM Algorithm 1: Heun in (x/alpha, sigma/alpha), Euler last step to sigma = 0"))
register(SamplerSpec("edm-stochastic", edm_stochastic, order=None, default_grid="karras", chapter="edm",
                     stochastic=True, **_HEUN_BUDGET,
                     summary="EDM Algorithm 2: churn (S_churn, S_tmin, S_tmax, S_noise) + Heun"))
register(SamplerSpec("euler-edm", euler_edm, order=1, default_grid="karras", chapter="edm",
                     summary="Euler in (x/alpha, sigma/alpha) (= DDIM), optional EDM churn"))
register(SamplerSpec("edm-rk2", edm_rk2, order=2, default_grid="karras", chapter="edm", **_HEUN_BUDGET,
                     summary="EDM's 2nd-order Runge-Kutta family (alpha=1 Heun, 1/2 midpoint)"))
