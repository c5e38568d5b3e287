"""A time-conditioned MLP for 2D data (the toy sets).

Design choices: the time embedding is added to every hidden layer (not only concatenated to
the input), which lets a small net (3 hidden layers of 128, ~125k parameters, 0.5 MB) change its
vector field sharply with the noise level; SiLU activations keep the learned field smooth,
which is what high-order ODE solvers need from a model.
"""
from __future__ import annotations

import torch
from torch import nn

from .embedding import TimeEmbedding

Tensor = torch.Tensor


class TimeMLP(nn.Module):
    def __init__(self, dim: int = 2, hidden: int = 128, depth: int = 3, emb_dim: int = 64):
        super().__init__()
        self.config = dict(dim=dim, hidden=hidden, depth=depth, emb_dim=emb_dim)
        self.embed = TimeEmbedding(emb_dim, hidden)
        self.inp = nn.Linear(dim, hidden)
        self.hidden = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(depth))
        self.time = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(depth))
        self.out = nn.Linear(hidden, dim)

    def forward(self, x: Tensor, c_noise: Tensor) -> Tensor:
        emb = self.embed(c_noise)
        h = self.inp(x)
        for layer, time in zip(self.hidden, self.time):
            h = layer(nn.functional.silu(h + time(emb)))
        return self.out(nn.functional.silu(h))
