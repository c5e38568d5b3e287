"""Samplers, one module per paper, and the registry that names them.

A sampler is a function ``x0 = sampler(model, x_T, timesteps, **options)`` whose body follows
its paper's algorithm box. Each module registers its samplers (name, order, default grid, NFE
accounting) in :data:`REGISTRY` when imported; every module of this package is imported here,
so a new solver module needs no edit of this file. :func:`sample` runs any of them by name.
"""
from __future__ import annotations

import importlib
import pkgutil

from .ddim import ddim, ddim_coefficients, ddpm
from .euler import euler, euler_coefficients
from .registry import REGISTRY, SampleInfo, SamplerSpec, get, register, sample
from .rk45 import rk45

for _module in pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["SamplerSpec", "REGISTRY", "register", "get", "sample", "SampleInfo",
           "ddim", "ddpm", "euler", "rk45", "ddim_coefficients", "euler_coefficients"]
