"""What methods share: the context they are built in, the base class of the protocol
(train/methods/__init__.py), the pretrained feature taps with a mirrored border, and the
scorer of the methods that score frozen features with fitted statistics."""

import dataclasses
from typing import Optional, Tuple

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..backbones import build_backbone
from ..graph import Embedder


@dataclasses.dataclass
class Context:
    size: Tuple[int, int]                 # input height x width
    backbone: str = "efficientnet-lite0"
    weights: Optional[str] = None
    strides: Tuple[int, ...] = (4, 8, 16)
    border: int = 16
    seed: int = 0
    device: str = "cpu"

    def features(self, strides=None, border=None):
        return Features(build_backbone(self.backbone, self.weights, strides or self.strides),
                        self.border if border is None else border)


class Method:
    name = ""
    map_kind = "native"
    uses_backbone = True
    epochs = (0, 0)            # CPU, CUDA
    cpu_steps = None           # CPU step budget on a large set (train.loop.default_epochs); None: the
                               # steps its CPU epochs take on 24 images
    batch_size = 8
    lr = 1e-3
    default_score = "max"

    def __init__(self, ctx):
        self.ctx = ctx
        self.mean, self.std = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)

    def trains(self):
        return hasattr(self, "training_step")

    def augment(self, x, gen):
        return x

    def precision_hints(self):
        return {"fp16": ["backbone"], "int8": ["backbone"]}

    def int8_rewrites(self):
        """[(rewrite, scope)]: head rewrites of convert/int8_ort.HEAD_REWRITES that the INT8
        graph for ONNX Runtime may apply inside the scorer's `scope` (none by default)."""
        return []

    def params(self):
        return {}

    # True where a model fitted on fewer images scores new images markedly higher (a Gaussian
    # whose covariance is estimated from fewer images than it has dimensions): the fold scores
    # are then scaled to the bundle's image count (edge.common.oppoint.fit_size_correction).
    fit_size_trend = False

    def fold_heads(self, feats, fits):
        """For methods with `fold_features`: yields the head of each fold's model, fitted on the
        images `fits[i]` of `feats`. Default: `fold_head` refitted on each subset; a method may
        share work across folds (PatchCore: one coreset; PaDiM: sums)."""
        for fit in fits:
            yield self.fold_head(take(feats, fit))

    def _backbone_norm(self, feats):
        self.mean, self.std = feats.backbone.mean, feats.backbone.std
        return feats


def take(feats, idx):
    """The rows `idx` of frozen features (a tensor, or a list of per-level tensors)."""
    idx = torch.as_tensor(np.asarray(idx, np.int64))
    return [f.index_select(0, idx) for f in feats] if isinstance(feats, (list, tuple)) else feats.index_select(0, idx)


class Features(nn.Module):
    """Pretrained feature maps of a normalised image, `border` pixels mirrored around it first
    and cropped off the features after: without it, patches at the edges see the
    convolutions' zero padding and score high on good parts."""

    def __init__(self, backbone, border=16):
        super().__init__()
        self.backbone = backbone
        self.border = int(border)
        self.strides = backbone.strides
        self.channels = backbone.channels

    def forward(self, x):
        b = self.border
        if b:
            x = F.pad(x, (b, b, b, b), mode="reflect")
        feats = self.backbone(x)
        if b:
            feats = [f[:, :, b // s:f.shape[2] - b // s, b // s:f.shape[3] - b // s]
                     for f, s in zip(feats, self.strides)]
        return feats


class FeatureScorer(nn.Module):
    """Frozen features -> one embedding map at stride 8 -> the method's head (N x h x w)."""

    def __init__(self, features, pool, out_stride=8):
        super().__init__()
        self.features = features
        self.embedder = Embedder(pool, features.strides, out_stride)
        self.head = None

    def embed(self, x):
        return self.embedder(self.features(x))

    def forward(self, x):
        return self.head(self.embed(x))


class StatisticsMethod(Method):
    """A method with no gradient training: frozen features, statistics fitted on them."""
    pool = False

    def build(self):
        feats = self._backbone_norm(self.ctx.features())
        self.scorer = FeatureScorer(feats, self.pool)
        return self.scorer

    def fold_features(self, batches):
        """The frozen embeddings of every image (N x C x h x w, on the CPU), computed once for
        fold scoring and the final fit."""
        return torch.cat([self.scorer.embed(x).cpu() for x in batches()])

    def fold_head(self, emb):
        """The head fitted on `emb` alone (embeddings -> patch scores)."""
        self.fit(emb)
        return self.head()

    def fit_features(self, emb):
        self.scorer.head = self.fold_head(emb).to(self.ctx.device)

    def fit_statistics(self, batches):
        self.fit_features(self.fold_features(batches))

    def precision_hints(self):
        return {"fp16": ["features"], "int8": ["features"], "fp32": ["embedder", "head"]}
