"""What every sampler shares: input checks, the per-step bookkeeping, and noise.

Checks run before the first model call and say what to do. Inside the loop nothing talks to
the host: the NaN watch keeps the index of the first non-finite step in a device tensor and is
read once, after the loop.
"""
from __future__ import annotations

from typing import Callable, Iterator

import torch
from tqdm import tqdm

from ..prediction import Prediction
from ..timesteps import validate

Tensor = torch.Tensor
Callback = Callable[[int, Tensor, Tensor], None]

__all__ = ["check_inputs", "StepLoop", "noise_like", "on_device", "predict", "run_linear_multistep"]


def check_inputs(name: str, model: Prediction, x_T: Tensor, timesteps, *, min_steps: int = 1) -> Tensor:
    """Validate a sampler's inputs; return the grid as a float64 CPU tensor."""
    if not isinstance(model, Prediction):
        raise TypeError(f"{name}: model must be a fastdiff_edu.prediction.Prediction (wrap your network with "
                        f"Prediction(fn, schedule, kind=...)), got {type(model).__name__}")
    if not isinstance(x_T, Tensor):
        raise TypeError(f"{name}: x_T must be a torch.Tensor, got {type(x_T).__name__}")
    if not x_T.is_floating_point():
        raise TypeError(f"{name}: x_T must be a floating-point tensor, got {x_T.dtype}; "
                        "convert it with x_T.float() (or .double() for the exact test bed)")
    if x_T.ndim < 2:
        raise ValueError(f"{name}: x_T must have a batch dimension first, shape (batch, ...); got {tuple(x_T.shape)}. "
                         "For a single sample use x_T[None]")
    return validate(model.schedule, timesteps, min_steps=min_steps, what=f"{name}: the timesteps")


def on_device(values: Tensor, like: Tensor) -> Tensor:
    """Coefficients computed in float64, cast once to the sample's dtype and device."""
    return values.to(device=like.device, dtype=like.dtype)


def noise_like(x: Tensor, generator: torch.Generator | None) -> Tensor:
    """Standard normal noise of x's shape, dtype and device.

    Drawn in float32 and then cast, so that one seed gives the same noise whatever the sample's
    dtype (torch draws different numbers for float32 and float64): a float16 run and its float64
    reference then see the same noise, and their difference measures precision alone.
    """
    return torch.randn(x.shape, generator=generator, dtype=torch.float32, device=x.device).to(x.dtype)


class StepLoop:
    """Iterate over the steps of a grid with an optional progress bar, per-step callback
    ``callback(step, t_next, x_next)`` and a sync-free watch for NaN/Inf.

    Usage::

        loop = StepLoop("ddim", grid, x, callback, progress)
        for i in loop:
            x = ...           # the step from grid[i] to grid[i + 1]
            loop.done(i, x)
        loop.check()          # raises FloatingPointError naming the first bad step
    """

    def __init__(self, name: str, grid: Tensor, x: Tensor, callback: Callback | None = None,
                 progress: bool = False, steps: int | None = None):
        self.name, self.grid, self.callback = name, grid, callback
        self.steps = grid.numel() - 1 if steps is None else steps
        self.times = grid.to(x.device)
        # one reduction per step: a NaN or Inf anywhere makes the sum non-finite (float32 or wider
        # accumulation, so that a float16 sample's sum cannot overflow); read once, after the loop
        self.sums = torch.zeros(self.steps, dtype=torch.float64 if x.dtype == torch.float64 else torch.float32,
                                device=x.device)
        self.bar = tqdm(total=self.steps, desc=name, disable=not progress, leave=False)

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.steps))

    def done(self, i: int, x: Tensor) -> None:
        self.sums[i] = x.sum(dtype=self.sums.dtype)
        if self.callback is not None:
            self.callback(i, self.times[i + 1], x)
        self.bar.update(1)

    def check(self) -> None:
        self.bar.close()
        bad = torch.nonzero(~torch.isfinite(self.sums))  # the one host sync, after the loop
        if bad.numel():
            first = int(bad[0])
            raise FloatingPointError(
                f"{self.name}: NaN or Inf appeared at step {first} of {self.steps} (t={float(self.grid[first]):.6g} -> "
                f"{float(self.grid[first + 1]):.6g}). Try more steps, a smaller step near t_min, or a wider dtype")



def predict(model: Prediction, prediction: str, x: Tensor, t: Tensor, coefficients=None) -> Tensor:
    """The prediction a solver extrapolates: ``"eps"`` or ``"x0"`` (``coefficients``: see
    :meth:`Prediction.coefficients_at`)."""
    return model.eps(x, t, coefficients) if prediction == "eps" else model.x0(x, t, coefficients)


def run_linear_multistep(name: str, model: Prediction, x_T: Tensor, grid: Tensor, prediction: str,
                         c_x: Tensor, weights: Tensor, callback: Callback | None = None,
                         progress: bool = False, *, c_noise: Tensor | None = None,
                         generator: torch.Generator | None = None) -> Tensor:
    """The loop of every linear multistep method here (DPM-Solver-kM, DEIS tAB/rhoAB, iPNDM,
    SDE-DPM-Solver++):

        x_{i+1} = c_x[i] x_i + sum_j weights[i, j] F_{i-j} (+ c_noise[i] z_i),     F = eps or x0,

    one evaluation per step, the last ``weights.shape[1]`` predictions kept in a local list.
    ``c_x``, ``weights`` (and ``c_noise``) are float64 tables computed before the loop (zeros
    where a step uses less history); they are cast once to the sample's dtype and device.
    """
    noisy = [False] * (grid.numel() - 1) if c_noise is None else (c_noise > 0).tolist()
    c_x, weights = on_device(c_x, x_T), on_device(weights, x_T)
    c_noise = None if c_noise is None else on_device(c_noise, x_T)
    views = model.coefficients_at(grid[:-1], x_T)
    depth = weights.shape[1]
    loop = StepLoop(name, grid, x_T, callback, progress)
    x, history = x_T, []
    for i in loop:
        history = [predict(model, prediction, x, loop.times[i], views[i])] + history[: depth - 1]
        x = c_x[i] * x
        for j, previous in enumerate(history):
            x = torch.addcmul(x, weights[i, j], previous)  # x + w F in one pass
        if noisy[i]:
            x = torch.addcmul(x, c_noise[i], noise_like(x, generator))
        loop.done(i, x)
    loop.check()
    return x
