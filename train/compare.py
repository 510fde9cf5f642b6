"""`edge compare`: train every chosen method on one data set with its defaults and put them in
one table (accuracy, training time, speed) and one accuracy-versus-speed plot, so that a plant
engineer picks a method for their part from their own images.

Resumable: a method already trained for the same data fingerprint and settings (recorded in
<out>/<method>/compare.json) is not trained again."""

import hashlib
import json
import os
import time

from edge.common.errors import EdgeError
from edge.common.fsutil import atomic_write_text
from edge.common.progress import say

from .methods import METHODS

COLUMNS = [("method", "method", "{}"), ("image_auroc", "image AUROC", "{:.4f}"), ("pixel_auroc", "pixel AUROC", "{:.4f}"),
           ("aupro", "AUPRO", "{:.4f}"), ("f1_max", "F1-max", "{:.4f}"), ("recall", "recall at threshold", "{:.3f}"),
           ("train_seconds", "training s", "{:.0f}"), ("fps_fp32", "FP32 frames/s (ORT, batch 1)", "{:.1f}"),
           ("int8_drop", "INT8 image AUROC change", "{:+.4f}"), ("fps_int8", "INT8 frames/s (ORT, batch 1)", "{:.1f}")]


def methods_of(text):
    if text in (None, "", "all"):
        return sorted(METHODS)
    names = [t.strip() for t in text.split(",") if t.strip()]
    bad = [n for n in names if n not in METHODS]
    if bad:
        raise EdgeError(f"unknown method {bad[0]!r} (choose from: all, {', '.join(sorted(METHODS))})", "--methods")
    return names


def compare(data, out, methods, size=(256, 256), epochs=None, device="auto", threads=None, score=None, seconds=3.0,
            int8=True):
    from .data import MvtecSet
    from .evaluate import evaluate_bundle
    from .settings import TrainSettings
    from .trainer import train_bundle
    fingerprint = MvtecSet(data).fingerprint()
    rows = []
    for name in methods:
        folder = os.path.join(out, name)
        record_path = os.path.join(out, f"{name}.json")
        settings = {"size": list(size), "epochs": epochs, "score": score, "device": device, "int8": int8}
        key = hashlib.sha256(json.dumps([fingerprint, name, settings], sort_keys=True).encode()).hexdigest()
        if os.path.isfile(record_path) and os.path.isfile(os.path.join(folder, "manifest.yaml")):
            with open(record_path) as f:
                rec = json.load(f)
            if rec.get("key") == key:
                say(f"{name}: already trained for this data and settings ({record_path})")
                rows.append(rec["row"])
                continue
        t0 = time.monotonic()
        train_bundle(TrainSettings(name, data, folder, tuple(size), evaluate=False, epochs=epochs, device=device,
                                   threads=threads, score=score))
        train_s = time.monotonic() - t0
        res = evaluate_bundle(folder, data, threads=threads, record=True, quiet=True)
        c = res["confusion"]
        row = {"method": name, "image_auroc": res["image_auroc"], "pixel_auroc": res["pixel_auroc"],
               "aupro": res["aupro"], "f1_max": res["f1_max"],
               "recall": c["tp"] / max(1, c["tp"] + c["fn"]), "train_seconds": train_s,
               "fps_fp32": frames_per_second(folder, threads, seconds)}
        if int8:
            row.update(int8_row(folder, threads, seconds))
        atomic_write_text(record_path, json.dumps({"key": key, "settings": settings, "row": row}, indent=2) + "\n")
        rows.append(row)
    table = markdown(rows)
    atomic_write_text(os.path.join(out, "compare.md"), table)
    atomic_write_text(os.path.join(out, "compare.json"), json.dumps(rows, indent=2) + "\n")
    plot(os.path.join(out, "compare.png"), rows, os.path.basename(os.path.abspath(data)))
    return rows, table


def int8_row(folder, threads=None, seconds=3.0):
    """`edge quantize --precision int8` with its default budget, then the INT8 graph for ONNX
    Runtime's speed and its image AUROC drop; a refused variant is recorded with the reason."""
    from convert.quantize import quantize_bundle
    try:
        entry = quantize_bundle(folder, "int8", threads=threads, log=lambda *_: None)
    except EdgeError as e:
        say(f"{os.path.basename(folder)}: INT8 refused: {e}")
        return {"int8_drop": None, "fps_int8": None, "int8_note": f"refused: {e}"}
    acc = entry.get("onnxruntime", entry)["accuracy"]
    return {"int8_drop": 0.0 - acc["auroc_drop"] if "auroc_drop" in acc else None,
            "fps_int8": frames_per_second(folder, threads, seconds, "int8", "onnxruntime")}


def frames_per_second(bundle_path, threads=None, seconds=3.0, precision="fp32", engine=None):
    """A graph of the bundle under ONNX Runtime at batch 1: median frames per second."""
    import numpy as np

    from edge.bundle.manifest import Bundle
    from edge.engines.onnxrt import OrtEngine
    from edge.tools.bench import time_engine
    b = Bundle(bundle_path)
    h, w = b.input_hw
    frames = np.random.default_rng(0).integers(0, 255, (1, h, w, 3), dtype=np.uint8)
    return time_engine(OrtEngine(b.graph_path(precision, engine), threads=threads), frames, seconds)["model_fps"]


def markdown(rows):
    lines = ["| " + " | ".join(c[1] for c in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in rows:
        lines.append("| " + " | ".join(cell(r, k, fmt) for k, _, fmt in COLUMNS) + " |")
    return "\n".join(lines) + "\n"


def cell(row, key, fmt):
    v = row.get(key)
    if v is None:
        return "refused" if key.startswith(("int8", "fps_int8")) and row.get("int8_note") else "-"
    return fmt.format(v)


def plot(path, rows, title):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4.5), dpi=100)
    for r in rows:
        ax.scatter(r["fps_fp32"], r["image_auroc"])
        ax.annotate(r["method"], (r["fps_fp32"], r["image_auroc"]), fontsize=8, xytext=(3, 3), textcoords="offset points")
    ax.set(xlabel="FP32 frames/s (ONNX Runtime, batch 1)", ylabel="image AUROC", title=f"methods on {title}")
    ax.set_xscale("log")
    fig.tight_layout()
    fig.savefig(path + ".tmp.png")
    plt.close(fig)
    os.replace(path + ".tmp.png", path)


def add_arguments(p):
    p.add_argument("--data", required=True, help="data set root in MVTec AD layout (train/good and test/)")
    p.add_argument("--methods", default="all", help="all (default) or a comma-separated list")
    p.add_argument("--out", default="compare-out", help="folder for the bundles, table and plot (default compare-out)")
    p.add_argument("--size", default="256", help="graph input size: N, HxW or auto[:LONG] (default 256)")
    p.add_argument("--epochs", type=int, help="epochs for the methods that train (default: each method's)")
    p.add_argument("--device", default="auto", help="auto|cpu|cuda")
    p.add_argument("--score", help="image score for every method: max or top:FRACTION (default: each method's)")
    p.add_argument("--threads", type=int, help="CPU threads")
    p.add_argument("--no-int8", action="store_true", help="skip the INT8 variant (its accuracy drop and speed)")


def run(args):
    from .cli import parse_size
    size = parse_size(args.size)
    if size[0] == "auto":
        from .data import auto_size
        size = auto_size(args.data, size[1])
    if not os.path.isdir(os.path.join(args.data, "test")):
        raise EdgeError("edge compare needs a test split (test/good and test/<defect>)", args.data)
    rows, table = compare(args.data, args.out, methods_of(args.methods), size, args.epochs, args.device,
                          args.threads, args.score, int8=not args.no_int8)
    print(table, end="")
    say(f"table and plot in {args.out} (compare.md, compare.json, compare.png)")
    return 0
