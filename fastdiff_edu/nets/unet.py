"""A small UNet for 8x8 single-channel images (the digits).

Design choices, scaled down from DDPM's UNet (Ho et al. 2020, Appendix B):

* two resolutions below 8x8 (8 -> 4 -> 2), channels (16, 32, 64), one residual block per level
  on the way down and one on the way up (with the skip concatenated), one in the middle;
* residual blocks GroupNorm -> SiLU -> 3x3 conv, the time embedding added after the first conv;
* no attention and no dropout: at 8x8 the receptive field already covers the image, and a
  deterministic net makes training reproducible bit for bit.

About 0.37 M parameters (1.5 MB in float32). The widths are chosen for CPU time, not quality:
on the shared 2-core machine a training step on a batch of 128 took ~0.07 s with channels
(16, 32, 64) against ~0.11 s with (32, 64, 64) (670k parameters), and the 3x3 convolutions'
backward pass is three quarters of it, so a digits model trains in about ten minutes.
"""
from __future__ import annotations

import torch
from torch import nn

from .embedding import TimeEmbedding

Tensor = torch.Tensor


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(8, channels)


class ResBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, emb: int):
        super().__init__()
        self.norm1, self.conv1 = _norm(c_in), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.time = nn.Linear(emb, c_out)
        self.norm2, self.conv2 = _norm(c_out), nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(nn.functional.silu(self.norm1(x)))
        h = h + self.time(emb)[:, :, None, None]
        h = self.conv2(nn.functional.silu(self.norm2(h)))
        return self.skip(x) + h


class TinyUNet(nn.Module):
    def __init__(self, channels: int = 1, base: int = 16, mult: tuple = (1, 2, 4), emb_dim: int = 64):
        super().__init__()
        self.config = dict(channels=channels, base=base, mult=list(mult), emb_dim=emb_dim)
        widths = [base * m for m in mult]
        emb = 4 * base
        self.embed = TimeEmbedding(emb_dim, emb)
        self.inp = nn.Conv2d(channels, widths[0], 3, padding=1)
        self.down = nn.ModuleList()
        self.pool = nn.ModuleList()
        prev = widths[0]
        for i, w in enumerate(widths):
            self.down.append(ResBlock(prev, w, emb))
            prev = w
            if i < len(widths) - 1:
                self.pool.append(nn.Conv2d(w, w, 3, stride=2, padding=1))
        self.mid = ResBlock(prev, prev, emb)
        self.up = nn.ModuleList()
        self.unpool = nn.ModuleList()
        for i, w in reversed(list(enumerate(widths))):
            self.up.append(ResBlock(prev + w, w, emb))
            prev = w
            if i > 0:
                self.unpool.append(nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"),
                                                 nn.Conv2d(w, widths[i - 1], 3, padding=1)))
                prev = widths[i - 1]
        self.out = nn.Sequential(_norm(prev), nn.SiLU(), nn.Conv2d(prev, channels, 3, padding=1))

    def forward(self, x: Tensor, c_noise: Tensor) -> Tensor:
        emb = self.embed(c_noise)
        h = self.inp(x)
        skips = []
        for i, block in enumerate(self.down):
            h = block(h, emb)
            skips.append(h)
            if i < len(self.pool):
                h = self.pool[i](h)
        h = self.mid(h, emb)
        for i, block in enumerate(self.up):
            h = block(torch.cat([h, skips.pop()], dim=1), emb)
            if i < len(self.unpool):
                h = self.unpool[i](h)
        return self.out(h)
