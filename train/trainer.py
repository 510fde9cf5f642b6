"""Training to a bundle: good images -> the method (train/loop.py) -> one exported graph ->
checked against PyTorch -> the operating point on held-out good images -> bundle.

Held-out good images (docs/operating-point.md): validation/good where the data set has it;
otherwise, for a method that only fits statistics, every training image scored by a model
refitted without its contiguous fold (cheap: the frozen features are computed once); for a
method that trains networks, the tail block of train/good's order (after a gap of a few
images), which also serves early stopping."""

import datetime
import json
import os
import platform
import time

import numpy as np
import torch

from convert.graphcheck import tensorrt_floor
from edge import __version__
from edge.bundle import reference
from edge.bundle.manifest import write_manifest
from edge.common import oppoint as op
from edge.common.errors import EdgeError
from edge.common.fsutil import StagedDir, atomic_write_text, sha256_file
from edge.common.progress import Progress, say
from edge.engines.onnxrt import OrtEngine
from edge.runtime.preprocess import Preprocessor

from .data import MvtecSet, load_images
from .export import agreement, export_onnx, torch_infer
from .graph import AnomalyGraph, parse_score, score_name
from .loop import batches_of, resolve_device, train_method
from .methods import get_method
from .methods.base import Context, take

TORCH_FILE = "model.torchscript.pt"

# The exported graph must agree with PyTorch within this (relative to the largest score).
EXPORT_TOLERANCE = 1e-3


def score_stats(scores):
    s = np.asarray(scores, np.float64)
    q = np.percentile(s, [50, 95, 99])
    return {"n": int(s.size), "mean": float(s.mean()), "std": float(s.std()), "min": float(s.min()),
            "max": float(s.max()), "p50": float(q[0]), "p95": float(q[1]), "p99": float(q[2])}


def save_torchscript(graph, path, example):
    import warnings
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.jit.trace(graph, torch.from_numpy(example), check_trace=False).save(path)


def build_method(s, device):
    ctx = Context(tuple(s.size), s.backbone, s.weights, tuple(s.strides), s.border, s.seed, device)
    try:
        method = get_method(s.method)(ctx, **s.method_params)
    except TypeError as exc:
        raise EdgeError(f"bad --param for {s.method}: {exc}") from None
    if s.lr is not None:
        method.lr = s.lr
    scorer = method.build()
    score = parse_score(s.score or method.default_score)
    graph = AnomalyGraph(scorer, method.mean, method.std, s.size, s.sigma, score).eval()
    return method, graph


def _to(feats, device):
    return [f.to(device) for f in feats] if isinstance(feats, (list, tuple)) else feats.to(device)


def fold_scores(method, graph, images, settings, device, progress=None):
    """Scores of every training image by the method refitted without its contiguous fold (and
    without `guard` images either side of it); returns (scores, fold index of each image, the
    frozen features for the final fit or None). Methods with `fold_features` / `fold_head`
    compute the features once; others are rebuilt and refitted from the images per fold."""
    n = len(images)
    parts = op.contiguous_folds(n, settings.folds)
    scores, fold_of = np.empty(n, np.float64), np.empty(n, np.int64)
    bs = settings.batch_size or method.batch_size
    graph.to(device).eval()
    feats = None
    t0 = time.monotonic()
    with torch.no_grad():
        if hasattr(method, "fold_features"):
            feats = method.fold_features(batches_of(graph, images, bs, device))
        t_feats = time.monotonic() - t0
        fits = [op.fit_indices(n, a, b, op.DEFAULT_GUARD) for a, b in parts]
        heads = method.fold_heads(feats, fits) if feats is not None else None
        for f, (a, b) in enumerate(parts):
            fit = fits[f]
            if heads is not None:
                out = _head_scores(graph, next(heads).to(device), feats, a, b, bs, device)
            else:
                m, g = build_method(settings, device)
                g.to(device).eval()
                m.fit_statistics(batches_of(g, images, bs, device, order=np.asarray(fit)))
                out = torch.cat([g(torch.from_numpy(images[i:min(i + bs, b)]).to(device))[1].cpu()
                                 for i in range(a, b, bs)])
            scores[a:b] = out.double().numpy()
            fold_of[a:b] = f
            if progress:
                progress(f + 1, len(parts))
        correction = None
        if feats is not None and method.fit_size_trend:
            sel = op.trend_folds(len(parts))            # a sample of the folds is enough for a median
            fewer = [op.fewer_fits(fits[k]) for k in sel]
            less = np.concatenate([_head_scores(graph, head.to(device), feats, *parts[k], bs, device).double().numpy()
                                   for head, k in zip(method.fold_heads(feats, fewer), sel)])
            same = np.concatenate([scores[slice(*parts[k])] for k in sel])
            correction = op.fit_size_correction(same, less, n, [len(fits[k]) for k in sel], [len(x) for x in fewer])
            scores = scores * correction["factor"]
    graph.to("cpu")
    timing = {"feature_seconds": round(t_feats, 2), "fold_seconds": round(time.monotonic() - t0 - t_feats, 2)}
    return scores, fold_of, feats, timing, correction


def _head_scores(graph, head, feats, a, b, bs, device):
    """Image scores of the cached features of images [a, b) under a fold's head."""
    return torch.cat([graph.reduce(head(_to(take(feats, range(i, min(i + bs, b))), device)))[1].cpu()
                      for i in range(a, b, bs)])


def holdout_plan(s, method, train_paths, val_paths):
    """(fit paths, held-out paths, kind, source sentence, record for the manifest)."""
    n = len(train_paths)
    if val_paths:
        return train_paths, val_paths, "validation", "validation/good", {
            "rule": "validation/good, scored by the bundle's model", "images": len(val_paths)}
    if method.trains():
        fit, hold, gap, m = op.held_out_blocks(n, s.holdout, op.DEFAULT_GUARD)
        where = ("a contiguous tail block" if m == 1 else
                 f"{m} contiguous blocks of about {len(hold) // m} images spread over the order, the last at its end")
        source = (f"{len(hold)} of train/good's {n} images ({s.holdout:g}) in {where}, the {gap} images either side "
                  f"of each block used for neither, scored by the bundle's model")
        return ([train_paths[i] for i in fit], [train_paths[i] for i in hold], "block", source,
                {"rule": f"held-out blocks: {s.holdout:g} of train/good in {where}, a gap of {gap} images either side; "
                         f"used for early stopping and the threshold", "images": len(hold),
                 "blocks": m, "gap": gap, "fit_images": len(fit)})
    k = len(op.contiguous_folds(n, s.folds))             # at least 4 images
    source = (f"train/good in {k} contiguous folds of its order, each scored by a model fitted "
              f"without it and without {op.DEFAULT_GUARD} images either side")
    how = "auto" if s.folds is None else "--folds"
    return train_paths, train_paths, "folds", source, {
        "rule": f"contiguous folds ({k}, {how}), the method refitted per fold", "images": n}


def export_check_images(fit_imgs, hold_imgs, kind, count=16):
    """Images the exported graph is checked against PyTorch on: up to `count` evenly spaced
    held-out images, and where every image was fitted (folds) half of them mirrored, so that
    the check also sees images that are not in a memory bank or gallery (scores near zero there
    say little about agreement)."""
    pool = fit_imgs if kind == "folds" else hold_imgs
    imgs = pool[np.unique(np.linspace(0, len(pool) - 1, min(count, len(pool))).round().astype(int))]
    if kind == "folds":
        imgs = np.concatenate([imgs[: (len(imgs) + 1) // 2], np.ascontiguousarray(imgs[(len(imgs) + 1) // 2:, :, ::-1])])
    return imgs


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


def train_bundle(settings):
    """Train, export, check and write the bundle at `settings.out` (a TrainSettings); returns
    the PyTorch graph."""
    s = settings
    t0 = time.monotonic()
    device = resolve_device(s.device)
    ds = MvtecSet(s.data)
    train_paths = ds.train_good()
    val_paths = ds.validation_good()
    pre = Preprocessor(s.size[0], s.size[1], s.roi)
    method, graph = build_method(s, device)
    fit_paths, hold_paths, kind, hold_from, hold_record = holdout_plan(s, method, train_paths, val_paths)
    say(f"training {s.method} on {len(fit_paths)} good images of {ds.root} at {s.size[0]}x{s.size[1]} "
        f"({s.backbone if method.uses_backbone else 'no pretrained backbone'}, {device})")
    fit_imgs = load_images(fit_paths, pre, Progress("reading images", len(fit_paths)))
    hold_imgs = fit_imgs if hold_paths is fit_paths else load_images(hold_paths, pre)
    fold_of = feats = correction = None
    timing = {}
    if kind == "folds":
        hold_scores, fold_of, feats, timing, correction = fold_scores(method, graph, fit_imgs, s, device,
                                                                      Progress("scoring held-out folds", 1))
        if correction:
            hold_from += f", {correction['rule']}"
    record = train_method(method, graph, fit_imgs, hold_imgs, s, device, features=feats)
    record.update(timing)
    del feats
    t_fit = time.monotonic() - t0
    hold_names = [os.path.relpath(p, ds.root) for p in hold_paths]
    check_imgs = export_check_images(fit_imgs, hold_imgs, kind)

    with StagedDir(s.out) as tmp:
        gpath = os.path.join(tmp, "model.onnx")
        export_onnx(graph, gpath, s.size)
        engine = OrtEngine(gpath, threads=s.threads)
        check = agreement(torch_infer(graph, check_imgs), engine.infer(check_imgs))
        if check["max_rel_score"] > EXPORT_TOLERANCE:
            raise EdgeError(f"exported graph disagrees with PyTorch: {check}")
        save_torchscript(graph, os.path.join(tmp, TORCH_FILE), check_imgs[:1])
        if kind != "folds":
            hold_scores = np.concatenate([engine.infer(hold_imgs[i:i + 16])[1] for i in range(0, len(hold_imgs), 16)]
                                         ).astype(np.float64)
        threshold = op.operating_point(hold_names, hold_scores, s.false_reject, source=hold_from)
        threshold["holdout_file"] = op.HOLDOUT_FILE
        threshold["holdout_rule"] = hold_record["rule"]
        if correction:
            threshold["fit_size_correction"] = correction
        threshold["history"] = []
        write_holdout(tmp, hold_names, hold_scores, fold_of, hold_from)
        frames, entries, note = reference_frames(ds, train_paths, hold_names, hold_scores,
                                                 {o["name"] for o in threshold["outliers"]}, pre)
        bb = _backbone_of(graph)
        score = score_name(graph.score_fraction)
        manifest = {
            "format": 1, "method": s.method, "backbone": s.backbone if bb else None,
            "input": {"height": s.size[0], "width": s.size[1], "layout": "NHWC", "dtype": "uint8",
                      "colour_order": "RGB", "roi": list(s.roi) if s.roi else None,
                      "normalisation": {**graph.norm, "where": "in graph"}},
            "outputs": {"anomaly_map": f"N x H x W float32 ({method.map_kind})",
                        "score": "N float32 (" + ("maximum of the smoothed map" if score == "max" else
                                                  f"mean of the top {graph.score_fraction:.0%} patch scores") + ")"},
            "graphs": {"fp32": {"file": "model.onnx", **tensorrt_floor(gpath)}},
            "threshold": threshold,
            "score_stats": {"holdout_good": score_stats(hold_scores)},
            "precision_hints": precision_hints(method),
            "reference": reference.write_frames(tmp, frames, entries, note),
            "training": {
                "data": ds.root, "fingerprint": ds.fingerprint(), "fit_images": len(fit_paths),
                "holdout_images": len(hold_paths), "holdout": {"kind": kind, **hold_record},
                "folds": None if fold_of is None else int(fold_of.max()) + 1,
                "method_params": method.params(), "map_sigma": s.sigma,
                "score": score, "map": method.map_kind, "pooling": getattr(method, "pool", None),
                "feature_strides": list(bb.strides) if bb else None, "border": s.border if bb else None,
                "backbone_weights": os.path.basename(bb.weights_file) if bb and bb.weights_file else None,
                "seed": s.seed, **record, "seconds": round(t_fit, 2),
                "created": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
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
        say(f"operating point: false-reject target {s.false_reject:g}; " + op.describe(threshold))
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
            evaluate_bundle(tmp, s.data, record=True, threads=s.threads)
    return graph


def write_holdout(folder, names, scores, fold_of, source):
    """holdout.json: each held-out good image's name, fold and score (for `edge threshold`)."""
    doc = {"source": source, "images": [
        {"name": n, "score": round(float(v), 6), **({"fold": int(fold_of[i])} if fold_of is not None else {})}
        for i, (n, v) in enumerate(zip(names, scores))]}
    atomic_write_text(os.path.join(folder, op.HOLDOUT_FILE), json.dumps(doc, indent=0) + "\n")


def precision_hints(method):
    """The method's precision hints as scopes of the exported graph's node names, and the
    int8 head rewrites it registers for ONNX Runtime (convert/quantize.py reads both)."""
    hints = {k: [f"/scorer/{scope}/" for scope in v] for k, v in method.precision_hints().items()}
    rewrites = [{"rewrite": r, "scope": f"/scorer/{scope}/"} for r, scope in method.int8_rewrites()]
    if rewrites:
        hints["int8_onnxruntime"] = rewrites
    return hints


def _backbone_of(graph):
    """The first pretrained backbone inside the scorer, if any."""
    from .backbones import Backbone
    return next((m for m in graph.scorer.modules() if isinstance(m, Backbone)), None)
