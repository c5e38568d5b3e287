"""The registry: stable names -> samplers, and :func:`sample`, which runs one by name.

The registry maps a name to the sampler, its order, its default grid and how many steps a
given NFE budget buys, so that benchmarks, the book and scripts can run "every solver at
NFE = 10" in one loop. Each solver module registers its own samplers when it is imported.
"""
from __future__ import annotations

import difflib
import inspect
from dataclasses import dataclass, field, replace
from typing import Callable

import torch

from .. import timesteps as _timesteps
from ..prediction import Prediction

Tensor = torch.Tensor

__all__ = ["SamplerSpec", "REGISTRY", "register", "get", "sample", "SampleInfo"]


def _one_per_step(nfe: int, options: dict) -> int:
    return nfe


@dataclass(frozen=True)
class SamplerSpec:
    """A registry entry.

    ``steps_for_nfe(nfe, options)`` (or ``steps_for_nfe(nfe)``) turns an NFE budget into a step count given the sampler's
    options (the sampler then reports the NFE it really used; it must never exceed the budget);
    ``min_nfe`` is the smallest budget that works with the default options.
    """

    name: str
    fn: Callable[..., Tensor]
    order: int | None
    default_grid: str
    chapter: str
    stochastic: bool = False
    adaptive: bool = False
    steps_for_nfe: Callable[[int, dict], int] = _one_per_step
    min_nfe: int = 1
    defaults: dict = field(default_factory=dict)
    summary: str = ""


REGISTRY: dict[str, SamplerSpec] = {}


def register(spec: SamplerSpec) -> SamplerSpec:
    """Add ``spec``; a one-argument ``steps_for_nfe(nfe)`` is accepted for budgets that do not
    depend on the options."""
    if len(inspect.signature(spec.steps_for_nfe).parameters) == 1:
        by_nfe = spec.steps_for_nfe
        spec = replace(spec, steps_for_nfe=lambda nfe, options: by_nfe(nfe))
    if spec.name in REGISTRY:
        raise ValueError(f"sampler {spec.name!r} is already registered")
    REGISTRY[spec.name] = spec
    return spec


def get(name: str) -> SamplerSpec:
    try:
        return REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(name, REGISTRY, n=3)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise KeyError(f"unknown sampler {name!r}.{hint} Available: {', '.join(sorted(REGISTRY))}") from None


@dataclass
class SampleInfo:
    """What a :func:`sample` call did: the grid it used and the NFE it counted."""

    solver: str
    nfe: int
    steps: int
    timesteps: Tensor
    extra: dict = field(default_factory=dict)


def sample(model: Prediction, x_T: Tensor, solver: str, timesteps=None, nfe: int | None = None,
           schedule=None, *, grid: str | None = None, t_start=None, t_end=None, return_info: bool = False,
           **options):
    """Sample with a registered solver.

    Give either ``timesteps`` (a decreasing grid) or ``nfe`` (a budget: the solver's default
    grid, or ``grid=``, with the step count the budget buys, from ``t_start``/``t_end``, which
    default to the schedule's range). Adaptive solvers need neither. ``schedule`` defaults to
    the model's; other ``options`` go to the sampler. Returns the samples, or
    ``(samples, SampleInfo)`` with ``return_info=True``; ``info.nfe`` is counted.
    """
    spec = get(solver)
    if not isinstance(model, Prediction):
        raise TypeError(f"model must be a fastdiff_edu.prediction.Prediction (wrap your network with "
                        f"Prediction(fn, schedule, kind=...)), got {type(model).__name__}")
    schedule = model.schedule if schedule is None else schedule
    if schedule is not model.schedule and repr(schedule) != repr(model.schedule):
        raise ValueError(f"the grid's schedule {schedule!r} differs from the model's {model.schedule!r}")
    if timesteps is not None and (nfe is not None or grid is not None):
        raise ValueError("give either timesteps or nfe (with an optional grid), not both")
    if spec.adaptive and nfe is not None:
        raise ValueError(f"{solver} is adaptive and chooses its own steps: control it with rtol/atol, not nfe")
    if timesteps is None:
        if spec.adaptive:
            start = schedule.t_max if t_start is None else t_start
            end = schedule.t_min if t_end is None else t_end
            timesteps = torch.tensor([float(start), float(end)], dtype=torch.float64)
        elif nfe is None:
            raise ValueError(f"{solver}: give timesteps or an nfe budget")
        else:
            if not isinstance(nfe, int) or nfe < spec.min_nfe:
                raise ValueError(f"{solver} needs an integer nfe >= {spec.min_nfe}, got {nfe!r}")
            steps = spec.steps_for_nfe(nfe, {**spec.defaults, **options})
            if steps < 1:
                raise ValueError(f"{solver}: an NFE budget of {nfe} buys no step with these options")
            timesteps = _timesteps.make(schedule, grid or spec.default_grid, steps, t_start, t_end)
            if options.get("final_step") == "euler" and timesteps[-1] != 0:  # the last step goes to t = 0
                timesteps = _timesteps.make(schedule, grid or spec.default_grid, steps, t_start, t_end,
                                            append_zero=True)
    kwargs = {**spec.defaults, **options}
    if spec.adaptive and return_info:
        kwargs["return_info"] = True  # the solver's own step count goes into the info
    nfe_before = model.nfe
    result = spec.fn(model, x_T, timesteps, **kwargs)
    if not return_info:
        return result
    extra = {}
    grid_used = _timesteps.validate(schedule, timesteps)
    steps = grid_used.numel() - 1
    if isinstance(result, tuple):
        result, detail = result
        extra = {"detail": detail}
        steps = getattr(detail, "steps", steps)
    return result, SampleInfo(solver=solver, nfe=model.nfe - nfe_before, steps=steps,
                              timesteps=grid_used, extra=extra)
