"""Several cameras on one box (part of `make bench`): a PaDiM bundle at 256 x 256 shared by 1, 2
and 4 cameras (looping folder sources), under ONNX Runtime FP32 and INT8, in inspect-all mode.

  paced:  every camera at 15 frames/s; per camera the frames/s sustained, latency p50/p99
          (capture to decision) and whether it kept pace (decided >= 98% of 15/s, nothing dropped)
  max:    cameras as fast as they go; frames/s per camera and in total, and the same total of
          4 separate single-camera runs side by side (4 processes, each the single-camera
          pipeline of `edge run` with its default engine settings), for the batching gain; and
          the CPU time per frame of both, which other load on the machine hardly changes.
First, per precision, the engine's CPU time per frame by batch size (one single-threaded call
at a time, the calling thread's CPU time: what batching saves on a CPU, whatever the load).
Each measurement runs in its own process; each row gives the machine's load average when it
ended (the machine may be shared: compare rows of one run). Writes bench-out/cameras.json.

    python -m scripts.bench_cameras [--seconds 8] [--bundle bench-out/padim] [--workers auto|N]
                                    [--force-quantize]
"""

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
DATA = os.path.join(ROOT, "data", "piped", "PA_BDP01_TL")
FRAMES = os.path.join(DATA, "test", "good")
OUT = os.path.join(ROOT, "bench-out")
PACE = 15.0


def child(spec):
    """One measurement in this process: spec = {bundle, precision, cameras, fps, seconds, warmup,
    workers, single}."""
    if spec.get("single"):
        return single(spec)
    from edge.runtime.config import validate
    from edge.runtime.pipeline import Stats
    from edge.runtime.run_cameras import build_pipeline, close_all, open_cameras
    opts = {"loop": True}
    if spec["fps"]:
        opts["fps"] = spec["fps"]
    raw = {"bundle": spec["bundle"], "engine": {"kind": "onnxruntime", "precision": spec["precision"], "batch": 4},
           "batch_wait_ms": spec.get("batch_wait_ms", 5), "records": {"db": None}, "deadline_ms": 600000,
           "engine_workers": spec.get("workers", "auto"),
           "cameras": [{"id": f"cam{i}", "source": {"uri": f"folder://{FRAMES}", "options": opts}}
                       for i in range(spec["cameras"])]}
    cfg = validate(raw, ROOT)
    opened = open_cameras(cfg)
    pipe = build_pipeline(cfg, opened)
    try:
        pipe.start()
        time.sleep(spec["warmup"])
        for c in pipe.cameras:                      # figures after the warm-up
            c.stats = Stats()
        for b, _ in pipe.groups:
            b.calls = b.frames = 0
        cpu0 = _cpu_s()
        time.sleep(spec["seconds"])
        snap = pipe.snapshot()
        cpu = _cpu_s() - cpu0
    finally:
        pipe.stop()
        pipe.join(30)
        close_all(opened)
    keep = ("fps", "decided", "dropped", "latency_ms_p50", "latency_ms_p99")
    return {"cameras": {k: {f: v[f] for f in keep} for k, v in snap["cameras"].items()},
            "total_fps": snap["total"]["fps"], "mean_batch": snap["total"]["mean_batch"],
            "cpu_s": cpu, "frames": snap["total"]["decided"], "workers": pipe.groups[0][0].workers}


def single(spec):
    """One camera through the single-camera pipeline, as `edge run` with a `source:` runs it."""
    from edge.runtime.config import validate
    from edge.runtime.pipeline import Pipeline, Stats
    from edge.runtime.preprocess import Preprocessor
    from edge.runtime.run import close_parts, open_parts
    opts = {"loop": True}
    if spec["fps"]:
        opts["fps"] = spec["fps"]
    cfg = validate({"bundle": spec["bundle"], "source": {"uri": f"folder://{FRAMES}", "options": opts},
                    "engine": {"kind": "onnxruntime", "precision": spec["precision"], "batch": 4},
                    "records": {"db": None}, "deadline_ms": 600000}, ROOT)
    parts = open_parts(cfg)
    bundle = parts["bundle"]
    pipe = Pipeline(parts["source"], Preprocessor.for_bundle(bundle), parts["engine"],
                    bundle.threshold_for(spec["precision"], parts["engine"].name), cfg.pipeline())
    try:
        pipe.start()
        time.sleep(spec["warmup"])
        pipe.stats = Stats()
        cpu0 = _cpu_s()
        time.sleep(spec["seconds"])
        snap = pipe.stats.snapshot()
        cpu = _cpu_s() - cpu0
    finally:
        pipe.stop()
        pipe.join(30)
        close_parts(parts)
    keep = ("fps", "decided", "dropped", "latency_ms_p50", "latency_ms_p99")
    return {"cameras": {"cam0": {f: snap[f] for f in keep}}, "total_fps": snap["fps"], "mean_batch": 0.0,
            "cpu_s": cpu, "frames": snap["decided"]}


def engine_cpu(bundle, precision, sizes=(1, 2, 4, 8), seconds=1.5):
    """{batch: CPU ms per frame} of single-threaded engine calls."""
    import numpy as np
    from edge.bundle.manifest import Bundle
    from edge.engines import open_engine
    b = Bundle(bundle)
    h, w = b.input_hw
    out = {}
    with open_engine(b, "onnxruntime", precision, batch=max(sizes), threads=1) as eng:
        for n in sizes:
            x = np.random.default_rng(0).integers(0, 255, (n, h, w, 3), dtype=np.uint8)
            eng.infer(x)
            t0, k = time.thread_time(), 0
            while time.thread_time() - t0 < seconds:
                eng.infer(x)
                k += 1
            out[n] = 1000 * (time.thread_time() - t0) / (k * n)
    return out


def _cpu_s():
    """CPU seconds this process has used (all its threads): unlike frames/s, hardly changed by
    other programs on the machine."""
    import resource
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _spawn(spec):
    return subprocess.Popen([sys.executable, "-m", "scripts.bench_cameras", "--child", json.dumps(spec)],
                            cwd=ROOT, stdout=subprocess.PIPE, text=True)


def _result(proc):
    out, _ = proc.communicate(timeout=600)
    if proc.returncode != 0:
        raise SystemExit(f"bench child failed ({proc.returncode})")
    return json.loads(out.strip().splitlines()[-1])


def measure(spec):
    return _result(_spawn(spec))


def edge(*args):
    print("$ edge " + " ".join(os.path.relpath(a, ROOT) if a.startswith(ROOT) else a for a in args), flush=True)
    subprocess.run([sys.executable, "-m", "edge.cli", *args], check=True, cwd=ROOT)


def _join(cams, key, fmt):
    return "/".join(fmt.format(c[key]) for c in cams)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--child")
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--warmup", type=float, default=3.0)
    ap.add_argument("--bundle", default=os.path.join(OUT, "padim"))
    ap.add_argument("--counts", default="1,2,4")
    ap.add_argument("--precisions", default="fp32,int8")
    ap.add_argument("--workers", default="auto", help="engine_workers of the run with several cameras")
    ap.add_argument("--force-quantize", action="store_true",
                    help="make the INT8 variant even where the quantizer's accuracy budget refuses it")
    a = ap.parse_args()
    if a.child:
        print(json.dumps(child(json.loads(a.child))))
        return
    os.makedirs(OUT, exist_ok=True)
    if not os.path.isfile(os.path.join(a.bundle, "manifest.yaml")):
        edge("train", "--method", "padim", "--data", DATA, "--out", a.bundle, "--no-eval")
    if "int8" in a.precisions and not any("int8" in f for _, _, files in os.walk(a.bundle) for f in files):
        edge("quantize", a.bundle, "--precision", "int8", *(["--force"] if a.force_quantize else []))
    base = {"bundle": a.bundle, "seconds": a.seconds, "warmup": a.warmup,
            "workers": a.workers if a.workers == "auto" else int(a.workers)}
    rows = []
    print(f"load: {os.getloadavg()[0]:.2f} (1 min) on {os.cpu_count()} cores", flush=True)
    print(f"{'prec':5} {'cams':>4} {'mode':6} {'fps/cam':>16} {'total':>7} {'p50 ms/cam':>22} "
          f"{'p99 ms/cam':>22} {'batch':>5} {'load':>5}  pace")
    for prec in a.precisions.split(","):
        cpu = engine_cpu(a.bundle, prec)
        rows.append({"precision": prec, "engine_cpu_ms_per_frame_by_batch": cpu})
        print(f"{prec:5} engine CPU per frame, single-threaded, by batch size: "
              + ", ".join(f"{n}: {v:.1f} ms" for n, v in cpu.items()), flush=True)
        for n in map(int, a.counts.split(",")):
            for fps in (PACE, 0):
                r = measure(dict(base, precision=prec, cameras=n, fps=fps))
                cams = r["cameras"].values()
                kept = all(c["fps"] >= 0.98 * PACE and c["dropped"] == 0 for c in cams) if fps else None
                rows.append(dict(r, precision=prec, n=n, paced=bool(fps), kept_pace=kept))
                fps_s, p50, p99 = (_join(cams, key, fmt) for key, fmt in
                                   (("fps", "{:.1f}"), ("latency_ms_p50", "{:.0f}"), ("latency_ms_p99", "{:.0f}")))
                r["load"] = os.getloadavg()[0]
                print(f"{prec:5} {n:4} {'15/s' if fps else 'max':6} {fps_s:>16} {r['total_fps']:7.1f} "
                      f"{p50:>22} {p99:>22} {r['mean_batch']:5.2f} {r['load']:5.2f}  "
                      + ("" if kept is None else "kept" if kept else "FELL BEHIND"), flush=True)
        procs = [_spawn(dict(base, precision=prec, cameras=1, fps=0, single=True)) for _ in range(4)]
        sep = [_result(p) for p in procs]
        sep_total = sum(s["total_fps"] for s in sep)
        one = next(r for r in rows if r["precision"] == prec and r.get("n") == 4 and not r.get("paced"))
        cpu_one = 1000 * one["cpu_s"] / max(1, one["frames"])
        cpu_sep = 1000 * sum(s["cpu_s"] for s in sep) / max(1, sum(s["frames"] for s in sep))
        rows.append({"precision": prec, "separate_4_total_fps": sep_total, "ratio": one["total_fps"] / sep_total,
                     "cpu_ms_per_frame_one_run": cpu_one, "cpu_ms_per_frame_separate": cpu_sep})
        print(f"{prec:5} 4 separate single-camera runs: {sep_total:.1f} frames/s in total; one run with 4 "
              f"cameras ({one['workers']} engine calls at once): {one['total_fps']:.1f} "
              f"({one['total_fps'] / sep_total:.2f}x); load {os.getloadavg()[0]:.2f}", flush=True)
        print(f"{prec:5} CPU per frame: one run with 4 cameras {cpu_one:.1f} ms, 4 separate runs {cpu_sep:.1f} ms "
              f"({cpu_sep / cpu_one:.2f}x); on {os.cpu_count()} idle cores that is {1000 * os.cpu_count() / cpu_one:.0f} "
              f"against {1000 * os.cpu_count() / cpu_sep:.0f} frames/s", flush=True)
    print(f"load: {os.getloadavg()[0]:.2f} (1 min)")
    with open(os.path.join(OUT, "cameras.json"), "w") as f:
        json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
