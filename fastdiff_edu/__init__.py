"""fastdiff_edu: fast samplers for diffusion models, derived, implemented and measured.

    import fastdiff_edu as fd
    sched = fd.schedules.DiscreteVP.ddpm_linear()
    model = fd.problems.gmm64().prediction(sched)          # an exact eps-predictor
    x_T = sched.prior_sample((256, 64), dtype=torch.float64)
    x = fd.sample(model, x_T, "ddim", nfe=10)
"""
from . import metrics, nets, ode, prediction, presets, problems, reference, schedules, solvers, testbed, timesteps
from .prediction import Prediction
from .solvers import REGISTRY, sample

__all__ = ["metrics", "nets", "ode", "prediction", "presets", "problems", "reference", "schedules", "solvers", "testbed", "timesteps",
           "Prediction", "REGISTRY", "sample"]
__version__ = "0.1.0"
