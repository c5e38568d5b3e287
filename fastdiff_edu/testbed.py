"""Options that some samplers need before they can run on an exact test bed.

Most samplers need only the model and the noise. A few need more, computed once per model:
Analytic-DPM needs the table Gamma_t = E||eps_hat||^2/d (estimated here by Monte Carlo from the
problem's exact samples, the paper's estimator), GENIE needs its distilled derivative head
(shipped for gmm64 and ring2d under the DDPM schedule), and stochastic samplers need a seeded
generator. :func:`sampler_options` returns them, so that the benchmarks and the book can run
"every sampler in the registry" with one loop.
"""
from __future__ import annotations

import torch

from . import solvers
from .prediction import Prediction

__all__ = ["sampler_options", "supports"]

_GAMMA_CACHE: dict[tuple, object] = {}


def supports(name: str, problem: str, schedule) -> bool:
    """Whether sampler ``name`` can run on ``problem`` under ``schedule`` with these options
    (GENIE's heads exist for gmm64 and ring2d under the DDPM schedule only)."""
    if name == "genie":
        return problem in ("gmm64", "ring2d") and repr(schedule) == "DiscreteVP(num_steps=1000)"
    return True


def sampler_options(name: str, model: Prediction, problem: str, data=None, *, seed: int = 0,
                    gamma_samples: int = 256) -> dict:
    """The extra keyword arguments sampler ``name`` needs for ``model`` on exact problem ``problem``
    (a name from ``problems.PROBLEMS``; ``data`` its GaussianMixture, for Analytic-DPM)."""
    spec = solvers.get(name)
    options = {}
    if spec.stochastic:
        options["generator"] = torch.Generator().manual_seed(seed)
    if name == "genie":
        if not supports(name, problem, model.schedule):
            raise ValueError(f"genie has distilled heads for gmm64 and ring2d under the DDPM schedule only, "
                             f"not {problem} under {model.schedule!r}")
        from .genie_head import load_head
        options["head"] = load_head(problem)
    if name.startswith("analytic-"):
        if data is None:
            raise ValueError(f"{name} needs the problem's data to estimate Gamma_t")
        key = (problem, repr(model.schedule), gamma_samples, seed)
        if key not in _GAMMA_CACHE:
            from .solvers.analytic_dpm import estimate_gamma
            _GAMMA_CACHE[key] = estimate_gamma(model, data, n_samples=gamma_samples,
                                               generator=torch.Generator().manual_seed(seed + 1))
        options["gamma"] = _GAMMA_CACHE[key]
    return options
