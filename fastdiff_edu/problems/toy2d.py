"""Two-dimensional toy data sets (samplers only: their score is not known in closed form).

Scaled to roughly unit spread so that the VP schedules' prior N(0, I) is a sensible end point.
"""
from __future__ import annotations

import math

import torch

Tensor = torch.Tensor

__all__ = ["moons", "swiss_roll", "checkerboard", "TOY_SETS", "sample_toy"]


def moons(n: int, generator: torch.Generator | None = None, noise: float = 0.05) -> Tensor:
    """Two interleaving half circles (as scikit-learn's make_moons), centred."""
    upper = n // 2
    angle = math.pi * torch.rand(n, generator=generator, dtype=torch.float64)
    x = torch.where(torch.arange(n) < upper, torch.cos(angle), 1.0 - torch.cos(angle))
    y = torch.where(torch.arange(n) < upper, torch.sin(angle), 0.5 - torch.sin(angle))
    points = torch.stack([x - 0.5, y - 0.25], dim=1)
    points = points + noise * torch.randn(n, 2, generator=generator, dtype=torch.float64)
    return points[torch.randperm(n, generator=generator)]


def swiss_roll(n: int, generator: torch.Generator | None = None, noise: float = 0.03) -> Tensor:
    """A 2D spiral r = theta, theta in [1.5 pi, 4.5 pi], scaled into about [-1, 1]^2."""
    theta = 1.5 * math.pi * (1.0 + 2.0 * torch.rand(n, generator=generator, dtype=torch.float64))
    points = torch.stack([theta * torch.cos(theta), theta * torch.sin(theta)], dim=1) / (4.5 * math.pi)
    return points + noise * torch.randn(n, 2, generator=generator, dtype=torch.float64)


def checkerboard(n: int, generator: torch.Generator | None = None, squares: int = 4) -> Tensor:
    """Uniform on the black squares of a squares x squares board over [-1, 1]^2."""
    cell = 2.0 / squares
    col = torch.randint(0, squares, (n,), generator=generator)
    row = torch.randint(0, squares // 2, (n,), generator=generator) * 2 + (col % 2)
    offset = torch.rand(n, 2, generator=generator, dtype=torch.float64) * cell
    corner = torch.stack([col, row], dim=1).to(torch.float64) * cell - 1.0
    return corner + offset


TOY_SETS = {"moons": moons, "swiss_roll": swiss_roll, "checkerboard": checkerboard}


def sample_toy(name: str, n: int, generator: torch.Generator | None = None) -> Tensor:
    try:
        return TOY_SETS[name](n, generator=generator)
    except KeyError:
        raise ValueError(f"unknown toy set {name!r}; choose one of {sorted(TOY_SETS)}") from None
