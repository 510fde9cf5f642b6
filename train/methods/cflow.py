"""CFLOW-AD (Gudovskiy, Ishizaka & Kozuka, WACV 2022): per feature level, a normalising flow
over each position's feature vector, conditioned on a 2D sinusoidal encoding of the position
(coupling subnets are per-position fully connected layers, 1x1 convolutions here); a patch's
score is its negative log-likelihood per channel, summed over levels. The positional encoding
is a constant of the fixed input size, so the exported graph has no shape arithmetic."""

import math

import torch
from torch import nn
from torch.nn import functional as F

from .base import Method
from .flows import Flow
from .stpm import sum_levels


def positional_encoding(channels, h, w):
    """channels x h x w: sines and cosines of the row (first half) and column (second half)."""
    pe = torch.zeros(channels, h, w)
    c = channels // 2
    div = torch.exp(torch.arange(0, c, 2, dtype=torch.float32) * -(math.log(10000.0) / c))
    pos_w = torch.arange(w, dtype=torch.float32).unsqueeze(1)
    pos_h = torch.arange(h, dtype=torch.float32).unsqueeze(1)
    pe[0:c:2] = torch.sin(pos_w * div).t().unsqueeze(1).expand(-1, h, -1)
    pe[1:c:2] = torch.cos(pos_w * div).t().unsqueeze(1).expand(-1, h, -1)
    pe[c::2] = torch.sin(pos_h * div).t().unsqueeze(2).expand(-1, -1, w)
    pe[c + 1::2] = torch.cos(pos_h * div).t().unsqueeze(2).expand(-1, -1, w)
    return pe


class CFlowScorer(nn.Module):
    def __init__(self, features, level_sizes, cond_channels, steps, clamp, seed):
        super().__init__()
        self.features = features
        self.flows = nn.ModuleList()
        for i, (c, (h, w)) in enumerate(zip(features.channels, level_sizes)):
            c1, c2 = c // 2, c - c // 2

            def subnet(j, c1=c1, c2=c2, cc=cond_channels):
                return nn.Sequential(nn.Conv2d(c1 + cc, 2 * (c1 + cc), 1), nn.ReLU(), nn.Conv2d(2 * (c1 + cc), 2 * c2, 1))
            self.flows.append(Flow(c, subnet, steps, clamp, seed + 100 * i))
            self.register_buffer(f"pos{i}", positional_encoding(cond_channels, h, w).unsqueeze(0))

    def nll(self, x):
        """Per level: negative log-likelihood per channel of every position (N x h x w)."""
        out = []
        for i, (f, flow) in enumerate(zip(self.features(x), self.flows)):
            pos = getattr(self, f"pos{i}").expand(f.shape[0], -1, -1, -1)
            z, logdet = flow(F.layer_norm(f, [int(v) for v in f.shape[1:]]), pos)
            out.append((0.5 * z.pow(2).sum(1) - logdet) / z.shape[1])
        return out

    def forward(self, x):
        return sum_levels(self.nll(x))


class CFlow(Method):
    name = "cflow"
    epochs = (20, 100)
    cpu_steps = 600            # bsdata (284 fitted images, 256 x 256), 2-core x86: 262 s (16 epochs)
    batch_size = 8
    lr = 2e-4

    def __init__(self, ctx, steps=8, cond_channels=64, clamp=1.9):
        super().__init__(ctx)
        self.steps, self.cond, self.clamp = int(steps), int(cond_channels), float(clamp)

    def build(self):
        feats = self._backbone_norm(self.ctx.features())
        with torch.no_grad():
            sizes = [tuple(f.shape[-2:]) for f in feats(torch.zeros(1, 3, *self.ctx.size))]
        self.scorer = CFlowScorer(feats, sizes, self.cond, self.steps, self.clamp, self.ctx.seed)
        return self.scorer

    def optimizers(self):
        return [torch.optim.Adam(self.scorer.flows.parameters(), lr=self.lr)]

    def training_step(self, x):
        return sum(n.mean() for n in self.scorer.nll(x))

    def precision_hints(self):
        return {"fp16": ["features"], "int8": ["features"], "fp32": ["flows"]}

    def params(self):
        return {"steps": self.steps, "cond_channels": self.cond, "clamp": self.clamp, "levels": list(self.ctx.strides)}
