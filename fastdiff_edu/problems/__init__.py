"""Data with exact answers: Gaussian mixtures (exact score, density, samples, ODE for K = 1),
ready-made test beds, and 2D toy sets."""
from __future__ import annotations

import math

import torch

from .gaussian_mixture import GaussianMixture
from .toy2d import TOY_SETS, checkerboard, moons, sample_toy, swiss_roll

__all__ = ["GaussianMixture", "ring2d", "gmm64", "classes64", "get", "PROBLEMS",
           "moons", "swiss_roll", "checkerboard", "sample_toy", "TOY_SETS"]


def ring2d(modes: int = 8, radius: float = 1.0, std: float = 0.08) -> GaussianMixture:
    """``modes`` equal isotropic Gaussians evenly spaced on a circle: the 2D picture book."""
    angles = 2 * math.pi * torch.arange(modes, dtype=torch.float64) / modes
    means = radius * torch.stack([torch.cos(angles), torch.sin(angles)], dim=1)
    return GaussianMixture(means, torch.full((modes,), std**2, dtype=torch.float64))


def gmm64(dim: int = 64, modes: int = 10, seed: int = 0) -> GaussianMixture:
    """The standard test bed: 10 anisotropic modes in 64 dimensions (fixed seed).

    Means ~ N(0, I/4) (so the data have roughly image-like unit scale); each covariance has a
    random orientation and standard deviations log-uniform in [0.05, 0.5], i.e. a condition
    number of 100; weights are uneven (Dirichlet(2)).
    """
    gen = torch.Generator().manual_seed(seed)
    means = 0.5 * torch.randn(modes, dim, generator=gen, dtype=torch.float64)
    log_std = torch.empty(modes, dim, dtype=torch.float64).uniform_(math.log(0.05), math.log(0.5), generator=gen)
    q, r = torch.linalg.qr(torch.randn(modes, dim, dim, generator=gen, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r, dim1=1, dim2=2))[:, None, :]
    cov = q @ torch.diag_embed(torch.exp(2 * log_std)) @ q.transpose(1, 2)
    gamma = -torch.log(torch.rand(modes, 2, generator=gen, dtype=torch.float64)).sum(1)  # Gamma(2, 1)
    return GaussianMixture(means, cov, gamma / gamma.sum())


def classes64(dim: int = 64, classes: int = 10, std: float = 0.1, seed: int = 0) -> GaussianMixture:
    """The guidance test bed: ``classes`` equal, isotropic classes in 64 dimensions whose data
    live in [-1, 1] like pixels (means uniform in [-0.7, 0.7], std 0.1), so that dynamic
    thresholding has the range it was designed for. Class k is component k."""
    gen = torch.Generator().manual_seed(seed)
    means = torch.empty(classes, dim, dtype=torch.float64).uniform_(-0.7, 0.7, generator=gen)
    return GaussianMixture(means, torch.full((classes,), std**2, dtype=torch.float64))


PROBLEMS = {"gmm64": gmm64, "ring2d": ring2d, "classes64": classes64}


def get(name: str) -> GaussianMixture:
    """A ready-made exact problem by name (``"gmm64"``, ``"ring2d"``, ``"classes64"``)."""
    try:
        return PROBLEMS[name]()
    except KeyError:
        raise ValueError(f"unknown problem {name!r}; choose one of {sorted(PROBLEMS)}") from None
