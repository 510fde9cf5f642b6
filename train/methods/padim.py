"""PaDiM (Defard et al., ICPR 2021): a multivariate Gaussian per patch position over pretrained
features (a random subset of channels), with a regularised covariance; a patch's score is its
Mahalanobis distance to the Gaussian of its position."""

import torch
from torch import nn

from . import param
from .base import StatisticsMethod


class MahalanobisHead(nn.Module):
    """Per-position Mahalanobis distance, exported as a batched MatMul over positions."""

    def __init__(self, idx, mean, inv_cov, hw):
        super().__init__()
        self.hw = tuple(int(v) for v in hw)
        self.register_buffer("idx", idx)
        self.register_buffer("mean", mean)          # P x d
        self.register_buffer("inv_cov", inv_cov)    # P x d x d

    def forward(self, emb):
        f = emb.index_select(1, self.idx).flatten(2).permute(2, 0, 1)   # P x N x d
        diff = f - self.mean.unsqueeze(1)
        m = ((diff @ self.inv_cov) * diff).sum(-1)                       # P x N
        return m.clamp_min(0.0).sqrt().transpose(0, 1).reshape(-1, self.hw[0], self.hw[1])


class Padim(StatisticsMethod):
    name = "padim"
    pool = False   # PaDiM models each position's own features, no neighbourhood averaging
    default_score = "top:0.04"      # ahead of max on PIPED and bsdata (scripts/defaults_study.py)
    fit_size_trend = True           # 100 dimensions from a few dozen images: fewer images, higher scores

    def __init__(self, ctx, dims=100, reg=0.01, seed=0):
        super().__init__(ctx)
        self.dims = param(dims, "dims", int, 1)
        self.reg = param(reg, "reg", float, 0, lo_open=True)
        self.seed = param(seed, "seed", int, 0)

    def _channels(self, c):
        g = torch.Generator().manual_seed(self.seed)
        return torch.randperm(c, generator=g)[:min(self.dims, c)].sort().values

    def _gaussians(self, mean, cov):
        d = cov.shape[-1]
        self.mean = mean.float()
        self.inv_cov = torch.linalg.inv(cov + self.reg * torch.eye(d, dtype=torch.float64)).float()

    def fit(self, emb):
        for _head in self.fold_heads(emb, [range(emb.shape[0])]):
            pass

    def fold_heads(self, emb, fits):
        """The head of each fold's model (fitted on the images `fits[i]`) from sums over all
        images less the sums over the images it leaves out: a fold costs its left-out images
        and one inversion per position, not a pass over every image. `fit` is the fold that
        leaves out none."""
        n, c, h, w = emb.shape
        self.hw = (h, w)
        self.idx = self._channels(c)
        x = emb.index_select(1, self.idx).flatten(2).permute(2, 0, 1).double()   # P x N x d
        centre = x.mean(1, keepdim=True)
        x = x - centre                              # centred once: the sums below stay well conditioned
        s1, s2 = x.sum(1), x.transpose(1, 2) @ x
        for fit in fits:
            out = torch.as_tensor(sorted(set(range(n)) - set(int(i) for i in fit)), dtype=torch.long)
            xo = x.index_select(1, out)
            m = n - out.numel()
            mean = (s1 - xo.sum(1)) / m
            scatter = s2 - xo.transpose(1, 2) @ xo - m * mean.unsqueeze(2) * mean.unsqueeze(1)
            self._gaussians(mean + centre.squeeze(1), scatter / max(1, m - 1))
            yield self.head()

    def int8_rewrites(self):
        return [("quadratic_form", "head")]

    def head(self):
        return MahalanobisHead(self.idx, self.mean, self.inv_cov, self.hw)

    def params(self):
        return {"dims": int(self.idx.numel()), "reg": self.reg, "seed": self.seed, "positions": self.hw[0] * self.hw[1]}
