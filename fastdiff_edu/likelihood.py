"""The variational bound (bits/dim) of a K-step Gaussian reverse chain, by Monte Carlo with
standard errors, next to the exact negative log-likelihood of the data.

The model
---------
A *K-step discrete-time model* is a decreasing grid ``t_K > ... > t_1 > t_0 = 0`` (the last
point must be exactly 0: clean data) and one reverse variance per step. With
``x_t = alpha_t x0 + sigma_t eps`` it is the chain

    p(x_{t_K})               = N(0, prior_std^2 I)
    p(x_{t_{k-1}} | x_{t_k}) = N(mu_k(x_{t_k}), var_k I)      k = K, ..., 2
    p(x0 | x_{t_1})          = N(x0_hat(x_{t_1}), var_1 I)     the Gaussian decoder

whose means are those of the DDIM family of forward posteriors (Song et al. 2021, eq. 7 and
12; Bao et al. 2022, eq. 6), with the model's x0_hat in place of x0:

    q(x_s | x_t, x0) = N(alpha_s x0 + sqrt(sigma_s^2 - lam2) (x_t - alpha_t x0)/sigma_t, lam2 I),
    mu(x_t)          = the same mean with x0 -> x0_hat(x_t),

    lam2 = eta^2 * beta_tilde,   beta_tilde = sigma_s^2 (1 - alpha_t^2 sigma_s^2 / (alpha_s^2 sigma_t^2)).

``eta = 1`` (default) is DDPM's Markov forward process (lam2 = beta_tilde). The bound is
infinite for ``eta = 0`` (a deterministic q against a Gaussian p), so DDIM-family chains have
no finite bound and ``eta`` must be positive.

The bound (continuous data, no discretisation)
---------------------------------------------
For data with a density (here: Gaussian mixtures, whose ``log_prob`` is exact) we use the
Gaussian decoder above and *no* discretisation, so that the usual chain of inequalities

    E[-log p_data(x0)]  <=  E[-log p_model(x0)]  <=  E[L(x0)],
    L(x0) = KL(q(x_{t_K}|x0) || p(x_{t_K}))                                     (prior)
          + sum_{k=2}^K E_q KL(q(x_{t_{k-1}}|x_{t_k},x0) || p(x_{t_{k-1}}|x_{t_k}))  (steps)
          + E_q[-log p(x0 | x_{t_1})]                                           (decoder)

holds (Ho et al. 2020, eq. 5; Bao et al. 2022, eq. 4 restricted to a trajectory): the bound is
never below the exact NLL, the entropy of the data, and the gap is the sum of the model's
excess cross-entropy and the bound's own slack. Values are in bits per dimension,
``nats / (d ln 2)``; they may be negative, since a continuous density can exceed 1.

Every Gaussian term only needs, per data sample x0 and step, the squared error of the model's
x0 prediction at an x_t drawn from q(x_t | x0):

    KL_step = d/2 [lam2/var - 1 + log(var/lam2)] + c0^2 ||x0 - x0_hat(x_t)||^2 / (2 var),
    c0      = alpha_s - sqrt(sigma_s^2 - lam2) alpha_t / sigma_t,
    decoder = d/2 log(2 pi var_1) + ||x0 - x0_hat(x_{t_1})||^2 / (2 var_1),
    prior   = d/2 [sigma_T^2/p^2 - 1 - log(sigma_T^2/p^2)] + alpha_T^2 ||x0||^2 / (2 p^2).

How it is estimated
-------------------
:func:`denoising_stats` draws ``n_samples`` data points x0 and, for every step, a fresh
x_t ~ q(x_t | x0) (independent across steps: each term only needs the pair's marginal), and
stores ``||x0 - x0_hat||^2/d`` and ``||eps_hat||^2/d`` (the latter gives Bao et al.'s Gamma).
That costs K model calls per batch and is done once; :func:`vlb` then evaluates the bound for
any number of variance choices at no further cost. Each data sample's bound ``L(x0_i)`` is a
sum over steps, so the reported standard error, ``std(L_i)/sqrt(n)``, includes the
correlations between terms; each term also carries its own standard error. When the data
has a ``log_prob`` (:class:`~fastdiff_edu.problems.GaussianMixture`), the exact NLL of the
*same* x0 samples is stored too, so the gap ``bound - NLL`` is estimated with a paired
(much smaller) standard error.

Typical use (the API the Analytic-DPM and FastDPM chapters share)::

    from fastdiff_edu import likelihood, problems, schedules
    sched = schedules.DiscreteVP.ddpm_linear()
    data = problems.gmm64()
    model = data.prediction(sched)
    grid = likelihood.grid_from_labels(sched, [999, 899, ..., 0])     # or any grid ending at 0
    stats = likelihood.denoising_stats(model, data, grid, n_samples=256,
                                       generator=torch.Generator().manual_seed(0))
    small = likelihood.vlb(stats, likelihood.fixed_variances(sched, grid, "small"))
    large = likelihood.vlb(stats, likelihood.fixed_variances(sched, grid, "large"))
    print(small.bits_per_dim, small.stderr, small.nll_bits_per_dim, small.gap, small.gap_stderr)

    # or in one call:
    res = likelihood.vlb_bits_per_dim(model, data, grid, "small", n_samples=256, generator=gen)

Book chapter: analytic_dpm (also used by fastdpm).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from tqdm import tqdm

from .prediction import Prediction
from .schedules import DiscreteVP, Schedule, as_float64
from .timesteps import validate

Tensor = torch.Tensor

__all__ = [
    "grid_from_labels",
    "step_coefficients",
    "forward_variances",
    "fixed_variances",
    "DenoisingStats",
    "denoising_stats",
    "VLBResult",
    "vlb",
    "vlb_bits_per_dim",
    "mean_and_stderr",
]

LN2 = math.log(2.0)


# --------------------------------------------------------------------------------------------
# grids and per-step coefficients
# --------------------------------------------------------------------------------------------
def grid_from_labels(schedule: DiscreteVP, labels) -> Tensor:
    """Descending timestep labels ``tau_K > ... > tau_1`` of a :class:`DiscreteVP` (0-based,
    ``label = N t - 1``; fractional labels allowed) -> the grid ``[t(tau_K), ..., t(tau_1), 0]``.

    The final 0 is the clean data: the last step of the chain is the decoder p(x0 | x_{tau_1}).
    In the papers' 1-based notation (Ho et al., Bao et al.), label ``n`` is timestep ``n + 1``.
    """
    if not isinstance(schedule, DiscreteVP):
        raise ValueError(f"grid_from_labels needs a DiscreteVP schedule, got {schedule!r}")
    labels = as_float64(labels).cpu().reshape(-1)
    grid = torch.cat([schedule.t_of_label(labels), torch.zeros(1, dtype=torch.float64)])
    return validate(schedule, grid, what="the labels (as times)")


def _check_grid(schedule: Schedule, timesteps) -> Tensor:
    grid = validate(schedule, timesteps, what="the grid of the chain")
    if float(grid[-1]) != 0.0:
        raise ValueError("the grid of a chain with a likelihood must end at t = 0 (the clean data: the last step is "
                         f"the decoder p(x0 | x_t1)); it ends at t={float(grid[-1])}. Append 0, e.g. with "
                         "grid_from_labels(schedule, labels)")
    if not schedule.reaches_zero_noise:
        raise ValueError(f"{schedule!r} never reaches zero noise, so a chain on it cannot end at the data")
    return grid


def step_coefficients(schedule: Schedule, timesteps, eta: float = 1.0) -> dict[str, Tensor]:
    """float64 per-step quantities of the DDIM family on ``timesteps`` (step i: grid[i] -> grid[i+1]).

    Returns a dict of (K,) tensors: ``alpha_t, sigma_t, alpha_s, sigma_s``; ``beta`` = 1 -
    alpha_t^2 sigma_s^2/(alpha_s^2 sigma_t^2) times sigma_t^2 (DDPM's beta_t of the step, "fixed
    large"); ``beta_tilde`` = the Markov posterior variance sigma_s^2 (1 - e^{-2h}) ("fixed
    small", 0 on a step to t = 0); ``lam2`` = eta^2 beta_tilde; ``c0`` = alpha_s - sqrt(sigma_s^2
    - lam2) alpha_t/sigma_t, the weight of x0 in the forward posterior mean (so the mean error of
    the model is c0 (x0 - x0_hat)); ``post_var_max`` = sigma_t^2/alpha_t^2, the posterior variance
    of x0 when x_t says nothing (Gamma = 0).
    """
    grid = as_float64(timesteps).cpu()
    return transition_coefficients(schedule, grid[:-1], grid[1:], eta)


def transition_coefficients(schedule: Schedule, t_from: Tensor, t_to: Tensor, eta: float = 1.0) -> dict[str, Tensor]:
    """:func:`step_coefficients` for the steps ``t_from -> t_to`` (broadcastable float64 tensors of
    times, ``t_to < t_from``), e.g. every pair of a trajectory search at once."""
    alpha_t, sigma_t, lam_t = schedule.alpha(t_from), schedule.sigma(t_from), schedule.half_log_snr(t_from)
    alpha_s, sigma_s, lam_s = schedule.alpha(t_to), schedule.sigma(t_to), schedule.half_log_snr(t_to)
    shrink = -torch.expm1(-2.0 * (lam_s - lam_t))  # 1 - e^{-2h}; = 1 on a step to t = 0
    beta_tilde = sigma_s**2 * shrink
    beta = sigma_t**2 * shrink
    lam2 = eta**2 * beta_tilde
    c0 = alpha_s - torch.sqrt((sigma_s**2 - lam2).clamp(min=0.0)) * alpha_t / sigma_t
    return {"alpha_t": alpha_t, "sigma_t": sigma_t, "alpha_s": alpha_s, "sigma_s": sigma_s,
            "beta": beta, "beta_tilde": beta_tilde, "lam2": lam2, "c0": c0,
            "post_var_max": (sigma_t / alpha_t) ** 2}


def forward_variances(schedule: Schedule, timesteps, eta: float = 1.0) -> Tensor:
    """lambda^2 per step: the variance of the forward posterior q(x_s | x_t, x0), eta^2 beta_tilde."""
    return step_coefficients(schedule, timesteps, eta)["lam2"]


def fixed_variances(schedule: Schedule, timesteps, kind: str = "small") -> Tensor:
    """The two hand-picked reverse variances of Ho et al. (2020), Sec. 3.2, on any grid.

    ``"small"``: beta_tilde of each step (the Markov posterior variance, optimal when x0 is a
    single point); ``"large"``: beta of each step, 1 - alpha_t^2/alpha_s^2 on VP schedules
    (optimal for x0 ~ N(0, I)). The final step to t = 0 is the decoder, where beta_tilde = 0
    would give an infinite NLL: for *both* choices the decoder takes the beta_tilde of the step
    that lands on t_1 (on the full 1000-step chain: beta_tilde_2), as Nichol & Dhariwal's
    ``posterior_log_variance_clipped`` and Bao et al.'s ``nelbo_naive_ddpm`` do. On a one-step
    grid (no such step) the decoder gets sigma_{t_1}^2.
    """
    c = step_coefficients(schedule, timesteps)
    if kind == "small":
        var = c["beta_tilde"].clone()
    elif kind == "large":
        var = c["beta"].clone()
    else:
        raise ValueError(f"kind must be 'small' (beta_tilde) or 'large' (beta), got {kind!r}")
    if bool(c["sigma_s"][-1] == 0):
        var[-1] = c["beta_tilde"][-2] if var.numel() > 1 else c["sigma_t"][-1] ** 2
    return var


# --------------------------------------------------------------------------------------------
# Monte Carlo statistics: one pass over the model, reused for every variance choice
# --------------------------------------------------------------------------------------------
def mean_and_stderr(values: Tensor, dim: int = 0) -> tuple[Tensor, Tensor]:
    """Sample mean and its standard error std/sqrt(n) (unbiased std) along ``dim``."""
    n = values.shape[dim]
    mean = values.mean(dim=dim)
    if n < 2:
        return mean, torch.full_like(mean, float("nan"))
    return mean, values.std(dim=dim, unbiased=True) / math.sqrt(n)


@dataclass
class DenoisingStats:
    """Per data sample and per step, what the Gaussian KL terms (and Gamma) need.

    ``x0_error[i, k]`` = ||x0_i - x0_hat(x_t)||^2 / d and ``eps_norm[i, k]`` = ||eps_hat(x_t)||^2/d
    with x_t ~ q(x_{grid[k]} | x0_i), for steps k = 0..K-1 (the step leaving ``grid[k]``);
    ``x0_norm[i]`` = ||x0_i||^2/d (for the prior term); ``log_prob[i]`` = log p_data(x0_i) in
    nats (None when the data has no density). All float64 on the CPU.
    """

    schedule: Schedule
    grid: Tensor
    x0_error: Tensor
    eps_norm: Tensor
    x0_norm: Tensor
    log_prob: Tensor | None
    dim: int

    @property
    def n_samples(self) -> int:
        return self.x0_error.shape[0]

    @property
    def steps(self) -> int:
        return self.grid.numel() - 1

    def gamma(self, method: str = "eps_norm") -> tuple[Tensor, Tensor]:
        """Gamma_n = E||eps_hat(x_n)||^2/d at ``grid[:-1]``, and its standard error.

        ``"eps_norm"``: Bao et al.'s estimator (eq. 8), the sample mean of ||eps_hat||^2/d.
        ``"denoising"``: 1 - (alpha_t^2/sigma_t^2) * mean ||x0 - x0_hat||^2/d = 1 - mean
        ||eps - eps_hat||^2/d. Both have the same expectation when eps_hat is the exact
        E[eps | x_t] (then E||eps||^2 = E||eps_hat||^2 + E||eps - eps_hat||^2); the second
        estimates 1 - Gamma with a small *relative* error even where Gamma -> 1 (high noise),
        where the first is lost in cancellation.
        """
        if method == "eps_norm":
            return mean_and_stderr(self.eps_norm)
        if method == "denoising":
            ratio = (self.schedule.alpha(self.grid[:-1]) / self.schedule.sigma(self.grid[:-1])) ** 2
            mean, se = mean_and_stderr(self.x0_error)
            return 1.0 - ratio * mean, ratio * se
        raise ValueError(f"method must be 'eps_norm' or 'denoising', got {method!r}")

    def posterior_variance(self) -> tuple[Tensor, Tensor]:
        """E||x0 - x0_hat(x_t)||^2/d at ``grid[:-1]`` and its standard error: for the exact model,
        the mean posterior variance of x0 per dimension, (sigma_t^2/alpha_t^2)(1 - Gamma)."""
        return mean_and_stderr(self.x0_error)


def _draw_data(data, n: int, offset: int, generator, dtype, device) -> Tensor:
    if isinstance(data, Tensor):
        return data[offset:offset + n].to(dtype=dtype, device=device)
    return data.sample(n, generator=generator).to(dtype=dtype, device=device)


def denoising_stats(model: Prediction, data, timesteps, n_samples: int, *, batch_size: int = 256,
                    generator: torch.Generator | None = None, dtype: torch.dtype = torch.float64,
                    device=None, progress: bool = False) -> DenoisingStats:
    """Monte Carlo pass: ``n_samples`` data points, one fresh x_t per data point and step.

    ``data`` is either an object with ``.sample(n, generator=...)`` (e.g. a
    :class:`~fastdiff_edu.problems.GaussianMixture`; its ``log_prob``, if any, is recorded) or
    a tensor of data samples (its first ``n_samples`` rows are used, in order). ``timesteps``
    is the chain's decreasing grid; it must end at 0 (see :func:`grid_from_labels`). The
    model is called once per step and batch, ``K * ceil(n_samples / batch_size)`` calls in all.
    Random numbers come from ``generator`` (data, then the noise of step 0, 1, ... per batch),
    so the result is reproducible bit for bit.
    """
    schedule = model.schedule
    grid = _check_grid(schedule, timesteps)
    if not isinstance(n_samples, int) or n_samples < 2:
        raise ValueError(f"n_samples must be an integer >= 2 (a standard error needs two samples), got {n_samples!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if isinstance(data, Tensor) and data.shape[0] < n_samples:
        raise ValueError(f"data holds {data.shape[0]} samples, fewer than n_samples={n_samples}")
    if not isinstance(data, Tensor) and not hasattr(data, "sample"):
        raise TypeError("data must be a tensor of samples or have a .sample(n, generator=...) method, "
                        f"got {type(data).__name__}")
    steps = grid.numel() - 1
    alpha, sigma = schedule.alpha(grid[:-1]), schedule.sigma(grid[:-1])
    x0_error = torch.empty(n_samples, steps, dtype=torch.float64)
    eps_norm = torch.empty(n_samples, steps, dtype=torch.float64)
    x0_norm = torch.empty(n_samples, dtype=torch.float64)
    has_density = not isinstance(data, Tensor) and hasattr(data, "log_prob")
    log_prob = torch.empty(n_samples, dtype=torch.float64) if has_density else None
    bar = tqdm(total=steps * math.ceil(n_samples / batch_size), desc="denoising stats", disable=not progress,
               leave=False)
    dim = None
    for start in range(0, n_samples, batch_size):
        b = min(batch_size, n_samples - start)
        x0 = _draw_data(data, b, start, generator, dtype, device)
        dim = x0[0].numel()
        flat0 = x0.reshape(b, -1).to(torch.float64)
        x0_norm[start:start + b] = flat0.pow(2).mean(dim=1).cpu()
        if has_density:
            log_prob[start:start + b] = data.log_prob(flat0).cpu()
        a_k, s_k = alpha.to(x0.device, dtype), sigma.to(x0.device, dtype)
        for k in range(steps):
            z = torch.randn(x0.shape, generator=generator, dtype=dtype, device=x0.device)
            x_t = a_k[k] * x0 + s_k[k] * z
            eps_hat, x0_hat = model.eps_and_x0(x_t, grid[k].to(x0.device))
            x0_error[start:start + b, k] = (x0 - x0_hat).reshape(b, -1).to(torch.float64).pow(2).mean(1).cpu()
            eps_norm[start:start + b, k] = eps_hat.reshape(b, -1).to(torch.float64).pow(2).mean(1).cpu()
            bar.update(1)
    bar.close()
    return DenoisingStats(schedule, grid, x0_error, eps_norm, x0_norm, log_prob, dim)


# --------------------------------------------------------------------------------------------
# the bound
# --------------------------------------------------------------------------------------------
@dataclass
class VLBResult:
    """The variational bound of one chain, in bits/dim, with Monte Carlo standard errors.

    ``bits_per_dim`` +- ``stderr``: E[L(x0)]/(d ln 2). ``terms``/``terms_stderr``: K+1 entries,
    the prior KL first, then the steps in sampling order (the last one is the decoder's NLL);
    they sum to ``bits_per_dim``. ``nll_bits_per_dim`` +- ``nll_stderr``: the exact
    -E log p_data(x0)/(d ln 2) on the same x0 samples, and ``gap`` +- ``gap_stderr`` the paired
    difference bound - NLL (None when the data has no density). ``per_sample``: L(x0_i) in
    bits/dim. ``variances``: the reverse variances used (float64, one per step).
    """

    bits_per_dim: float
    stderr: float
    terms: Tensor
    terms_stderr: Tensor
    nll_bits_per_dim: float | None
    nll_stderr: float | None
    gap: float | None
    gap_stderr: float | None
    per_sample: Tensor = field(repr=False)
    variances: Tensor = field(repr=False)
    steps: int = 0
    n_samples: int = 0

    def __str__(self) -> str:
        text = f"bound {self.bits_per_dim:.4f} +- {self.stderr:.4f} bits/dim ({self.steps} steps, n={self.n_samples})"
        if self.gap is not None:
            text += (f"; exact NLL {self.nll_bits_per_dim:.4f} +- {self.nll_stderr:.4f}; "
                     f"gap {self.gap:.4f} +- {self.gap_stderr:.4f}")
        return text


def _per_sample_terms(stats: DenoisingStats, variances: Tensor, eta: float) -> Tensor:
    """(n, K+1) nats per dimension: prior KL, then every step's term."""
    schedule = stats.schedule
    c = step_coefficients(schedule, stats.grid, eta)
    var = as_float64(variances).cpu().reshape(-1)
    if var.numel() != stats.steps:
        raise ValueError(f"need one reverse variance per step ({stats.steps}), got {var.numel()}")
    if not bool((var > 0).all()) or not bool(torch.isfinite(var).all()):
        raise ValueError("reverse variances must be positive and finite")
    lam2, c0 = c["lam2"], c["c0"]
    to_data = c["sigma_s"] == 0
    if bool(((lam2 <= 0) & ~to_data).any()):
        raise ValueError("the bound is infinite when the forward posterior is deterministic (eta = 0, the DDIM "
                         "family): a Gaussian reverse step cannot cover a point mass. Use eta > 0 (eta = 1: DDPM)")
    # per dimension: d/2 [...] / d
    safe_lam2 = torch.where(to_data, torch.ones_like(lam2), lam2)
    const = torch.where(to_data, 0.5 * torch.log(2 * math.pi * var),
                        0.5 * (lam2 / var - 1.0 + torch.log(var / safe_lam2)))
    weight = torch.where(to_data, torch.ones_like(c0), c0**2) / (2.0 * var)
    steps = const[None, :] + weight[None, :] * stats.x0_error
    p2 = schedule.prior_std**2
    s_T, a_T = float(c["sigma_t"][0]) ** 2, float(c["alpha_t"][0]) ** 2
    prior = 0.5 * (s_T / p2 - 1.0 - math.log(s_T / p2)) + a_T * stats.x0_norm / (2.0 * p2)
    return torch.cat([prior[:, None], steps], dim=1)


def vlb(stats: DenoisingStats, variances, *, eta: float = 1.0) -> VLBResult:
    """The bound for the reverse ``variances`` (one per step, in grid order, or ``"small"`` /
    ``"large"`` for :func:`fixed_variances`), from statistics computed once by
    :func:`denoising_stats`. ``eta`` fixes the forward family (lam2 = eta^2 beta_tilde; must be
    > 0). See the module docstring for the formulas."""
    if not eta > 0:
        raise ValueError(f"eta must be > 0 for a finite bound (eta = 1 is DDPM), got {eta}")
    if isinstance(variances, str):
        variances = fixed_variances(stats.schedule, stats.grid, variances)
    var = as_float64(variances).cpu().reshape(-1)
    terms = _per_sample_terms(stats, var, eta) / LN2  # bits/dim
    per_sample = terms.sum(dim=1)
    total, total_se = mean_and_stderr(per_sample)
    t_mean, t_se = mean_and_stderr(terms)
    nll = nll_se = gap = gap_se = None
    if stats.log_prob is not None:
        nll_i = -stats.log_prob / (stats.dim * LN2)
        nll, nll_se = (float(v) for v in mean_and_stderr(nll_i))
        gap, gap_se = (float(v) for v in mean_and_stderr(per_sample - nll_i))
    return VLBResult(float(total), float(total_se), t_mean, t_se, nll, nll_se, gap, gap_se,
                     per_sample, var, stats.steps, stats.n_samples)


def vlb_bits_per_dim(model: Prediction, data, timesteps, variances, *, n_samples: int = 256,
                     batch_size: int = 256, eta: float = 1.0, generator: torch.Generator | None = None,
                     progress: bool = False):
    """One call: :func:`denoising_stats` then :func:`vlb`.

    ``variances`` may be one choice (a (K,) tensor, ``"small"`` or ``"large"``) -> a
    :class:`VLBResult`, or a dict ``name -> choice`` -> a dict of results that share the same
    Monte Carlo samples (so their differences are estimated more precisely than each bound).
    A choice may also be a callable ``f(stats) -> (K,) tensor`` (e.g. variances estimated from
    the statistics).
    """
    stats = denoising_stats(model, data, timesteps, n_samples, batch_size=batch_size, generator=generator,
                            progress=progress)

    def one(choice):
        return vlb(stats, choice(stats) if callable(choice) else choice, eta=eta)

    if isinstance(variances, dict):
        return {name: one(choice) for name, choice in variances.items()}
    return one(variances)
