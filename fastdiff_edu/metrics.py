"""How far is a sample from the truth?

- :func:`rmse`: root-mean-square over coordinates of (sample - reference), averaged over the
  batch: the discretisation error of a deterministic sampler, trajectory by trajectory.
- :func:`sliced_wasserstein`: distance between two *sets* of samples (for stochastic samplers
  and for the distance to exact data), with fixed random projections so numbers are repeatable.
- :func:`frechet_distance`: the Frechet (2-Wasserstein) distance between Gaussian fits.
- :func:`empirical_order`: the least-squares slope of log error against log NFE.
"""
from __future__ import annotations


from typing import Sequence

import numpy as np
import torch

Tensor = torch.Tensor

__all__ = ["rmse", "sliced_wasserstein", "frechet_distance", "empirical_order", "gaussian_fit"]


def rmse(x: Tensor, reference: Tensor) -> float:
    """Mean over the batch of the per-sample RMS over coordinates of ``x - reference``."""
    if x.shape != reference.shape:
        raise ValueError(f"shapes differ: {tuple(x.shape)} vs {tuple(reference.shape)}")
    diff = (x.to(torch.float64) - reference.to(torch.float64)).reshape(x.shape[0], -1)
    return float(diff.pow(2).mean(dim=1).sqrt().mean())


def _projections(dim: int, count: int, seed: int) -> Tensor:
    gen = torch.Generator().manual_seed(seed)
    directions = torch.randn(dim, count, generator=gen, dtype=torch.float64)
    return directions / directions.norm(dim=0, keepdim=True)


def sliced_wasserstein(x: Tensor, y: Tensor, num_projections: int = 256, seed: int = 0) -> float:
    """Sliced 2-Wasserstein distance between the empirical distributions of ``x`` and ``y``.

    Both sets are projected on the same ``num_projections`` random unit directions (seeded);
    each 1D W2 is computed from quantiles at common levels, so the sets may differ in size.
    Returns sqrt(mean over directions of W2^2).
    """
    x = x.to(torch.float64).reshape(x.shape[0], -1).cpu()
    y = y.to(torch.float64).reshape(y.shape[0], -1).cpu()
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"dimensions differ: {x.shape[1]} vs {y.shape[1]}")
    proj = _projections(x.shape[1], num_projections, seed)
    px, _ = torch.sort(x @ proj, dim=0)
    py, _ = torch.sort(y @ proj, dim=0)
    if px.shape[0] != py.shape[0]:
        levels = (torch.arange(max(px.shape[0], py.shape[0]), dtype=torch.float64) + 0.5)
        levels = levels / levels.numel()
        px = torch.quantile(px, levels, dim=0)
        py = torch.quantile(py, levels, dim=0)
    return float((px - py).pow(2).mean(dim=0).mean().sqrt())


def gaussian_fit(x: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and (unbiased) covariance of a set of samples, float64."""
    x = x.to(torch.float64).reshape(x.shape[0], -1).cpu()
    return x.mean(dim=0), torch.cov(x.T).reshape(x.shape[1], x.shape[1])


def _sqrtm_psd(m: Tensor) -> Tensor:
    vals, vecs = torch.linalg.eigh(0.5 * (m + m.T))
    return (vecs * vals.clamp(min=0).sqrt()) @ vecs.T


def frechet_distance(x: Tensor, y: Tensor) -> float:
    """||mu_x - mu_y||^2 + tr(C_x + C_y - 2 (C_x^1/2 C_y C_x^1/2)^1/2): squared W2 of the fits
    (the formula behind FID)."""
    mu_x, cov_x = gaussian_fit(x)
    mu_y, cov_y = gaussian_fit(y)
    root_x = _sqrtm_psd(cov_x)
    cross = _sqrtm_psd(root_x @ cov_y @ root_x)
    value = (mu_x - mu_y).pow(2).sum() + torch.trace(cov_x + cov_y - 2 * cross)
    return float(value.clamp(min=0.0))


def empirical_order(nfes: Sequence[float], errors: Sequence[float]) -> float:
    """The order p in error ~ C NFE^-p: minus the least-squares slope of log error on log NFE.

    Use it on NFEs where the method is in its asymptotic regime (errors well above the
    reference's own error and the float64 floor).
    """
    nfes_arr = np.asarray(nfes, dtype=np.float64)
    errors_arr = np.asarray(errors, dtype=np.float64)
    if nfes_arr.shape != errors_arr.shape or nfes_arr.size < 2:
        raise ValueError("need at least two (nfe, error) pairs of equal length")
    if np.any(errors_arr <= 0) or np.any(nfes_arr <= 0):
        raise ValueError("NFEs and errors must be positive to take logarithms")
    slope = np.polyfit(np.log(nfes_arr), np.log(errors_arr), 1)[0]
    return float(-slope)


