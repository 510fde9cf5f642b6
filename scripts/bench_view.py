"""Does watching slow the inspection? Frames per second of the run pipeline (folder source of
the PIPED test images, as fast as it goes, ONNX Runtime, records in SQLite) without the live
view, and with it while two "browsers" (each: the MJPEG stream, /status.json every second,
/gallery.json every 5 s) and a Prometheus-style scraper (/metrics every second) run in other
processes. Runs alternate (off, on, off, on, ...) so that drift of a shared machine hits both.
Prints the figures; it is not a test.

    .venv/bin/python -m scripts.bench_view [--bundle DIR] [--seconds 20] [--rounds 3]
"""

import argparse
import multiprocessing as mp
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
CAT = os.path.join(ROOT, "data", "piped", "PA_BDP01_TL")


def _browser(port, stop):
    """One browser: the MJPEG stream read in full, status every second, gallery every 5 s."""
    import threading

    def stream():
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/stream.mjpg", timeout=10) as r:
                while not stop.is_set() and r.read(65536):
                    pass
        except OSError:
            pass
    threading.Thread(target=stream, daemon=True).start()
    n = 0
    while not stop.is_set():
        for path in ("/status.json",) + (("/gallery.json",) if n % 5 == 0 else ()):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5).read()
            except OSError:
                pass
        n += 1
        stop.wait(1.0)


def _scraper(port, stop):
    while not stop.is_set():
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
        except OSError:
            pass
        stop.wait(1.0)


def one_run(bundle, seconds, watched, tmp):
    from edge.bundle.manifest import Bundle
    from edge.engines import open_engine
    from edge.records.store import RecordStore
    from edge.runtime.config import PipelineSettings
    from edge.runtime.pipeline import Pipeline
    from edge.runtime.preprocess import Preprocessor
    from edge.sources import open_source
    from edge.view.server import LiveView

    b = Bundle(bundle)
    engine = open_engine(b, "onnxruntime", "fp32", batch=1)
    src = open_source(os.path.join(CAT, "test", "good"), {"loop": True}).start()
    store = RecordStore(os.path.join(tmp, f"r{time.monotonic_ns()}.db"), os.path.join(tmp, "img"), save="flagged")
    store.start_run(bundle, {})
    view = LiveView(port=0, store=store).start() if watched else None
    stop, procs = mp.Event(), []
    if watched:
        procs = [mp.Process(target=_browser, args=(view.port, stop)) for _ in range(2)]
        procs.append(mp.Process(target=_scraper, args=(view.port, stop)))
        for p in procs:
            p.start()
    pipe = Pipeline(src, Preprocessor.for_bundle(b), engine, b.threshold, PipelineSettings(batch=1),
                    store=store, view=view)
    pipe.start()
    time.sleep(3.0)                                # warm-up, browsers connected
    n0, t0 = pipe.stats.decided, time.monotonic()
    time.sleep(seconds)
    fps = (pipe.stats.decided - n0) / (time.monotonic() - t0)
    pipe.stop()
    pipe.join(30)
    stop.set()
    for p in procs:
        p.join(10)
    encodes = view.encodes if view else 0
    if view:
        view.close()
    src.close()
    engine.close()
    store.close()
    return fps, encodes


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", help="a bundle (default: train a PaDiM one on the embedded category)")
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        bundle = args.bundle
        if not bundle:
            bundle = os.path.join(tmp, "bundle")
            subprocess.run([sys.executable, "-m", "edge.cli", "train", "--method", "padim", "--data", CAT,
                            "--out", bundle, "--no-eval"], check=True, cwd=ROOT, capture_output=True)
        off, on = [], []
        for r in range(args.rounds):
            off.append(one_run(bundle, args.seconds, False, tmp)[0])
            fps, enc = one_run(bundle, args.seconds, True, tmp)
            on.append(fps)
            print(f"round {r + 1}: {off[-1]:.1f} fps unwatched, {fps:.1f} fps watched ({enc} JPEG encodings)",
                  flush=True)
        a, b = statistics.median(off), statistics.median(on)
        print(f"median frames/s: {a:.1f} without the view, {b:.1f} with two browsers and /metrics scraped "
              f"every second: {100 * (b - a) / a:+.1f} %")


if __name__ == "__main__":
    main()
