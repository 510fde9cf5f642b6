"""Normalising-flow pieces shared by FastFlow and CFLOW: an affine coupling step with a soft
clamp and a fixed channel permutation, on N x C x h x w maps (optionally conditioned)."""

import torch
from torch import nn


class Coupling(nn.Module):
    """y2 = x2 * exp(s) + t with (s, t) = subnet([x1, cond]); s softly clamped to +-clamp."""

    def __init__(self, channels, subnet, clamp=2.0, seed=0):
        super().__init__()
        self.c1 = channels // 2
        self.subnet = subnet
        self.clamp = float(clamp)
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("perm", torch.randperm(channels, generator=g))

    def forward(self, x, cond=None):
        x1, x2 = x[:, :self.c1], x[:, self.c1:]
        h = self.subnet(x1 if cond is None else torch.cat([x1, cond], 1))
        s, t = h[:, :x2.shape[1]], h[:, x2.shape[1]:]
        s = self.clamp * torch.tanh(s / self.clamp)
        y = torch.cat([x1, x2 * torch.exp(s) + t], 1)
        return y.index_select(1, self.perm), s.sum(1)                        # N x C x h x w, N x h x w


class Flow(nn.Module):
    def __init__(self, channels, make_subnet, steps, clamp=2.0, seed=0):
        super().__init__()
        self.steps = nn.ModuleList(Coupling(channels, make_subnet(i), clamp, seed + i) for i in range(steps))

    def forward(self, x, cond=None):
        logdet = 0
        for step in self.steps:
            x, ld = step(x, cond)
            logdet = logdet + ld
        return x, logdet
