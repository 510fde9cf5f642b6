"""Train and evaluate one method on every PIPED category; print the table the README shows.

    .venv/bin/python -m scripts.piped_table --method patchcore [--size 256] [--param K=V ...]
Data: PIPED (Bianconi et al., Computers in Industry 2014), CC BY 4.0, in ../shared/data/piped."""

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

from train.cli import parse_params, parse_size
from train.evaluate import evaluate_bundle
from train.settings import TrainSettings
from train.trainer import train_bundle

KEYS = ("image_auroc", "pixel_auroc", "aupro", "f1_max", "images_per_second")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--method", required=True)
    ap.add_argument("--data", default=os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "piped"))
    ap.add_argument("--size", default="256")
    ap.add_argument("--sigma", type=float, default=4.0)
    ap.add_argument("--backbone", default="efficientnet-lite0")
    ap.add_argument("--param", action="append")
    ap.add_argument("--json")
    ap.add_argument("--border", type=int, default=16)
    ap.add_argument("--categories", help="comma-separated subset")
    args = ap.parse_args()
    cats = sorted(c for c in os.listdir(args.data) if os.path.isdir(os.path.join(args.data, c, "train")))
    if args.categories:
        cats = [c for c in cats if c in args.categories.split(",")]
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for c in cats:
            t = time.monotonic()
            out = os.path.join(tmp, c)
            train_bundle(TrainSettings(args.method, os.path.join(args.data, c), out, parse_size(args.size), args.backbone,
                                       sigma=args.sigma, method_params=parse_params(args.param), evaluate=False, border=args.border))
            res = evaluate_bundle(out, os.path.join(args.data, c), quiet=True)
            rows[c] = {k: res[k] for k in KEYS}
            rows[c]["train_s"] = time.monotonic() - t
            print(f"{c:<14}" + "".join(f"{rows[c][k]:>9.4f}" for k in KEYS), file=sys.stderr, flush=True)
    mean = {k: float(np.mean([r[k] for r in rows.values()])) for k in KEYS}
    print("| category | image AUROC | pixel AUROC | AUPRO | F1-max | images/s |")
    print("|---|---|---|---|---|---|")
    for c, r in rows.items():
        print(f"| {c} | " + " | ".join(f"{r[k]:.3f}" if k != "images_per_second" else f"{r[k]:.0f}" for k in KEYS) + " |")
    print("| **mean** | " + " | ".join(f"**{mean[k]:.3f}**" if k != "images_per_second" else f"{mean[k]:.0f}" for k in KEYS) + " |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"method": args.method, "size": args.size, "params": args.param, "rows": rows, "mean": mean}, f, indent=2)


if __name__ == "__main__":
    main()
