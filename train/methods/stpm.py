"""STPM (Wang et al., BMVC 2021): a student network of the teacher's architecture, trained from
scratch to reproduce the pretrained teacher's feature pyramid on good images; a patch's score
is the sum over levels of the distance between the two networks' L2-normalised features."""

import torch
from torch import nn
from torch.nn import functional as F

from ..backbones import Backbone
from ..graph import upsample
from .base import Features, Method


def level_distances(ts, ss):
    """Per level: 0.5 |t/|t| - s/|s||^2 over channels (N x h x w)."""
    return [0.5 * (F.normalize(t, dim=1) - F.normalize(s, dim=1)).pow(2).sum(1) for t, s in zip(ts, ss)]


def sum_levels(maps):
    size = maps[0].shape[-2:]
    return sum(m if m.shape[-2:] == size else upsample(m.unsqueeze(1), size).squeeze(1) for m in maps)


class TeacherStudent(nn.Module):
    def __init__(self, teacher, student):
        super().__init__()
        self.teacher = teacher
        self.student = student

    def pair(self, x):
        return self.teacher(x), self.student(x)

    def forward(self, x):
        return sum_levels(level_distances(*self.pair(x)))


class STPM(Method):
    name = "stpm"
    epochs = (30, 100)
    batch_size = 8
    lr = 0.4             # SGD, as the paper

    def __init__(self, ctx, momentum=0.9, weight_decay=1e-4):
        super().__init__(ctx)
        self.momentum, self.weight_decay = float(momentum), float(weight_decay)

    def build(self):
        teacher = self._backbone_norm(self.ctx.features())
        torch.manual_seed(self.ctx.seed)
        student = Features(Backbone(self.ctx.backbone, strides=self.ctx.strides, pretrained=False), self.ctx.border)
        self.scorer = TeacherStudent(teacher, student)
        return self.scorer

    def optimizers(self):
        return [torch.optim.SGD(self.scorer.student.parameters(), lr=self.lr, momentum=self.momentum,
                                weight_decay=self.weight_decay)]

    def training_step(self, x):
        with torch.no_grad():
            ts = self.scorer.teacher(x)
        ss = self.scorer.student(x)
        return sum(d.mean() for d in level_distances(ts, ss))

    def precision_hints(self):
        return {"fp16": ["teacher", "student"], "int8": ["teacher"], "fp32": []}

    def params(self):
        return {"levels": list(self.ctx.strides), "lr": self.lr, "momentum": self.momentum}
