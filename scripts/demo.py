"""`make demo`: the main job end to end on the embedded PIPED category.

train a PatchCore bundle -> evaluate its ONNX graph (figures, ROC curves, heat-map grid)
-> predict on a few images -> make a video of the test images -> run the line-side loop
on it with an in-process line -> list the flagged frames from the records database."""

import os
import shutil
import sqlite3
import subprocess
import sys

import cv2

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
DATA = os.path.join(ROOT, "data", "piped", "PA_BDP01_TL")
OUT = os.path.join(ROOT, "demo-out")
EDGE = [sys.executable, "-m", "edge.cli"]


def step(title, *args):
    print(f"\n== {title}\n$ edge {' '.join(os.path.relpath(a, ROOT) if a.startswith(ROOT) else a for a in args)}",
          flush=True)
    subprocess.run(EDGE + list(args), check=True, cwd=ROOT)


CAMERA_FPS = 10     # parts a second on the demo line: the video plays at this pace, as a camera would


def make_video(path, fps=CAMERA_FPS):
    """Test images in a fixed interleaved order, one frame each, as a lossless AVI."""
    from edge.common.imageio import list_images
    good = list_images(os.path.join(DATA, "test", "good"))
    bad = list_images(os.path.join(DATA, "test", "impurity"))
    order = []
    while good or bad:
        order += [good.pop(0)] * bool(good) + [bad.pop(0) for _ in range(3) if bad]
    first = cv2.imread(order[0])
    h, w = first.shape[:2]
    # Lossless PNG frames in AVI (GStreamer's avidemux + pngdec read it): JPEG artefacts would
    # raise good parts' scores above a threshold set on lossless images.
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"png "), fps, (w, h))
    for p in order:
        writer.write(cv2.imread(p))
    writer.release()
    return order


def main():
    shutil.rmtree(OUT, ignore_errors=True)
    os.makedirs(OUT)
    bundle = os.path.join(OUT, "bundle")
    step("train PatchCore on the good images (EfficientNet-Lite0 features)",
         "train", "--method", "patchcore", "--data", DATA, "--out", bundle)
    step("evaluate the bundle's ONNX graph under ONNX Runtime",
         "evaluate", bundle, "--data", DATA, "--json", os.path.join(OUT, "evaluation.json"),
         "--plots", os.path.join(OUT, "evaluation"))
    step("predict on a defective image", "predict", bundle, os.path.join(DATA, "test", "impurity", "000.png"),
         "--out", os.path.join(OUT, "predict"))
    video = os.path.join(OUT, "line.avi")
    order = make_video(video)
    print(f"\n== a line video of {len(order)} test images: {os.path.relpath(video, ROOT)}")
    config = os.path.join(OUT, "run.yaml")
    # Played at the camera's pace (appsink sync: one frame each 1/CAMERA_FPS s), so the latency
    # printed is the pipeline's own, not the wait of frames read faster than they are inspected.
    from edge.sources import gst
    if gst.available()[0]:
        source = "source: {uri: file://line.avi, options: {backend: gstreamer, sync: true}}\n"
    else:
        print("note: GStreamer is not available: the video is read as fast as it decodes, and the "
              "latency printed includes the queue's wait")
        source = "source: file://line.avi\n"
    with open(config, "w") as f:
        f.write("bundle: bundle\n" + source + "mode: inspect-all\nengine: {batch: 1}\n"
                "records: {db: records.db, images: flagged, save: flagged}\nstatus_every_s: 1\n"
                "line:\n  timing: {mode: delay, delay_ms: 400, pulse_ms: 30, rt_priority: 0}\n"
                "  outputs: [{type: memory}]\n")
    step("run the line-side loop on the video (in-process line, records in SQLite)", "run", config)
    db = sqlite3.connect(os.path.join(OUT, "records.db"))
    rows = db.execute("SELECT seq, score FROM records WHERE reject = 1 ORDER BY seq").fetchall()
    flagged = [f"{seq}:{'defect' if 'impurity' in order[seq] else 'GOOD'}" for seq, _ in rows]
    truth = sum("impurity" in p for p in order)
    print(f"\nflagged frames ({len(rows)} of {len(order)}; {truth} show an impurity): {' '.join(flagged)}")
    print(f"\npictures: {os.path.relpath(os.path.join(OUT, 'evaluation'), ROOT)}/roc.png, overlays.png; "
          f"flagged frames with heat maps in {os.path.relpath(os.path.join(OUT, 'flagged'), ROOT)}/")


if __name__ == "__main__":
    main()
