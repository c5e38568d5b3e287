"""Noise schedules: the forward process ``x_t = alpha(t) x_0 + sigma(t) eps``.

Every fast sampler in this package needs only four things from a schedule: ``alpha(t)``,
``sigma(t)``, the half-log-SNR ``lambda(t) = log(alpha/sigma)`` and its inverse
``t_of_half_log_snr``. Euler in ``t`` and the black-box ODE solvers also need the two
derivatives ``d log alpha / dt`` and ``d lambda / dt``: the probability-flow ODE reads

    dx/dt = f(t) x - sigma(t) lambda'(t) eps(x, t),      f = d log alpha / dt,

(see ``fastdiff_edu.ode`` and the recap chapter for the derivation from Song et al. 2021, eq. 13).

All quantities are computed in float64, whatever the dtype of ``t``; samplers cast them to the
sample's dtype once per step. Inputs may be Python numbers or tensors (on any device that has
float64; the result lives on the same device).

Schedules that reach zero noise at ``t = 0`` (VP and EDM, not VE) accept ``t = 0`` as the final
point of a grid, meaning "denoise to the data": ``sigma(0) = 0`` and ``lambda(0) = +inf``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

Tensor = torch.Tensor

__all__ = [
    "Schedule",
    "VPLinear",
    "VPCosine",
    "DiscreteVP",
    "VE",
    "EDM",
    "as_float64",
]


def as_float64(value, device=None) -> Tensor:
    """``value`` as a float64 tensor, keeping a tensor's device unless ``device`` is given."""
    if isinstance(value, Tensor):
        return value.to(device=device if device is not None else value.device, dtype=torch.float64)
    return torch.as_tensor(value, dtype=torch.float64, device=device)


def _softplus(x: Tensor) -> Tensor:
    """log(1 + e^x) without overflow: the VP identity -2 log alpha = softplus(-2 lambda)."""
    return torch.nn.functional.softplus(x)


class Schedule:
    """A noise schedule. Subclasses define ``log_alpha``/``sigma`` and the derivatives.

    The default implementations here serve any schedule; subclasses override what has a
    closed form.
    """

    #: smallest and largest time of the grid a sampler may use (t decreases while sampling)
    t_min: float
    t_max: float
    #: True when alpha^2 + sigma^2 = 1 (then v-prediction is defined)
    variance_preserving: bool = False
    #: True when sigma(0) = 0, so that a grid may end at t = 0 ("denoise to the data")
    reaches_zero_noise: bool = False

    # -- the forward process -------------------------------------------------------------
    def log_alpha(self, t) -> Tensor:
        raise NotImplementedError

    def alpha(self, t) -> Tensor:
        return torch.exp(self.log_alpha(t))

    def sigma(self, t) -> Tensor:
        raise NotImplementedError

    def half_log_snr(self, t) -> Tensor:
        """lambda(t) = log(alpha(t) / sigma(t)); decreasing in t."""
        return self.log_alpha(t) - torch.log(self.sigma(t))

    def t_of_half_log_snr(self, lam) -> Tensor:
        """The exact inverse of :meth:`half_log_snr`."""
        raise NotImplementedError

    def sigma_bar(self, t) -> Tensor:
        """sigma/alpha = exp(-lambda): the noise level in the scaled coordinates x/alpha
        (EDM's and k-diffusion's sigma, DEIS's rho, GENIE's gamma)."""
        return torch.exp(-self.half_log_snr(t))

    def t_of_sigma_bar(self, sigma_bar) -> Tensor:
        return self.t_of_half_log_snr(-torch.log(as_float64(sigma_bar)))

    # -- derivatives for ODE solvers in t ---------------------------------------------------
    def d_log_alpha(self, t) -> Tensor:
        """f(t) = d log alpha / dt (the drift coefficient of the forward SDE)."""
        raise NotImplementedError

    def d_half_log_snr(self, t) -> Tensor:
        """d lambda / dt (negative)."""
        raise NotImplementedError

    # -- the prior and the model's time input -------------------------------------------
    @property
    def prior_std(self) -> float:
        """Standard deviation of the Gaussian that x at t_max is drawn from."""
        return 1.0 if self.variance_preserving else float(self.sigma(self.t_max))

    def prior_sample(self, shape, generator: torch.Generator | None = None,
                     dtype: torch.dtype = torch.float32, device=None) -> Tensor:
        """Noise to start sampling from: N(0, prior_std^2 I) of the given shape."""
        noise = torch.randn(tuple(shape), generator=generator, dtype=dtype, device=device)
        return noise * self.prior_std

    def label(self, t) -> Tensor:
        """The time input a network trained on this schedule expects (identity here)."""
        return as_float64(t)

    def contains(self, t, *, allow_zero_end: bool = False) -> bool:
        t = float(t)
        if allow_zero_end and self.reaches_zero_noise and t == 0.0:
            return True
        tol = 1e-12 * max(1.0, abs(self.t_max))
        return self.t_min - tol <= t <= self.t_max + tol

    def __repr__(self) -> str:  # dataclass subclasses override this
        return f"{type(self).__name__}()"


# --------------------------------------------------------------------------------------
# Variance-preserving schedules: alpha^2 + sigma^2 = 1, so everything follows from log alpha.
# --------------------------------------------------------------------------------------
class _VP(Schedule):
    variance_preserving = True
    reaches_zero_noise = True

    def sigma(self, t) -> Tensor:
        # sqrt(1 - alpha^2) with expm1: accurate when alpha is close to 1 (small t)
        return torch.sqrt(-torch.expm1(2.0 * self.log_alpha(t)))

    def half_log_snr(self, t) -> Tensor:
        log_alpha = self.log_alpha(t)
        return log_alpha - 0.5 * torch.log(-torch.expm1(2.0 * log_alpha))

    @staticmethod
    def log_alpha_of_half_log_snr(lam) -> Tensor:
        """VP: alpha^2 = sigmoid(2 lambda), so log alpha = -softplus(-2 lambda)/2."""
        return -0.5 * _softplus(-2.0 * as_float64(lam))

    def d_half_log_snr(self, t) -> Tensor:
        # lambda = log alpha - log sigma and sigma^2 = 1 - alpha^2 give lambda' = f / sigma^2
        return self.d_log_alpha(t) / (-torch.expm1(2.0 * self.log_alpha(t)))


@dataclass(repr=True)
class VPLinear(_VP):
    """Song et al. (2021) VP SDE with beta(t) = beta_min + t (beta_max - beta_min).

    log alpha(t) = -t^2 (beta_max - beta_min)/4 - t beta_min/2   (Song et al. 2021, eq. 29).
    """

    beta_min: float = 0.1
    beta_max: float = 20.0
    t_min: float = 1e-3
    t_max: float = 1.0

    def log_alpha(self, t) -> Tensor:
        t = as_float64(t)
        return -0.25 * t**2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min

    def d_log_alpha(self, t) -> Tensor:
        t = as_float64(t)
        return -0.5 * (self.beta_min + t * (self.beta_max - self.beta_min))

    def t_of_half_log_snr(self, lam) -> Tensor:
        # solve (b1-b0)/4 t^2 + b0/2 t = L/2 with L = -2 log alpha = softplus(-2 lambda);
        # the root written as 2c/(b + sqrt(b^2 + 4ac)) avoids cancellation at small t
        big_l = _softplus(-2.0 * as_float64(lam))
        delta = self.beta_max - self.beta_min
        return 2.0 * big_l / (self.beta_min + torch.sqrt(self.beta_min**2 + 2.0 * delta * big_l))


@dataclass(repr=True)
class VPCosine(_VP):
    """Nichol & Dhariwal (2021) cosine schedule, eq. 17: alpha^2 = f(t)/f(0),
    f(t) = cos^2(pi/2 (t + s)/(1 + s)).

    ``t_max`` defaults to 0.9946, as in DPM-Solver's reference code, because alpha -> 0 at t = 1.
    """

    s: float = 0.008
    t_min: float = 1e-3
    t_max: float = 0.9946

    def _angle(self, t) -> Tensor:
        return 0.5 * math.pi * (as_float64(t) + self.s) / (1.0 + self.s)

    @property
    def _log_cos0(self) -> float:
        return math.log(math.cos(0.5 * math.pi * self.s / (1.0 + self.s)))

    def log_alpha(self, t) -> Tensor:
        # the log of the ratio, not a difference of logs: exactly 0 at t = 0, so sigma(0) = 0
        return torch.log(torch.cos(self._angle(t)) / math.cos(0.5 * math.pi * self.s / (1.0 + self.s)))

    def d_log_alpha(self, t) -> Tensor:
        return -torch.tan(self._angle(t)) * 0.5 * math.pi / (1.0 + self.s)

    def t_of_half_log_snr(self, lam) -> Tensor:
        log_alpha = self.log_alpha_of_half_log_snr(lam)
        angle = torch.arccos(torch.exp(log_alpha + self._log_cos0))
        return 2.0 * (1.0 + self.s) / math.pi * angle - self.s


class DiscreteVP(_VP):
    """A discrete-time DDPM schedule (``betas`` or ``alphas_cumprod``) made continuous.

    As in DPM-Solver's discrete wrapper (Lu et al. 2022, Appendix D), the n-th discrete step
    (n = 0..N-1) sits at t_n = (n + 1)/N and log alpha is interpolated piecewise-linearly in t,
    so t runs over [1/N, 1]. Below 1/N we continue linearly to log alpha(0) = 0 (clean data),
    which is where diffusers' final step goes with ``set_alpha_to_one=True``.

    ``label(t) = N t - 1`` maps t to the (fractional) timestep label the network was trained
    with; ``label(t_n) = n``.
    """

    def __init__(self, alphas_cumprod):
        alphas_cumprod = as_float64(alphas_cumprod).cpu()
        if alphas_cumprod.ndim != 1 or alphas_cumprod.numel() < 2:
            raise ValueError("alphas_cumprod must be a 1-D sequence with at least two entries")
        if not bool(((alphas_cumprod > 0) & (alphas_cumprod < 1)).all()):
            raise ValueError("alphas_cumprod must lie strictly between 0 and 1")
        if not bool((alphas_cumprod[1:] < alphas_cumprod[:-1]).all()):
            raise ValueError("alphas_cumprod must be strictly decreasing")
        self.alphas_cumprod = alphas_cumprod
        self.num_steps = n = alphas_cumprod.numel()
        self.t_min = 1.0 / n
        self.t_max = 1.0
        # knots: t = 0 (log alpha = 0) and t_n = (n+1)/N
        self._knots_t = torch.arange(0, n + 1, dtype=torch.float64) / n
        self._knots_log_alpha = torch.cat([torch.zeros(1, dtype=torch.float64),
                                           0.5 * torch.log(alphas_cumprod)])
        self._knots_on: dict[str, tuple[Tensor, Tensor]] = {}

    @classmethod
    def from_betas(cls, betas) -> "DiscreteVP":
        betas = as_float64(betas)
        return cls(torch.exp(torch.cumsum(torch.log1p(-betas), dim=0)))

    @classmethod
    def ddpm_linear(cls, num_steps: int = 1000, beta_start: float = 1e-4,
                    beta_end: float = 0.02) -> "DiscreteVP":
        """Ho et al. (2020): betas linear from 1e-4 to 0.02 over 1000 steps."""
        return cls.from_betas(torch.linspace(beta_start, beta_end, num_steps, dtype=torch.float64))

    @classmethod
    def scaled_linear(cls, num_steps: int = 1000, beta_start: float = 0.00085,
                      beta_end: float = 0.012) -> "DiscreteVP":
        """Latent-diffusion (Stable Diffusion) schedule: betas linear in sqrt."""
        root = torch.linspace(beta_start**0.5, beta_end**0.5, num_steps, dtype=torch.float64)
        return cls.from_betas(root**2)

    def _knots(self, device) -> tuple[Tensor, Tensor]:
        """The knots (t, log alpha) on ``device``, copied there once and then reused, so that a
        sampling loop on a GPU makes no host-to-device copy per step."""
        key = str(device)
        if key not in self._knots_on:
            self._knots_on[key] = (self._knots_t.to(device), self._knots_log_alpha.to(device))
        return self._knots_on[key]

    def _segment(self, t: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """For 1-d ``t``: the knots (t_k, t_k+1, y_k, y_k+1) of the segment holding each time; a knot
        belongs to the segment on its left, the one a decreasing-time sampler steps through next.

        Works on 1-d tensors only: indexing with a 0-d CUDA tensor (and searchsorted on one) would
        synchronise with the host, so callers flatten and reshape.
        """
        knots_t, knots_y = self._knots(t.device)
        k = (torch.searchsorted(knots_t, t.contiguous(), right=False) - 1).clamp(0, self.num_steps - 1)
        return knots_t[k], knots_t[k + 1], knots_y[k], knots_y[k + 1]

    def log_alpha(self, t) -> Tensor:
        t = as_float64(t)
        t0, t1, y0, y1 = self._segment(t.reshape(-1))
        return (y0 + (y1 - y0) / (t1 - t0) * (t.reshape(-1) - t0)).reshape(t.shape)

    def d_log_alpha(self, t) -> Tensor:
        t = as_float64(t)
        t0, t1, y0, y1 = self._segment(t.reshape(-1))
        return ((y1 - y0) / (t1 - t0)).reshape(t.shape)

    def t_of_half_log_snr(self, lam) -> Tensor:
        log_alpha = self.log_alpha_of_half_log_snr(lam)
        # log alpha(t) is decreasing: invert the piecewise-linear map on the negated knots
        knots_t, knots_y = self._knots(log_alpha.device)
        target = -log_alpha.reshape(-1)
        k = (torch.searchsorted(-knots_y, target.contiguous()) - 1).clamp(0, self.num_steps - 1)
        frac = (target + knots_y[k]) / (knots_y[k] - knots_y[k + 1])
        return (knots_t[k] + frac * (knots_t[k + 1] - knots_t[k])).reshape(log_alpha.shape)

    def label(self, t) -> Tensor:
        return self.num_steps * as_float64(t) - 1.0

    def t_of_label(self, label) -> Tensor:
        return (as_float64(label) + 1.0) / self.num_steps

    def __repr__(self) -> str:
        return f"DiscreteVP(num_steps={self.num_steps})"


# --------------------------------------------------------------------------------------
# alpha = 1 schedules ("variance exploding"): lambda = -log sigma.
# --------------------------------------------------------------------------------------
class _Unscaled(Schedule):
    def log_alpha(self, t) -> Tensor:
        return torch.zeros_like(as_float64(t))

    def d_log_alpha(self, t) -> Tensor:
        return torch.zeros_like(as_float64(t))

    def half_log_snr(self, t) -> Tensor:
        return -torch.log(self.sigma(t))


@dataclass(repr=True)
class VE(_Unscaled):
    """Song et al. (2021) VE SDE: sigma(t) = sigma_min (sigma_max/sigma_min)^t, t in [0, 1]
    (eq. 31); alpha = 1. sigma never reaches zero, so a grid cannot end at "clean data"."""

    sigma_min: float = 0.01
    sigma_max: float = 50.0
    t_min: float = 0.0
    t_max: float = 1.0

    def __post_init__(self):
        if not 0 < self.sigma_min < self.sigma_max:
            raise ValueError("VE needs 0 < sigma_min < sigma_max")

    @property
    def _log_ratio(self) -> float:
        return math.log(self.sigma_max / self.sigma_min)

    def sigma(self, t) -> Tensor:
        return self.sigma_min * torch.exp(as_float64(t) * self._log_ratio)

    def half_log_snr(self, t) -> Tensor:
        return -(math.log(self.sigma_min) + as_float64(t) * self._log_ratio)

    def t_of_half_log_snr(self, lam) -> Tensor:
        return (-as_float64(lam) - math.log(self.sigma_min)) / self._log_ratio

    def d_half_log_snr(self, t) -> Tensor:
        return torch.full_like(as_float64(t), -self._log_ratio)


@dataclass(repr=True)
class EDM(_Unscaled):
    """Karras et al. (2022): alpha = 1 and sigma(t) = t (Table 1, "EDM" column), so time *is*
    the noise level; t runs over [sigma_min, sigma_max] and t = 0 is the clean data."""

    sigma_min: float = 0.002
    sigma_max: float = 80.0
    reaches_zero_noise = True

    def __post_init__(self):
        if not 0 < self.sigma_min < self.sigma_max:
            raise ValueError("EDM needs 0 < sigma_min < sigma_max")

    @property
    def t_min(self) -> float:  # type: ignore[override]
        return self.sigma_min

    @property
    def t_max(self) -> float:  # type: ignore[override]
        return self.sigma_max

    def sigma(self, t) -> Tensor:
        return as_float64(t)

    def t_of_half_log_snr(self, lam) -> Tensor:
        return torch.exp(-as_float64(lam))

    def d_half_log_snr(self, t) -> Tensor:
        return -1.0 / as_float64(t)
