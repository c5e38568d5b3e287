"""A Gaussian mixture: data whose diffused density, score and ODE are known exactly.

If ``x0 ~ sum_k w_k N(mu_k, S_k)`` then ``x_t = alpha x0 + sigma eps`` is again a mixture,
``sum_k w_k N(alpha mu_k, alpha^2 S_k + sigma^2 I)``. Its score is a responsibility-weighted sum
of Gaussian scores, so the ideal denoiser (and with it every sampler's error) is computable to
machine precision. We diagonalise each ``S_k = U_k diag(s_k) U_k^T`` once: then every marginal
covariance shares the eigenvectors U_k and only the eigenvalues ``alpha^2 s_k + sigma^2`` move.
"""
from __future__ import annotations

import math

import torch

from ..prediction import Prediction, classifier_free_guidance
from ..schedules import Schedule, as_float64

Tensor = torch.Tensor

__all__ = ["GaussianMixture"]


def _column(value: Tensor, batch: int) -> Tensor:
    """alpha or sigma as a (batch, 1) column, whether given per sample or as a scalar."""
    value = as_float64(value)
    return value.reshape(-1, 1).expand(batch, 1) if value.numel() == 1 else value.reshape(batch, 1)


class GaussianMixture:
    """``sum_k weights[k] N(means[k], covariances[k])`` in d dimensions.

    ``covariances`` may be full ``(K, d, d)``, diagonal ``(K, d)`` or one variance per
    component ``(K,)``. Everything is stored and computed in float64; results are cast to the
    input's dtype and device.
    """

    def __init__(self, means, covariances, weights=None):
        means = as_float64(means).cpu()
        if means.ndim != 2:
            raise ValueError("means must have shape (K, d)")
        k, d = means.shape
        cov = as_float64(covariances).cpu()
        if cov.shape == (k,):
            cov = cov[:, None, None] * torch.eye(d, dtype=torch.float64)
        elif cov.shape == (k, d):
            cov = torch.diag_embed(cov)
        elif cov.shape != (k, d, d):
            raise ValueError(f"covariances must have shape ({k},), ({k}, {d}) or ({k}, {d}, {d}); got {tuple(cov.shape)}")
        cov = 0.5 * (cov + cov.transpose(1, 2))
        eigvals, eigvecs = torch.linalg.eigh(cov)
        if not bool((eigvals > 0).all()):
            raise ValueError("covariances must be positive definite")
        weights = torch.full((k,), 1.0 / k, dtype=torch.float64) if weights is None else as_float64(weights).cpu()
        if weights.shape != (k,) or not bool((weights > 0).all()):
            raise ValueError(f"weights must be {k} positive numbers")
        self.means, self.covariances = means, cov
        self.weights = weights / weights.sum()
        self.eigvals, self.eigvecs = eigvals, eigvecs
        self.num_components, self.dim = k, d
        self._on_device: dict[str, tuple[Tensor, Tensor, Tensor, Tensor]] = {}

    def __repr__(self) -> str:
        return f"GaussianMixture(components={self.num_components}, dim={self.dim})"

    # -- the data distribution -------------------------------------------------------------
    def sample(self, n: int, generator: torch.Generator | None = None,
               dtype: torch.dtype = torch.float64, device=None) -> Tensor:
        """n exact samples (drawn on the CPU in float64, then moved)."""
        comp = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        scaled = torch.einsum("nij,nj->ni", self.eigvecs[comp], z * self.eigvals[comp].sqrt())
        return (self.means[comp] + scaled).to(dtype=dtype, device=device)

    def mean(self) -> Tensor:
        return self.weights @ self.means

    def covariance(self) -> Tensor:
        centred = self.means - self.mean()
        between = torch.einsum("k,ki,kj->ij", self.weights, centred, centred)
        return torch.einsum("k,kij->ij", self.weights, self.covariances) + between

    def marginal(self, alpha, sigma) -> "GaussianMixture":
        """The distribution of ``alpha x0 + sigma eps`` (scalar alpha, sigma)."""
        alpha, sigma = float(alpha), float(sigma)
        eye = torch.eye(self.dim, dtype=torch.float64)
        return GaussianMixture(alpha * self.means, alpha**2 * self.covariances + sigma**2 * eye, self.weights)

    def marginal_at(self, schedule: Schedule, t) -> "GaussianMixture":
        return self.marginal(schedule.alpha(t), schedule.sigma(t))

    # -- the diffused density and its score, batched ------------------------------------------
    def _parameters(self, device) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(means, eigvecs, eigvals, log weights) on ``device``, copied there once."""
        key = str(device)
        if key not in self._on_device:
            self._on_device[key] = (self.means.to(device), self.eigvecs.to(device), self.eigvals.to(device),
                                    torch.log(self.weights).to(device))
        return self._on_device[key]

    def _components(self, x: Tensor, alpha, sigma):
        """Per component: coordinates in the eigenbasis, marginal eigenvalues, log densities."""
        x = as_float64(x)
        dev = x.device
        alpha = _column(alpha, x.shape[0]).to(dev)
        sigma = _column(sigma, x.shape[0]).to(dev)
        means, eigvecs, eigvals, log_weights = self._parameters(dev)
        # (K, B, d): x - alpha mu_k in the eigenbasis of S_k, one batched matmul
        y = torch.matmul(x[None] - alpha[None] * means[:, None, :], eigvecs)
        lam = alpha[None] ** 2 * eigvals[:, None, :] + sigma[None] ** 2
        log_norm = -0.5 * (torch.log(lam).sum(-1) + self.dim * math.log(2 * math.pi))
        log_comp = log_weights[:, None] + log_norm - 0.5 * (y**2 / lam).sum(-1)
        return y, lam, log_comp.T  # log_comp: (B, K)

    def log_prob(self, x: Tensor, alpha=1.0, sigma=0.0) -> Tensor:
        """log density of the marginal at (alpha, sigma); alpha=1, sigma=0 is the data."""
        _, _, log_comp = self._components(x, alpha, sigma)
        return torch.logsumexp(log_comp, dim=1)

    def _score64(self, x: Tensor, alpha, sigma) -> Tensor:
        y, lam, log_comp = self._components(x, alpha, sigma)
        resp = torch.softmax(log_comp, dim=1)  # (B, K) posterior over components
        grad_in_basis = -(y / lam) * resp.T[:, :, None]
        return torch.matmul(grad_in_basis, self._parameters(y.device)[1].transpose(1, 2)).sum(0)

    def score(self, x: Tensor, alpha, sigma) -> Tensor:
        """grad_x log p_t(x), exactly; alpha and sigma are scalars or one per sample."""
        return self._score64(x, alpha, sigma).to(x.dtype)

    def eps(self, x: Tensor, alpha, sigma) -> Tensor:
        """The ideal noise prediction E[eps | x_t = x] = -sigma * score."""
        sigma_col = _column(sigma, x.shape[0]).to(x.device)
        return (-sigma_col * self._score64(x, alpha, sigma)).to(x.dtype)

    def x0(self, x: Tensor, alpha, sigma) -> Tensor:
        """The ideal denoiser E[x0 | x_t = x] = (x + sigma^2 score) / alpha (Tweedie's formula)."""
        alpha_col = _column(alpha, x.shape[0]).to(x.device)
        sigma_col = _column(sigma, x.shape[0]).to(x.device)
        return ((as_float64(x) + sigma_col**2 * self._score64(x, alpha, sigma)) / alpha_col).to(x.dtype)

    def v(self, x: Tensor, alpha, sigma) -> Tensor:
        """The ideal v-prediction alpha eps - sigma x0 (Salimans & Ho 2022), for VP schedules."""
        alpha_col = _column(alpha, x.shape[0]).to(x.device)
        sigma_col = _column(sigma, x.shape[0]).to(x.device)
        score = self._score64(x, alpha, sigma)
        eps = -sigma_col * score
        x0 = (as_float64(x) + sigma_col**2 * score) / alpha_col
        return (alpha_col * eps - sigma_col * x0).to(x.dtype)

    # -- wrapped as a model ----------------------------------------------------------------------
    def prediction(self, schedule: Schedule, kind: str = "eps") -> Prediction:
        """The exact predictor as a :class:`~fastdiff_edu.prediction.Prediction` of ``kind``
        (``"eps"``, ``"x0"``, ``"v"`` or ``"score"``); it receives float64 times."""
        views = {"eps": self.eps, "x0": self.x0, "v": self.v, "score": self.score}
        if kind not in views:
            raise ValueError(f"kind must be one of {sorted(views)}, got {kind!r}")
        view = views[kind]

        def exact(x: Tensor, t: Tensor) -> Tensor:
            return view(x, schedule.alpha(t), schedule.sigma(t))

        return Prediction(exact, schedule, kind=kind, time="continuous", time_dtype=torch.float64)

    # -- classes: the conditional mixture and classifier-free guidance ---------------------------
    def component(self, k: int) -> "GaussianMixture":
        """The class-conditional distribution of class ``k`` (the mixture's k-th component)."""
        if not 0 <= k < self.num_components:
            raise ValueError(f"class {k} does not exist: the mixture has {self.num_components} components")
        return GaussianMixture(self.means[k:k + 1], self.covariances[k:k + 1])

    def guided_prediction(self, schedule: Schedule, label: int, scale: float, *,
                          threshold: float | None = None, threshold_max: float = 1.0) -> Prediction:
        """Classifier-free guidance with exact scores: ``eps_u + scale (eps_c - eps_u)``, where
        the conditional model is component ``label`` and the unconditional one the whole mixture
        (Ho & Salimans 2022, eq. 6). ``scale = 1`` is the conditional model; larger scales push
        samples away from the other classes. ``threshold`` as in :class:`Prediction`."""
        conditional = self.component(label)

        def unconditional_eps(x: Tensor, t: Tensor) -> Tensor:
            return self.eps(x, schedule.alpha(t), schedule.sigma(t))

        def conditional_eps(x: Tensor, t: Tensor) -> Tensor:
            return conditional.eps(x, schedule.alpha(t), schedule.sigma(t))

        guided = classifier_free_guidance(conditional_eps, unconditional_eps, scale)
        return Prediction(guided, schedule, kind="eps", time="continuous", time_dtype=torch.float64,
                          threshold=threshold, threshold_max=threshold_max)

    # -- the exact probability-flow map of a single Gaussian -------------------------------------------
    def ode_flow(self, x: Tensor, schedule: Schedule, t_from, t_to) -> Tensor:
        """Exact solution of the probability-flow ODE from t_from to t_to (one component only).

        For Gaussian data the ODE is linear and preserves the standardised coordinates:
        ``x_t - alpha_t mu = C_t^{1/2} C_s^{-1/2} (x_s - alpha_s mu)`` with
        ``C_t = alpha_t^2 S + sigma_t^2 I`` (all C_t share S's eigenvectors).
        """
        if self.num_components != 1:
            raise ValueError("the closed-form flow map exists for a single Gaussian (K = 1) only")
        a_s, s_s = float(schedule.alpha(t_from)), float(schedule.sigma(t_from))
        a_t, s_t = float(schedule.alpha(t_to)), float(schedule.sigma(t_to))
        x64 = as_float64(x).cpu()
        u, ev, mu = self.eigvecs[0], self.eigvals[0], self.means[0]
        ratio = torch.sqrt((a_t**2 * ev + s_t**2) / (a_s**2 * ev + s_s**2))
        y = (x64 - a_s * mu) @ u
        return (a_t * mu + (y * ratio) @ u.T).to(dtype=x.dtype, device=x.device)
