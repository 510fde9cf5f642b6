"""`edge predict BUNDLE IMAGE_OR_FOLDER [--out DIR]`: score and verdict per image, heat-map overlays."""

import math
import os

import numpy as np

from ..bundle.manifest import Bundle
from ..engines import open_engine
from ..common.errors import EdgeError
from ..common.names import ENGINE_CHOICES, PRECISIONS
from ..common.imageio import IMAGE_EXTENSIONS, list_images, read_rgb
from ..view.overlay import heat_overlay, label, write_png
from ..runtime.preprocess import Preprocessor


def add_arguments(p):
    p.add_argument("bundle", help="model bundle folder")
    p.add_argument("images", help="an image file or a folder of images")
    p.add_argument("--out", help="write a heat-map overlay per image here")
    p.add_argument("--threshold", type=float, help="override the bundle's threshold")
    p.add_argument("--engine", default="auto", choices=ENGINE_CHOICES)
    p.add_argument("--precision", default="fp32", choices=PRECISIONS)
    p.add_argument("--batch", type=int, default=8)


def _prepared(pre, path):
    try:
        return pre(read_rgb(path))
    except EdgeError as exc:
        if exc.where:
            raise
        raise EdgeError(str(exc), path) from None


def run(args):
    if args.batch < 1:
        raise EdgeError(f"--batch must be 1 or more, got {args.batch}")
    if args.threshold is not None and not math.isfinite(args.threshold):
        raise EdgeError(f"--threshold must be a finite number, got {args.threshold}")
    if args.out and os.path.exists(args.out) and not os.path.isdir(args.out):
        raise EdgeError("--out must be a folder", args.out)
    bundle = Bundle(args.bundle)
    if os.path.isdir(args.images):
        paths = list_images(args.images)
        if not paths:
            raise EdgeError(f"no images ({'/'.join(IMAGE_EXTENSIONS)}) in folder", args.images)
    elif os.path.isfile(args.images):
        paths = [args.images]
    else:
        raise EdgeError("no such image or folder", args.images)
    pre = Preprocessor.for_bundle(bundle)
    rejects = 0
    with open_engine(bundle, args.engine, args.precision, batch=args.batch) as engine:
        thr = bundle.threshold_for(args.precision, engine.name) if args.threshold is None else args.threshold
        for i in range(0, len(paths), args.batch):
            chunk = paths[i:i + args.batch]
            frames = np.stack([_prepared(pre, p) for p in chunk])
            maps, scores = engine.infer(frames)
            for p, frame, amap, score in zip(chunk, frames, maps, scores):
                if not (np.isfinite(score) and np.isfinite(amap).all()):
                    raise EdgeError(f"engine returned a non-finite {'score' if not np.isfinite(score) else 'anomaly map'} "
                                    f"(score {score}): a fault, never a pass", p)
                reject = bool(score >= thr)
                rejects += reject
                print(f"{p}\t{score:.4f}\t{'REJECT' if reject else 'ok'}")
                if args.out:
                    name = os.path.splitext(os.path.basename(p))[0] + "_overlay.png"
                    write_png(os.path.join(args.out, name),
                              label(heat_overlay(frame, amap, thr), f"{score:.4g} {'REJECT' if reject else 'ok'}", reject))
    print(f"{rejects} of {len(paths)} rejected at threshold {thr:.4g}")
    return 0
