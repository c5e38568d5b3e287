"""Analytic-DPM (Bao, Li, Zhu & Zhang, ICLR 2022): the optimal reverse variance in closed form.

A DDPM/DDIM-family reverse step from t to s < t keeps DDIM's mean (eq. 6 of the paper; Song et
al. 2021, eq. 12) and draws Gaussian noise of variance sigma^2. Bao et al. show (Theorem 1,
eq. 7) that the variance minimising the KL to the forward posterior q(x_s | x_t, x0) is

    sigma*^2 = lam2 + c0^2 (sigma_t^2/alpha_t^2) (1 - Gamma_t),
    c0       = alpha_s - sqrt(sigma_s^2 - lam2) alpha_t / sigma_t,
    Gamma_t  = E_{q(x_t)} ||eps(x_t, t)||^2 / d,

where lam2 = eta^2 beta_tilde is the variance of the forward family (eta = 1: DDPM, eta = 0:
DDIM) and (sigma_t^2/alpha_t^2)(1 - Gamma_t) is the mean posterior variance of x0 given x_t.
In the paper's notation, sigma_t^2/alpha_t^2 = beta_bar_n/alpha_bar_n and
c0^2 beta_bar_n/alpha_bar_n = (sqrt(beta_bar_n/alpha_n) - sqrt(beta_bar_{n-1} - lam2))^2.
Gamma is one number per time, estimated once by Monte Carlo (eq. 8); since 0 <= 1 - Gamma
<= 1 and the posterior variance of x0 is at most the data's variance, the estimate is clipped
to those bounds (Theorem 2). The same variances make the per-step KL terms analytic,
(d/2) log(sigma*^2/lam2), so the best K of N timesteps come from dynamic programming (Sec. 4).

Book chapter: analytic_dpm.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch
from tqdm import tqdm

from .. import likelihood
from ..prediction import Prediction
from ..schedules import DiscreteVP, Schedule, as_float64
from ._common import Callback, check_inputs
from .ddim import ddim_coefficients, run_transfer
from .registry import SamplerSpec, register

Tensor = torch.Tensor

__all__ = ["GammaTable", "estimate_gamma", "gamma_gaussian", "analytic_variances", "optimal_trajectory",
           "Trajectory", "analytic_ddpm", "analytic_ddim"]


# --------------------------------------------------------------------------------------------
# Gamma_t = E||eps(x_t, t)||^2 / d
# --------------------------------------------------------------------------------------------
@dataclass
class GammaTable:
    """Gamma at a set of times ``t`` (float64, decreasing), with standard errors (0 when exact).

    :meth:`at` returns Gamma at other times: exact look-up where they coincide (to 1e-12),
    linear interpolation in t in between; outside the table's range it raises.
    """

    t: Tensor
    values: Tensor
    stderr: Tensor
    method: str = "exact"
    n_samples: int = 0

    def at(self, times) -> Tensor:
        times = as_float64(times).cpu().reshape(-1)
        order = torch.argsort(self.t)
        t_sorted, v_sorted = self.t[order], self.values[order]
        tol = 1e-12 * max(1.0, float(t_sorted[-1]))
        if bool(((times < t_sorted[0] - tol) | (times > t_sorted[-1] + tol)).any()):
            raise ValueError(f"Gamma is tabulated on [{float(t_sorted[0]):.6g}, {float(t_sorted[-1]):.6g}] only; "
                             "estimate it at the times the sampler uses (estimate_gamma(..., timesteps=grid))")
        if t_sorted.numel() == 1:
            return v_sorted.expand(times.numel()).clone()
        k = (torch.searchsorted(t_sorted, times.clamp(t_sorted[0], t_sorted[-1])) - 1).clamp(0, t_sorted.numel() - 2)
        w = ((times - t_sorted[k]) / (t_sorted[k + 1] - t_sorted[k])).clamp(0.0, 1.0)
        return (1.0 - w) * v_sorted[k] + w * v_sorted[k + 1]


def _default_times(schedule: Schedule, timesteps) -> Tensor:
    if timesteps is None:
        if not isinstance(schedule, DiscreteVP):
            raise ValueError(f"give the times at which to estimate Gamma (timesteps=...) for {schedule!r}; "
                             "only a DiscreteVP has a default (all of its N timestep labels)")
        return schedule.t_of_label(torch.arange(schedule.num_steps - 1, -1, -1, dtype=torch.float64))
    times = as_float64(timesteps).cpu().reshape(-1)
    times = times[times > 0]  # t = 0 (the data) needs no Gamma
    return torch.sort(times, descending=True).values


def estimate_gamma(model: Prediction, data, timesteps=None, *, n_samples: int = 1000, batch_size: int = 256,
                   generator: torch.Generator | None = None, method: str = "eps_norm", rtol: float = 0.1,
                   progress: bool = False) -> GammaTable:
    """Monte Carlo estimate of Gamma_t = E||eps_hat(x_t, t)||^2/d (Bao et al. 2022, eq. 8).

    ``data``: a tensor of data samples or an object with ``.sample(n, generator=...)``;
    ``timesteps``: the times (default: every label of a DiscreteVP; a time 0 is skipped). For
    every time, ``n_samples`` fresh pairs (x0, x_t ~ q(x_t | x0)) are drawn, in batches of
    ``batch_size`` (one model call per time and batch; ``progress`` shows a tqdm bar).

    ``method="eps_norm"`` is the paper's estimator, the mean of ||eps_hat||^2/d.
    ``method="denoising"`` is 1 - mean ||eps - eps_hat||^2/d, equal in expectation for the
    exact eps (see :meth:`~fastdiff_edu.likelihood.DenoisingStats.gamma`) and far more precise
    where Gamma -> 1.

    What the sampler needs is the posterior variance of x0, proportional to 1 - Gamma, so the
    precision is judged on it: if the standard error of 1 - Gamma exceeds ``rtol`` times its
    estimate at any time, a warning says how many samples would be needed there (a
    non-positive estimate of 1 - Gamma needs infinitely many).
    """
    schedule = model.schedule
    times = _default_times(schedule, timesteps)
    if method not in ("eps_norm", "denoising"):
        raise ValueError(f"method must be 'eps_norm' (Bao et al., eq. 8) or 'denoising', got {method!r}")
    if not rtol > 0:
        raise ValueError(f"rtol must be positive, got {rtol}")
    if not isinstance(n_samples, int) or n_samples < 2:
        raise ValueError(f"n_samples must be an integer >= 2 (a standard error needs two), got {n_samples!r}")
    if isinstance(data, Tensor) and data.shape[0] < n_samples:
        raise ValueError(f"data holds {data.shape[0]} samples, fewer than n_samples={n_samples}")
    alpha, sigma = schedule.alpha(times), schedule.sigma(times)
    eps_norm = torch.empty(n_samples, times.numel(), dtype=torch.float64)
    x0_error = torch.empty_like(eps_norm)
    bar = tqdm(total=times.numel() * math.ceil(n_samples / batch_size), desc="Gamma", disable=not progress,
               leave=False)
    for k in range(times.numel()):  # fresh data for every time: the errors of different times are independent
        for start in range(0, n_samples, batch_size):
            b = min(batch_size, n_samples - start)
            x0 = data[start:start + b].to(torch.float64) if isinstance(data, Tensor) else \
                data.sample(b, generator=generator).to(torch.float64)
            z = torch.randn(x0.shape, generator=generator, dtype=torch.float64)
            eps_hat, x0_hat = model.eps_and_x0(alpha[k] * x0 + sigma[k] * z, times[k])
            eps_norm[start:start + b, k] = eps_hat.reshape(b, -1).pow(2).mean(1)
            x0_error[start:start + b, k] = (x0 - x0_hat).reshape(b, -1).pow(2).mean(1)
            bar.update(1)
    bar.close()
    stats = likelihood.DenoisingStats(schedule, torch.cat([times, torch.zeros(1, dtype=torch.float64)]), x0_error,
                                      eps_norm, torch.zeros(n_samples, dtype=torch.float64), None, x0[0].numel())
    values, stderr = stats.gamma(method)
    _warn_if_imprecise(times, values, stderr, n_samples, rtol, method)
    return GammaTable(times, values, stderr, method, n_samples)


def _warn_if_imprecise(times: Tensor, values: Tensor, stderr: Tensor, n_samples: int, rtol: float,
                       method: str) -> None:
    one_minus = 1.0 - values
    std = stderr * math.sqrt(n_samples)  # per-sample standard deviation
    needed = torch.where(one_minus > 0, (std / (rtol * one_minus.clamp(min=1e-300))) ** 2,
                         torch.full_like(one_minus, float("inf")))
    worst = int(torch.argmax(needed))
    if float(needed[worst]) > n_samples:
        need = needed[worst]
        count = (f"{float(need):.3g}" if torch.isfinite(need)
                 else "infinitely many (the estimate of Gamma reached 1)")
        hint = "; method='denoising' estimates 1 - Gamma far more precisely" if method == "eps_norm" else ""
        warnings.warn(f"Gamma from {n_samples} samples: the standard error of 1 - Gamma is "
                      f"{float(stderr[worst]):.3g} at t={float(times[worst]):.6g}, where 1 - Gamma = "
                      f"{float(one_minus[worst]):.3g}; a relative precision of rtol={rtol} there needs n_samples >= "
                      f"{count}{hint}. The sampler clips the variance to Bao et al.'s bounds (Theorem 2)",
                      stacklevel=2)


def gamma_gaussian(data, schedule: Schedule, timesteps=None) -> GammaTable:
    """Gamma in closed form for Gaussian data N(mu, S) (a one-component GaussianMixture).

    E[eps | x_t] = sigma_t C^{-1}(x_t - alpha_t mu) with C = alpha_t^2 S + sigma_t^2 I, hence
    E||E[eps|x_t]||^2 = sigma_t^2 tr C^{-1} and Gamma_t = (1/d) sum_i sigma_t^2/(alpha_t^2 s_i + sigma_t^2)
    over the eigenvalues s_i of S (derived in ``derivations.analytic_dpm.gamma_gaussian``).
    """
    if getattr(data, "num_components", None) != 1:
        raise ValueError("Gamma has a closed form for Gaussian data (a GaussianMixture with one component); "
                         "estimate it by Monte Carlo (estimate_gamma) for a mixture")
    times = _default_times(schedule, timesteps)
    a2, s2 = schedule.alpha(times)[:, None] ** 2, schedule.sigma(times)[:, None] ** 2
    values = (s2 / (a2 * data.eigvals[0][None, :] + s2)).mean(dim=1)
    return GammaTable(times, values, torch.zeros_like(values), "exact", 0)


def _gamma_on(gamma, times: Tensor) -> Tensor:
    if isinstance(gamma, GammaTable):
        return gamma.at(times)
    if callable(gamma):
        return as_float64(gamma(times)).cpu().reshape(-1)
    values = as_float64(gamma).cpu().reshape(-1)
    if values.numel() != times.numel():
        raise ValueError(f"gamma as a tensor needs one value per step ({times.numel()}), got {values.numel()}")
    return values


# --------------------------------------------------------------------------------------------
# the optimal variance (Theorem 1) and its bounds (Theorem 2)
# --------------------------------------------------------------------------------------------
def analytic_variances(schedule: Schedule, timesteps, gamma, *, eta: float = 1.0,
                       x0_variance_bound: float | None = None) -> Tensor:
    """sigma*^2 of every step of ``timesteps`` (float64, one per step), Bao et al. eq. 7.

    ``gamma``: a :class:`GammaTable`, a callable ``t -> Gamma`` or one value per step (at
    ``timesteps[:-1]``). The posterior variance of x0, (sigma_t^2/alpha_t^2)(1 - Gamma), is
    clipped to [0, sigma_t^2/alpha_t^2] (Theorem 2: 0 <= Gamma <= 1) and, if given, to
    ``x0_variance_bound``: an upper bound on the per-dimension variance of the data (the
    posterior variance of x0 averages to at most the prior's: law of total variance; for data
    in [a, b]^d, (b - a)^2/4, the paper's bound: 1 for images in [-1, 1]). On a final step to
    t = 0, lam2 = 0 and c0 = 1: the result is the optimal variance of the Gaussian decoder.
    """
    grid = as_float64(timesteps).cpu()
    c = likelihood.step_coefficients(schedule, grid, eta)
    post = c["post_var_max"] * (1.0 - _gamma_on(gamma, grid[:-1]))
    upper = c["post_var_max"]
    if x0_variance_bound is not None:
        if not x0_variance_bound > 0:
            raise ValueError(f"x0_variance_bound must be positive, got {x0_variance_bound}")
        upper = upper.clamp(max=float(x0_variance_bound))
    post = torch.minimum(post.clamp(min=0.0), upper)
    return c["lam2"] + c["c0"] ** 2 * post


# --------------------------------------------------------------------------------------------
# the optimal trajectory (Sec. 4): dynamic programming on the analytic KL terms
# --------------------------------------------------------------------------------------------
@dataclass
class Trajectory:
    """K descending labels tau_K > ... > tau_1, the grid ``[t(tau_K), ..., t(tau_1), 0]`` and the
    predicted bound of its steps and decoder in bits/dim (prior term excluded: it is the same
    for every trajectory that starts at the last label)."""

    labels: Tensor
    grid: Tensor
    bits_per_dim: float


def _pair_costs(schedule: DiscreteVP, gamma, eta: float, x0_variance_bound: float | None) -> Tensor:
    """C[s, r] (nats/dim) for states 0 = data and n = label n-1: the analytic KL of the step r -> s
    (s >= 1), (1/2) log(sigma*^2/lam2), or the decoder's NLL (s = 0), (1/2) log(2 pi e sigma*^2)."""
    n = schedule.num_steps
    t = torch.cat([torch.zeros(1, dtype=torch.float64), schedule.t_of_label(torch.arange(n, dtype=torch.float64))])
    g = torch.cat([torch.zeros(1, dtype=torch.float64), _gamma_on(gamma, t[1:])])
    valid = torch.arange(n + 1)[:, None] < torch.arange(n + 1)[None, :]
    # rows: s (the next, less noisy state); columns: r (the current state); cells with s >= r are
    # not steps (they may hold inf/nan) and are masked at the end
    c = likelihood.transition_coefficients(schedule, t[None, :], t[:, None], eta)
    lam2, c0, post_max = c["lam2"], c["c0"], c["post_var_max"]
    upper = post_max if x0_variance_bound is None else post_max.clamp(max=float(x0_variance_bound))
    post = torch.minimum((post_max * (1.0 - g[None, :])).clamp(min=0.0), upper)
    var = lam2 + c0**2 * post
    step = 0.5 * torch.log(var / torch.where(lam2 > 0, lam2, torch.ones_like(lam2)))
    decoder = torch.where(post > 0, 0.5 * torch.log(2 * math.pi * math.e * post.clamp(min=1e-300)),
                          torch.full_like(post, float("inf")))  # a zero-variance decoder is unusable
    cost = torch.where(torch.arange(n + 1)[:, None] == 0, decoder.expand_as(step), step)
    return torch.where(valid, cost, torch.full_like(cost, float("inf")))


def optimal_trajectory(schedule: DiscreteVP, gamma, steps, *, eta: float = 1.0,
                       x0_variance_bound: float | None = None):
    """The K = ``steps`` labels (always including the last one, N-1) whose chain with the analytic
    variances has the smallest bound, by dynamic programming (Bao et al. 2022, Sec. 4).

    With sigma*^2 the KL of a step r -> s is (d/2) log(sigma*^2/lam2) (the analytic optimal KL),
    and the decoder's NLL is (d/2) log(2 pi e sigma*^2); the bound is a sum of such pair costs
    along the trajectory, so the cheapest K-step path N -> ... -> 0 follows from
    D_k(r) = min_s D_{k-1}(s) + C(s, r), O(K N^2). Unlike the paper (tau_1 = 1 fixed), the
    decoder's time tau_1 is chosen too. ``gamma`` must cover every label (see
    :func:`estimate_gamma` with its default times). Needs eta > 0 (a finite KL).

    ``steps`` may be a list of step counts: one DP up to the largest gives them all, and the
    result is a dict ``K -> Trajectory``.
    """
    if not isinstance(schedule, DiscreteVP):
        raise ValueError(f"optimal_trajectory picks labels of a DiscreteVP schedule, got {schedule!r}")
    n = schedule.num_steps
    wanted = [steps] if isinstance(steps, int) else list(steps)
    for k in wanted:
        if not isinstance(k, int) or not 1 <= k <= n:
            raise ValueError(f"steps must be integers in [1, {n}], got {k!r}")
    if not eta > 0:
        raise ValueError("the trajectory DP needs a finite KL: eta > 0 (eta = 1 is DDPM)")
    cost = _pair_costs(schedule, gamma, eta, x0_variance_bound)
    best = cost[0].clone()  # best[r]: the cheapest 1-step path r -> data
    values, choices = [float(best[n])], []
    for _ in range(max(wanted) - 1):
        total = best[:, None] + cost  # total[s, r] = best(s) + C(s, r)
        best, arg = total.min(dim=0)
        best[0] = float("inf")  # the data state cannot start a step
        choices.append(arg)
        values.append(float(best[n]))
    result = {}
    for k in wanted:
        states = [n]
        for arg in reversed(choices[:k - 1]):
            states.append(int(arg[states[-1]]))
        labels = torch.tensor(states, dtype=torch.float64) - 1.0
        result[k] = Trajectory(labels, likelihood.grid_from_labels(schedule, labels), values[k - 1] / math.log(2.0))
    return result[steps] if isinstance(steps, int) else result


# --------------------------------------------------------------------------------------------
# the samplers
# --------------------------------------------------------------------------------------------
def _analytic(name: str, model: Prediction, x_T: Tensor, timesteps, eta: float, gamma,
              x0_variance_bound: float | None, generator: torch.Generator | None, callback: Callback | None,
              progress: bool) -> Tensor:
    """The loop both samplers share: DDIM's mean for ``eta`` plus noise of variance sigma*^2."""
    grid = check_inputs(name, model, x_T, timesteps)
    if gamma is None:
        raise ValueError(f"{name} needs gamma=...: estimate it once per model with "
                         "solvers.analytic_dpm.estimate_gamma(model, data) (or gamma_gaussian for Gaussian data)")
    var = analytic_variances(model.schedule, grid, gamma, eta=eta, x0_variance_bound=x0_variance_bound)
    c_x, c_eps, _ = ddim_coefficients(model.schedule, grid, eta)  # DDIM's mean, Bao et al. eq. 6
    std = torch.where(model.schedule.sigma(grid[1:]) == 0, torch.zeros_like(var), var.sqrt())  # sigma*, eq. 7
    return run_transfer(name, model, x_T, grid, c_x, c_eps, std, generator=generator, callback=callback,
                        progress=progress)


def analytic_ddpm(model: Prediction, x_T: Tensor, timesteps, *, gamma=None, x0_variance_bound: float | None = None,
                  generator: torch.Generator | None = None, callback: Callback | None = None,
                  progress: bool = False) -> Tensor:
    """Analytic-DDPM (Bao et al. 2022): DDPM's ancestral step (lam2 = beta_tilde, eta = 1) with the
    optimal variance sigma*^2 of eq. 7 instead of beta or beta_tilde. One NFE per step.

    ``gamma``: Gamma_t (a :class:`GammaTable` from :func:`estimate_gamma` or
    :func:`gamma_gaussian`, a callable, or one value per step); the estimate is clipped to the
    bounds of Theorem 2 (and to ``x0_variance_bound``, the data's per-dimension variance, if
    given). A final step to t = 0 returns the mean (no noise). Book chapter: analytic_dpm.
    """
    return _analytic("analytic-ddpm", model, x_T, timesteps, 1.0, gamma, x0_variance_bound, generator, callback,
                     progress)


def analytic_ddim(model: Prediction, x_T: Tensor, timesteps, *, gamma=None, x0_variance_bound: float | None = None,
                  generator: torch.Generator | None = None, callback: Callback | None = None,
                  progress: bool = False) -> Tensor:
    """Analytic-DDIM (Bao et al. 2022): DDIM's deterministic mean (eta = 0, lam2 = 0) plus Gaussian
    noise of the optimal variance sigma*^2 = c0^2 (sigma_t^2/alpha_t^2)(1 - Gamma_t) (eq. 7
    with lambda = 0). One NFE per step; ``gamma`` as in :func:`analytic_ddpm`. Book chapter:
    analytic_dpm.
    """
    return _analytic("analytic-ddim", model, x_T, timesteps, 0.0, gamma, x0_variance_bound, generator, callback,
                     progress)


register(SamplerSpec("analytic-ddpm", analytic_ddpm, order=None, default_grid="linspace", chapter="analytic_dpm",
                     stochastic=True, summary="DDPM step with Bao et al.'s optimal variance (needs gamma=...)"))
register(SamplerSpec("analytic-ddim", analytic_ddim, order=None, default_grid="linspace", chapter="analytic_dpm",
                     stochastic=True, summary="DDIM mean + Bao et al.'s optimal variance (needs gamma=...)"))
