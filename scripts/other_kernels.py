"""A bundle's INT8 graph for ONNX Runtime on each integer kernel family this host can run:
natively, and under qemu-user as an AVX2-only x86 (Haswell) and as Arm with and without the
dot product (scripts/emulation.py). Each run's scores are compared with the float simulation
of the same graph (convert/qdq_float.py: the graph's own arithmetic, which a kernel that does
not saturate must match up to float rounding) and with FP32.

    python -m scripts.other_kernels BUNDLE [--images 64] [--weight-bits 8] [--no-arm] [--json OUT]
    python -m scripts.other_kernels --probe-only

--weight-bits re-quantizes the ONNX Runtime graph with the bundle's calibration (method and
image count) and 7- or 8-bit weights, instead of taking the bundle's model.int8.ort.onnx: 8
shows the saturation the 7-bit form avoids. Emulated runs are slow (qemu: tens of times native),
hence --images (evenly spaced over the evaluation set; default 64). Every run uses 1 thread.
"""

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

from scripts import emulation

CHILD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "kernel_child.py")


def say(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def ort_graph(bundle, bits, folder):
    """(path, weights in words) of the ONNX Runtime INT8 graph: the bundle's, or re-quantized."""
    entry = bundle.manifest["graphs"]["int8"]["onnxruntime"]
    if not bits:
        return bundle.graph_path("int8", "onnxruntime"), entry.get("weights", "?")
    import onnx

    from convert.quantize import calibration_images, ort_int8_graph, preprocess_graph

    cal = entry.get("calibration") or {}
    images = calibration_images(bundle, None, cal.get("images", 32))
    say(f"re-quantizing the ONNX Runtime graph with {bits}-bit weights ({cal.get('method', 'minmax')}, "
        f"{len(images)} calibration images)")
    graph, details = ort_int8_graph(preprocess_graph(bundle.graph_path("fp32")), bundle.manifest.get("precision_hints"),
                                    images, cal.get("method"), weight_bits=bits)
    path = os.path.join(folder, f"model.int8.ort.w{bits}.onnx")
    onnx.save(graph, path)
    return path, details["weights"]


def run_child(runner, graph, frames, folder, tag, batch):
    out = os.path.join(folder, f"{tag}.npz")
    t0 = time.monotonic()
    res = runner.run([CHILD, graph, frames, out, "--batch", str(batch)], capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"{runner.how}: exit {res.returncode}: {res.stderr.strip()[-500:]}")
    with np.load(out) as z:
        info = json.loads(str(z["info"]))
        info["wall_seconds"] = round(time.monotonic() - t0, 1)
        return z["scores"].astype(np.float64), info


def measure(args, argv):
    from convert.qdq_float import save_float_simulation
    from convert.quantize import evaluation_set
    from edge.bundle.manifest import Bundle
    from edge.common import metrics
    from edge.common.oppoint import evenly_spaced

    bundle = Bundle(args.bundle)
    thr = bundle.threshold
    images, labels, _masks, where = evaluation_set(bundle)
    pick = evenly_spaced(len(images), args.images or len(images))
    images = images[pick]
    labels = labels[pick] if labels is not None else None
    runners = emulation.runners(arm=not args.no_arm)
    res = {"bundle": os.path.abspath(args.bundle), "data": where, "images": int(len(images)), "threshold": thr,
           "utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "command": "python -m scripts.other_kernels " + " ".join(argv), "runs": []}
    if not args.weight_bits:              # what `edge quantize` recorded for this graph, on its own CPU
        acc = bundle.manifest["graphs"]["int8"]["onnxruntime"].get("accuracy") or {}
        res["recorded"] = {k: acc[k] for k in ("image_auroc", "image_auroc_fp32", "images", "evaluated_on",
                                               "integer_vs_float_max_rel") if k in acc}
    with tempfile.TemporaryDirectory(prefix="other-kernels-") as tmp:
        graph, weights = ort_graph(bundle, args.weight_bits, tmp)
        res["graph"], res["weights"] = os.path.basename(graph), weights
        frames = os.path.join(tmp, "frames.npy")
        np.save(frames, images)
        simulated = save_float_simulation(graph, os.path.join(tmp, "float.onnx"))
        native = runners[0]
        say(f"{len(images)} images of {where}; graph {res['graph']} ({weights}); FP32 and the float simulation natively")
        fp32, _ = run_child(native, bundle.graph_path("fp32"), frames, tmp, "fp32", args.batch)
        sim, _ = run_child(native, simulated, frames, tmp, "sim", args.batch)
        if labels is not None and labels.min() != labels.max():
            res["image_auroc_fp32"] = float(metrics.auroc(labels, fp32))
            res["image_auroc_simulated"] = float(metrics.auroc(labels, sim))
        res["simulated_vs_fp32_max_pct"] = float(100 * np.abs(sim - fp32).max() / thr)
        first = None
        for r in runners:
            say(f"int8 on {r.name}: {r.how} ...")
            try:
                s, info = run_child(r, graph, frames, tmp, r.name.replace(" ", "_"), args.batch)
            except Exception as exc:                           # noqa: BLE001 (a row that says so)
                say(f"  FAILED: {exc}")
                res["runs"].append({"runner": r.name, "how": r.how, "error": str(exc)})
                continue
            d = np.abs(s - sim)
            first = s if first is None else first                # the first run: native
            row = {"runner": r.name, "how": r.how, "kernels": info["kernels"], "onnxruntime": info["onnxruntime"],
                   "seconds": info["wall_seconds"],
                   "vs_simulated_max_pct": float(100 * d.max() / thr), "vs_simulated_mean_pct": float(100 * d.mean() / thr),
                   "vs_fp32_max_pct": float(100 * np.abs(s - fp32).max() / thr),
                   "vs_native_max_pct": float(100 * np.abs(s - first).max() / thr),
                   "decisions_changed_vs_fp32": int(((s > thr) != (fp32 > thr)).sum())}
            if "image_auroc_fp32" in res:
                row["image_auroc"] = float(metrics.auroc(labels, s))
                row["auroc_drop"] = res["image_auroc_fp32"] - row["image_auroc"]
            res["runs"].append(row)
            say(f"  {info['kernels']}: |int8 - simulated| max {row['vs_simulated_max_pct']:.2f} % of the threshold "
                f"(- native int8: {row['vs_native_max_pct']:.2f} %), {row['decisions_changed_vs_fp32']} decision(s) "
                f"changed vs FP32 ({info['wall_seconds']} s)")
    return res


def table(res):
    auroc, rec = "image_auroc_fp32" in res, res.get("recorded")
    lines = [f"{res['bundle']}: {res['graph']} ({res['weights']}), {res['images']} images of {res['data']}, "
             f"threshold {res['threshold']:.4g}; float simulation vs FP32: max {res['simulated_vs_fp32_max_pct']:.2f} %"
             + (f"; image AUROC FP32 {res['image_auroc_fp32']:.4f}" if auroc else "")
             + (f"; recorded in the bundle: {rec.get('image_auroc', float('nan')):.4f} on {rec.get('images')} images, "
                f"evaluated on {rec.get('evaluated_on')}" if rec else ""), "",
             "| kernel family (as the run reports it) | how it was run | max / mean abs(int8 - simulated), % of thr "
             "| max abs(int8 - native int8), % of thr | max abs(int8 - FP32), % of thr | decisions changed vs FP32 |"
             + (" image AUROC (drop) |" if auroc else "") + " seconds |",
             "|---|---|---|---|---|---|" + ("---|" if auroc else "") + "---|"]
    for r in res["runs"]:
        if "error" in r:
            lines.append(f"| - | {r['how']} | FAILED: {r['error'][:80]} | | | |" + (" |" if auroc else "") + " |")
            continue
        lines.append(f"| {r['kernels']} | {r['how']} | {r['vs_simulated_max_pct']:.2f} / {r['vs_simulated_mean_pct']:.2f} "
                     f"| {r['vs_native_max_pct']:.2f} | {r['vs_fp32_max_pct']:.2f} | {r['decisions_changed_vs_fp32']} |"
                     + (f" {r['image_auroc']:.4f} ({r['auroc_drop']:+.4f}) |" if auroc else "") + f" {r['seconds']:.0f} |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("bundle", nargs="?", help="model bundle folder with INT8 graphs (edge quantize --precision int8)")
    p.add_argument("--images", type=int, default=64, help="evaluation images, evenly spaced (default 64; 0: all)")
    p.add_argument("--weight-bits", type=int, choices=(7, 8),
                   help="re-quantize the ONNX Runtime graph with 7- or 8-bit weights (default: the bundle's graph)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--no-arm", action="store_true", help="skip the aarch64 emulations")
    p.add_argument("--probe-only", action="store_true", help="only say which emulations run here")
    p.add_argument("--json", metavar="OUT", help="write the figures to OUT as JSON")
    args = p.parse_args(argv)
    if args.probe_only or not args.bundle:
        emulation.print_probes(arm=not args.no_arm)
        if not os.path.isfile(os.path.join(emulation.SYSROOT, ".built")):
            print(f"(no aarch64 sysroot in {emulation.SYSROOT}: python -m scripts.emulation --build-arm64)")
        return 0
    res = measure(args, sys.argv[1:] if argv is None else argv)
    print("\n" + table(res))
    if args.json:
        from edge.common.fsutil import atomic_write_text
        atomic_write_text(args.json, json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
