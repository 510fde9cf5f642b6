"""Reverse Distillation (Deng & Li, CVPR 2022): the pretrained encoder's feature pyramid is
squeezed by a trainable one-class bottleneck (all levels fused into one low-resolution
embedding) and a trainable decoder rebuilds the pyramid from it, deepest level first; a
patch's score is the sum over levels of 1 - cosine similarity between encoder and decoder."""

import torch
from torch import nn
from torch.nn import functional as F

from ..graph import upsample
from .base import Method
from .stpm import sum_levels


def conv_bn(cin, cout, k=3, stride=1):
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class Bottleneck(nn.Module):
    """Every level down to half the deepest level's resolution, concatenated and fused."""

    def __init__(self, channels, strides, width=128, out=256):
        super().__init__()
        deepest = max(strides)
        self.down = nn.ModuleList()
        for c, s in zip(channels, strides):
            layers, cin = [], c
            while s < deepest:
                layers.append(conv_bn(cin, width, 3, 2))
                cin, s = width, s * 2
            layers.append(conv_bn(cin, width, 1))
            self.down.append(nn.Sequential(*layers))
        self.fuse = nn.Sequential(conv_bn(width * len(channels), out, 3, 2), conv_bn(out, out, 3))

    def forward(self, feats):
        ref = feats[-1].shape[-2:]
        parts = []
        for d, f in zip(self.down, feats):
            y = d(f)
            parts.append(y if y.shape[-2:] == ref else upsample(y, ref))
        return self.fuse(torch.cat(parts, 1))


class Decoder(nn.Module):
    def __init__(self, channels, cin=256):
        super().__init__()
        self.blocks = nn.ModuleList()
        for c in reversed(channels):
            self.blocks.append(nn.Sequential(conv_bn(cin, c * 2), nn.Conv2d(c * 2, c, 3, 1, 1)))
            cin = c

    def forward(self, z, sizes):
        out = []
        for block, size in zip(self.blocks, reversed(sizes)):
            z = block(upsample(z, size))
            out.append(z)
            z = F.relu(z)
        return out[::-1]


class RDScorer(nn.Module):
    def __init__(self, encoder):
        super().__init__()
        self.encoder = encoder
        self.bottleneck = Bottleneck(encoder.channels, encoder.strides)
        self.decoder = Decoder(encoder.channels)

    def pair(self, x):
        feats = self.encoder(x)
        rebuilt = self.decoder(self.bottleneck(feats), [tuple(int(v) for v in f.shape[-2:]) for f in feats])
        return feats, rebuilt

    def forward(self, x):
        return sum_levels([1 - F.cosine_similarity(e, d, dim=1) for e, d in zip(*self.pair(x))])


class ReverseDistillation(Method):
    name = "reverse_distillation"
    epochs = (20, 200)
    cpu_steps = 300            # bsdata (284 fitted images, 256 x 256), 2-core x86: 95 s (8 epochs)
    batch_size = 8
    lr = 5e-3

    def build(self):
        self.scorer = RDScorer(self._backbone_norm(self.ctx.features()))
        return self.scorer

    def optimizers(self):
        params = list(self.scorer.bottleneck.parameters()) + list(self.scorer.decoder.parameters())
        return [torch.optim.Adam(params, lr=self.lr, betas=(0.5, 0.999))]

    def training_step(self, x):
        feats, rebuilt = self.scorer.pair(x)
        return sum((1 - F.cosine_similarity(e.flatten(2), d.flatten(2), dim=1)).mean() for e, d in zip(feats, rebuilt))

    def precision_hints(self):
        return {"fp16": ["encoder", "bottleneck", "decoder"], "int8": ["encoder"], "fp32": []}

    def params(self):
        return {"levels": list(self.ctx.strides), "lr": self.lr}
