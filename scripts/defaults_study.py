"""Choose the image score, the input shape and PatchCore's pooling on both development sets.

    .venv/bin/python -m scripts.defaults_study [--piped PA_BDP01_TL,...|all] [--methods patchcore,padim]
                                               [--out defaults-study] [--sizes auto:256,auto:512] [--sets ...]

Trains every variant of the grid and prints two markdown tables (a summary per variant, and
per PIPED category): image AUROC / pixel AUROC / AUPRO on the PIPED categories (the method
table's four: PA_BDP01_TL, PA_FLR01_TL, PA_BRG01_RL, PA_GLA01_TL; --piped all for the twelve)
and their mean, and on bsdata; recall and false-reject at one common rule; training time; FP32 frames/s
of the bsdata graphs.

  grid at 256 x 256 on every set: --scores (max, top:0.04) x --pools (0, 1; PatchCore only)
  sizes on --size-sets (bsdata; PIPED's images are square, so `auto` is 256 x 256 there):
      --sizes (auto:256, auto:512) for the 256 variant that the rule below takes per method

The rule (choose()): a variant replaces the reference (--reference, the defaults before the
study: top:0.04, pool 0) only if on neither set (PIPED's mean, bsdata) its image AUROC drops by
more than --noise (0.005) nor its AUPRO by more than twice that, and on at least one set its
image AUROC rises by more than --noise. Sizes are then read against the 256 row by the same
rule, with their frames/s beside them.

Every variant gives its score and pool explicitly, so the results do not depend on the
defaults of the day. Resumable: <out>/results.json holds one record per (set, variant) with
the set's fingerprint; a record already there is not trained again. Bundles are deleted once
measured (--keep to keep them).

The threshold's fold scoring is skipped, and why that leaves the figures alone: where a data
set has no validation/good, the trainer scores every training image by a model refitted
without its fold (train/trainer.py:holdout_plan), which for PatchCore on bsdata is six greedy
coresets, five of them only for the threshold. Here each set is trained through a view
(<out>/views/<set>: symbolic links to its train/, test/ and ground_truth/) whose
validation/good is the set's test/good. With validation/good present, holdout_plan fits on
all of train/good, as the fold rule's final fit does (the same images, the same seed, so the
same bank or Gaussians), and scores only validation/good for the threshold. AUROC, pixel
AUROC and AUPRO are computed from the test split's scores and maps without any threshold, so
they are the figures a default training gives. Only the threshold differs: it is set by the
trainer's own rule (1 % false-reject target, outliers set aside) on the test split's good
images. Recall and false-reject at it are therefore an oracle point of each variant's ROC
curve, the same rule for every variant, and not what a line would see.

Data: PIPED (Bianconi et al., Computers in Industry 2014, CC BY 4.0) and BSData (Schlagenhauf
& Landwehr 2021, CC BY-SA 4.0), in ../shared/data."""

import argparse
import json
import os
import platform
import shutil
import sys
import time

import numpy as np

from edge.common.errors import EdgeError
from edge.common.fsutil import atomic_write_text
from edge.common.logs import setup as setup_logging
from edge.common.progress import say
from train.cli import parse_size
from train.compare import frames_per_second
from train.data import MvtecSet, auto_size
from train.evaluate import evaluate_bundle
from train.settings import TrainSettings
from train.trainer import train_bundle

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data")
PIPED = ("PA_BDP01_TL", "PA_FLR01_TL", "PA_BRG01_RL", "PA_GLA01_TL")   # the method table's four
POOLING = {"patchcore"}                  # methods with a `pool` parameter
METRICS = ("image_auroc", "pixel_auroc", "aupro")


def set_path(name):
    piped = os.path.join(DATA, "piped", name)
    return piped if os.path.isdir(piped) else os.path.join(DATA, name)


def piped_categories(text):
    if text == "all":
        root = os.path.join(DATA, "piped")
        return sorted(c for c in os.listdir(root) if os.path.isdir(os.path.join(root, c, "train")))
    return [c.strip() for c in text.split(",") if c.strip()]


def view_of(name, out):
    """<out>/views/<name>: the set's train/, test/, ground_truth/ linked, and validation/good
    linked to its test/good (see the module docstring)."""
    src = os.path.abspath(set_path(name))
    if not os.path.isdir(os.path.join(src, "test", "good")):
        raise EdgeError("the study needs a test split with test/good", src)
    view = os.path.join(out, "views", name)
    os.makedirs(os.path.join(view, "validation"), exist_ok=True)
    for link, target in (("train", "train"), ("test", "test"), ("ground_truth", "ground_truth"),
                         (os.path.join("validation", "good"), os.path.join("test", "good"))):
        path = os.path.join(view, link)
        if os.path.exists(os.path.join(src, target)) and not os.path.islink(path):
            os.symlink(os.path.join(src, target), path)
    return view


def key_of(name, v):
    return f"{name}|{v['method']}|{v['score']}|pool{v['pool']}|{v['size']}"


def variants(methods, scores, pools, size="256"):
    return [{"method": m, "score": s, "pool": p if m in POOLING else 0, "size": size}
            for m in methods for s in scores for p in (pools if m in POOLING else [0])]


def run_one(name, v, out, results, fingerprints, keep=False, fps=False, fps_seconds=3.0):
    key = key_of(name, v)
    rec = results.get(key)
    if rec and rec.get("fingerprint") == fingerprints[name]:
        return rec, False
    data = view_of(name, out)
    size = parse_size(v["size"])
    if size[0] == "auto":
        size = auto_size(data, size[1])
    bundle = os.path.join(out, "bundles", key.replace("|", "_").replace(":", "-"))
    params = {"pool": v["pool"]} if v["method"] in POOLING else {}
    t0 = time.monotonic()
    train_bundle(TrainSettings(v["method"], data, bundle, tuple(size), method_params=params, score=v["score"],
                               evaluate=False))
    train_s = time.monotonic() - t0
    res = evaluate_bundle(bundle, data, quiet=True)
    rec = {"set": name, **v, "input": list(size), "fingerprint": fingerprints[name],
           **{k: res[k] for k in METRICS + ("recall", "false_reject", "f1_max")}, "train_seconds": round(train_s, 1),
           "eval_images_per_second": res["images_per_second"],
           "fps_fp32": frames_per_second(bundle, seconds=fps_seconds) if fps else None,
           "load": os.getloadavg()[0], "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    if not keep:
        shutil.rmtree(bundle, ignore_errors=True)
    results[key] = rec
    atomic_write_text(os.path.join(out, "results.json"), json.dumps(results, indent=1, sort_keys=True) + "\n")
    return rec, True


def piped_mean(results, v, k, cats=PIPED):
    vals = [results.get(key_of(c, v), {}).get(k) for c in cats]
    return float(np.mean(vals)) if all(x is not None for x in vals) else None


def set_figure(results, v, k, cats=PIPED):
    """{"PIPED": mean over the categories, "bsdata": ...} of metric k (None where missing)."""
    return {"PIPED": piped_mean(results, v, k, cats), "bsdata": results.get(key_of("bsdata", v), {}).get(k)}


def choose(results, grid, reference, noise, cats=PIPED):
    """Per method: the variant of `grid` that the rule takes over `reference` (the defaults before
    the study), and why. A variant qualifies when on neither set its image AUROC or AUPRO is
    lower than the reference's by more than `noise` (image AUROC) or 2 x `noise` (AUPRO), and on
    at least one set its image AUROC is higher by more than `noise`; of those, the highest mean
    image AUROC of the two sets. None of them: the reference stays."""
    out = {}
    for m in sorted({v["method"] for v in grid}):
        ref = next((v for v in grid if v["method"] == m and v["score"] == reference["score"]
                    and v["pool"] == (reference["pool"] if m in POOLING else 0)), None)
        if ref is None:                      # the reference is not in the grid: nothing to read against
            continue
        r_img, r_pro = set_figure(results, ref, "image_auroc", cats), set_figure(results, ref, "aupro", cats)
        if None in r_img.values():
            continue
        best, why = ref, "no variant helps one set beyond noise without hurting the other: the reference stays"
        for v in grid:
            if v["method"] != m or v == ref:
                continue
            img, pro = set_figure(results, v, "image_auroc", cats), set_figure(results, v, "aupro", cats)
            if None in img.values():
                continue
            d_img = {s: img[s] - r_img[s] for s in img}
            d_pro = {s: (pro[s] or 0) - (r_pro[s] or 0) for s in pro}
            ok = (all(d > -noise for d in d_img.values()) and all(d > -2 * noise for d in d_pro.values())
                  and any(d > noise for d in d_img.values()))
            if ok and np.mean(list(img.values())) > np.mean(list(set_figure(results, best, "image_auroc", cats).values())):
                best, why = v, "image AUROC " + ", ".join(f"{s} {d:+.3f}" for s, d in d_img.items())
        out[m] = (best, why)
    return out


def label(v):
    pool = f", pool {v['pool']}" if v["method"] in POOLING else ""
    return f"{v['method']} {v['score']}{pool}, {v['size']}"


def fmt(x, spec=".3f"):
    return "–" if x is None or (isinstance(x, float) and np.isnan(x)) else format(x, spec)


def triple(r):
    return "–" if r is None else " / ".join(fmt(r[k]) for k in METRICS)


def tables(results, grid, sized, cats=PIPED):
    lines = [f"| variant | PIPED mean of {len(cats)} image / pixel AUROC / AUPRO | bsdata image / pixel AUROC / AUPRO | "
             "recall / false-reject: PIPED mean, bsdata | bsdata input, training s, FP32 frames/s |",
             "|---|---|---|---|---|"]
    for v in grid + sized:
        b = results.get(key_of("bsdata", v))
        pm = {k: piped_mean(results, v, k, cats) for k in METRICS + ("recall", "false_reject")}
        piped = "square: as at 256" if v in sized else (triple(pm) if pm["image_auroc"] is not None else "–")
        rate = (f"{fmt(pm['recall'])} / {fmt(pm['false_reject'])}, " if v not in sized else "") + \
               (f"{fmt(b['recall'])} / {fmt(b['false_reject'])}" if b else "–")
        speed = f"{'x'.join(map(str, b['input']))}, {b['train_seconds']:.0f}, {fmt(b['fps_fp32'], '.1f')}" if b else "–"
        lines.append(f"| {label(v)} | {piped} | {triple(b)} | {rate} | {speed} |")
    lines += ["", "| variant | " + " | ".join(cats) + " |", "|---|" + "---|" * len(cats)]
    for v in grid:
        lines.append(f"| {label(v)} | " + " | ".join(triple(results.get(key_of(c, v))) for c in cats) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--piped", default=",".join(PIPED), help="PIPED categories of the mean: comma-separated or all "
                                                             "(default the method table's four)")
    ap.add_argument("--sets", help="sets to train on now (default: the --piped categories and bsdata)")
    ap.add_argument("--methods", default="patchcore,padim")
    ap.add_argument("--scores", default="max,top:0.04")
    ap.add_argument("--pools", default="0,1", help="PatchCore's pool values")
    ap.add_argument("--sizes", default="auto:256,auto:512", help="extra sizes, on --size-sets, for the variant the rule takes")
    ap.add_argument("--size-sets", default="bsdata")
    ap.add_argument("--reference", default="top:0.04,0", help="SCORE,POOL: the defaults before the study")
    ap.add_argument("--noise", type=float, default=0.005, help="image AUROC difference counted as noise")
    ap.add_argument("--out", default="defaults-study")
    ap.add_argument("--keep", action="store_true", help="keep the bundles")
    args = ap.parse_args(argv)
    setup_logging()
    cats = piped_categories(args.piped)
    sets = [s.strip() for s in args.sets.split(",") if s.strip()] if args.sets else cats + ["bsdata"]
    size_sets = [s.strip() for s in args.size_sets.split(",") if s.strip()]
    bad = [s for s in sets + size_sets + cats if not os.path.isdir(os.path.join(set_path(s), "train"))]
    if bad:
        raise SystemExit(f"unknown set {bad[0]!r}: no {set_path(bad[0])}/train")
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    scores = [s.strip() for s in args.scores.split(",") if s.strip()]
    pools = [int(p) for p in args.pools.split(",") if p.strip()]
    sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "results.json")
    results = {}
    if os.path.isfile(path):
        with open(path) as f:
            results = json.load(f)
    fingerprints = {s: MvtecSet(set_path(s)).fingerprint()["sha256"] for s in set(sets) | set(size_sets)}
    grid = variants(methods, scores, pools)
    jobs = [(s, v) for v in grid for s in sets]
    say(f"defaults study: {len(grid)} variants x {len(sets)} sets at 256, then sizes {sizes} on {', '.join(size_sets)}; "
        f"load {os.getloadavg()[0]:.1f}, {platform.node()}")
    t_all = time.monotonic()

    def go(i, total, s, v):
        t = time.monotonic()
        rec, trained = run_one(s, v, args.out, results, fingerprints, args.keep, fps=s in size_sets)
        say(f"[{i}/{total}] {s} {label(v)}: image AUROC {rec['image_auroc']:.4f} pixel {rec['pixel_auroc']:.4f} "
            f"AUPRO {rec['aupro']:.4f}" + (f" ({time.monotonic() - t:.0f}s, load {os.getloadavg()[0]:.1f})"
                                           if trained else " (done before)"))
    for i, (s, v) in enumerate(jobs, 1):
        go(i, len(jobs), s, v)
    ref_score, _, ref_pool = args.reference.partition(",")
    if ref_pool not in ("0", "1"):
        raise SystemExit(f"--reference must be SCORE,POOL (POOL 0 or 1), got {args.reference!r}")
    reference = {"score": ref_score, "pool": int(ref_pool)}
    chosen = choose(results, grid, reference, args.noise, cats)
    sized = []
    for m in methods:
        if m not in chosen:
            say(f"{m}: no sizes: its grid lacks the reference or a set's figures (every PIPED category and bsdata)")
            continue
        say(f"{m}: at 256 the rule takes {label(chosen[m][0])} ({chosen[m][1]})")
        sized += [dict(chosen[m][0], size=size) for size in sizes]
    size_jobs = [(s, v) for v in sized for s in size_sets]
    for i, (s, v) in enumerate(size_jobs, 1):
        go(i, len(size_jobs), s, v)
    say(f"study done in {time.monotonic() - t_all:.0f}s; results in {path}")
    table = tables(results, grid, sized, cats)
    atomic_write_text(os.path.join(args.out, "study.md"), table)
    print(table, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
