"""`make bench`: PatchCore training time with the default coreset on 400 images at 256x256,
and ONNX Runtime inference speed of the resulting graph, on this machine.

The 400 training images are the embedded PIPED good images (both categories, train and
test/good) with their flips and 90-degree rotations, so that the set is real paper texture."""

import argparse
import json
import os
import sys
import tempfile
import time

import cv2
import numpy as np

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))


def make_set(root, n=400):
    from edge.common.imageio import list_images
    src = []
    for cat in ("PA_BDP01_TL", "PA_FLR01_TL"):
        for sub in ("train/good", "test/good"):
            src += list_images(os.path.join(ROOT, "data", "piped", cat, sub))
    out = os.path.join(root, "train", "good")
    os.makedirs(out)
    variants = [lambda x: x, lambda x: x[:, ::-1], lambda x: x[::-1], lambda x: np.rot90(x), lambda x: np.rot90(x, 3)]
    i = 0
    for v in variants:
        for p in src:
            if i == n:
                return
            cv2.imwrite(os.path.join(out, f"{i:04d}.png"), np.ascontiguousarray(v(cv2.imread(p))))
            i += 1


def speed(graph, hw, batch, seconds=5.0, threads=None):
    from edge.tools.bench import time_engine
    from edge.engines.onnxrt import OrtEngine
    x = np.random.default_rng(0).integers(0, 255, (batch, *hw, 3), dtype=np.uint8)
    res = time_engine(OrtEngine(graph, threads=threads), x, seconds)
    return dict(res, images_per_second=res["model_fps"])


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--images", type=int, default=400)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--method", default="patchcore")
    ap.add_argument("--json")
    args = ap.parse_args()
    from train.settings import TrainSettings
    from train.trainer import train_bundle
    with tempfile.TemporaryDirectory() as tmp:
        make_set(tmp, args.images)
        out = os.path.join(tmp, "bundle")
        t = time.monotonic()
        train_bundle(TrainSettings(args.method, tmp, out, (args.size, args.size), evaluate=False))
        train_s = time.monotonic() - t
        from edge.bundle.manifest import Bundle
        m = Bundle(out).manifest
        res = {"method": args.method, "images": args.images, "size": args.size, "train_seconds_total": train_s,
               "fit_seconds": m["training"]["seconds"], "feature_seconds": m["training"]["feature_seconds"],
               "params": m["training"]["method_params"], "cpus": os.cpu_count(),
               "speed": [speed(os.path.join(out, "model.onnx"), (args.size, args.size), b) for b in (1, 8)]}
    print(f"\n{args.method}: {args.images} images at {args.size}x{args.size} trained in {train_s:.1f} s "
          f"(features {res['feature_seconds']:.1f} s, fit incl. features {res['fit_seconds']:.1f} s; "
          f"bank {res['params'].get('bank_size', '-')})")
    for s in res["speed"]:
        print(f"ONNX Runtime batch {s['batch']}: {s['images_per_second']:.1f} images/s, "
              f"latency p50 {s['latency_ms_p50']:.1f} ms p99 {s['latency_ms_p99']:.1f} ms")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)


if __name__ == "__main__":
    sys.exit(main())
