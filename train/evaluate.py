"""`edge evaluate`: run a bundle's graph (ONNX Runtime or TensorRT, never torch) on a data set's
test split and report the field's metrics, the confusion at the bundle's threshold, and speed."""

import json
import os
import time

import numpy as np

from edge.bundle.manifest import Bundle
from edge.engines import open_engine
from edge.common.errors import EdgeError
from edge.common.fsutil import atomic_write_text
from edge.common.names import ENGINE_KINDS, PRECISIONS
from edge.runtime.preprocess import Preprocessor
from edge.common.progress import Progress, say

from edge.common import metrics
from .data import MvtecSet, load_test


def run_engine(engine, images, batch):
    """Maps and scores for all images, and the seconds spent inside the engine."""
    maps = np.empty(images.shape[:3], np.float32)
    scores = np.empty(len(images), np.float32)
    engine.infer(images[:batch])                       # warm-up
    spent = 0.0
    for i in range(0, len(images), batch):
        t = time.perf_counter()
        m, s = engine.infer(images[i:i + batch])
        spent += time.perf_counter() - t
        maps[i:i + len(s)], scores[i:i + len(s)] = m, s
    return maps, scores, spent


def compute_metrics(labels, scores, masks, maps, threshold):
    labels = np.asarray(labels)
    res = {"image_auroc": metrics.auroc(labels, scores)}
    res["f1_max"], res["f1_max_threshold"] = metrics.f1_max(labels, scores)
    has_masks = masks.any()
    res["pixel_auroc"] = metrics.auroc(masks, maps) if has_masks else float("nan")
    res["aupro"] = metrics.aupro(masks, maps, 0.3) if has_masks else float("nan")
    res["confusion"] = c = metrics.confusion(labels, scores, threshold)
    # What the line lives with at the threshold it uses: defects caught, good parts thrown away.
    res["recall"] = c["tp"] / (c["tp"] + c["fn"]) if c["tp"] + c["fn"] else float("nan")
    res["false_reject"] = c["fp"] / (c["fp"] + c["tn"]) if c["fp"] + c["tn"] else float("nan")
    return res


def evaluate_bundle(bundle_path, data, precision="fp32", engine="onnxruntime", batch=4, threads=None,
                    record=False, json_path=None, plots=None, quiet=False):
    if batch < 1:
        raise EdgeError(f"--batch must be 1 or more, got {batch}")
    if json_path and os.path.isdir(json_path):
        raise EdgeError("--json must name a file, not a folder", json_path)
    if json_path and not os.path.isdir(os.path.dirname(os.path.abspath(json_path))):
        raise EdgeError("--json: folder not found", os.path.dirname(os.path.abspath(json_path)))
    if threads is not None and threads < 1:
        raise EdgeError(f"--threads must be 1 or more, got {threads}")
    bundle = Bundle(bundle_path)
    pre = Preprocessor.for_bundle(bundle)
    samples = MvtecSet(data).test()
    eng = open_engine(bundle, engine, precision, batch=batch, threads=threads)
    try:
        images, masks = load_test(samples, pre, None if quiet else Progress("reading test set", len(samples)))
        maps, scores, spent = run_engine(eng, images, batch)
    finally:
        eng.close()
    bad = np.flatnonzero(~np.isfinite(scores) | ~np.isfinite(maps).reshape(len(maps), -1).all(axis=1))
    if bad.size:
        raise EdgeError(f"engine returned a non-finite score or map for {bad.size} of {len(samples)} images "
                        f"(first score {scores[bad[0]]}): a fault; no figures written", samples[bad[0]].path)
    labels = np.array([s.label for s in samples])
    threshold = bundle.threshold_for(precision, eng.name)
    res = compute_metrics(labels, scores, masks, maps, threshold)
    res.update({"images": len(samples), "defective": int(labels.sum()), "engine": engine, "precision": precision,
                "batch": batch, "images_per_second": len(samples) / spent, "threshold": threshold,
                "data": os.path.abspath(data)})
    if not quiet:
        c = res["confusion"]
        say(f"{os.path.basename(os.path.abspath(data))}: image AUROC {res['image_auroc']:.4f}  pixel AUROC "
            f"{res['pixel_auroc']:.4f}  AUPRO {res['aupro']:.4f}  F1-max {res['f1_max']:.4f}  "
            f"at threshold {threshold:.4g}: recall {res['recall']:.4f} ({c['tp']} of {c['tp'] + c['fn']} defects "
            f"caught), false-reject {res['false_reject']:.4f} ({c['fp']} of {c['fp'] + c['tn']} good rejected)  "
            f"{res['images_per_second']:.1f} images/s ({engine} {precision}, batch {batch})")
    if json_path:
        atomic_write_text(json_path, json.dumps(res, indent=2) + "\n")
    if plots:
        from .plots import overlay_grid, roc_plot
        os.makedirs(plots, exist_ok=True)
        roc_plot(os.path.join(plots, "roc.png"), labels, scores, masks, maps,
                 title=f"{bundle.method} {precision} on {os.path.basename(os.path.abspath(data))}")
        overlay_grid(os.path.join(plots, "overlays.png"), images, maps, scores, labels, threshold)
    if record:
        bundle.manifest.setdefault("evaluation", {})[precision] = {
            k: (round(v, 5) if isinstance(v, float) else v) for k, v in res.items() if k not in ("data",)}
        bundle.manifest["evaluation"][precision]["data"] = os.path.basename(os.path.abspath(data))
        bundle.save()
    return res


def add_arguments(p):
    p.add_argument("bundle", help="model bundle folder")
    p.add_argument("--data", required=True, help="data set root in MVTec AD layout (uses its test split)")
    p.add_argument("--json", help="write the figures to this JSON file")
    p.add_argument("--plots", metavar="DIR", help="write roc.png and overlays.png (heat-map grid) here")
    p.add_argument("--precision", default="fp32", choices=PRECISIONS)
    p.add_argument("--engine", default="onnxruntime", choices=ENGINE_KINDS)
    p.add_argument("--batch", type=int, default=4, help="frames per engine call (default 4)")
    p.add_argument("--threads", type=int, help="ONNX Runtime threads (default: all cores)")
    p.add_argument("--record", action="store_true", help="store the figures in the bundle's manifest")


def run(args):
    evaluate_bundle(args.bundle, args.data, args.precision, args.engine, args.batch, args.threads,
                    record=args.record, json_path=args.json, plots=args.plots)
    return 0
