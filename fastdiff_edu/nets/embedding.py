"""The time (noise-level) input of the networks: a sinusoidal embedding of one number.

Every network here takes ``(x, c_noise)`` where ``c_noise`` is a float per sample on the scale
of DDPM's integer timesteps (roughly 0..1000): the label ``N t - 1`` for the discrete DDPM
schedule, ``1000 t`` for the cosine schedule and ``250 ln sigma`` for EDM (EDM's
``c_noise = ln(sigma)/4``, Karras et al. 2022 Table 1, times the same factor 1000). One
embedding with fixed frequencies (Vaswani et al. 2017; Ho et al. 2020, Appendix B) then serves
all three. Which ``c_noise`` a schedule uses is decided in :mod:`.conditioning`.
"""
from __future__ import annotations

import math

import torch
from torch import nn

Tensor = torch.Tensor


def sinusoidal(c: Tensor, dim: int, max_period: float = 10_000.0) -> Tensor:
    """``[cos(c w_k), sin(c w_k)]`` with w_k = max_period^(-k/half), k = 0..half-1."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=c.device) / half)
    angles = c.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=1)


class TimeEmbedding(nn.Module):
    """sinusoidal(c) followed by a two-layer MLP (as in DDPM's UNet)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.dim = dim
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))

    def forward(self, c: Tensor) -> Tensor:
        return self.mlp(sinusoidal(c, self.dim).to(self.mlp[0].weight.dtype))
