"""DRAEM (Zavrtanik, Kristan & Skočaj, ICCV 2021): synthetic anomalies (Perlin-noise shaped
regions filled with a foreign texture) are pasted on good images; a reconstructive network
learns to restore the good image, a discriminative network learns to segment the pasted
region from the input and its reconstruction. The map is the discriminative network's
probability of "anomalous".

Textures: the paper takes them from the DTD texture set. Here they come from the training
images themselves (another image of the batch, flipped and rotated, with its colours
shifted) or, for half of the pastes, from procedural Perlin colour noise: nothing to download."""

import math

import torch
from torch import nn
from torch.nn import functional as F

from .base import Method


def perlin(shape, res, gen):
    """2D Perlin noise of `shape` (h, w) with `res` (ry, rx) gradient cells, about -1..1."""
    h, w = shape
    ry, rx = res
    angles = 2 * math.pi * torch.rand(ry + 1, rx + 1, generator=gen)
    grads = torch.stack([torch.cos(angles), torch.sin(angles)], -1)
    ys = torch.linspace(0, ry, h + 1)[:-1]
    xs = torch.linspace(0, rx, w + 1)[:-1]
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    y0, x0 = gy.floor().long(), gx.floor().long()
    fy, fx = gy - y0, gx - x0

    def dot(dy, dx):
        g = grads[y0 + dy, x0 + dx]
        return g[..., 0] * (fx - dx) + g[..., 1] * (fy - dy)
    fade = lambda t: 6 * t ** 5 - 15 * t ** 4 + 10 * t ** 3   # noqa: E731
    u, v = fade(fx), fade(fy)
    top = dot(0, 0) * (1 - u) + dot(0, 1) * u
    bottom = dot(1, 0) * (1 - u) + dot(1, 1) * u
    return math.sqrt(2) * (top * (1 - v) + bottom * v)


def perlin_mask(h, w, gen, threshold=0.5):
    ry, rx = (2 ** int(torch.randint(0, 6, (1,), generator=gen)) for _ in range(2))
    ry, rx = min(ry, h), min(rx, w)
    n = perlin((int(math.ceil(h / ry) * ry), int(math.ceil(w / rx) * rx)), (ry, rx), gen)[:h, :w]
    return (n > threshold).float()


def conv_block(cin, cout):
    return nn.Sequential(nn.Conv2d(cin, cout, 3, 1, 1), nn.BatchNorm2d(cout), nn.ReLU(),
                         nn.Conv2d(cout, cout, 3, 1, 1), nn.BatchNorm2d(cout), nn.ReLU())


class UNet(nn.Module):
    """A small U-Net: 4 levels of max-pool down, nearest-neighbour up with skips."""

    def __init__(self, cin, cout, width=16, skips=True):
        super().__init__()
        ch = [width, width * 2, width * 4, width * 8]
        self.skips = skips
        self.down = nn.ModuleList([conv_block(cin, ch[0])] + [conv_block(a, b) for a, b in zip(ch, ch[1:])])
        self.up = nn.ModuleList(conv_block(b + (a if skips else 0), a) for a, b in zip(ch[:-1], ch[1:]))
        self.out = nn.Conv2d(ch[0], cout, 1)

    def forward(self, x):
        feats = []
        for i, d in enumerate(self.down):
            x = d(x if i == 0 else F.max_pool2d(x, 2))
            feats.append(x)
        for i in reversed(range(len(self.up))):
            x = F.interpolate(x, size=(int(x.shape[-2]) * 2, int(x.shape[-1]) * 2), mode="nearest")
            x = self.up[i](torch.cat([x, feats[i]], 1) if self.skips else x)
        return self.out(x)


class DraemScorer(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.reconstructive = UNet(3, 3, width, skips=False)
        self.discriminative = UNet(6, 2, width)

    def logits(self, x):
        rec = self.reconstructive(x)
        return rec, self.discriminative(torch.cat([x, rec], 1))

    def forward(self, x):
        return torch.softmax(self.logits(x)[1], 1)[:, 1]


def ssim_loss(a, b, window=11):
    c1, c2 = 0.01 ** 2 * 4, 0.03 ** 2 * 4           # images normalised to about -1..1
    mu_a, mu_b = (F.avg_pool2d(t, window, 1, window // 2) for t in (a, b))
    va = F.avg_pool2d(a * a, window, 1, window // 2) - mu_a ** 2
    vb = F.avg_pool2d(b * b, window, 1, window // 2) - mu_b ** 2
    cov = F.avg_pool2d(a * b, window, 1, window // 2) - mu_a * mu_b
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (va + vb + c2))
    return 1 - s.mean()


def focal_loss(logits, target, gamma=2.0):
    logp = F.log_softmax(logits, 1)
    pt = torch.where(target > 0.5, logp[:, 1], logp[:, 0])
    return (-(1 - pt.exp()) ** gamma * pt).mean()


class Draem(Method):
    name = "draem"
    uses_backbone = False
    epochs = (40, 700)
    cpu_steps = 160            # bsdata (284 fitted images, 256 x 256), 2-core x86: 267 s (4 epochs)
    batch_size = 8
    lr = 1e-3

    def __init__(self, ctx, width=16, anomaly_ratio=0.5):
        super().__init__(ctx)
        self.width, self.ratio = int(width), float(anomaly_ratio)

    def build(self):
        torch.manual_seed(self.ctx.seed)
        self.scorer = DraemScorer(self.width)
        h, w = self.ctx.size
        if h % 8 or w % 8:
            from edge.common.errors import EdgeError
            raise EdgeError(f"draem needs an input size divisible by 8, got {h}x{w}", "--size")
        return self.scorer

    def augment(self, x, gen):
        """(augmented images, masks, originals): about `anomaly_ratio` of the images get a
        pasted texture inside a Perlin-noise region."""
        n, _, h, w = x.shape
        out, masks = x.clone(), torch.zeros(n, h, w, device=x.device)
        for i in range(n):
            if float(torch.rand(1, generator=gen)) >= self.ratio:
                continue
            m = perlin_mask(h, w, gen).to(x.device)
            if float(torch.rand(1, generator=gen)) < 0.5:
                src = x[int(torch.randint(n, (1,), generator=gen))]
                src = torch.rot90(src, int(torch.randint(4, (1,), generator=gen)), (1, 2))
                if src.shape[-2:] != (h, w):
                    src = torch.flip(x[i], (1, 2))
                src = src + (torch.rand(3, 1, 1, generator=gen).to(x.device) - 0.5)
            else:
                src = torch.stack([perlin((h, w), (4, 4), gen) for _ in range(3)])
                src = src.to(x.device)
            beta = 0.8 * float(torch.rand(1, generator=gen))
            out[i] = x[i] * (1 - m) + (1 - beta) * src * m + beta * x[i] * m
            masks[i] = m
        return out, masks, x

    def optimizers(self):
        return [torch.optim.Adam(self.scorer.parameters(), lr=self.lr)]

    def training_step(self, batch):
        aug, masks, orig = batch
        rec, logits = self.scorer.logits(aug)
        return F.mse_loss(rec, orig) + ssim_loss(rec, orig) + focal_loss(logits, masks)

    def precision_hints(self):
        return {"fp16": ["reconstructive", "discriminative"], "int8": ["reconstructive"], "fp32": []}

    def params(self):
        return {"width": self.width, "anomaly_ratio": self.ratio,
                "textures": "training images (rotated, colour-shifted) and procedural Perlin noise"}
