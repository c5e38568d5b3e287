"""FastDPM (Kong & Ping 2021, arXiv 2106.00132): a short chain of S steps inside a trained DDPM.

A DDPM is trained on T = 1000 discrete steps with noise levels ``abar_n`` (n = 0..T-1). FastDPM
samples with S << T steps in three moves (book chapter: fastdpm):

1. **Continuous steps.** The map from a step label to its noise level is a bijection and extends
   to real labels. For linear betas the paper writes it with the Gamma function,
   ``abar(tau) = dbeta^(tau+1) Gamma(c+1) / Gamma(c-tau)``, ``c = (1 - beta_0)/dbeta``, evaluated
   with Stirling's formula and inverted by bisection (:func:`paper_log_alphas_cumprod`,
   :func:`paper_continuous_step`). The package's :class:`~fastdiff_edu.schedules.DiscreteVP`
   interpolates ``log abar`` linearly between the table's entries instead, and inverts it exactly
   for any table (:func:`continuous_step`); the two agree to about 0.02 label units.
2. **A short forward process**, picked in one of two ways (:func:`fastdpm_grid`):

   - ``approx="step"`` (STEP): choose S labels ``tau_1 < ... < tau_S`` directly, linear or
     quadratic as in the official code (:func:`step_labels`); the short chain's noise levels are
     ``gbar_s = abar(tau_s)``;
   - ``approx="var"`` (VAR): choose the short chain's *variances* ``eta_1..eta_S`` (linear or
     quadratic, scaled so that ``prod (1 - eta_s) = abar_{T-1}``), set ``gbar_s = prod_{k<=s}(1 - eta_k)``
     (:func:`var_noise_levels`) and map each ``gbar_s`` to its continuous step ``tau_s``: the
     network is evaluated at fractional labels.

   Both end with a step from ``tau_1`` to clean data (``gbar_0 = 1``, time 0).
3. **A short reverse process** with stochasticity ``kappa`` in [0, 1] (:func:`fastdpm_coefficients`),
   ``sigma_s = kappa * sqrt(eta_tilde_s)``, ``eta_tilde_s = (1 - gbar_{s-1})/(1 - gbar_s) eta_s``:

   - ``kind="ddim"`` (DDIM-rev, the update of the official ``generate.py``)::

         x_{s-1} = sqrt(gbar_{s-1}) x0_hat + sqrt(1 - gbar_{s-1} - sigma_s^2) eps_hat + sigma_s z

     This is DDIM's eq. 12 with ``eta = kappa``: FastDPM's kappa *is* DDIM's eta (both scale the
     same sqrt(eta_tilde), DDIM eq. 16), and the step is :func:`~.ddim.ddim_coefficients`.
   - ``kind="ddpm"`` (DDPM-rev): the mean of DDPM's posterior q(x_{s-1} | x_s, x0_hat) (Ho et al.
     2020, eq. 7), ``(x_s - eta_s/sqrt(1 - gbar_s) eps_hat)/sqrt(1 - eta_s)``, plus ``sigma_s z``.
     Its mean does not depend on kappa; it equals DDIM-rev's mean at kappa = 1, so the two kinds
     coincide at kappa = 1 (the official README's "DDPM-rev" is ``-kappa 1.0``) and differ for
     kappa < 1, where DDPM-rev's samples are too narrow by (1 - kappa^2) eta_tilde per step.
     (The official code has only the DDIM-rev update; DDPM-rev with kappa < 1 is offered here to
     show that deficit.)

kappa = 0 with ``kind="ddim"`` is deterministic DDIM on the short chain's times; kappa = 1 is DDPM
ancestral sampling on the short chain.
"""
from __future__ import annotations

import math

import torch

from ..prediction import Prediction
from ..schedules import DiscreteVP, Schedule, as_float64
from ._common import Callback, check_inputs
from .ddim import ddim_coefficients, run_transfer
from .registry import SamplerSpec, register

Tensor = torch.Tensor

__all__ = [
    "fastdpm", "fastdpm_coefficients", "fastdpm_grid", "step_labels", "var_noise_levels",
    "continuous_step", "paper_log_alphas_cumprod", "paper_continuous_step", "stirling_log_gamma",
    "APPROX", "SPACINGS", "KINDS",
]

APPROX = ("step", "var")
SPACINGS = ("linear", "quadratic")
KINDS = ("ddim", "ddpm")


# -- 1. continuous steps <-> noise levels ------------------------------------------------------------
def stirling_log_gamma(x) -> Tensor:
    """log Gamma(x) as the official code approximates it: Gamma(y + 1) ~ sqrt(2 pi y) (y/e)^y (1 + 1/(12 y)),
    y = x - 1. Its error is 1/(288 y^2) + O(y^-3) (see ``derivations.fastdpm.stirling_error_series``),
    below 1e-12 for the arguments of the DDPM schedule (y > 4.9e4)."""
    y = as_float64(x) - 1.0
    return 0.5 * torch.log(2.0 * math.pi * y) + y * (torch.log(y) - 1.0) + torch.log1p(1.0 / (12.0 * y))


def paper_log_alphas_cumprod(label, beta_start: float = 1e-4, beta_end: float = 0.02, num_steps: int = 1000,
                             *, stirling: bool = True) -> Tensor:
    """FastDPM's continuous noise level for linear betas: log abar(tau) at a real label tau >= -1.

    With beta_n = beta_0 + n dbeta (n = 0..T-1), ``abar_n = prod_{i<=n} dbeta (c - i)
    = dbeta^(n+1) Gamma(c+1)/Gamma(c-n)``, c = (1 - beta_0)/dbeta; the right-hand side is defined
    for real n. ``stirling=True`` evaluates log Gamma as the official code does, ``False`` with
    ``torch.lgamma``. At tau = -1 it is 0 (clean data); at integer tau the DDPM table.
    """
    dbeta = (beta_end - beta_start) / (num_steps - 1)
    c = (1.0 - beta_start) / dbeta
    log_gamma = stirling_log_gamma if stirling else torch.lgamma
    tau = as_float64(label)
    return (tau + 1.0) * math.log(dbeta) + log_gamma(as_float64(c + 1.0)) - log_gamma(c - tau)


def paper_continuous_step(alphas_cumprod, beta_start: float = 1e-4, beta_end: float = 0.02, num_steps: int = 1000,
                          *, stirling: bool = True, iterations: int = 200) -> Tensor:
    """The continuous step tau with ``abar(tau) = alphas_cumprod`` (the paper's inverse map), by
    bisection of :func:`paper_log_alphas_cumprod` over [-1, T - 1] to float64 precision (the
    official code bisects to a relative tolerance of 1e-8 inside the bracketing integer interval)."""
    target = torch.log(as_float64(alphas_cumprod))
    lo = torch.full_like(target, -1.0)
    hi = torch.full_like(target, float(num_steps - 1))
    for _ in range(iterations):  # log abar decreases in tau
        mid = 0.5 * (lo + hi)
        above = paper_log_alphas_cumprod(mid, beta_start, beta_end, num_steps, stirling=stirling) > target
        lo, hi = torch.where(above, mid, lo), torch.where(above, hi, mid)
    return 0.5 * (lo + hi)


def continuous_step(schedule: DiscreteVP, alphas_cumprod) -> Tensor:
    """The continuous step of a noise level for *any* discrete schedule: the label of the time t
    where the schedule's own (piecewise log-linear) abar(t) equals ``alphas_cumprod``, by the exact
    inverse ``t_of_half_log_snr``."""
    abar = as_float64(alphas_cumprod)
    t = schedule.t_of_half_log_snr(0.5 * (torch.log(abar) - torch.log1p(-abar)))
    return schedule.label(t)


# -- 2. the short forward process: STEP and VAR ---------------------------------------------------------
def _check_short_chain(schedule: Schedule, steps, spacing: str, what: str) -> None:
    if not isinstance(schedule, DiscreteVP):
        raise ValueError(f"fastdpm: {what} is built on a discrete DDPM schedule (DiscreteVP); got {schedule!r}. "
                         "Pass an explicit decreasing grid of times instead")
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 2:
        raise ValueError(f"fastdpm: {what} needs an integer number of steps S >= 2, got {steps!r}")
    if steps > schedule.num_steps:
        raise ValueError(f"fastdpm: S={steps} is more than the {schedule.num_steps} steps of the trained chain")
    if spacing not in SPACINGS:
        raise ValueError(f"fastdpm: spacing must be one of {SPACINGS}, got {spacing!r}")


def step_labels(schedule: DiscreteVP, steps: int, spacing: str = "linear") -> Tensor:
    """STEP: the S integer labels of the official code, increasing, duplicates removed.

    ``linear``: floor(i (T-1)/(S-1)), i = 0..S-1 (from 0 to T-1); ``quadratic``: floor of
    linspace(0, sqrt(0.8 T), S)^2 (DDIM's CIFAR-10 choice; it stops at 0.8 T). For large S the
    quadratic labels repeat near 0 (e.g. label 0 twice at S = 50); the official code then spends
    one network call on a step that leaves x unchanged. Here repeats are dropped, so such a chain
    has fewer than S steps.
    """
    _check_short_chain(schedule, steps, spacing, "a STEP chain")
    n = schedule.num_steps
    i = torch.arange(steps, dtype=torch.float64)
    if spacing == "linear":
        labels = torch.floor(i * ((n - 1.0) / (steps - 1.0)))
    else:
        labels = torch.floor(torch.linspace(0.0, math.sqrt(0.8 * n), steps, dtype=torch.float64) ** 2)
    return torch.unique(labels)  # sorted, increasing


def var_noise_levels(schedule: DiscreteVP, steps: int, spacing: str = "linear") -> tuple[Tensor, Tensor]:
    """VAR: the short chain's variances eta_1..eta_S and noise levels gbar_s = prod_{k<=s}(1 - eta_k).

    ``linear``: eta linear from beta_0 to x; ``quadratic``: eta_i = beta_0 (1 + i x)^2. The free
    parameter x is found by bisection so that ``gbar_S = abar_T`` (here to float64 precision; the
    official code stops at a relative error of 1e-4), so that the chain starts where the DDPM does.
    """
    _check_short_chain(schedule, steps, spacing, "a VAR chain")
    abar = schedule.alphas_cumprod
    beta_0, log_target = float(1.0 - abar[0]), float(torch.log(abar[-1]))
    i = torch.arange(steps, dtype=torch.float64)
    if spacing == "linear":
        def variances(x):
            return beta_0 + i / (steps - 1) * (x - beta_0)
        lo, hi = beta_0, 1.0
    else:
        def variances(x):
            return beta_0 * (1.0 + i * x) ** 2
        lo, hi = 0.0, (1.0 / math.sqrt(beta_0) - 1.0) / (steps - 1)  # the last eta reaches 1 at hi
    for _ in range(200):  # log prod(1 - eta) decreases in x
        mid = 0.5 * (lo + hi)
        if float(torch.log1p(-variances(mid)).sum()) > log_target:
            lo = mid
        else:
            hi = mid
    eta = variances(0.5 * (lo + hi))
    return eta, torch.exp(torch.cumsum(torch.log1p(-eta), dim=0))


def fastdpm_grid(schedule: DiscreteVP, steps: int, approx: str = "step", spacing: str = "linear") -> Tensor:
    """The S + 1 decreasing times of a FastDPM chain: the S steps' times, then 0 (clean data).

    STEP: ``t_of_label(tau_s)``; VAR: the times whose noise level is gbar_s (their labels are
    fractional: :func:`continuous_step`). A float64 CPU tensor for any sampler of the package.
    """
    if approx not in APPROX:
        raise ValueError(f"fastdpm: approx must be one of {APPROX} (STEP: choose the steps, VAR: choose the "
                         f"variances), got {approx!r}")
    if approx == "step":
        labels = step_labels(schedule, steps, spacing)
    else:
        labels = continuous_step(schedule, var_noise_levels(schedule, steps, spacing)[1])
    times = schedule.t_of_label(labels).clamp(schedule.t_min, schedule.t_max)
    times = torch.flip(times, dims=[0])
    return torch.cat([times, torch.zeros(1, dtype=torch.float64)])


# -- 3. the short reverse process -------------------------------------------------------------------------
def fastdpm_coefficients(schedule: Schedule, grid: Tensor, kind: str = "ddim",
                         kappa: float = 1.0) -> tuple[Tensor, Tensor, Tensor]:
    """Per step (grid[i] -> grid[i+1]): ``x_next = c_x x + c_eps eps_hat + c_noise z``, float64.

    ``ddim`` (DDIM-rev): DDIM's step with eta = kappa, i.e. :func:`~.ddim.ddim_coefficients`.
    ``ddpm`` (DDPM-rev): DDPM's posterior mean, which is DDIM's mean at eta = 1, with the posterior
    standard deviation scaled by kappa.
    """
    if kind == "ddim":
        return ddim_coefficients(schedule, grid, eta=kappa)
    c_x, c_eps, c_noise = ddim_coefficients(schedule, grid, eta=1.0)
    return c_x, c_eps, kappa * c_noise


def fastdpm(model: Prediction, x_T: Tensor, timesteps, *, approx: str | None = None, spacing: str | None = None,
            kind: str = "ddim", kappa: float = 1.0, generator: torch.Generator | None = None,
            callback: Callback | None = None, progress: bool = False) -> Tensor:
    """FastDPM sampling (Kong & Ping 2021; the STEP/VAR samplers of the official ``generate.py``).

    ``timesteps`` is either the short chain's length S (an int; the chain is then built with
    ``approx="step"`` (default) or ``"var"`` and ``spacing="linear"`` (default) or ``"quadratic"``
    on the model's DiscreteVP schedule, see :func:`fastdpm_grid`) or an explicit decreasing grid
    of times (then ``approx`` and ``spacing`` must be left unset). ``kind`` is ``"ddim"``
    (DDIM-rev: DDIM's eq. 12 with eta = kappa) or ``"ddpm"`` (DDPM-rev: Ho et al.'s eq. 7 mean),
    ``kappa`` in [0, 1] scales the noise sigma = kappa sqrt(eta_tilde); ``kappa > 0`` draws it from
    ``generator``. One NFE per step. Book chapter: fastdpm.
    """
    if isinstance(timesteps, int) and not isinstance(timesteps, bool):
        if isinstance(model, Prediction):  # (otherwise check_inputs says what the model must be)
            timesteps = fastdpm_grid(model.schedule, timesteps, approx or "step", spacing or "linear")
    elif approx is not None or spacing is not None:
        raise ValueError("fastdpm: approx and spacing build the chain from its length S; give timesteps=S "
                         "(an int), or an explicit grid without approx and spacing")
    grid = check_inputs("fastdpm", model, x_T, timesteps)
    if kind not in KINDS:
        raise ValueError(f"fastdpm: kind must be one of {KINDS} (the reverse process: DDIM-rev or DDPM-rev), "
                         f"got {kind!r}")
    if not 0.0 <= kappa <= 1.0:
        raise ValueError(f"fastdpm: kappa must lie in [0, 1] (0: deterministic, 1: DDPM's variance), got {kappa}")
    return run_transfer("fastdpm", model, x_T, grid, *fastdpm_coefficients(model.schedule, grid, kind, kappa),
                        generator=generator, callback=callback, progress=progress)


register(SamplerSpec("fastdpm", fastdpm, order=None, default_grid="linspace", chapter="fastdpm", stochastic=True,
                     summary="FastDPM: STEP/VAR short chains, DDIM-rev/DDPM-rev with noise scale kappa"))
