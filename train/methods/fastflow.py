"""FastFlow (Yu et al., 2021): a 2D normalising flow per feature level of a frozen pretrained
network (coupling steps whose subnets are convolutions, 3x3 and 1x1 in turn), trained to
maximise the likelihood of good images' features; a patch's score is its negative
log-likelihood per channel, summed over levels."""

import torch
from torch import nn
from torch.nn import functional as F

from .base import Method
from .flows import Flow
from .stpm import sum_levels


class FastFlowScorer(nn.Module):
    def __init__(self, features, steps, hidden_ratio, clamp, seed):
        super().__init__()
        self.features = features
        self.flows = nn.ModuleList()
        for i, c in enumerate(features.channels):
            c1, c2 = c // 2, c - c // 2
            hidden = max(8, int(c * hidden_ratio))

            def subnet(j, c1=c1, c2=c2, hidden=hidden):
                k = 3 if j % 2 == 0 else 1
                return nn.Sequential(nn.Conv2d(c1, hidden, k, 1, k // 2), nn.ReLU(), nn.Conv2d(hidden, 2 * c2, k, 1, k // 2))
            self.flows.append(Flow(c, subnet, steps, clamp, seed + 100 * i))

    def latents(self, x):
        out = []
        for f, flow in zip(self.features(x), self.flows):
            f = F.layer_norm(f, [int(v) for v in f.shape[1:]])
            out.append(flow(f))
        return out

    def forward(self, x):
        return sum_levels([0.5 * z.pow(2).mean(1) for z, _ in self.latents(x)])


class FastFlow(Method):
    name = "fastflow"
    epochs = (20, 200)
    batch_size = 8
    lr = 1e-3

    def __init__(self, ctx, steps=8, hidden_ratio=1.0, clamp=2.0):
        super().__init__(ctx)
        self.steps, self.hidden_ratio, self.clamp = int(steps), float(hidden_ratio), float(clamp)

    def build(self):
        feats = self._backbone_norm(self.ctx.features())
        self.scorer = FastFlowScorer(feats, self.steps, self.hidden_ratio, self.clamp, self.ctx.seed)
        return self.scorer

    def optimizers(self):
        return [torch.optim.Adam(self.scorer.flows.parameters(), lr=self.lr, weight_decay=1e-5)]

    def training_step(self, x):
        loss = 0
        for z, logdet in self.scorer.latents(x):
            c = z.shape[1]
            loss = loss + (0.5 * z.pow(2).sum(1) - logdet).mean() / c
        return loss

    def precision_hints(self):
        return {"fp16": ["features"], "int8": ["features"], "fp32": ["flows"]}

    def params(self):
        return {"steps": self.steps, "hidden_ratio": self.hidden_ratio, "clamp": self.clamp,
                "levels": list(self.ctx.strides)}
