"""`edge bench`: frames per second and latency of every engine and precision of a bundle.

For each engine x precision x batch, in a fresh child process (so that peak memory is its own):
  model only   engine.infer on preprocessed frames in memory, after a warm-up;
  end to end   the run pipeline: a folder source of the test images (good parts with 10 %
               defective ones mixed in, as on a line; --defect-share) -> preprocess -> engine
               -> decide -> records in a temporary SQLite store (flagged frames saved), as fast
               as it goes; then paced at half the engine's rate for the latency it adds
               (capture to decision, minus the engine's own time);
  accuracy     image AUROC on the test split and the largest score difference against FP32.
A PyTorch eager baseline of the same model is timed the same way where torch is installed
(in its own process: `edge` never imports torch)."""

import argparse
import importlib.util
import json
import logging
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

from ..common.errors import EdgeError

log = logging.getLogger(__name__)


def time_engine(engine, frames, seconds=5.0, warmup=5):
    """Median frames per second and latency percentiles of engine.infer(frames)."""
    for _ in range(warmup):
        engine.infer(frames)
    times = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end or len(times) < 20:
        t = time.perf_counter()
        engine.infer(frames)
        times.append(time.perf_counter() - t)
    t = np.array(times) * 1000
    return {"batch": len(frames), "model_fps": len(frames) * 1000 / float(np.median(t)),
            "latency_ms_p50": float(np.median(t)), "latency_ms_p95": float(np.percentile(t, 95)),
            "latency_ms_p99": float(np.percentile(t, 99)), "runs": len(t)}


def _test_set(bundle, data):
    from ..runtime.preprocess import Preprocessor
    from ..common.imageio import list_images, read_rgb
    pre = Preprocessor.for_bundle(bundle)
    test = os.path.join(data, "test") if data else None
    if not test or not os.path.isdir(test):
        return None, None, None
    paths, labels = [], []
    for kind in sorted(os.listdir(test)):
        for p in list_images(os.path.join(test, kind)):
            paths.append(p)
            labels.append(int(kind != "good"))
    return paths, np.array(labels), np.stack([pre(read_rgb(p)) for p in paths])


def _pipeline_pass(bundle, engine, folder, tmp, batch, frames, threshold, fps=None):
    from ..runtime.config import PipelineSettings
    from ..runtime.pipeline import Pipeline
    from ..runtime.preprocess import Preprocessor
    from ..records.store import RecordStore
    from ..sources import open_source
    src = open_source(folder, dict({"loop": True}, **({"fps": fps} if fps else {})))
    store = RecordStore(os.path.join(tmp, f"r{fps or 0:.0f}.db"), os.path.join(tmp, "img"))
    store.start_run(bundle.path, {"bench": True})
    src.start()
    settings = PipelineSettings(batch=batch, max_frames=frames, deadline_ms=60000)
    pipe = Pipeline(src, Preprocessor.for_bundle(bundle), engine, threshold, settings, store=store)
    pipe.start()
    pipe.join()
    src.close()
    s = pipe.stats.snapshot()
    store.end_run(s)
    store.close()
    return s


def line_stream(paths, labels, defect_share):
    """The test images as a line sees them: good parts with defective ones mixed in at
    `defect_share` (None: the test split as it is)."""
    if defect_share is None:
        return list(paths)
    good = [p for p, y in zip(paths, labels) if not y]
    bad = [p for p, y in zip(paths, labels) if y]
    if not good or not bad:
        return list(paths)
    n_bad = max(1, int(round(defect_share / (1 - defect_share) * len(good))))
    bad = bad[:n_bad]
    step = (len(good) + len(bad)) / len(bad)
    out = list(good)
    for i, p in enumerate(bad):
        out.insert(int(i * step), p)
    return out


def _end_to_end(bundle, engine, stream, batch, frames, model_fps, precision):
    """Source to recorded decision: frames per second with the source as fast as it goes
    (inspect-all, so the engine sets the pace), then the latency the pipeline adds over the
    engine with the source paced at half the engine's rate (so that no queue builds up)."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = os.path.join(tmp, "frames")
        os.makedirs(folder)
        for i, p in enumerate(stream):
            os.symlink(p, os.path.join(folder, f"{i:05d}{os.path.splitext(p)[1]}"))
        thr = bundle.threshold_for(precision, engine.name)
        fast = _pipeline_pass(bundle, engine, folder, tmp, batch, frames, thr)
        paced = _pipeline_pass(bundle, engine, folder, tmp, 1, max(20, frames // 3), thr, fps=model_fps / 2)
    return {"e2e_fps": fast["fps"], "e2e_frames": fast["decided"], "e2e_rejects": fast["rejects"],
            "e2e_latency_ms_p50": paced["latency_ms_p50"],
            "added_ms_p50": paced["added_ms_p50"], "added_ms_p95": paced["added_ms_p95"]}


def child(spec):
    """One configuration, measured in this (fresh) process; returns a dict."""
    from ..bundle.manifest import Bundle
    from ..engines import open_engine
    bundle = Bundle(spec["bundle"])
    paths, labels, images = _test_set(bundle, spec.get("data"))
    h, w = bundle.input_hw
    b = spec["batch"]
    if images is None:
        frames = np.random.default_rng(0).integers(0, 255, (b, h, w, 3), dtype=np.uint8)
    else:
        frames = images[np.arange(b) % len(images)]
    with open_engine(bundle, spec["engine"], spec["precision"], batch=b) as engine:
        res = time_engine(engine, frames, spec["seconds"])
        if images is not None:
            scores = np.concatenate([engine.infer(images[i:i + b])[1] for i in range(0, len(images), b)])
            from ..common.metrics import auroc
            res["image_auroc"] = auroc(labels, scores)
            res["scores"] = scores.tolist()
            if spec.get("e2e_frames"):
                stream = line_stream(paths, labels, spec.get("defect_share"))
                res.update(_end_to_end(bundle, engine, stream, b, spec["e2e_frames"], res["model_fps"], spec["precision"]))
    res["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return res


def _spawn(args, timeout=900):
    proc = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def add_arguments(p):
    p.add_argument("bundle")
    p.add_argument("--engines", default=None, help="comma list: onnxruntime,tensorrt (default: those present)")
    p.add_argument("--precisions", default=None, help="comma list of fp32,fp16,int8 (default: the bundle's)")
    p.add_argument("--batch", default="1,4", help="comma list of batch sizes")
    p.add_argument("--data", help="data set root for accuracy and end-to-end frames (default: the training data)")
    p.add_argument("--seconds", type=float, default=5.0, help="timed seconds per configuration")
    p.add_argument("--e2e-frames", type=int, default=300, help="frames through the pipeline (0: skip)")
    p.add_argument("--defect-share", type=float, default=0.1,
                   help="end to end: share of defective frames in the stream (default 0.1, as on a line; "
                        "-1: the test split as it is)")
    p.add_argument("--no-torch", action="store_true", help="skip the PyTorch eager baseline")
    p.add_argument("--json", help="write all figures here")
    p.add_argument("--plot", help="write a throughput plot (PNG) here")
    p.add_argument("--child", help=argparse.SUPPRESS)   # one configuration, in a fresh process


def run(args):
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return 0
    from ..bundle.manifest import Bundle
    from ..common.names import ENGINE_KINDS
    from ..engines import tensorrt_available
    bundle = Bundle(args.bundle)
    engines = args.engines.split(",") if args.engines else [k for k in ENGINE_KINDS if k != "tensorrt" or tensorrt_available()]
    precisions = args.precisions.split(",") if args.precisions else bundle.precisions()
    batches = [int(b) for b in args.batch.split(",")]
    data = args.data or bundle.manifest.get("training", {}).get("data")
    rows = []
    for engine in engines:
        for precision in precisions:
            for b in batches:
                spec = {"bundle": bundle.path, "engine": engine, "precision": precision, "batch": b,
                        "data": data, "seconds": args.seconds, "e2e_frames": args.e2e_frames,
                        "defect_share": None if args.defect_share < 0 else args.defect_share}
                log.info(f"bench: {engine} {precision} batch {b} ...")
                rows.append(dict(spec, **_spawn(["-m", "edge.cli", "bench", bundle.path, "--child", json.dumps(spec)])))
    if not args.no_torch and importlib.util.find_spec("torch") and bundle.manifest.get("torch_model"):
        for b in batches:
            log.info(f"bench: pytorch eager batch {b} ...")
            res = _spawn(["-m", "train.torch_baseline", bundle.path, "--batch", str(b), "--seconds", str(args.seconds)])
            rows.append(dict(res, engine=res.get("engine", "pytorch"), precision="fp32", batch=b))
    _compare_to_fp32(rows)
    print(table(rows))
    if args.json:
        from ..common.fsutil import atomic_write_text
        atomic_write_text(args.json, json.dumps({"bundle": bundle.path, "method": bundle.method, "cpus": os.cpu_count(),
                                                 "rows": [{k: v for k, v in r.items() if k != "scores"} for r in rows]},
                                                indent=2) + "\n")
    if args.plot:
        plot(rows, args.plot, f"{bundle.method} {bundle.input_hw[0]}x{bundle.input_hw[1]}")
    if any("error" in r for r in rows):
        raise EdgeError("some configurations failed: " + "; ".join(
            f"{r['engine']} {r['precision']} b{r['batch']}: {r['error']}" for r in rows if "error" in r))
    return 0


def _compare_to_fp32(rows):
    ref = {(r["engine"], r["batch"]): np.array(r["scores"]) for r in rows if r.get("precision") == "fp32" and "scores" in r}
    for r in rows:
        base = ref.get((r["engine"], r["batch"]))
        if base is not None and "scores" in r:
            r["max_score_diff_vs_fp32"] = float(np.abs(np.array(r["scores"]) - base).max())


def table(rows):
    head = (f"{'engine':<14}{'prec':<6}{'batch':>5}{'model fps':>11}{'e2e fps':>9}{'p50 ms':>8}{'p95 ms':>8}"
            f"{'p99 ms':>8}{'added ms':>9}{'peak MB':>9}{'AUROC':>7}{'max dscore':>11}")
    lines = [head, "-" * len(head)]
    for r in rows:
        if "error" in r:
            lines.append(f"{r['engine']:<14}{r['precision']:<6}{r['batch']:>5}  error: {r['error']}")
            continue

        def f(key, fmt):
            return format(r[key], fmt) if r.get(key) is not None else "-"
        lines.append(f"{r['engine']:<14}{r['precision']:<6}{r['batch']:>5}{f('model_fps', '11.1f')}"
                     f"{f('e2e_fps', '9.1f'):>9}{f('latency_ms_p50', '8.1f')}{f('latency_ms_p95', '8.1f')}"
                     f"{f('latency_ms_p99', '8.1f')}{f('added_ms_p50', '9.2f'):>9}{f('peak_rss_mb', '9.0f')}"
                     f"{f('image_auroc', '7.3f'):>7}{f('max_score_diff_vs_fp32', '11.3g'):>11}")
    return "\n".join(lines)


def plot(rows, path, title):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    ok = [r for r in rows if "error" not in r]
    labels = [f"{r['engine']} {r['precision']} b{r['batch']}" for r in ok]
    y = np.arange(len(ok))
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(ok) + 1.5), dpi=100)
    ax.barh(y - 0.2, [r.get("model_fps", 0) for r in ok], 0.4, label="model only")
    ax.barh(y + 0.2, [r.get("e2e_fps") or 0 for r in ok], 0.4, label="end to end (source to record)")
    ax.set_yticks(y, labels)
    ax.invert_yaxis()
    ax.set_xlabel("frames per second")
    ax.set_title(f"{title} on {os.cpu_count()} CPU cores")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12 - 0.3 / len(ok)), ncol=2, frameon=False)
    fig.tight_layout()
    fig.savefig(path + ".tmp.png")
    plt.close(fig)
    os.replace(path + ".tmp.png", path)
