"""EDM's preconditioning (Karras et al. 2022, Sec. 5, Table 1, Appendix B.6) and denoiser views.

Karras et al. write every diffusion network as a *denoiser* of the scaled sample
``x_bar = x/alpha`` at noise level ``sigma_bar = sigma/alpha``::

    D(x_bar; sigma_bar) = c_skip x_bar + c_out F(c_in x_bar; c_noise)          (eq. 7)

where F is the raw network. Their own choice (:func:`edm_coefficients`, derived in
``fastdiff_edu.derivations.edm.edm_preconditioning``) gives F unit-variance inputs and targets:

    c_in = 1/sqrt(sigma^2 + sigma_data^2)      c_skip = sigma_data^2/(sigma^2 + sigma_data^2)
    c_out = sigma sigma_data/sqrt(sigma^2 + sigma_data^2)      c_noise = ln(sigma)/4

:class:`EDMPrecond` wraps a raw network into that denoiser (for training code; wrap the result
with ``Prediction(precond, schedules.EDM(), kind="x0")`` to sample with it). :func:`denoiser`
and :func:`denoiser_coefficients` go the other way: they show any :class:`~.prediction.Prediction`
(eps, x0, v or score, on a VP, VE or EDM schedule) as a denoiser, which is how Table 1 lists
the VP and VE models. Book chapter: edm.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import torch

from .prediction import Prediction
from .schedules import as_float64

Tensor = torch.Tensor

__all__ = ["Preconditioning", "edm_coefficients", "loss_weight", "EDMPrecond", "denoiser",
           "denoiser_coefficients", "table1_coefficients"]


class Preconditioning(NamedTuple):
    """``D(x_bar; sigma_bar) = c_skip x_bar + c_out F(c_in x_bar; c_noise)``."""

    c_skip: Tensor
    c_out: Tensor
    c_in: Tensor
    c_noise: Tensor


def edm_coefficients(sigma, sigma_data: float = 0.5) -> Preconditioning:
    """EDM's c_skip, c_out, c_in, c_noise at noise level ``sigma`` (Table 1, "EDM" column)."""
    sigma = as_float64(sigma)
    total = sigma**2 + sigma_data**2
    return Preconditioning(c_skip=sigma_data**2 / total, c_out=sigma * sigma_data / total.sqrt(),
                           c_in=1.0 / total.sqrt(), c_noise=0.25 * torch.log(sigma))


def loss_weight(sigma, sigma_data: float = 0.5) -> Tensor:
    """EDM's loss weight lambda(sigma) = 1/c_out^2 = (sigma^2 + sigma_data^2)/(sigma sigma_data)^2."""
    sigma = as_float64(sigma)
    return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2


def _per_sample(value: Tensor, x: Tensor) -> Tensor:
    """A scalar or one value per sample, shaped to broadcast against x, in x's dtype."""
    value = value.to(device=x.device)
    if value.ndim == 1 and x.ndim > 1:
        value = value.reshape((-1,) + (1,) * (x.ndim - 1))
    return value.to(x.dtype)


class EDMPrecond(torch.nn.Module):
    """Karras et al.'s preconditioned denoiser around a raw network ``net(x_in, c_noise)``.

    ``forward(x, sigma)`` returns ``c_skip x + c_out net(c_in x, c_noise)`` with EDM's
    coefficients; ``sigma`` is a number, a 0-d tensor or one value per sample. The coefficients
    are computed in float64 and cast to x's dtype. The network receives ``c_noise`` as a tensor
    of shape ``(batch,)``. The ideal network output is ``(D* - c_skip x)/c_out``, whose training
    target has unit variance for every sigma when the data has standard deviation ``sigma_data``.
    """

    def __init__(self, net: Callable[[Tensor, Tensor], Tensor], sigma_data: float = 0.5):
        super().__init__()
        if not sigma_data > 0:
            raise ValueError(f"sigma_data must be positive, got {sigma_data}")
        self.net = net
        self.sigma_data = float(sigma_data)

    def coefficients(self, sigma) -> Preconditioning:
        return edm_coefficients(sigma, self.sigma_data)

    def forward(self, x: Tensor, sigma) -> Tensor:
        sigma = as_float64(sigma, device=x.device)
        if sigma.ndim == 0:
            sigma = sigma.expand(x.shape[0])
        if not bool((sigma > 0).all()):
            raise ValueError("EDMPrecond needs sigma > 0 (c_noise = ln(sigma)/4)")
        c = edm_coefficients(sigma, self.sigma_data)
        noise_dtype = x.dtype if x.dtype == torch.float64 else torch.float32
        out = self.net(_per_sample(c.c_in, x) * x, c.c_noise.to(noise_dtype))
        return _per_sample(c.c_skip, x) * x + _per_sample(c.c_out, x) * out.to(x.dtype)

    def extra_repr(self) -> str:
        return f"sigma_data={self.sigma_data}"


def denoiser(model: Prediction) -> Callable[[Tensor, Tensor], Tensor]:
    """EDM's denoiser view of any Prediction: ``D(x_bar, sigma_bar) = x0_hat``.

    The model is evaluated at its own schedule's time ``t = t_of_sigma_bar(sigma_bar)`` and at
    ``x = alpha(t) x_bar``; ``sigma_bar`` is a number or one value per sample. One call = one NFE.
    """
    sched = model.schedule

    def D(x_bar: Tensor, sigma_bar) -> Tensor:
        t = sched.t_of_sigma_bar(as_float64(sigma_bar, device=x_bar.device))
        return model.x0(_per_sample(sched.alpha(t), x_bar) * x_bar, t)

    return D


def denoiser_coefficients(model: Prediction, sigma_bar) -> Preconditioning:
    """The (c_skip, c_out, c_in, c_noise) with which ``model``'s raw output F is a denoiser:
    ``D(x_bar; sigma_bar) = c_skip x_bar + c_out F(c_in x_bar, c_noise)``.

    With ``x = alpha x_bar`` and ``sigma = alpha sigma_bar``, the network input is
    ``c_in = alpha``, ``c_noise`` is its time input (``schedule.label(t)`` for ``time="label"``), and
    (c_skip, c_out) by parametrisation: eps (1, -sigma_bar); x0 (0, 1); v, VP only
    (alpha^2, -sigma_bar alpha); score (1, alpha sigma_bar^2). For eps on a VP schedule
    this is Table 1's VP column (alpha = 1/sqrt(sigma_bar^2 + 1)); v on VP is EDM's with
    sigma_data = 1 (up to F's sign).
    """
    sched = model.schedule
    sigma_bar = as_float64(sigma_bar)
    t = sched.t_of_sigma_bar(sigma_bar)
    alpha = sched.alpha(t)
    c_noise = sched.label(t) if model.time == "label" else t
    if model.kind == "eps":
        c_skip, c_out = torch.ones_like(alpha), -sigma_bar
    elif model.kind == "x0":
        c_skip, c_out = torch.zeros_like(alpha), torch.ones_like(alpha)
    elif model.kind == "v":
        c_skip, c_out = alpha**2, -sigma_bar * alpha
    else:  # score
        c_skip, c_out = torch.ones_like(alpha), alpha * sigma_bar**2
    return Preconditioning(c_skip=c_skip, c_out=c_out, c_in=alpha, c_noise=c_noise)


def table1_coefficients(name: str, sigma, *, sigma_data: float = 0.5, beta_d: float = 19.9,
                        beta_min: float = 0.1, num_labels: int = 1000) -> Preconditioning:
    """Karras et al. (2022), Table 1's preconditioning for ``name`` in ``"vp"``, ``"ve"``, ``"edm"``.

    VP: (1, -sigma, 1/sqrt(sigma^2 + 1), (M - 1) t(sigma)) with Song et al.'s VP t(sigma);
    VE: (1, sigma, 1, ln(sigma/2)) -- its network predicts sigma * score = -eps, hence +sigma;
    EDM: :func:`edm_coefficients`.
    """
    sigma = as_float64(sigma)
    one = torch.ones_like(sigma)
    if name == "vp":
        t = (torch.sqrt(beta_min**2 + 2 * beta_d * torch.log1p(sigma**2)) - beta_min) / beta_d
        return Preconditioning(one, -sigma, 1.0 / torch.sqrt(sigma**2 + 1), (num_labels - 1) * t)
    if name == "ve":
        return Preconditioning(one, sigma, one, torch.log(0.5 * sigma))
    if name == "edm":
        return edm_coefficients(sigma, sigma_data)
    raise ValueError(f"name must be 'vp', 've' or 'edm', got {name!r}")

