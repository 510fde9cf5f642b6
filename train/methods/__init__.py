"""The method protocol: what a method module provides, and the registry of methods.

A method is a class deriving from `train.methods.base.Method`, in its own module, holding only
what is particular to it. The training loop (train/loop.py) and the exporter (train/trainer.py)
are the same for every method.

  __init__(ctx, **params)   ctx (train.methods.base.Context): input size, backbone name and
                            weights, feature strides, border, seed, device. Unknown params
                            raise TypeError (the CLI names them).
  build() -> nn.Module      the **scorer**: normalised N x 3 x H x W float -> N x h x w
                            patch or pixel scores (higher = more anomalous). It owns every
                            network it uses, the pretrained backbone included, and holds every
                            constant (memory banks, Gaussians, quantiles) as a buffer, so that
                            it exports as one graph. The exported graph wraps it: uint8 frames
                            in, cast and normalisation (mean/std of the method), the scorer, the
                            map's upsampling and smoothing, the image score; `anomaly_map` and
                            `score` out.
  Optional, each called by the loop where a method defines it:
  fit_statistics(batches)   before training, no gradients: memory banks, Gaussians,
                            normalisation constants. `batches()` yields normalised training
                            batches on the training device.
  training_step(batch)      -> scalar loss, with optimizers() -> [torch.optim.Optimizer]. The
                            loop runs epochs over the training images (seeded shuffling, AMP
                            on CUDA), checkpoints each epoch, resumes after Ctrl-C and stops
                            early when the loss on the held-out good images stops improving.
  augment(x, gen)           the training batch as training_step takes it (DRAEM's and
                            CutPaste's synthetic defects); `gen` is a seeded torch.Generator.
  begin_epoch(epoch, batches)  a phase change (EfficientAD: teacher, then student).
  calibrate(batches)        after training, no gradients: map quantiles, feature densities.
  fold_features(batches), fold_head(features), fit_features(features)
                            methods that only fit statistics: the frozen features of every
                            image computed once, a head fitted on a subset of them (the
                            threshold's fold scoring refits per fold), the final fit from the
                            same features. Methods that train networks are held out by a tail
                            block instead (docs/methods.md).
  fold_heads(features, fits)  yields the head of each fold's model (fits[i]: the indices of the
                            images it is fitted on); by default fold_head per subset, overridden
                            to share work across folds (PatchCore: one coreset; PaDiM: sums).
  precision_hints()         {"fp16": [module scopes], "int8": [module scopes], "fp32": [...]}:
                            which parts of the scorer may run in reduced precision. Scopes are
                            module paths inside the scorer ("backbone", "student"); in the
                            exported graph its node names begin with "/scorer/<scope>/".
  int8_rewrites()           [(rewrite, scope)]: head rewrites of convert/int8_ort.HEAD_REWRITES
                            the INT8 graph for ONNX Runtime may apply inside `scope`.
  params()                  the method's settings and fitted sizes, for the manifest.
  Class attributes: name, map_kind ("native" or a sentence on how a map is made where the
  paper gives only an image score), uses_backbone, epochs (CPU, CUDA defaults), batch_size,
  default_score ("max" or "top:FRACTION").
"""

import math

from edge.common.errors import EdgeError

METHODS = {
    "patchcore": ("train.methods.patchcore", "PatchCore"),
    "padim": ("train.methods.padim", "Padim"),
    "spade": ("train.methods.spade", "Spade"),
    "gaussian_ad": ("train.methods.gaussian_ad", "GaussianAD"),
    "stpm": ("train.methods.stpm", "STPM"),
    "reverse_distillation": ("train.methods.reverse_distillation", "ReverseDistillation"),
    "efficientad": ("train.methods.efficientad", "EfficientAD"),
    "fastflow": ("train.methods.fastflow", "FastFlow"),
    "cflow": ("train.methods.cflow", "CFlow"),
    "draem": ("train.methods.draem", "Draem"),
    "cutpaste": ("train.methods.cutpaste", "CutPaste"),
}


def get_method(name):
    import importlib
    if name not in METHODS:
        raise EdgeError(f"unknown method '{name}' (choose from: {', '.join(METHODS)})")
    module, cls = METHODS[name]
    return getattr(importlib.import_module(module), cls)


def param(value, name, kind=float, lo=None, hi=None, lo_open=False):
    """A method parameter (--param NAME=VALUE) checked: the right kind, finite, in range.
    lo_open: the value must be above `lo`, not equal to it."""
    ok = not isinstance(value, bool) and isinstance(value, (int, float))
    if ok and kind is int:
        ok = isinstance(value, int) or (math.isfinite(value) and value == int(value))
    if not ok or not math.isfinite(value):
        raise EdgeError(f"--param {name} must be {'an integer' if kind is int else 'a finite number'}, "
                        f"got {value!r}")
    too_low = lo is not None and (value <= lo if lo_open else value < lo)
    if too_low or (hi is not None and value > hi):
        low = "" if lo is None else (f"more than {lo:g}" if lo_open else f"at least {lo:g}")
        high = "" if hi is None else f"at most {hi:g}"
        raise EdgeError(f"--param {name} must be {' and '.join(t for t in (low, high) if t)}, got {value!r}")
    return kind(value)
