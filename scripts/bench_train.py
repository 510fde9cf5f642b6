"""`make bench`: training time of a method (default PatchCore, default settings, no evaluation)
on a real set of about 700-800 images at 256 x 256, and ONNX Runtime inference speed of the
resulting graph, on this machine.

The set: bsdata's 400 good training images and their horizontal mirror images (800; mirrored
copies named next to their originals, so that a fold's guard keeps each pair together), with
bsdata's test split linked. `--data ROOT` times any MVTec-layout folder as it is instead.
Prints the phases: reading, frozen features, fold scoring (PatchCore: the greedy coreset and
each fold's bank), the final fit, and the rest (export, check, threshold, bundle)."""

import argparse
import json
import os
import sys
import tempfile
import time

import cv2
import numpy as np

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
BSDATA = os.path.join(ROOT, "..", "shared", "data", "bsdata")


def make_set(root, src=BSDATA):
    """bsdata's train/good and their mirror images under root/train/good; its test split linked."""
    from edge.common.imageio import list_images
    out = os.path.join(root, "train", "good")
    os.makedirs(out)
    for i, p in enumerate(list_images(os.path.join(src, "train", "good"))):
        img = cv2.imread(p)
        cv2.imwrite(os.path.join(out, f"{i:04d}.png"), img)
        cv2.imwrite(os.path.join(out, f"{i:04d}m.png"), np.ascontiguousarray(img[:, ::-1]))
    for sub in ("test", "ground_truth"):
        if os.path.isdir(os.path.join(src, sub)):
            os.symlink(os.path.abspath(os.path.join(src, sub)), os.path.join(root, sub))


def speed(graph, hw, batch, seconds=5.0, threads=None):
    from edge.tools.bench import time_engine
    from edge.engines.onnxrt import OrtEngine
    x = np.random.default_rng(0).integers(0, 255, (batch, *hw, 3), dtype=np.uint8)
    res = time_engine(OrtEngine(graph, threads=threads), x, seconds)
    return dict(res, images_per_second=res["model_fps"])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", help="an MVTec-layout folder to time as it is (default: bsdata with mirror images)")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--method", default="patchcore")
    ap.add_argument("--param", action="append", metavar="KEY=VALUE", help="method parameter (as edge train)")
    ap.add_argument("--no-speed", action="store_true", help="skip the ONNX Runtime speed figures")
    ap.add_argument("--json")
    args = ap.parse_args()
    from edge.bundle.manifest import Bundle
    from train.cli import parse_params
    from train.settings import TrainSettings
    from train.trainer import train_bundle
    with tempfile.TemporaryDirectory() as tmp:
        data = args.data
        if not data:
            data = os.path.join(tmp, "set")
            make_set(data)
        out = os.path.join(tmp, "bundle")
        load = os.getloadavg()[0]
        t = time.monotonic()
        train_bundle(TrainSettings(args.method, data, out, (args.size, args.size), evaluate=False,
                                   method_params=parse_params(args.param)))
        train_s = time.monotonic() - t
        tr = Bundle(out).manifest["training"]
        res = {"method": args.method, "data": args.data or "bsdata train/good + mirror images",
               "images": tr["fit_images"], "size": args.size, "folds": tr["folds"],
               "train_seconds_total": round(train_s, 1), "fit_seconds": tr["seconds"],
               "feature_seconds": tr.get("feature_seconds"), "fold_seconds": tr.get("fold_seconds"),
               "final_fit_seconds": tr.get("statistics_seconds"), "params": tr["method_params"],
               "cpus": os.cpu_count(), "load_before": round(load, 2), "load_after": round(os.getloadavg()[0], 2),
               "speed": [] if args.no_speed else
               [speed(os.path.join(out, "model.onnx"), (args.size, args.size), b) for b in (1, 8)]}
    rest = res["train_seconds_total"] - res["fit_seconds"]
    print(f"\n{args.method}: {res['images']} images at {args.size}x{args.size} trained in {train_s:.1f} s "
          f"(features {res['feature_seconds']} s, {res['folds']} folds scored {res['fold_seconds']} s, "
          f"final fit {res['final_fit_seconds']} s, export/check/threshold {rest:.1f} s; "
          f"bank {res['params'].get('bank_size', '-')}; load {res['load_before']} before, {res['load_after']} after)")
    for s in res["speed"]:
        print(f"ONNX Runtime batch {s['batch']}: {s['images_per_second']:.1f} images/s, "
              f"latency p50 {s['latency_ms_p50']:.1f} ms p99 {s['latency_ms_p99']:.1f} ms")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)


if __name__ == "__main__":
    sys.exit(main())
