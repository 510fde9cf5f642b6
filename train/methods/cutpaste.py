"""CutPaste (Li et al., CVPR 2021), the patch-level model: a classifier learns to tell good
patches from patches with a pasted rectangle of the same image (cut-paste) or a thin pasted
stripe (scar), three classes; then a Gaussian density (mean and shrunk covariance) on the
classifier's patch embeddings of good images scores patches by Mahalanobis distance.

The classifier is the pretrained backbone to its deepest tap, averaged over the patch, with a
projection head; it is fine-tuned on `patch`-pixel crops. In the graph it runs once over the
whole image and the averaging is a sliding window (`patch` pixels, half a patch apart), which
gives the patch-level map: a coarse map, said in the manifest."""

import torch
from torch import nn
from torch.nn import functional as F

from .base import Method
from .gaussian_ad import ledoit_wolf


class CutPasteScorer(nn.Module):
    def __init__(self, features, patch, dim=128):
        super().__init__()
        self.features = features
        c, self.stride = features.channels[-1], features.strides[-1]
        self.cells = max(1, patch // self.stride)
        self.projection = nn.Sequential(nn.Linear(c, c), nn.BatchNorm1d(c), nn.ReLU(), nn.Linear(c, dim))
        self.classifier = nn.Linear(dim, 3)
        self.register_buffer("mean", torch.zeros(c))
        self.register_buffer("precision", torch.eye(c))

    def embed_patches(self, x):
        """One embedding per crop (N x 3 x patch x patch -> N x C)."""
        return self.features(x)[-1].mean((2, 3))

    def forward(self, x):
        f = self.features(x)[-1]
        k = self.cells
        f = F.avg_pool2d(f, k, max(1, k // 2), 0) if min(f.shape[-2:]) >= k else f.mean((2, 3), keepdim=True)
        v = f.permute(0, 2, 3, 1) - self.mean
        return ((v @ self.precision) * v).sum(-1).clamp_min(0.0).sqrt()


def paste(img, gen, scar):
    """A rectangle (or a thin stripe) cut from `img` pasted elsewhere on it, colour-jittered."""
    _, h, w = img.shape
    if scar:
        ph, pw = max(2, int(h * (0.1 + 0.15 * float(torch.rand(1, generator=gen))))), max(1, w // 32 + 1)
    else:
        area = h * w * (0.02 + 0.13 * float(torch.rand(1, generator=gen)))
        aspect = float(torch.empty(1).uniform_(0.3, 3.3, generator=gen))
        ph = int(min(h - 1, max(2, (area * aspect) ** 0.5)))
        pw = int(min(w - 1, max(2, (area / aspect) ** 0.5)))
    y0, x0 = (int(torch.randint(0, s - p + 1, (1,), generator=gen)) for s, p in ((h, ph), (w, pw)))
    y1, x1 = (int(torch.randint(0, s - p + 1, (1,), generator=gen)) for s, p in ((h, ph), (w, pw)))
    piece = img[:, y0:y0 + ph, x0:x0 + pw] + (torch.rand(3, 1, 1, generator=gen).to(img.device) - 0.5) * 0.4
    out = img.clone()
    out[:, y1:y1 + ph, x1:x1 + pw] = piece
    return out


class CutPaste(Method):
    name = "cutpaste"
    map_kind = "patch-wise: a sliding window of `patch` pixels, half a patch apart"
    epochs = (15, 100)
    cpu_steps = 300            # bsdata (284 fitted images, 256 x 256), 2-core x86: 70 s (15 epochs, not capped)
    batch_size = 16
    lr = 1e-3
    calibrate_on_holdout = False

    def __init__(self, ctx, patch=64, crops=4, dim=128):
        super().__init__(ctx)
        self.patch, self.crops, self.dim = int(patch), int(crops), int(dim)

    def build(self):
        feats = self._backbone_norm(self.ctx.features(strides=(max(self.ctx.strides),), border=0))
        for p in feats.parameters():
            p.requires_grad_(True)
        self.scorer = CutPasteScorer(feats, self.patch, self.dim)
        return self.scorer

    def crops_of(self, x, gen):
        n, _, h, w = x.shape
        p = min(self.patch, h, w)
        out = []
        for i in range(n):
            for _ in range(self.crops):
                y, x0 = int(torch.randint(0, h - p + 1, (1,), generator=gen)), int(torch.randint(0, w - p + 1, (1,), generator=gen))
                out.append(x[i, :, y:y + p, x0:x0 + p])
        return torch.stack(out)

    def augment(self, x, gen):
        crops = self.crops_of(x, gen)
        kinds = torch.arange(len(crops)) % 3
        out = torch.stack([c if k == 0 else paste(c, gen, scar=bool(k == 2)) for c, k in zip(crops, kinds.tolist())])
        return out, kinds.to(x.device)

    def optimizers(self):
        sc = self.scorer
        return [torch.optim.SGD([{"params": sc.features.parameters(), "lr": self.lr * 0.1},
                                 {"params": list(sc.projection.parameters()) + list(sc.classifier.parameters())}],
                                lr=self.lr * 10, momentum=0.9, weight_decay=3e-5)]

    def training_step(self, batch):
        crops, kinds = batch
        sc = self.scorer
        return F.cross_entropy(sc.classifier(sc.projection(sc.embed_patches(crops))), kinds)

    def calibrate(self, batches):
        """The Gaussian of good patches, on the same sliding window the graph uses."""
        sc = self.scorer
        k = sc.cells
        vs = []
        for x in batches():
            f = sc.features(x)[-1]
            f = F.avg_pool2d(f, k, max(1, k // 2), 0) if min(f.shape[-2:]) >= k else f.mean((2, 3), keepdim=True)
            vs.append(f.permute(0, 2, 3, 1).reshape(-1, f.shape[1]).double().cpu())
        mu, cov, self.shrinkage = ledoit_wolf(torch.cat(vs))
        sc.mean.copy_(mu.float())
        sc.precision.copy_(torch.linalg.inv(cov).float())

    def precision_hints(self):
        return {"fp16": ["features"], "int8": ["features"], "fp32": ["mean", "precision"]}

    def params(self):
        return {"patch": self.patch, "crops_per_image": self.crops, "classes": ["good", "cutpaste", "scar"],
                "shrinkage": round(getattr(self, "shrinkage", 0.0), 4)}
