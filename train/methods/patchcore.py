"""PatchCore (Roth et al., CVPR 2022): a memory bank of locally aware patch features from good
images, thinned by greedy coreset selection; a patch's score is the distance to its nearest
neighbour in the bank."""

import math

import torch
from torch import nn

from edge.common.progress import Progress

from . import param
from .base import StatisticsMethod


def greedy_coreset(x, k, dims=32, seed=0, progress=None):
    """Indices of k rows of x chosen by greedy k-centre selection (farthest point first).

    Distances are computed in a seeded Gaussian random projection to `dims` dimensions, one
    matrix-vector product per pick, so that the cost is n x dims per pick, not n x C."""
    n, c = x.shape
    if k >= n:
        return torch.arange(n)
    g = torch.Generator().manual_seed(seed)
    z = x @ (torch.randn(c, dims, generator=g) / math.sqrt(dims)) if c > dims else x.clone()
    zz = (z * z).sum(1)
    min_d = torch.full((n,), float("inf"))
    d = torch.empty(n)
    idx = torch.empty(k, dtype=torch.long)
    last = int(torch.randint(n, (1,), generator=g))
    step = max(1, k // 50)
    for i in range(k):
        idx[i] = last
        torch.mv(z, z[last], out=d)
        d.mul_(-2).add_(zz).add_(zz[last])
        torch.minimum(min_d, d, out=min_d)
        last = int(torch.argmax(min_d))
        if progress and (i % step == 0 or i == k - 1):
            progress(i + 1, k)
    return idx


class NearestNeighbourHead(nn.Module):
    """Distance of every patch embedding to its nearest bank entry.

    |f - b|^2 = |f|^2 + (|b|^2 - 2 f.b): the bracket is one MatMul against the bank scaled by
    -2 plus one Add, and |f|^2 is added after the ReduceMin, so that only one N x hw x K
    tensor is made (the largest tensor of the graph)."""

    def __init__(self, bank, hw):
        super().__init__()
        self.hw = tuple(int(v) for v in hw)
        self.register_buffer("bank_t_m2", (-2.0 * bank).t().contiguous())
        self.register_buffer("bank_sq", (bank * bank).sum(1))

    def forward(self, emb):
        f = emb.flatten(2).transpose(1, 2)                       # N x hw x C
        d2 = (f @ self.bank_t_m2 + self.bank_sq).amin(-1) + (f * f).sum(-1)
        return d2.clamp_min(0.0).sqrt().reshape(-1, self.hw[0], self.hw[1])


class PatchCore(StatisticsMethod):
    name = "patchcore"
    default_score = "top:0.04"      # ahead of max on PIPED and bsdata (scripts/defaults_study.py)

    def __init__(self, ctx, coreset_ratio=0.1, max_bank=4096, coreset_dims=32, seed=0, pool=0):
        super().__init__(ctx)
        self.coreset_ratio = param(coreset_ratio, "coreset_ratio", float, 0, 1, lo_open=True)
        self.max_bank = param(max_bank, "max_bank", int, 1)
        self.coreset_dims = param(coreset_dims, "coreset_dims", int, 1)
        self.seed = param(seed, "seed", int, 0)
        # PatchCore's 3x3 neighbourhood averaging; off by default: it blurs small defects away
        # (AUPRO -0.07 on PIPED and on bsdata, image AUROC -0.011 on PIPED, +0.003 on bsdata:
        # scripts/defaults_study.py, README "Defaults, chosen on both sets").
        self.pool = bool(param(pool, "pool", int, 0, 1))
        self.bank = None
        self.hw = None

    def fit(self, emb):
        progress = Progress("coreset", 1)
        n, c, h, w = emb.shape
        self.hw = (h, w)
        patches = emb.permute(0, 2, 3, 1).reshape(-1, c).contiguous()
        k = max(1, min(self.max_bank, int(round(self.coreset_ratio * patches.shape[0]))))
        idx = greedy_coreset(patches, k, self.coreset_dims, self.seed, progress)
        self.bank = patches[idx].clone()
        self.n_patches = patches.shape[0]

    def int8_rewrites(self):
        return [("bank_product", "head")]

    def head(self):
        return NearestNeighbourHead(self.bank, self.hw)

    def params(self):
        return {"coreset_ratio": self.coreset_ratio, "max_bank": self.max_bank, "coreset_dims": self.coreset_dims,
                "seed": self.seed, "pool": int(self.pool), "bank_size": int(self.bank.shape[0]), "patches": int(self.n_patches),
                "feature_dims": int(self.bank.shape[1])}
