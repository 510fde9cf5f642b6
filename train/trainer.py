"""The training loop: good images -> features -> the method's model -> one exported graph -> bundle."""

import datetime
import json
import os
import platform
import time

import numpy as np
import torch

from convert.graphcheck import tensorrt_floor
from edge import __version__
from edge.bundle.manifest import write_manifest
from edge.engines.onnxrt import OrtEngine
from edge.common.errors import EdgeError
from edge.common.fsutil import StagedDir, atomic_write_text, sha256_file
from edge.runtime.preprocess import Preprocessor
from edge.common.progress import Progress, say
from edge.common import oppoint as op
from edge.bundle import reference

from .backbones import build_backbone
from .data import MvtecSet, load_images
from .export import agreement, export_onnx, torch_infer
from .graph import AnomalyGraph, Embedder
from .methods import get_method

TORCH_FILE = "model.torchscript.pt"

# The exported graph must agree with PyTorch within this (relative to the largest score).
EXPORT_TOLERANCE = 1e-3


def score_stats(scores):
    s = np.asarray(scores, np.float64)
    q = np.percentile(s, [50, 95, 99])
    return {"n": int(s.size), "mean": float(s.mean()), "std": float(s.std()), "min": float(s.min()),
            "max": float(s.max()), "p50": float(q[0]), "p95": float(q[1]), "p99": float(q[2])}


def fold_scores(method, params, graph, emb, folds=op.DEFAULT_FOLDS, guard=op.DEFAULT_GUARD, progress=None):
    """Scores of every training image by a model fitted without its contiguous fold (and without
    `guard` images either side of it); returns (scores, fold index of each image)."""
    n = int(emb.shape[0])
    scores, fold_of = np.empty(n, np.float64), np.empty(n, np.int64)
    parts = op.contiguous_folds(n, folds)
    for f, (a, b) in enumerate(parts):
        model = get_method(method)(**(params or {}))
        model.fit(emb[op.fit_indices(n, a, b, guard)])
        with torch.no_grad():
            scores[a:b] = graph.from_features(emb[a:b], model.head())[1].double().numpy()
        fold_of[a:b] = f
        if progress:
            progress(f + 1, len(parts))
    return scores, fold_of


def reference_frames(ds, train_paths, hold_names, hold_scores, outliers, pre, count=2):
    """A few of the data set's own frames for the bundle to prove itself with on the box: good
    ones (the median and the highest held-out score that is no outlier) and defective ones
    (evenly spaced over the test split's defects) where the data set has any."""
    order = [i for i in np.argsort(hold_scores, kind="stable") if hold_names[i] not in outliers]
    good = sorted({order[len(order) // 2], order[-1]}) if order else []
    by_name = {os.path.relpath(p, ds.root): p for p in train_paths}
    paths = [by_name.get(hold_names[i]) or os.path.join(ds.root, hold_names[i]) for i in good]
    entries = [{"name": hold_names[i], "label": "good"} for i in good]
    note = None
    defects = []
    if os.path.isdir(os.path.join(ds.root, "test")):
        try:
            defects = [x for x in ds.test() if x.label == 1]
        except EdgeError:                    # a test split evaluation would refuse: no defects taken
            defects = []
    if defects:
        pick = sorted(set(np.linspace(0, len(defects) - 1, min(count, len(defects))).round().astype(int).tolist()))
        paths += [defects[i].path for i in pick]
        entries += [{"name": os.path.relpath(defects[i].path, ds.root), "label": "defective"} for i in pick]
    else:
        note = "the data set has no defective images (no test split with defects): good frames only"
    return load_images(paths, pre), entries, note


def save_torchscript(graph, path, example):
    import warnings
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.jit.trace(graph, torch.from_numpy(example), check_trace=False).save(path)


def embed(graph, images, batch=16, progress=None):
    out = []
    with torch.no_grad():
        for i in range(0, len(images), batch):
            out.append(graph.features(torch.from_numpy(images[i:i + batch])))
            if progress:
                progress(min(i + batch, len(images)), len(images))
    return torch.cat(out)


def train_bundle(settings):
    """Train, export, check and write the bundle at `settings.out` (a TrainSettings); returns
    the PyTorch graph."""
    s = settings
    method, data, out, size, backbone, roi, sigma, border, threads, false_reject, folds = (
        s.method, s.data, s.out, s.size, s.backbone, s.roi, s.sigma, s.border, s.threads, s.false_reject, s.folds)
    t0 = time.monotonic()
    ds = MvtecSet(data)
    train_paths = ds.train_good()
    val_paths = ds.validation_good()
    if not val_paths and len(train_paths) < 4:
        raise EdgeError(f"train split has {len(train_paths)} images; at least 4 are needed "
                        f"(scored in folds for the threshold)", ds.root)
    pre = Preprocessor(size[0], size[1], roi)
    model = get_method(method)(**s.method_params)
    net = build_backbone(backbone, s.weights).select(s.strides)
    say(f"training {method} on {len(train_paths)} good images of {ds.root} at {size[0]}x{size[1]} ({backbone})")

    fit_imgs = load_images(train_paths, pre, Progress("reading images", len(train_paths)))
    graph = AnomalyGraph(net, Embedder(model.pool, net.strides, 8), None, size, sigma, border).eval()
    emb = embed(graph, fit_imgs, progress=Progress("features", len(fit_imgs)))
    t_feat = time.monotonic() - t0
    if val_paths:
        hold_paths, fold_of = val_paths, None
        hold_from = "validation/good"
    else:
        # Held-out scores from models fitted without each contiguous fold of the data set's order.
        hold_paths = train_paths
        fold_scores_, fold_of = fold_scores(method, s.method_params, graph, emb, folds, op.DEFAULT_GUARD,
                                            Progress(f"scoring {folds} held-out folds", folds))
        hold_from = (f"train/good in {int(fold_of.max()) + 1} contiguous folds of its order, each scored by a "
                     f"model fitted without it and without {op.DEFAULT_GUARD} images either side")
    model.fit(emb, progress=Progress(f"fitting {method}", 1))
    del emb
    graph.head = model.head()
    t_fit = time.monotonic() - t0
    hold_names = [os.path.relpath(p, ds.root) for p in hold_paths]
    check_imgs = fit_imgs[np.unique(np.linspace(0, len(fit_imgs) - 1, min(16, len(fit_imgs))).round().astype(int))]

    with StagedDir(out) as tmp:
        gpath = os.path.join(tmp, "model.onnx")
        export_onnx(graph, gpath, size)
        engine = OrtEngine(gpath, threads=threads)
        ort_out = engine.infer(check_imgs)
        check = agreement(torch_infer(graph, check_imgs), ort_out)
        if check["max_rel_score"] > EXPORT_TOLERANCE:
            raise EdgeError(f"exported graph disagrees with PyTorch: {check}")
        save_torchscript(graph, os.path.join(tmp, TORCH_FILE), check_imgs[:1])
        hold_scores = (engine.infer(load_images(hold_paths, pre))[1].astype(np.float64) if fold_of is None
                       else fold_scores_)
        threshold = op.operating_point(hold_names, hold_scores, false_reject, source=hold_from)
        threshold["holdout_file"] = op.HOLDOUT_FILE
        threshold["history"] = []
        write_holdout(tmp, hold_names, hold_scores, fold_of, hold_from)
        frames, entries, note = reference_frames(ds, train_paths, hold_names, hold_scores,
                                                 {o["name"] for o in threshold["outliers"]}, pre)
        manifest = {
            "format": 1, "method": method, "backbone": backbone,
            "input": {"height": size[0], "width": size[1], "layout": "NHWC", "dtype": "uint8",
                      "colour_order": "RGB", "roi": list(roi) if roi else None,
                      "normalisation": {"mean": list(net.mean), "std": list(net.std), "where": "in graph"}},
            "outputs": {"anomaly_map": "N x H x W float32", "score": f"N float32 (mean of the top {graph.score_fraction:.0%} patch scores)"},
            "graphs": {"fp32": {"file": "model.onnx", **tensorrt_floor(gpath)}},
            "threshold": threshold,
            "score_stats": {"holdout_good": score_stats(hold_scores)},
            "reference": reference.write_frames(tmp, frames, entries, note),
            "training": {
                "data": ds.root, "fingerprint": ds.fingerprint(), "fit_images": len(train_paths),
                "holdout_images": len(hold_paths), "folds": None if fold_of is None else int(fold_of.max()) + 1,
                "method_params": model.params(), "map_sigma": sigma,
                "feature_strides": list(net.strides), "border": border,
                "backbone_weights": os.path.basename(net.weights_file), "seconds": round(t_fit, 2),
                "feature_seconds": round(t_feat, 2), "created": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
                "toolkit": __version__, "torch": str(torch.__version__), "host": platform.node()},
            "export_check": {"images": len(check_imgs), "tolerance_rel_score": EXPORT_TOLERANCE,
                             **{k: float(f"{v:.3g}") for k, v in check.items()}},
            "files": {"model.onnx": None, op.HOLDOUT_FILE: None, reference.REFERENCE_FILE: None},
            # The same model for PyTorch (the eager baseline of `edge bench`); not needed on the line,
            # so it is checked when used rather than with the bundle's files.
            "torch_model": {"file": TORCH_FILE, "sha256": sha256_file(os.path.join(tmp, TORCH_FILE))},
        }
        reference.record_scores(manifest, "model.onnx", reference.infer_all(engine, frames),
                                reference.workstation("onnxruntime", "fp32"))
        write_manifest(tmp, manifest)
        say(f"trained in {t_fit:.1f}s; export agrees within {check['max_rel_score']:.2g} (relative score)")
        say(f"operating point: false-reject target {false_reject:g}; " + op.describe(threshold))
        for o in threshold["outliers"]:
            say(f"warning: held-out good image {o['name']} is an outlier (score {o['score']:.4g}, robust z "
                f"{o['robust_z']:.1f}): set aside from the threshold; look at it (a bad frame, or a defect "
                f"among the good images?)")
        short = op.shortfall(threshold)
        if short:
            say(f"warning: {short}")
        if note:
            say(f"note: reference frames: {note}")
        if s.evaluate:
            from .evaluate import evaluate_bundle
            evaluate_bundle(tmp, data, record=True, threads=threads)
    return graph


def write_holdout(folder, names, scores, fold_of, source):
    """holdout.json: each held-out good image's name, fold and score (for `edge threshold`)."""
    doc = {"source": source, "images": [
        {"name": n, "score": round(float(s), 6), **({"fold": int(fold_of[i])} if fold_of is not None else {})}
        for i, (n, s) in enumerate(zip(names, scores))]}
    atomic_write_text(os.path.join(folder, op.HOLDOUT_FILE), json.dumps(doc, indent=0) + "\n")
