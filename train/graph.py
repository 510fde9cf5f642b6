"""The exported graph: uint8 frames in; anomaly map and score out.

Everything between the camera's bytes and the verdict's number is inside it: the cast and
normalisation, the backbone, the method's scoring head, the upsampling and smoothing of the
map, and its reduction to a score. The runtime therefore has no method-specific code."""

import functools
import math

import torch
from torch import nn
from torch.nn import functional as F


class Embedder(nn.Module):
    """Backbone feature maps -> one map at the finest tap's resolution.
    `pool`: average each level over a 3x3 neighbourhood first (PatchCore's locally aware patches)."""

    def __init__(self, pool=True, strides=(8, 16), out_stride=8):
        super().__init__()
        self.pool = pool
        self.strides = tuple(strides)
        self.out_stride = out_stride

    def forward(self, feats):
        ref = self.strides.index(self.out_stride)
        size = feats[ref].shape[-2:]
        out = []
        for f, s in zip(feats, self.strides):
            if self.pool:
                f = F.avg_pool2d(f, 3, 1, 1, count_include_pad=False)
            if s < self.out_stride:
                f = F.avg_pool2d(f, self.out_stride // s)
            elif s > self.out_stride:
                f = upsample(f, size)
            out.append(f)
        return torch.cat(out, 1)


def upsample(x, size):
    """Bilinear upsampling (align_corners=False) of N x C x h x w to `size`, as two small
    matrix products: the same numbers as `F.interpolate`, which ONNX Runtime ran 4x slower."""
    rows, cols_t = separable_operators(tuple(int(v) for v in x.shape[-2:]), tuple(int(v) for v in size), 0.0, x.device)
    return torch.matmul(torch.matmul(rows, x), cols_t)


@functools.lru_cache(maxsize=32)
def separable_operators(in_hw, out_hw, sigma, device):
    """(rows, cols^T): linear upsampling from `in_hw` to `out_hw`, then (sigma > 0) a Gaussian
    blur with mirrored ends, as `rows @ x @ cols^T`. Built once per shape, not per frame."""
    kernel = gaussian_kernel1d(sigma) if sigma > 0 else torch.ones(1)
    rows = axis_operator(int(in_hw[0]), int(out_hw[0]), kernel)
    cols = axis_operator(int(in_hw[1]), int(out_hw[1]), kernel)
    return rows.to(device), cols.t().contiguous().to(device)


def gaussian_kernel1d(sigma):
    radius = int(math.ceil(4 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def axis_operator(n_in, n_out, kernel):
    """The n_out x n_in matrix of one axis of the map's smoothing: linear upsampling
    (align_corners=False, as bilinear `interpolate` does per axis) then the blur with mirrored
    ends. Built by pushing the unit vectors through those operations in float64."""
    eye = torch.eye(n_in, dtype=torch.float64).view(n_in, 1, n_in)
    up = F.interpolate(eye, size=n_out, mode="linear", align_corners=False)
    pad = kernel.numel() // 2
    if pad:
        up = F.conv1d(F.pad(up, (pad, pad), mode="reflect"), kernel.double().view(1, 1, -1))
    return up[:, 0, :].t().float().contiguous()


class MapSmoother(nn.Module):
    """Upsample a patch-score map to the input size, then a separable Gaussian blur.

    Both are linear and act on rows and columns separately, so the pair is two small matrix
    products, rows_op @ map @ cols_op^T: the same numbers as a bilinear resize followed by two
    33-tap convolutions on the full-size map, at a tenth of the time (docs/precision.md)."""

    def __init__(self, out_hw, sigma=4.0):
        super().__init__()
        self.out_hw = tuple(out_hw)
        self.sigma = float(sigma)

    def forward(self, patch_map):
        rows, cols_t = separable_operators(tuple(int(v) for v in patch_map.shape[-2:]), self.out_hw, self.sigma,
                                           patch_map.device)
        return torch.matmul(torch.matmul(rows, patch_map), cols_t)


def parse_score(text):
    """`max` (the smoothed map's maximum) or `top:FRACTION` (mean of the highest FRACTION of the
    scorer's patch scores) -> fraction, 0 for max."""
    t = str(text).strip().lower()
    if t == "max":
        return 0.0
    if t.startswith("top:"):
        try:
            f = float(t[4:])
        except ValueError:
            f = -1.0
        if 0 < f <= 1:
            return f
    raise ValueError(f"must be max or top:FRACTION with 0 < FRACTION <= 1, got {text!r}")


def score_name(fraction):
    return "max" if fraction <= 0 else f"top:{fraction:g}"


class AnomalyGraph(nn.Module):
    """frames: N x H x W x 3 uint8 RGB -> (anomaly_map N x H x W float32, score N float32).

    The method's scorer (normalised N x 3 x H x W -> N x h x w patch or pixel scores) sits
    between the cast and normalisation, and the map's upsampling, smoothing and reduction to
    a score, which are the same for every method."""

    def __init__(self, scorer, mean, std, out_hw, sigma=4.0, score_fraction=0.04):
        super().__init__()
        # The image score: mean of the highest `score_fraction` of patch scores (0: the smoothed
        # map's maximum).
        self.score_fraction = float(score_fraction)
        self.scorer = scorer
        self.smoother = MapSmoother(out_hw, sigma)
        self.norm = {"mean": [float(v) for v in mean], "std": [float(v) for v in std]}
        mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1) * 255.0
        std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1) * 255.0
        self.register_buffer("scale", 1.0 / std)
        self.register_buffer("shift", -mean / std)

    def normalise(self, frames):
        # Cast before the transpose: TensorRT transposes no uint8 tensor.
        return frames.float().permute(0, 3, 1, 2) * self.scale + self.shift

    def forward(self, frames):
        return self.reduce(self.scorer(self.normalise(frames)))

    def reduce(self, patches):
        """(map, score) from the scorer's patch scores: upsampling and smoothing, the image
        score (fold scoring calls it on patch scores computed from cached features)."""
        amap = self.smoother(patches)
        if self.score_fraction > 0:
            flat = patches.flatten(1)
            k = max(1, int(round(self.score_fraction * int(patches.shape[-2]) * int(patches.shape[-1]))))
            return amap, flat.topk(k, dim=1).values.mean(1)
        return amap, amap.flatten(1).amax(1)
