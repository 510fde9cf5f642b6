"""Training to a bundle: good images -> the method (train/loop.py) -> one exported graph ->
checked against PyTorch -> threshold on held-out good images -> bundle."""

import datetime
import os
import platform
import time

import torch

from convert.graphcheck import tensorrt_floor
from edge import __version__
from edge.bundle.manifest import write_manifest
from edge.common.errors import EdgeError
from edge.common.fsutil import StagedDir, sha256_file
from edge.common.progress import Progress, say
from edge.engines.onnxrt import OrtEngine
from edge.runtime.preprocess import Preprocessor

from .data import MvtecSet, load_images
from .export import agreement, export_onnx, torch_infer
from .graph import AnomalyGraph, parse_score, score_name
from .holdout import choose_threshold, score_stats, split_holdout  # noqa: F401  (convert/ imports these here)
from .loop import resolve_device, train_method
from .methods import get_method
from .methods.base import Context

TORCH_FILE = "model.torchscript.pt"

# The exported graph must agree with PyTorch within this (relative to the largest score).
EXPORT_TOLERANCE = 1e-3


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


def train_bundle(settings):
    """Train, export, check and write the bundle at `settings.out` (a TrainSettings); returns
    the PyTorch graph."""
    s = settings
    t0 = time.monotonic()
    device = resolve_device(s.device)
    ds = MvtecSet(s.data)
    train_paths = ds.train_good()
    val_paths = ds.validation_good()
    if val_paths:
        fit_paths, hold_paths, hold_from = train_paths, val_paths, "validation/good"
    else:
        fit_paths, hold_paths = split_holdout(train_paths, s.holdout)
        hold_from = f"train/good, every {len(train_paths) / len(hold_paths):.1f}th image held out"
    pre = Preprocessor(s.size[0], s.size[1], s.roi)
    method, graph = build_method(s, device)
    say(f"training {s.method} on {len(fit_paths)} good images of {ds.root} at {s.size[0]}x{s.size[1]} "
        f"({s.backbone if method.uses_backbone else 'no pretrained backbone'}, {device})")
    fit_imgs = load_images(fit_paths, pre, Progress("reading images", len(fit_paths)))
    hold_imgs = load_images(hold_paths, pre)
    record = train_method(method, graph, fit_imgs, hold_imgs, s, device)
    t_fit = time.monotonic() - t0

    with StagedDir(s.out) as tmp:
        gpath = os.path.join(tmp, "model.onnx")
        export_onnx(graph, gpath, s.size)
        engine = OrtEngine(gpath, threads=s.threads)
        ort_out = engine.infer(hold_imgs)
        check = agreement(torch_infer(graph, hold_imgs), ort_out)
        if check["max_rel_score"] > EXPORT_TOLERANCE:
            raise EdgeError(f"exported graph disagrees with PyTorch: {check}")
        save_torchscript(graph, os.path.join(tmp, TORCH_FILE), hold_imgs[:1])
        threshold = choose_threshold(ort_out[1])
        threshold["source"] = hold_from
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
            "score_stats": {"holdout_good": score_stats(ort_out[1])},
            "precision_hints": {k: [f"/scorer/{scope}/" for scope in v] for k, v in method.precision_hints().items()},
            "training": {
                "data": ds.root, "fingerprint": ds.fingerprint(), "fit_images": len(fit_paths),
                "holdout_images": len(hold_paths), "method_params": method.params(), "map_sigma": s.sigma,
                "score": score, "map": method.map_kind, "pooling": getattr(method, "pool", None),
                "feature_strides": list(bb.strides) if bb else None, "border": s.border if bb else None,
                "backbone_weights": os.path.basename(bb.weights_file) if bb and bb.weights_file else None,
                "seed": s.seed, **record, "seconds": round(t_fit, 2),
                "created": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
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
            evaluate_bundle(tmp, s.data, record=True, threads=s.threads)
    return graph


def _backbone_of(graph):
    """The first pretrained backbone inside the scorer, if any."""
    from .backbones import Backbone
    return next((m for m in graph.scorer.modules() if isinstance(m, Backbone)), None)
