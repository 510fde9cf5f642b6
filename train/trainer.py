"""The training loop: good images -> features -> the method's model -> one exported graph -> bundle."""

import datetime
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
from edge.common.fsutil import StagedDir, sha256_file
from edge.runtime.preprocess import Preprocessor
from edge.common.progress import Progress, say

from .backbones import build_backbone
from .data import MvtecSet, load_images
from .export import agreement, export_onnx, torch_infer
from .graph import AnomalyGraph, Embedder
from .methods import get_method

TORCH_FILE = "model.torchscript.pt"

# The exported graph must agree with PyTorch within this (relative to the largest score).
EXPORT_TOLERANCE = 1e-3


def split_holdout(paths, fraction):
    """Every k-th good image is held out of training to set the threshold (deterministic)."""
    n = len(paths)
    if n < 4:
        raise EdgeError(f"train split has {n} images; at least 4 are needed (some are held out for the threshold)")
    k = min(n - 2, max(2, int(round(n * fraction))))
    held = set(np.linspace(0, n - 1, k).round().astype(int).tolist())
    return [p for i, p in enumerate(paths) if i not in held], [p for i, p in enumerate(paths) if i in held]


def score_stats(scores):
    s = np.asarray(scores, np.float64)
    q = np.percentile(s, [50, 95, 99])
    return {"n": int(s.size), "mean": float(s.mean()), "std": float(s.std()), "min": float(s.min()),
            "max": float(s.max()), "p50": float(q[0]), "p95": float(q[1]), "p99": float(q[2])}


def choose_threshold(scores, sigmas=3.0):
    st = score_stats(scores)
    value = max(st["max"], st["mean"] + sigmas * st["std"])
    return {"value": float(value), "method": f"max(max, mean + {sigmas:g} std) of {st['n']} held-out good images"}


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
    method, data, out, size, backbone, roi, sigma, border, threads = (
        s.method, s.data, s.out, s.size, s.backbone, s.roi, s.sigma, s.border, s.threads)
    t0 = time.monotonic()
    ds = MvtecSet(data)
    train_paths = ds.train_good()
    val_paths = ds.validation_good()
    if val_paths:
        fit_paths, hold_paths, hold_from = train_paths, val_paths, "validation/good"
    else:
        fit_paths, hold_paths = split_holdout(train_paths, s.holdout)
        hold_from = f"train/good, every {len(train_paths) / len(hold_paths):.1f}th image held out"
    pre = Preprocessor(size[0], size[1], roi)
    model = get_method(method)(**s.method_params)
    net = build_backbone(backbone, s.weights).select(s.strides)
    say(f"training {method} on {len(fit_paths)} good images of {ds.root} at {size[0]}x{size[1]} ({backbone})")

    fit_imgs = load_images(fit_paths, pre, Progress("reading images", len(fit_paths)))
    hold_imgs = load_images(hold_paths, pre)
    graph = AnomalyGraph(net, Embedder(model.pool, net.strides, 8), None, size, sigma, border).eval()
    emb = embed(graph, fit_imgs, progress=Progress("features", len(fit_imgs)))
    t_feat = time.monotonic() - t0
    model.fit(emb, progress=Progress(f"fitting {method}", 1))
    del emb
    graph.head = model.head()
    t_fit = time.monotonic() - t0

    with StagedDir(out) as tmp:
        gpath = os.path.join(tmp, "model.onnx")
        export_onnx(graph, gpath, size)
        engine = OrtEngine(gpath, threads=threads)
        ort_out = engine.infer(hold_imgs)
        check = agreement(torch_infer(graph, hold_imgs), ort_out)
        if check["max_rel_score"] > EXPORT_TOLERANCE:
            raise EdgeError(f"exported graph disagrees with PyTorch: {check}")
        save_torchscript(graph, os.path.join(tmp, TORCH_FILE), hold_imgs[:1])
        threshold = choose_threshold(ort_out[1])
        threshold["source"] = hold_from
        manifest = {
            "format": 1, "method": method, "backbone": backbone,
            "input": {"height": size[0], "width": size[1], "layout": "NHWC", "dtype": "uint8",
                      "colour_order": "RGB", "roi": list(roi) if roi else None,
                      "normalisation": {"mean": list(net.mean), "std": list(net.std), "where": "in graph"}},
            "outputs": {"anomaly_map": "N x H x W float32", "score": f"N float32 (mean of the top {graph.score_fraction:.0%} patch scores)"},
            "graphs": {"fp32": {"file": "model.onnx", **tensorrt_floor(gpath)}},
            "threshold": threshold,
            "score_stats": {"holdout_good": score_stats(ort_out[1])},
            "training": {
                "data": ds.root, "fingerprint": ds.fingerprint(), "fit_images": len(fit_paths),
                "holdout_images": len(hold_paths), "method_params": model.params(), "map_sigma": sigma,
                "feature_strides": list(net.strides), "border": border,
                "backbone_weights": os.path.basename(net.weights_file), "seconds": round(t_fit, 2),
                "feature_seconds": round(t_feat, 2), "created": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
                "toolkit": __version__, "torch": str(torch.__version__), "host": platform.node()},
            "export_check": {"images": len(hold_paths), "tolerance_rel_score": EXPORT_TOLERANCE,
                             **{k: float(f"{v:.3g}") for k, v in check.items()}},
            "files": {"model.onnx": None},
            # The same model for PyTorch (the eager baseline of `edge bench`); not needed on the line,
            # so it is checked when used rather than with the bundle's files.
            "torch_model": {"file": TORCH_FILE, "sha256": sha256_file(os.path.join(tmp, TORCH_FILE))},
        }
        write_manifest(tmp, manifest)
        say(f"trained in {t_fit:.1f}s; threshold {threshold['value']:.4g} from {len(hold_paths)} held-out good images; "
            f"export agrees within {check['max_rel_score']:.2g} (relative score)")
        if s.evaluate:
            from .evaluate import evaluate_bundle
            evaluate_bundle(tmp, data, record=True, threads=threads)
    return graph
