"""SPADE (Cohen & Hoshen, 2020): the k training images nearest to the test image by a global
feature, then each patch's distance to its nearest patch among those k images' patches.

Exported with a fixed k and the whole gallery as constants: the image search is a MatMul and
a TopK, the gallery of the chosen images a Gather, the patch search a batched MatMul and a
ReduceMin."""

import torch
from torch import nn

from .base import StatisticsMethod


class GalleryHead(nn.Module):
    def __init__(self, images, patches, hw, k):
        super().__init__()
        self.hw, self.k = tuple(int(v) for v in hw), int(k)
        self.register_buffer("images_t", images.t().contiguous())            # C x G
        self.register_buffer("images_sq", (images * images).sum(1))          # G
        self.register_buffer("patches", patches)                             # G x P x C
        self.register_buffer("patches_sq", (patches * patches).sum(-1))      # G x P

    def forward(self, emb):
        n, c = emb.shape[:2]
        g = emb.mean((2, 3))                                                  # N x C
        d_img = self.images_sq - 2 * g @ self.images_t                        # N x G (+|g|^2)
        idx = (-d_img).topk(self.k, dim=1).indices                            # N x k
        gal = self.patches.index_select(0, idx.flatten()).reshape(n, -1, c)   # N x kP x C
        gal_sq = self.patches_sq.index_select(0, idx.flatten()).reshape(n, 1, -1)
        f = emb.flatten(2).transpose(1, 2)                                    # N x P x C
        d2 = (gal_sq - 2 * f @ gal.transpose(1, 2)).amin(-1) + (f * f).sum(-1)
        return d2.clamp_min(0.0).sqrt().reshape(n, self.hw[0], self.hw[1])


class Spade(StatisticsMethod):
    name = "spade"
    pool = False

    def __init__(self, ctx, k=5):
        super().__init__(ctx)
        self.k = int(k)

    def fit(self, emb):
        n, c, h, w = emb.shape
        self.hw, self.n = (h, w), n
        self.images = emb.mean((2, 3))
        self.patches = emb.flatten(2).transpose(1, 2).contiguous()

    def head(self):
        return GalleryHead(self.images, self.patches, self.hw, min(self.k, self.n))

    def params(self):
        return {"k": min(self.k, self.n), "gallery_images": self.n}
