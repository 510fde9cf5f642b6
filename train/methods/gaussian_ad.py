"""Gaussian AD (Rippel, Mertens & Merhof, ICPR 2020): one multivariate Gaussian per feature
level of a pretrained network, fitted on good images with Ledoit-Wolf shrinkage; the anomaly
score is the sum of the levels' Mahalanobis distances.

The paper scores whole images from globally pooled features. Here the same Gaussians score
locally pooled features (an average over `window` x `window` feature cells at each level), so
that a map exists: patch-wise scores, the image score from them as for every method."""

import torch
from torch import nn
from torch.nn import functional as F

from ..graph import upsample
from .base import Method


def ledoit_wolf(x):
    """Mean and shrunk covariance of the rows of x (float64)."""
    n, d = x.shape
    mu = x.mean(0)
    xc = x - mu
    s = xc.t() @ xc / n
    m = torch.trace(s) / d
    d2 = ((s - m * torch.eye(d, dtype=x.dtype)) ** 2).sum()
    # (1/n^2) sum_i |x_i x_i^T - S|_F^2, without forming the n outer products
    sq = (xc * xc).sum(1)
    b2 = ((sq * sq).sum() - 2 * ((xc @ s) * xc).sum() + n * (s * s).sum()) / n ** 2
    shrink = float(torch.clamp(torch.minimum(b2, d2) / d2, 0, 1)) if d2 > 0 else 1.0
    return mu, (1 - shrink) * s + shrink * m * torch.eye(d, dtype=x.dtype), shrink


class LevelHead(nn.Module):
    """Pooled feature levels -> the sum of each level's Mahalanobis distance (N x h x w)."""

    def __init__(self, means=(), precisions=()):
        super().__init__()
        self.means = nn.ParameterList([nn.Parameter(m, requires_grad=False) for m in means])
        self.precisions = nn.ParameterList([nn.Parameter(p, requires_grad=False) for p in precisions])

    def forward(self, levels):
        maps = []
        for f, mu, prec in zip(levels, self.means, self.precisions):
            v = f.permute(0, 2, 3, 1) - mu                                   # N x h x w x C
            maps.append(((v @ prec) * v).sum(-1).clamp_min(0.0).sqrt())
        size = maps[0].shape[-2:]
        return sum(m if m.shape[-2:] == size else upsample(m.unsqueeze(1), size).squeeze(1) for m in maps)


class LevelMahalanobis(nn.Module):
    def __init__(self, features, window):
        super().__init__()
        self.features = features
        self.window = int(window)
        self.head = LevelHead()

    def pooled(self, x):
        w = self.window
        return [F.avg_pool2d(f, w, 1, w // 2, count_include_pad=False) if w > 1 else f for f in self.features(x)]

    def forward(self, x):
        return self.head(self.pooled(x))


class GaussianAD(Method):
    name = "gaussian_ad"
    map_kind = "patch-wise: the image-level Gaussians of the paper applied to locally pooled features"

    def __init__(self, ctx, window=3, max_samples=20000):
        super().__init__(ctx)
        self.window = int(window)
        self.max_samples = int(max_samples)

    def build(self):
        feats = self._backbone_norm(self.ctx.features())
        self.scorer = LevelMahalanobis(feats, self.window)
        return self.scorer

    def fold_features(self, batches):
        """The pooled feature levels of every image (one N x C x h x w tensor per level, CPU)."""
        levels = [list(t) for t in zip(*[[f.cpu() for f in self.scorer.pooled(x)] for x in batches()])]
        return [torch.cat(fs) for fs in levels]

    def fold_head(self, levels):
        """The Gaussians (Ledoit-Wolf) of each level fitted on `levels` alone."""
        g = torch.Generator().manual_seed(self.ctx.seed)
        self.shrinkage, means, precs = [], [], []
        for f in levels:
            f = f.permute(0, 2, 3, 1).reshape(-1, f.shape[1]).double()
            if len(f) > self.max_samples:
                f = f[torch.randperm(len(f), generator=g)[:self.max_samples]]
            mu, cov, shrink = ledoit_wolf(f)
            self.shrinkage.append(round(shrink, 4))
            means.append(mu.float())
            precs.append(torch.linalg.inv(cov).float())
        return LevelHead(means, precs)

    def fit_features(self, levels):
        self.scorer.head = self.fold_head(levels).to(self.ctx.device)

    def fit_statistics(self, batches):
        self.fit_features(self.fold_features(batches))

    def precision_hints(self):
        return {"fp16": ["features"], "int8": ["features"], "fp32": ["head"]}

    def params(self):
        return {"window": self.window, "levels": list(self.ctx.strides), "shrinkage": self.shrinkage}
