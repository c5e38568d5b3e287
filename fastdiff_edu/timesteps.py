"""Time grids: where a sampler evaluates the network.

``make(schedule, kind, steps)`` returns ``steps + 1`` decreasing times (a float64 CPU tensor)
from ``t_start`` (default ``t_max``) to ``t_end`` (default ``t_min``). A sampler takes one step
per interval. The kinds:

=================  =====================================================================
``"time_uniform"``  uniform in t (DDIM's and DPM-Solver's default for high resolution)
``"time_quadratic"``uniform in sqrt(t) (DDIM's "quadratic" CIFAR-10 grid; DPM-Solver)
``"logsnr"``        uniform in the half-log-SNR lambda (DPM-Solver's low-resolution choice;
                    = k-diffusion's ``get_sigmas_exponential``, DEIS's ``"log"``)
``"karras"``        Karras et al. (2022), eq. 5: uniform in sigma_bar^(1/rho), rho = 7
``"leading"``,      the discrete spacings of diffusers' schedulers (``timestep_spacing``):
``"trailing"``,     ``steps`` integer timestep labels of a :class:`~.schedules.DiscreteVP`,
``"linspace"``      then ``t_end``, which defaults to 0 here: diffusers' last step goes to
                    the clean data (``set_alpha_to_one=True``)
=================  =====================================================================
"""
from __future__ import annotations

import math

import torch

from .schedules import DiscreteVP, Schedule, as_float64

Tensor = torch.Tensor

__all__ = ["make", "KINDS", "DISCRETE_KINDS", "validate"]

CONTINUOUS_KINDS = ("time_uniform", "time_quadratic", "logsnr", "karras")
DISCRETE_KINDS = ("leading", "trailing", "linspace")
KINDS = CONTINUOUS_KINDS + DISCRETE_KINDS
ALIASES = {"uniform": "time_uniform", "quadratic": "time_quadratic", "lambda": "logsnr",
           "logSNR": "logsnr", "rho": "karras"}


def _discrete_labels(schedule: DiscreteVP, kind: str, steps: int) -> Tensor:
    """The ``steps`` labels diffusers' DDIM/PNDM/DPM schedulers evaluate at (descending)."""
    n = schedule.num_steps
    if steps > n:
        raise ValueError(f"{kind!r} spacing cannot place {steps} steps on {n} discrete timesteps")
    if kind == "leading":
        labels = torch.arange(steps, dtype=torch.float64) * (n // steps)
    elif kind == "trailing":
        # round(N - k N/steps) - 1 for k < steps; diffusers writes np.arange(N, 0, -N/steps), whose
        # float length gives one label too many for some step counts (e.g. 61 of 1000)
        labels = torch.round(n - torch.arange(steps, dtype=torch.float64) * (n / steps)) - 1
    else:  # linspace
        labels = torch.round(torch.linspace(0, n - 1, steps, dtype=torch.float64))
    return torch.sort(labels, descending=True).values


def make(schedule: Schedule, kind: str, steps: int, t_start=None, t_end=None, *, rho: float = 7.0,
         append_zero: bool = False) -> Tensor:
    """``steps + 1`` decreasing times from ``t_start`` to ``t_end`` on grid ``kind``.

    ``append_zero=True`` ends the grid at t = 0 (clean data), as EDM's sigma_N = 0 and
    k-diffusion's ``append_zero``: the first ``steps`` times follow ``kind`` from ``t_start`` to
    ``t_end`` and the last step goes to 0, so ``steps`` still counts the steps (EDM's N,
    k-diffusion's ``n`` in ``get_sigmas_karras(n, ...)``). Only for schedules that reach zero
    noise (VP, EDM) and the continuous kinds (the discrete spacings end at 0 already).
    """
    kind = ALIASES.get(kind, kind)
    if kind not in KINDS:
        raise ValueError(f"unknown grid kind {kind!r}; choose one of {KINDS}")
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    if append_zero:
        if not schedule.reaches_zero_noise:
            raise ValueError(f"append_zero: {schedule!r} never reaches zero noise, so a grid cannot end at t = 0; "
                             "leave append_zero unset (the grid ends at t_end)")
        if kind in DISCRETE_KINDS:
            raise ValueError(f"append_zero: the {kind!r} spacing already ends at t_end, which defaults to 0; "
                             "leave append_zero unset")
        if t_end is not None and float(t_end) <= 0.0:
            raise ValueError(f"append_zero: t_end={t_end} is where the {kind!r} part ends before the final step "
                             "to t = 0, so it must be positive (default: t_min)")
        head = make(schedule, kind, max(steps - 1, 1), t_start, t_end, rho=rho)[:steps]
        return validate(schedule, torch.cat([head, head.new_zeros(1)]), what=f"the {kind!r} grid with a zero end")

    if kind in DISCRETE_KINDS:
        if not isinstance(schedule, DiscreteVP):
            raise ValueError(f"the {kind!r} spacing needs a DiscreteVP schedule, got {schedule!r}")
        if t_start is not None:
            raise ValueError(f"the {kind!r} spacing fixes its own start; leave t_start unset")
        t_end = 0.0 if t_end is None else float(t_end)
        grid = torch.cat([schedule.t_of_label(_discrete_labels(schedule, kind, steps)),
                          torch.tensor([t_end], dtype=torch.float64)])
        return validate(schedule, grid, what=f"the {kind!r} grid")

    t_start = schedule.t_max if t_start is None else float(t_start)
    t_end = schedule.t_min if t_end is None else float(t_end)
    if not t_start > t_end:
        raise ValueError(f"t_start={t_start} must be larger than t_end={t_end}")
    if kind == "time_uniform":
        grid = torch.linspace(t_start, t_end, steps + 1, dtype=torch.float64)
    elif kind == "time_quadratic":
        grid = torch.linspace(math.sqrt(t_start), math.sqrt(t_end), steps + 1, dtype=torch.float64) ** 2
    else:
        if float(schedule.sigma(t_end)) == 0.0:
            raise ValueError(f"the {kind!r} grid is built in the noise level and cannot reach t = 0; "
                             "end at t_min and take a final denoising step instead")
        if kind == "logsnr":
            lam = torch.linspace(float(schedule.half_log_snr(t_start)), float(schedule.half_log_snr(t_end)),
                                 steps + 1, dtype=torch.float64)
            grid = schedule.t_of_half_log_snr(lam)
        else:  # karras
            hi = float(schedule.sigma_bar(t_start)) ** (1.0 / rho)
            lo = float(schedule.sigma_bar(t_end)) ** (1.0 / rho)
            sigma_bar = torch.linspace(hi, lo, steps + 1, dtype=torch.float64) ** rho
            grid = schedule.t_of_sigma_bar(sigma_bar)
    # the end points exactly as asked, not as re-inverted through lambda
    grid[0], grid[-1] = t_start, t_end
    return validate(schedule, grid, what=f"the {kind!r} grid")


def validate(schedule: Schedule, timesteps, *, min_steps: int = 1, what: str = "timesteps") -> Tensor:
    """Check a grid before any model call and return it as a float64 CPU tensor.

    A grid must be 1-D, finite, strictly decreasing, hold at least ``min_steps + 1`` points and
    lie in ``[t_min, t_max]``; its *last* point may be 0 on schedules that reach zero noise.
    """
    grid = as_float64(timesteps).cpu()
    if grid.ndim != 1:
        raise ValueError(f"{what} must be a 1-D sequence of times, got shape {tuple(grid.shape)}")
    if grid.numel() < min_steps + 1:
        raise ValueError(f"{what} has {grid.numel()} points ({grid.numel() - 1} steps), but this sampler "
                         f"needs at least {min_steps} steps ({min_steps + 1} points)")
    if not bool(torch.isfinite(grid).all()):
        raise ValueError(f"{what} contains NaN or infinite times")
    if not bool((grid[1:] < grid[:-1]).all()):
        bad = int(torch.nonzero(grid[1:] >= grid[:-1])[0])
        raise ValueError(f"{what} must be strictly decreasing (from noise to data), but t[{bad}]={float(grid[bad])} "
                         f"<= t[{bad + 1}]={float(grid[bad + 1])}")
    for i, value in enumerate(grid.tolist()):
        if not schedule.contains(value, allow_zero_end=(i == grid.numel() - 1)):
            zero = " (or exactly 0 at the end)" if schedule.reaches_zero_noise else ""
            raise ValueError(f"{what}: t[{i}]={value} lies outside {schedule!r}'s range "
                             f"[{schedule.t_min}, {schedule.t_max}]{zero}")
    return grid
