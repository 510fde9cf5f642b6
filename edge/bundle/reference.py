"""Reference frames: the bundle proves itself on the box.

Training stores a few of its own frames (good, and defective where the data set has defects)
in `reference.npz`, already cropped and resized to the graph's input, with the score each of
the bundle's graphs gave on the workstation (manifest `reference.scores.<graph file>`; `edge
quantize` adds its variants'). `edge install --activate`, `edge run` and `edge build` run the
frames through the engine and precision the box will use and compare: within the tolerance
(a share of the threshold, by precision) the bundle goes; outside, it is refused with the
frames, the expected and the measured scores in the message.

numpy only (np.load without pickles): no image codec is needed to read the frames."""

import io
import os
import platform

import numpy as np

from ..common.errors import EdgeError
from ..common.fsutil import atomic_write_bytes

REFERENCE_FILE = "reference.npz"
# |measured - expected| allowed, as a share of the threshold the verdict is taken at. FP32 on
# another engine differs by summation order (and TF32 on TensorRT); FP16 and INT8 by rounding.
TOLERANCE = {"fp32": 0.03, "fp16": 0.05, "int8": 0.10}


def write_frames(folder, frames, entries, note=None):
    """Store `frames` (N x H x W x 3 uint8) as reference.npz in `folder`; returns the manifest's
    `reference` section (without scores). `entries`: [{name, label}] in the frames' order."""
    frames = np.ascontiguousarray(frames, np.uint8)
    buf = io.BytesIO()
    np.savez_compressed(buf, frames=frames)
    atomic_write_bytes(os.path.join(folder, REFERENCE_FILE), buf.getvalue())
    section = {"file": REFERENCE_FILE, "frames": [dict(e) for e in entries],
               "tolerance": {"share_of_threshold": dict(TOLERANCE)}, "scores": {}}
    if note:
        section["note"] = note
    return section


def load_frames(bundle):
    section = bundle.manifest.get("reference")
    if not section:
        return None, None
    path = os.path.join(bundle.path, section["file"])
    try:
        with np.load(path, allow_pickle=False) as z:
            frames = z["frames"]
    except (OSError, KeyError, ValueError) as exc:
        raise EdgeError(f"reference frames unreadable: {exc}", path) from None
    if frames.ndim != 4 or frames.shape[1:3] != bundle.input_hw or frames.shape[0] != len(section["frames"]):
        raise EdgeError(f"reference frames have shape {frames.shape}, not {len(section['frames'])} frames of "
                        f"{bundle.input_hw[0]}x{bundle.input_hw[1]}", path)
    return frames, section


def infer_all(engine, frames):
    """Scores of every frame, in chunks the engine takes (padded up to its smallest batch)."""
    b = max(1, int(getattr(engine, "min_batch", 1)))
    out = []
    for i in range(0, len(frames), b):
        chunk = frames[i:i + b]
        n = len(chunk)
        if n < b:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], b - n, axis=0)])
        out.append(np.asarray(engine.infer(chunk)[1], np.float64)[:n])
    return np.concatenate(out)


def record_scores(manifest, graph_file, scores, how):
    """Put a graph's workstation scores of the reference frames into the manifest (in place)."""
    section = manifest.get("reference")
    if not section:
        return
    section["scores"][graph_file] = {"scores": [round(float(s), 6) for s in scores], "measured_with": how}


def workstation(engine_name, precision):
    import onnxruntime as ort
    return f"{engine_name} {ort.__version__} ({precision}) on {platform.machine()}, {platform.node()}"


def score_graph(bundle_path, manifest, graph_file, precision="fp32", threads=None, run_path=None, how=None):
    """Score the reference frames with ONNX Runtime on the graph file and record them under its
    name. `run_path`: another graph to run in its place (the TensorRT-bound INT8 graph with its
    Q/DQ simulated in float, which is what TensorRT computes); `how` then says so."""
    from ..engines.onnxrt import OrtEngine
    section = manifest.get("reference")
    if not section:
        return None
    with np.load(os.path.join(bundle_path, section["file"]), allow_pickle=False) as z:
        frames = z["frames"]
    eng = OrtEngine(run_path or os.path.join(bundle_path, graph_file), precision=precision, threads=threads)
    try:
        scores = infer_all(eng, frames)
    finally:
        eng.close()
    record_scores(manifest, graph_file, scores, how or workstation("onnxruntime", precision))
    return scores


def compare(bundle, engine, precision, graph_file=None, threshold=None):
    """Run the reference frames through `engine`; a dict {ok, checked, lines, ...}. `graph_file`:
    the graph the engine was made from (default: the bundle's for that precision and engine)."""
    frames, section = load_frames(bundle)
    if frames is None:
        return {"ok": True, "checked": False, "why": "the bundle has no reference frames (trained before they existed)"}
    graph_file = graph_file or bundle.graph_entry(precision, getattr(engine, "name", None))["file"]
    want = (section.get("scores") or {}).get(graph_file)
    if not want:
        return {"ok": True, "checked": False, "why": f"no workstation scores of the reference frames for {graph_file}"}
    expected = np.asarray(want["scores"], np.float64)
    measured = infer_all(engine, frames)
    threshold = bundle.threshold_for(precision, getattr(engine, "name", None)) if threshold is None else threshold
    tol_share = float((section.get("tolerance") or {}).get("share_of_threshold", TOLERANCE).get(
        precision, TOLERANCE.get(precision, 0.05)))
    tol = tol_share * abs(threshold)
    diff = np.abs(measured - expected)
    bad = [i for i in range(len(frames)) if not np.isfinite(measured[i]) or diff[i] > tol]
    lines = [f"{f['name']} ({f['label']}): expected {e:.5g}, measured {m:.5g}"
             for f, e, m in zip(section["frames"], expected, measured)]
    return {"ok": not bad, "checked": True, "frames": len(frames), "graph": graph_file,
            "tolerance": tol, "tolerance_share": tol_share, "max_diff": float(diff.max()) if diff.size else 0.0,
            "bad": [lines[i] for i in bad], "lines": lines, "expected_from": want.get("measured_with", "?")}


def check(bundle, engine, precision, what, graph_file=None, log=None):
    """compare(), raising EdgeError (naming `what` refused) when a frame is outside tolerance."""
    res = compare(bundle, engine, precision, graph_file)
    name = getattr(engine, "name", "engine")
    if not res["checked"]:
        if log:
            log(f"reference frames not checked: {res['why']}")
        return res
    if not res["ok"]:
        raise EdgeError(f"{what}: {len(res['bad'])} of {res['frames']} reference frames score differently on "
                        f"{name} ({precision}) than on the workstation ({res['expected_from']}), beyond "
                        f"{res['tolerance']:.4g} ({res['tolerance_share']:.0%} of the threshold): "
                        + "; ".join(res["bad"]), bundle.path)
    if log:
        log(f"reference frames: {res['frames']} agree with the workstation on {name} ({precision}) within "
            f"{res['max_diff']:.3g} (allowed {res['tolerance']:.3g})")
    return res


def check_plan(bundle, plan_path, precision, log=print):
    """`edge build`: the reference frames through a plan just built; on a mismatch the plan is
    deleted and EdgeError raised."""
    from ..engines.cuda import cuda_available
    from ..engines.tensorrt import TrtEngine
    if not cuda_available():
        log(f"reference frames not run through {os.path.basename(plan_path)}: no CUDA device here")
        return
    engine = TrtEngine(plan_path, precision=precision, expected_hw=bundle.input_hw, _checked=True)
    try:
        check(bundle, engine, precision, f"plan {os.path.basename(plan_path)} refused (deleted)",
              graph_file=bundle.graph_entry(precision)["file"], log=log)
    except EdgeError:
        engine.close()
        os.unlink(plan_path)
        raise
    engine.close()
