"""A stage of `edge run` that dies faults the run: capture stops, the heartbeat stops, the
fail-safe acts, /healthz answers 503, the summary and the exit status say why. Each run is a
child process with a timeout: a run that hangs fails the test instead of hanging the suite."""

import json
import os
import shutil
import sqlite3
import subprocess
import sys

import pytest

from scripts.badinputs import bomb_png
from tests.helpers import PIPED, ROOT, edge

CAT = os.path.join(PIPED, "PA_BDP01_TL")
GOOD = os.path.join(CAT, "test", "good")


@pytest.fixture(scope="module")
def bundle(padim96):
    return padim96


def folder_of(tmp_path, n=8, bad_at=None, make_bad=None):
    """n good frames (copies of the test set's good images), one bad file at index bad_at."""
    folder = tmp_path / "frames"
    folder.mkdir()
    goods = sorted(os.listdir(GOOD))
    for i in range(n):
        shutil.copy(os.path.join(GOOD, goods[i % len(goods)]), folder / f"{i:03d}.png")
    if bad_at is not None:
        make_bad(str(folder / f"{bad_at:03d}_bad.png"))
    return str(folder)


def run_config(tmp_path, bundle, source, **extra):
    cfg = {"bundle": bundle, "source": source, "status_every_s": 0.2,
           "records": {"db": str(tmp_path / "r.db"), "save": "flagged"},
           "view": {"host": "127.0.0.1", "port": 0},
           "line": {"timing": {"mode": "delay", "delay_ms": 400}, "heartbeat_ms": 20,
                    "failsafe": {"on_fault": "reject_all"}, "outputs": [{"type": "memory", "name": "plc"}]}}
    cfg.update(extra)
    path = tmp_path / "run.yaml"
    path.write_text(json.dumps(cfg))
    return path


def faultrun(tmp_path, cfg, fault="none", after=0, timeout=120):
    """`edge run` with a fault injected (scripts/faultrun.py); a hang is a failure."""
    report = tmp_path / "report.json"
    try:
        res = subprocess.run([sys.executable, "-m", "scripts.faultrun", str(report), fault, str(after), "--",
                              str(cfg), "--quiet"], cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"edge run still running {timeout} s after start (a dead stage hangs the run): "
                    f"{(exc.stderr or b'')[-2000:]!r}")
    assert os.path.exists(report), res.stderr
    return res, json.loads(report.read_text())


def run_row(db):
    con = sqlite3.connect(db)
    try:
        ended, summary = con.execute("SELECT ended, summary FROM runs ORDER BY id DESC LIMIT 1").fetchone()
        kinds = [r[0] for r in con.execute("SELECT kind FROM events ORDER BY id")]
        n = con.execute("SELECT count(*) FROM records").fetchone()[0]
    finally:
        con.close()
    return ended, json.loads(summary), kinds, n


def assert_faulted(res, report, db, stage, kind, words):
    assert res.returncode == 3, res.stderr
    summary = res.stdout.strip().splitlines()[-1]
    assert summary.startswith("summary:") and "FAULT:" in summary and f"{stage}:" in summary
    assert all(w in summary for w in words), summary
    assert "Traceback" not in res.stderr and f"edge run: fault: {stage}:" in res.stderr
    line = report["line"]["plc"]
    assert line["fault_kind"] == kind
    assert line["reject_all"]
    assert line["heartbeats"] > 0 and line["heartbeats_after_fault"] <= 1     # the heartbeat stopped
    code, reason = report["healthz"]
    assert code == 503 and f"{stage}:" in reason
    ended, run_summary, kinds, n = run_row(db)
    assert ended is not None and f"{stage}:" in run_summary["error"]
    assert f"{stage}_error" in kinds and "run_end" in kinds
    return run_summary, n, kinds


def test_bomb_png_in_a_folder_faults_the_run(bundle, tmp_path):
    """A 1 kB PNG declaring 100000 x 100000 pixels between good frames."""
    folder = folder_of(tmp_path, 8, bad_at=4, make_bad=bomb_png)
    cfg = run_config(tmp_path, bundle, {"uri": folder, "options": {"fps": 20}})   # paced: the line runs a while
    res, report = faultrun(tmp_path, cfg)
    run_summary, n, _ = assert_faulted(res, report, tmp_path / "r.db", "capture", "source", ["004_bad.png"])
    assert run_summary["frames"] == 5 and n == 5          # every frame before it (000-004) decided and recorded


@pytest.mark.parametrize("stage, fault, kind", [
    ("capture", "source", "source"),
    ("capture", "preprocess", "source"),
    ("infer", "engine", "engine"),
    ("decide", "decide", "queue"),
    ("decide", "output", "queue"),
    ("record", "record", "records"),
])
def test_any_stage_that_raises_faults_the_run(bundle, tmp_path, stage, fault, kind):
    """An exception nobody planned for (RuntimeError) in each stage, after a few good frames."""
    folder = folder_of(tmp_path, 40)
    cfg = run_config(tmp_path, bundle, {"uri": folder, "options": {"loop": True, "fps": 50}})
    res, report = faultrun(tmp_path, cfg, fault, after=5)
    run_summary, n, kinds = assert_faulted(res, report, tmp_path / "r.db", stage, kind, ["RuntimeError", "injected"])
    # every decision is recorded, or (the record stage failed) named in an event
    assert n + kinds.count("unrecorded") == run_summary["frames"]
    assert (kinds.count("unrecorded") > 0) == (stage == "record")


def test_a_camera_size_nobody_can_allocate_is_refused(bundle, tmp_path):
    """source options {width: 100000, height: 100000}: refused before the line starts."""
    cfg = run_config(tmp_path, bundle, {"uri": GOOD, "options": {"width": 100000, "height": 100000}})
    res = edge("run", cfg, "--quiet", timeout=120)
    assert res.returncode == 2 and "source" in res.stderr and "width" in res.stderr and "100000" in res.stderr
    assert "Traceback" not in res.stderr
    cfg = run_config(tmp_path, bundle, {"uri": GOOD, "options": {"width": 30000, "height": 30000}})
    res = edge("run", cfg, "--quiet", timeout=120)                 # each side allowed, the frame is not
    assert res.returncode == 2 and "30000 x 30000" in res.stderr and "pixels" in res.stderr


def test_max_frames_zero_is_refused(bundle, tmp_path):
    cfg = run_config(tmp_path, bundle, GOOD, view=None, line=None)
    res = edge("run", cfg, "--max-frames", "0", timeout=120)
    assert res.returncode == 2 and "--max-frames" in res.stderr and "Traceback" not in res.stderr
    assert not os.path.exists(tmp_path / "r.db")
