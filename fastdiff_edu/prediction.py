"""One network, every view: eps, x0, score (and v), with an honest evaluation counter.

A diffusion network predicts *one* of the equivalent quantities; each sampler wants a
particular one. With ``x = alpha x0 + sigma eps`` (any schedule) the conversions are affine:

    x0    = (x - sigma eps) / alpha           eps = (x - alpha x0) / sigma
    score = -eps / sigma                      v   = alpha eps - sigma x0      (VP only)

:class:`Prediction` wraps any callable ``fn(x, t)`` (a trained net, a diffusers UNet taking
integer labels, an exact formula) and offers all views. ``nfe`` counts calls of ``fn``, so a
sampler that asks for eps and x0 at the same point with :meth:`Prediction.eps_and_x0` pays once.
"""
from __future__ import annotations

from typing import Callable

import torch

from .schedules import Schedule, as_float64

Tensor = torch.Tensor

__all__ = ["Prediction", "ModelCallError", "dynamic_threshold", "classifier_free_guidance"]

KINDS = ("eps", "x0", "v", "score")
TIMES = ("continuous", "label")


class ModelCallError(RuntimeError):
    """The wrapped network failed or returned something a sampler cannot use."""


def dynamic_threshold(x0: Tensor, percentile: float = 0.995, max_value: float = 1.0) -> Tensor:
    """Dynamic thresholding (Saharia et al. 2022, Sec. 2.3), as DPM-Solver++ uses it.

    Per sample, s = clamp(percentile of |x0|, 1, max_value); x0 is clipped to [-s, s] and
    divided by s, so that saturated predictions are pulled back inside [-1, 1].
    """
    flat = x0.reshape(x0.shape[0], -1).abs()
    if flat.dtype not in (torch.float32, torch.float64):
        flat = flat.float()  # quantile needs float32 or float64
    s = torch.quantile(flat, percentile, dim=1).clamp(min=1.0, max=max_value).to(x0.dtype)
    s = s.reshape((-1,) + (1,) * (x0.ndim - 1))
    return torch.maximum(torch.minimum(x0, s), -s) / s


class Prediction:
    """Wrap ``fn(x, t)`` predicting ``kind`` under ``schedule``.

    Parameters
    ----------
    fn:
        ``fn(x, t_input) -> tensor`` of x's shape. ``t_input`` is a tensor of shape
        ``(batch,)`` on x's device: the schedule time when ``time="continuous"``, or the
        network's timestep label (``schedule.label(t)``, e.g. ``N t - 1`` for a discrete DDPM)
        when ``time="label"``.
    kind:
        What ``fn`` predicts: ``"eps"``, ``"x0"``, ``"v"`` (VP schedules only) or ``"score"``.
    time_dtype:
        dtype of ``t_input``; default float64 for float64 samples and float32 otherwise.
    threshold:
        ``None`` or a percentile (e.g. 0.995) for dynamic thresholding of the x0 view
        (``threshold_max`` is its ``max_value``). The eps view is left untouched.
    """

    def __init__(self, fn: Callable[[Tensor, Tensor], Tensor], schedule: Schedule, kind: str = "eps",
                 time: str = "continuous", *, time_dtype: torch.dtype | None = None,
                 threshold: float | None = None, threshold_max: float = 1.0):
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        if time not in TIMES:
            raise ValueError(f"time must be one of {TIMES}, got {time!r}")
        if kind == "v" and not schedule.variance_preserving:
            raise ValueError("v-prediction is defined for variance-preserving schedules only; "
                             f"{schedule!r} is not one")
        if threshold is not None and not 0.0 < threshold <= 1.0:
            raise ValueError(f"threshold is a percentile in (0, 1], got {threshold}")
        self.fn = fn
        self.schedule = schedule
        self.kind = kind
        self.time = time
        self.time_dtype = time_dtype
        self.threshold = threshold
        self.threshold_max = threshold_max
        self.nfe = 0

    def __repr__(self) -> str:
        return f"Prediction(kind={self.kind!r}, time={self.time!r}, schedule={self.schedule!r}, nfe={self.nfe})"

    # -- the one place the network is called -------------------------------------------
    def __call__(self, x: Tensor, t) -> Tensor:
        """The raw network output at ``(x, t)``; counts one function evaluation."""
        t64 = as_float64(t, device=x.device)
        t_in = self.schedule.label(t64) if self.time == "label" else t64
        dtype = self.time_dtype or (torch.float64 if x.dtype == torch.float64 else torch.float32)
        t_in = t_in.to(dtype).expand(x.shape[0]) if t_in.ndim == 0 else t_in.to(dtype)
        self.nfe += 1
        try:
            out = self.fn(x, t_in)
        except Exception as err:  # say which call failed, keep the cause
            raise ModelCallError(
                f"the model raised {type(err).__name__} when called with x of shape {tuple(x.shape)} "
                f"and dtype {x.dtype}, t of shape {tuple(t_in.shape)}: {err}") from err
        if not isinstance(out, Tensor) or out.shape != x.shape:
            shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ModelCallError(f"the model returned {shape} for an input of shape {tuple(x.shape)}; "
                                 "a prediction must have the input's shape")
        return out

    def reset_nfe(self) -> None:
        self.nfe = 0

    # -- views ----------------------------------------------------------------------------
    def _coefficients(self, x: Tensor, t):
        t64 = as_float64(t, device=x.device)
        alpha = self.schedule.alpha(t64)
        sigma = self.schedule.sigma(t64)
        if alpha.ndim == 1:  # per-sample times
            shape = (-1,) + (1,) * (x.ndim - 1)
            alpha, sigma = alpha.reshape(shape), sigma.reshape(shape)
        return alpha.to(x.dtype), sigma.to(x.dtype)

    def coefficients_at(self, times: Tensor, like: Tensor) -> list[tuple[Tensor, Tensor]]:
        """``(alpha, sigma)`` at each of ``times`` (1-d, float64), computed once and cast to
        ``like``'s dtype and device: a sampler that knows its grid passes them to the views
        (``coefficients=``) and saves a schedule lookup per evaluation."""
        times = as_float64(times).cpu()
        alpha = self.schedule.alpha(times).to(device=like.device, dtype=like.dtype)
        sigma = self.schedule.sigma(times).to(device=like.device, dtype=like.dtype)
        return list(zip(alpha.unbind(), sigma.unbind()))

    def eps_and_x0(self, x: Tensor, t, coefficients: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor]:
        """Both views from one evaluation (thresholding, if set, applies to x0 only).
        ``coefficients``: ``(alpha(t), sigma(t))`` if the caller has them (:meth:`coefficients_at`)."""
        out = self(x, t)
        alpha, sigma = self._coefficients(x, t) if coefficients is None else coefficients
        if self.kind == "eps":
            eps, x0 = out, (x - sigma * out) / alpha
        elif self.kind == "x0":
            eps, x0 = (x - alpha * out) / sigma, out
        elif self.kind == "v":
            eps, x0 = alpha * out + sigma * x, alpha * x - sigma * out
        else:  # score
            eps, x0 = -sigma * out, (x + sigma**2 * out) / alpha
        if self.threshold is not None:
            x0 = dynamic_threshold(x0, self.threshold, self.threshold_max)
        return eps, x0

    def eps(self, x: Tensor, t, coefficients: tuple[Tensor, Tensor] | None = None) -> Tensor:
        out = self(x, t)
        if self.kind == "eps":
            return out
        alpha, sigma = self._coefficients(x, t) if coefficients is None else coefficients
        if self.kind == "x0":
            return (x - alpha * out) / sigma
        if self.kind == "v":
            return alpha * out + sigma * x
        return -sigma * out

    def x0(self, x: Tensor, t, coefficients: tuple[Tensor, Tensor] | None = None) -> Tensor:
        if self.kind == "x0" and self.threshold is None:
            return self(x, t)
        if self.kind == "eps" and self.threshold is None:  # the common case, without the eps view
            alpha, sigma = self._coefficients(x, t) if coefficients is None else coefficients
            return torch.addcmul(x, sigma, self(x, t), value=-1.0) / alpha
        return self.eps_and_x0(x, t, coefficients)[1]

    def score(self, x: Tensor, t) -> Tensor:
        _, sigma = self._coefficients(x, t)
        return -self.eps(x, t) / sigma

    def v(self, x: Tensor, t) -> Tensor:
        if not self.schedule.variance_preserving:
            raise ValueError("the v view needs a variance-preserving schedule")
        eps, x0 = self.eps_and_x0(x, t)
        alpha, sigma = self._coefficients(x, t)
        return alpha * eps - sigma * x0


def classifier_free_guidance(conditional: Callable[[Tensor, Tensor], Tensor],
                             unconditional: Callable[[Tensor, Tensor], Tensor],
                             scale: float) -> Callable[[Tensor, Tensor], Tensor]:
    """Ho & Salimans (2022), eq. 6: ``uncond + scale (cond - uncond)``, as a new ``fn``.

    Every parametrisation is affine in the network output at fixed (x, t), so combining raw
    outputs equals combining eps (or x0). Wrap the result in a :class:`Prediction`; one guided
    evaluation counts as one NFE, the convention of the papers.
    """
    def guided(x: Tensor, t: Tensor) -> Tensor:
        uncond = unconditional(x, t)
        return uncond + scale * (conditional(x, t) - uncond)

    return guided
