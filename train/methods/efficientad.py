"""EfficientAD (Batzner, Heckler & König, WACV 2024), the small variant: a patch description
network (PDN) teacher, a student PDN with twice its outputs, and an autoencoder. The student's
first half learns the teacher on good images (hard-feature loss: only the hardest 0.1 % of
errors count), the autoencoder learns the teacher through a bottleneck, the student's second
half learns the autoencoder. Score: student-teacher plus student-autoencoder discrepancy, each
mapped by its quantiles on the training images (q_a -> 0, q_b -> 0.1).

The teacher: the paper distils its PDN from a WideResNet-101 on ImageNet. Here it is distilled,
in the first `teacher_epochs`, from the pretrained backbone's feature pyramid (levels at
strides 4, 8, 16 upsampled to stride 4) on the training images themselves: no ImageNet and no
download. The ImageNet penalty of the student loss is left out for the same reason."""

import torch
from torch import nn
from torch.nn import functional as F

from ..graph import Embedder, upsample
from .base import Method


def pdn(out_channels, width=128):
    """PDN-S with padding, so that its map is exactly H/4 x W/4."""
    return nn.Sequential(
        nn.Conv2d(3, width, 4, 1, "same"), nn.ReLU(), nn.AvgPool2d(2, 2),
        nn.Conv2d(width, 2 * width, 4, 1, "same"), nn.ReLU(), nn.AvgPool2d(2, 2),
        nn.Conv2d(2 * width, 2 * width, 3, 1, 1), nn.ReLU(),
        nn.Conv2d(2 * width, out_channels, 4, 1, "same"))


class AutoEncoder(nn.Module):
    def __init__(self, out_channels, latent=64):
        super().__init__()
        enc, cin = [], 3
        for c in (32, 32, 64, 64, latent):
            enc += [nn.Conv2d(cin, c, 4, 2, 1), nn.ReLU()]
            cin = c
        self.encoder = nn.Sequential(*enc[:-1])
        self.decoder = nn.ModuleList(nn.Conv2d(c_in, c_out, 3, 1, 1) for c_in, c_out in
                                     ((latent, 64), (64, 64), (64, 64)))
        self.out = nn.Conv2d(64, out_channels, 3, 1, 1)

    def forward(self, x):
        h, w = int(x.shape[-2]), int(x.shape[-1])
        z = self.encoder(x)
        for conv, f in zip(self.decoder, (16, 8, 4)):
            z = F.relu(conv(upsample(z, (h // f, w // f))))
        return self.out(z)


class EfficientADScorer(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.teacher = pdn(channels)
        self.student = pdn(2 * channels)
        self.autoencoder = AutoEncoder(channels)
        self.c = channels
        for name in ("t_mean", "t_std"):
            self.register_buffer(name, torch.zeros(1, channels, 1, 1) if name == "t_mean" else torch.ones(1, channels, 1, 1))
        for name in ("qa_st", "qb_st", "qa_ae", "qb_ae"):
            self.register_buffer(name, torch.tensor(0.0 if "qa" in name else 1.0))

    def outputs(self, x):
        t = (self.teacher(x) - self.t_mean) / self.t_std
        return t, self.student(x), self.autoencoder(x)

    def raw_maps(self, x):
        t, s, a = self.outputs(x)
        return (t - s[:, :self.c]).pow(2).mean(1), (a - s[:, self.c:]).pow(2).mean(1)

    def forward(self, x):
        st, ae = self.raw_maps(x)
        return (0.1 * (st - self.qa_st) / (self.qb_st - self.qa_st) +
                0.1 * (ae - self.qa_ae) / (self.qb_ae - self.qa_ae))


class EfficientAD(Method):
    name = "efficientad"
    epochs = (40, 200)
    batch_size = 8
    lr = 1e-3
    early_stopping = False       # the loss changes meaning when the teacher phase ends

    def __init__(self, ctx, teacher_epochs=None, hard_quantile=0.999):
        super().__init__(ctx)
        self.teacher_epochs = teacher_epochs
        self.hard = float(hard_quantile)
        self.phase = "teacher"

    def build(self):
        self.source = self._backbone_norm(self.ctx.features())
        self.source.to(self.ctx.device)
        self.embedder = Embedder(False, self.source.strides, 4)
        self.scorer = EfficientADScorer(sum(self.source.channels))
        return self.scorer

    def optimizers(self):
        return [torch.optim.Adam(self.scorer.parameters(), lr=self.lr, weight_decay=1e-5)]

    def begin_epoch(self, epoch, batches):
        n_teacher = self.teacher_epochs if self.teacher_epochs is not None else max(1, self._epochs() // 2)
        if epoch < n_teacher or self.phase == "student":
            self.phase = "teacher" if epoch < n_teacher else self.phase
            return
        self.phase = "student"
        outs = torch.cat([self.scorer.teacher(x).transpose(0, 1).flatten(1) for x in batches()], 1)
        self.scorer.t_mean.copy_(outs.mean(1).view(1, -1, 1, 1))
        self.scorer.t_std.copy_(outs.std(1).clamp_min(1e-6).view(1, -1, 1, 1))
        for p in self.scorer.teacher.parameters():
            p.requires_grad_(False)

    def _epochs(self):
        return getattr(self, "total_epochs", self.epochs[0])

    def training_step(self, x):
        sc = self.scorer
        if self.phase == "teacher":
            with torch.no_grad():
                target = self.embedder(self.source(x))
                target = (target - target.mean((0, 2, 3), keepdim=True)) / target.std((0, 2, 3), keepdim=True).clamp_min(1e-6)
            return (sc.teacher(x) - target).pow(2).mean()
        t, s, a = sc.outputs(x)
        t = t.detach()
        d = (t - s[:, :sc.c]).pow(2)
        q = torch.quantile(d.flatten()[:: max(1, d.numel() // 4_000_000)].float(), self.hard)
        hard = d[d >= q].mean()
        return hard + (t - a).pow(2).mean() + (a.detach() - s[:, sc.c:]).pow(2).mean()

    def calibrate(self, batches):
        st, ae = zip(*[self.scorer.raw_maps(x) for x in batches()])
        for name, maps in (("st", torch.cat(st)), ("ae", torch.cat(ae))):
            flat = maps.flatten().float()
            flat = flat[:: max(1, flat.numel() // 4_000_000)]
            getattr(self.scorer, f"qa_{name}").copy_(torch.quantile(flat, 0.9))
            getattr(self.scorer, f"qb_{name}").copy_(torch.quantile(flat, 0.995).clamp_min(float(torch.quantile(flat, 0.9)) + 1e-6))

    def precision_hints(self):
        return {"fp16": ["teacher", "student", "autoencoder"], "int8": ["teacher", "student"], "fp32": []}

    def params(self):
        return {"teacher": "PDN-S distilled from " + self.ctx.backbone + " features on the training images",
                "teacher_epochs": self.teacher_epochs, "hard_quantile": self.hard,
                "teacher_channels": self.scorer.c}
