"""The operating point on real data: recall and false-reject rate at the threshold training
set, against what hindsight on the test split would have chosen. Prints the table the README shows.

    .venv/bin/python -m scripts.operating_point [--piped ../shared/data/piped] [--bsdata ../shared/data/bsdata]

For each data set: train with defaults (PatchCore, --false-reject 0.01), score the test split with
ONNX Runtime, and report
  * recall and false-reject rate of the test split at the bundle's threshold;
  * hindsight: the recall at the lowest threshold whose false-reject rate on the test split's good
    images is within the same target (at most floor(target x good images) of them rejected);
  * the false-reject rate the held-out images implied at training (k of n, its 95 % upper bound),
    and whether the measured rate of the test's good images lies within that bound.
Benchmark figures, not tests: they depend on the data and take minutes (bsdata is trained once)."""

import argparse
import csv
import json
import math
import os
import sys
import tempfile
import time

import numpy as np

from edge.bundle.manifest import Bundle
from edge.common import oppoint as op

HERE = os.path.dirname(os.path.abspath(__file__))
SHARED = os.path.join(HERE, "..", "..", "shared", "data")


def forward_split(root, dst, share=0.25):
    """bsdata re-split the way a line meets its parts: per series (camera position), the good
    images in time order, the last `share` of each series to test/good, the rest to train/good;
    the defects and masks as they are. bsdata's own test/good is every 5th good image of a series,
    so each has a training image one frame away; here no test image lies between training images.
    Uses manifest.csv (series, timestamp); the files are linked, not copied. Returns dst."""
    path = os.path.join(root, "manifest.csv")
    try:
        with open(path, newline="") as f:
            rows = [r for r in csv.DictReader(f) if r["image"].split("/")[1:2] == ["good"]]
        series = {}
        for r in rows:
            series.setdefault(r["series"], []).append((r["timestamp"], r["image"]))
    except (OSError, KeyError, IndexError) as e:
        sys.exit(f"{path}: cannot read the series and timestamps of the good images ({e})")
    train, test = [], []
    for name in series:                                   # the manifest's order of series
        shots = [img for _ts, img in sorted(series[name])]
        n_test = max(1, round(share * len(shots)))
        train += shots[:-n_test]
        test += shots[-n_test:]
    for split, images in (("train", train), ("test", test)):
        os.makedirs(os.path.join(dst, split, "good"))
        for i, img in enumerate(images):
            os.symlink(os.path.join(os.path.abspath(root), img), os.path.join(dst, split, "good", f"{i:03d}.jpg"))
    for kind in os.listdir(os.path.join(root, "test")):
        if kind != "good":
            os.symlink(os.path.join(os.path.abspath(root), "test", kind), os.path.join(dst, "test", kind))
    os.symlink(os.path.join(os.path.abspath(root), "ground_truth"), os.path.join(dst, "ground_truth"))
    return dst


def hindsight_recall(labels, scores, rate):
    """Recall at the lowest threshold rejecting at most floor(rate x good) of the good images."""
    good = np.sort(scores[labels == 0])[::-1]
    allowed = int(math.floor(rate * good.size + 1e-9))
    cut = good[allowed] if allowed < good.size else -np.inf     # the highest good score kept
    bad = scores[labels == 1]
    return float((bad > cut).mean()) if bad.size else float("nan"), allowed


def one(name, data, out, size, method, rate, threads):
    from edge.common import metrics
    from edge.engines.onnxrt import OrtEngine
    from edge.runtime.preprocess import Preprocessor
    from train.data import MvtecSet, load_test
    from train.evaluate import compute_metrics, run_engine
    from train.settings import TrainSettings
    from train.trainer import train_bundle
    t = time.monotonic()
    train_bundle(TrainSettings(method, data, out, size, false_reject=rate, evaluate=False, threads=threads))
    secs = time.monotonic() - t
    b = Bundle(out)
    samples = MvtecSet(data).test()
    images, _masks = load_test(samples, Preprocessor.for_bundle(b))
    scores = run_engine(OrtEngine(b.graph_path(), threads=threads), images, 4)[1].astype(np.float64)
    labels = np.array([x.label for x in samples])
    none = np.zeros((len(samples), 1, 1), bool)
    res = compute_metrics(labels, scores, none, none.astype(np.float32), b.threshold)
    res["image_auroc"] = metrics.auroc(labels, scores)
    thr = b.manifest["threshold"]
    imp = thr["implied_false_reject"]
    hind, allowed = hindsight_recall(labels, scores, rate)
    c = res["confusion"]
    # Where the threshold sits: the highest held-out good score (no outlier) and the highest good
    # test score, and the recall a threshold at the highest held-out score would have had.
    names, held = op.read_holdout(out, thr)
    skip = {o["name"] for o in thr["outliers"]}
    held_max = float(max(s for n, s in zip(names, held) if n not in skip))
    bad = scores[labels == 1]
    return {"data": name, "train_good": b.manifest["training"]["fit_images"], "threshold": thr["value"],
            "outliers": [o["name"] for o in thr["outliers"]],
            "held_out": imp["of"], "held_out_rejected": imp["rejected"], "implied_upper_95": imp["upper_95"],
            "test_good": c["fp"] + c["tn"], "test_defective": c["tp"] + c["fn"],
            "recall": res["recall"], "false_reject": res["false_reject"], "hindsight_recall": hind,
            "hindsight_allowed_rejects": allowed, "image_auroc": res["image_auroc"],
            "frr_within_bound": res["false_reject"] <= imp["upper_95"], "train_seconds": round(secs, 1),
            "held_out_max": held_max, "test_good_max": float(scores[labels == 0].max()),
            "recall_at_held_out_max": float((bad >= held_max).mean()) if bad.size else float("nan"),
            "false_reject_at_held_out_max": float((scores[labels == 0] >= held_max).mean())}


def table(rows, rate):
    lines = [f"| data | train good | held-out: rejected / n (95 % bound) | test good / defective | "
             f"recall at threshold | hindsight recall at <= {rate:g} | difference | test false-reject | within bound | image AUROC |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['data']} | {r['train_good']} | {r['held_out_rejected']} / {r['held_out']} "
                     f"({r['implied_upper_95']:.1%}) | {r['test_good']} / {r['test_defective']} | {r['recall']:.3f} | "
                     f"{r['hindsight_recall']:.3f} | {r['recall'] - r['hindsight_recall']:+.3f} | "
                     f"{r['false_reject']:.3f} | {'yes' if r['frr_within_bound'] else 'NO'} | {r['image_auroc']:.3f} |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--piped", default=os.path.join(SHARED, "piped"), help="PIPED root (all categories)")
    ap.add_argument("--bsdata", default=os.path.join(SHARED, "bsdata"), help="bsdata root ('' to skip)")
    ap.add_argument("--forward", action="store_true",
                    help="bsdata also re-split forward in time: the last quarter of each series' good images "
                         "as test good (see forward_split)")
    ap.add_argument("--categories", help="comma-separated PIPED subset")
    ap.add_argument("--method", default="patchcore")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--false-reject", type=float, default=op.DEFAULT_FALSE_REJECT)
    ap.add_argument("--threads", type=int)
    ap.add_argument("--json", help="write the rows here")
    ap.add_argument("--keep", metavar="DIR", help="keep the trained bundles in DIR (default: a temporary folder)")
    args = ap.parse_args()
    sets = []
    if args.piped and os.path.isdir(args.piped):
        cats = sorted(c for c in os.listdir(args.piped) if os.path.isdir(os.path.join(args.piped, c, "train")))
        if args.categories:
            cats = [c for c in cats if c in args.categories.split(",")]
        sets += [(c, os.path.join(args.piped, c)) for c in cats]
    if args.bsdata and os.path.isdir(args.bsdata):
        sets.append(("bsdata", args.bsdata))
    if not sets:
        sys.exit("no data sets found (see --piped, --bsdata)")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        if args.keep:
            os.makedirs(args.keep, exist_ok=True)
            tmp = args.keep
        if args.forward and args.bsdata:
            sets.append(("bsdata-forward", forward_split(args.bsdata, os.path.join(tmp, "bsdata-forward-data"))))
        for name, root in sets:
            rows.append(one(name, root, os.path.join(tmp, name), (args.size, args.size), args.method,
                            args.false_reject, args.threads))
            r = rows[-1]
            print(f"{name}: recall {r['recall']:.3f} (hindsight {r['hindsight_recall']:.3f}), test false-reject "
                  f"{r['false_reject']:.3f} vs bound {r['implied_upper_95']:.3f}; threshold {r['threshold']:.4g}, highest "
                  f"held-out good {r['held_out_max']:.4g} (recall there {r['recall_at_held_out_max']:.3f}, false-reject "
                  f"{r['false_reject_at_held_out_max']:.3f}), highest test good {r['test_good_max']:.4g}; "
                  f"outliers {r['outliers'] or 'none'}; "
                  f"trained in {r['train_seconds']} s", file=sys.stderr, flush=True)
    print(table(rows, args.false_reject))
    piped = [r for r in rows if not r["data"].startswith("bsdata")]
    if piped:
        d = np.array([r["recall"] - r["hindsight_recall"] for r in piped])
        print(f"\nPIPED: mean recall {np.mean([r['recall'] for r in piped]):.3f} vs hindsight "
              f"{np.mean([r['hindsight_recall'] for r in piped]):.3f}; largest shortfall {-d.min():.3f}; "
              f"test false-reject within the bound on {sum(r['frr_within_bound'] for r in piped)} of {len(piped)}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
