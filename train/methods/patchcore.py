"""PatchCore (Roth et al., CVPR 2022): a memory bank of locally aware patch features from good
images, thinned by greedy coreset selection; a patch's score is the distance to its nearest
neighbour in the bank."""

import math

import torch
from torch import nn

from edge.common.progress import Progress

from . import param
from .base import StatisticsMethod


NEAR = 4      # nearest coreset entries kept per patch for the fold banks


def project(x, dims=32, seed=0):
    """x (n x C) in a seeded Gaussian random projection to `dims` dimensions (a copy of x where
    C <= dims), and the generator that made it (it then picks the first coreset entry)."""
    g = torch.Generator().manual_seed(seed)
    c = x.shape[1]
    z = x @ (torch.randn(c, dims, generator=g) / math.sqrt(dims)) if c > dims else x.clone()
    return z, g


def _cover(z, zz, last, d, min_d):
    """min_d (each row's squared distance to the centres so far) updated in place for the new
    centre `last`: one matrix-vector product, n x dims."""
    torch.mv(z, z[last], out=d)
    d.mul_(-2).add_(zz).add_(zz[last])
    torch.minimum(min_d, d, out=min_d)


def _select(z, zz, k, g, progress=None):
    """Indices of k rows of z (squared norms zz) by greedy k-centre selection (farthest point
    first), the first row drawn with the generator g."""
    n = z.shape[0]
    if k >= n:
        return torch.arange(n)
    min_d, d = torch.full((n,), float("inf")), torch.empty(n)
    idx = torch.empty(k, dtype=torch.long)
    last = int(torch.randint(n, (1,), generator=g))
    step = max(1, k // 50)
    for i in range(k):
        idx[i] = last
        _cover(z, zz, last, d, min_d)
        last = int(torch.argmax(min_d))
        if progress and (i % step == 0 or i == k - 1):
            progress(i + 1, k)
    return idx


def greedy_coreset(x, k, dims=32, seed=0, progress=None):
    """Indices of k rows of x chosen by greedy k-centre selection (farthest point first).

    Distances are computed in a seeded Gaussian random projection to `dims` dimensions, one
    matrix-vector product per pick, so that the cost is n x dims per pick, not n x C."""
    if k >= x.shape[0]:
        return torch.arange(x.shape[0])
    z, g = project(x, dims, seed)
    return _select(z, (z * z).sum(1), k, g, progress)


def nearest(zq, zzq, zc, zzc, k=None, chunk=8192):
    """(squared distance, index) of each query row's nearest centre, or with k the k nearest
    (N x k, nearest first), in chunks of rows."""
    dist, arg = torch.empty(zq.shape[0], k or 1), torch.empty(zq.shape[0], k or 1, dtype=torch.long)
    zc_t = (-2.0 * zc).t().contiguous()
    for i in range(0, zq.shape[0], chunk):
        d = torch.addmm(zzc.unsqueeze(0), zq[i:i + chunk], zc_t)
        d.add_(zzq[i:i + chunk].unsqueeze(1))
        if k is None:
            torch.min(d, 1, keepdim=True, out=(dist[i:i + chunk], arg[i:i + chunk]))
        else:
            torch.topk(d, k, 1, largest=False, out=(dist[i:i + chunk], arg[i:i + chunk]))
    return (dist[:, 0], arg[:, 0]) if k is None else (dist, arg)


class FoldCoresets:
    """One greedy coreset over every image's patches, and from it the bank of each fold's model
    (fitted without some images) for the threshold's fold scoring.

    A fold's bank is the coreset less the entries taken from the images left out, then covered
    again: the fitted patches whose nearest entry was removed get new entries, farthest first
    (the greedy selection continued over those patches alone), until each lies within the
    coreset's radius (the largest distance of any patch to its nearest entry), or the bank holds
    as many entries as the fold's own images would give (coreset_ratio x their patches, at most
    max_bank). The fold's model thus keeps the coreset's guarantee (every fitted patch within its
    radius of the bank) at the cost of a look-up in each patch's NEAR nearest entries (found
    once for all folds) and a short selection over the removed entries' patches, not a coreset
    of its own per fold."""

    def __init__(self, patches, per_image, ratio, max_bank, dims, seed, progress=None):
        self.patches, self.per_image = patches, int(per_image)
        self.ratio, self.max_bank = ratio, max_bank
        n = patches.shape[0]
        self.k = bank_size(n, ratio, max_bank)
        self.z, g = project(patches, dims, seed)
        self.zz = (self.z * self.z).sum(1)
        self.idx = _select(self.z, self.zz, self.k, g, progress)
        self.near = self.near_d = self.by_entry = self.starts = self.radius = None

    def fold(self, fit_images):
        """Bank indices (rows of `patches`) of a model fitted on the images `fit_images` only."""
        n_img = self.patches.shape[0] // self.per_image
        keep_img = torch.zeros(n_img, dtype=torch.bool)
        keep_img[torch.as_tensor(list(fit_images), dtype=torch.long)] = True
        kept = keep_img[self.idx // self.per_image]
        base = self.idx[kept]
        picks = bank_size(int(keep_img.sum()) * self.per_image, self.ratio, self.max_bank) - base.numel()
        if picks <= 0 or kept.all():
            return base
        if self.radius is None:   # each patch's NEAR nearest coreset entries, once for all folds
            self.near_d, self.near = nearest(self.z, self.zz, self.z[self.idx], self.zz[self.idx], k=NEAR)
            self.radius = float(self.near_d[:, 0].max())
            self.by_entry = self.near[:, 0].argsort()    # patches grouped by their nearest entry
            self.starts = torch.cat([torch.zeros(1, dtype=torch.long),
                                     torch.bincount(self.near[:, 0], minlength=self.idx.numel()).cumsum(0)])
        removed = (~kept).nonzero().flatten().tolist()
        lost = torch.cat([self.by_entry[self.starts[j]:self.starts[j + 1]] for j in removed])
        lost = lost[keep_img[lost // self.per_image]]    # fitted patches whose nearest entry was removed
        if lost.numel() == 0:
            return base
        zl, zzl = self.z[lost], self.zz[lost]
        # Their distance to the bank less the removed entries: the first kept one among their
        # NEAR nearest entries where there is one (exact), else a product with the whole bank.
        alive = kept[self.near[lost]]
        first = alive.float().argmax(1)
        min_d = self.near_d[lost].gather(1, first.unsqueeze(1)).squeeze(1)
        none = ~alive.any(1)
        if none.any():
            min_d[none] = nearest(zl[none], zzl[none], self.z[base], self.zz[base])[0]
        extra, d = [], torch.empty(lost.numel())
        while len(extra) < picks:
            last = int(torch.argmax(min_d))
            if float(min_d[last]) <= self.radius:
                break
            extra.append(int(lost[last]))
            _cover(zl, zzl, last, d, min_d)
        return torch.cat([base, torch.as_tensor(extra, dtype=torch.long)])


def bank_size(patches, ratio, max_bank):
    return max(1, min(max_bank, int(round(ratio * patches))))


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
        self._coresets = None

    def _patches(self, emb):
        n, c, h, w = emb.shape
        self.hw = (h, w)
        return emb.permute(0, 2, 3, 1).reshape(-1, c).contiguous()

    def fit(self, emb):
        if self._coresets is not None and self._coresets[0] is emb:     # the folds' coreset, reused
            cs = self._coresets[1]
            self.bank, self.n_patches = cs.patches[cs.idx].clone(), cs.patches.shape[0]
            self._coresets = None                                         # its patches are not kept
            return
        patches = self._patches(emb)
        k = bank_size(patches.shape[0], self.coreset_ratio, self.max_bank)
        idx = greedy_coreset(patches, k, self.coreset_dims, self.seed, Progress("coreset", 1))
        self.bank = patches[idx].clone()
        self.n_patches = patches.shape[0]

    def fold_heads(self, emb, fits):
        """The head of each fold's model (fitted on the images `fits[i]`), all from one greedy
        coreset over every image (FoldCoresets); the final fit reuses that coreset."""
        patches = self._patches(emb)
        cs = FoldCoresets(patches, self.hw[0] * self.hw[1], self.coreset_ratio, self.max_bank,
                          self.coreset_dims, self.seed, Progress("coreset", 1))
        self._coresets = (emb, cs)
        for fit in fits:
            yield NearestNeighbourHead(patches[cs.fold(fit)], self.hw)

    def int8_rewrites(self):
        return [("bank_product", "head")]

    def head(self):
        return NearestNeighbourHead(self.bank, self.hw)

    def params(self):
        return {"coreset_ratio": self.coreset_ratio, "max_bank": self.max_bank, "coreset_dims": self.coreset_dims,
                "seed": self.seed, "pool": int(self.pool), "bank_size": int(self.bank.shape[0]), "patches": int(self.n_patches),
                "feature_dims": int(self.bank.shape[1])}
