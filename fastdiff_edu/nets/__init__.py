"""Small trained diffusion models: networks, data, training, shipped weights, FD-digits.

    import fastdiff_edu as fd
    from fastdiff_edu import nets
    model = nets.load("digits-eps")                       # a Prediction (DDPM schedule, eps)
    x_T = model.schedule.prior_sample(model.sample_shape(64), generator=torch.Generator().manual_seed(0))
    x0 = fd.sample(model, x_T, "dpm-solver++2m", nfe=10)
    nets.fd_digits(x0), nets.class_histogram(x0)          # quality against the training digits

Modules: :mod:`.data` (digits in [-1, 1] with a fixed train/held-out split, 2D sets),
:mod:`.embedding` (time input), :mod:`.mlp` and :mod:`.unet` (networks), :mod:`.conditioning`
(network <-> schedule), :mod:`.train` (the resumable training loop and CLI), :mod:`.loading`
(shipped models as Predictions), :mod:`.classifier` and :mod:`.quality` (FD-digits).
"""
from .data import digits, digits_split, toy2d
from .loading import load, sample_shape, shipped_models
from .mlp import TimeMLP
from .quality import class_histogram, fd_digits, fd_floor, features
from .unet import TinyUNet

__all__ = ["load", "shipped_models", "sample_shape", "digits", "digits_split", "toy2d", "TimeMLP", "TinyUNet",
           "fd_digits", "fd_floor", "class_histogram", "features"]
