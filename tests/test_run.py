"""Issue 3: `edge run` — capture, infer, decide, record — on real sources, without torch."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from edge.bundle.manifest import Bundle
from edge.runtime.config import PipelineSettings, validate
from edge.engines.onnxrt import OrtEngine
from edge.common.errors import EdgeError
from edge.runtime.pipeline import Pipeline
from edge.runtime.preprocess import Preprocessor
from edge.records.store import RecordStore
from edge.sources import open_source
from tests.helpers import PIPED, ROOT, edge, rows

CAT = os.path.join(PIPED, "PA_BDP01_TL")
IMPURITY = os.path.join(CAT, "test", "impurity")


@pytest.fixture(scope="module")
def bundle(padim96):
    return padim96


def write_config(tmp_path, bundle, source, **extra):
    cfg = {"bundle": bundle, "source": source, "records": {"db": str(tmp_path / "r.db")}, "status_every_s": 0.2}
    cfg.update(extra)
    path = tmp_path / "run.yaml"
    path.write_text(json.dumps(cfg))          # JSON is YAML
    return path


def test_runtime_needs_no_torch(bundle, tmp_path):
    """A `torch` that cannot be imported: edge run still runs, and never tried to import it."""
    blocker = tmp_path / "block"
    (blocker / "torch").mkdir(parents=True)
    (blocker / "torch" / "__init__.py").write_text("raise ImportError('torch is not on this box')\n")
    cfg = write_config(tmp_path, bundle, IMPURITY)
    env = dict(os.environ, PYTHONPATH=f"{blocker}{os.pathsep}{ROOT}")
    code = ("import sys; from edge.cli import main; rc = main(['run', %r, '--quiet']); "
            "assert 'torch' not in sys.modules; sys.exit(rc)") % str(cfg)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300, cwd=ROOT)
    assert res.returncode == 0, res.stderr
    assert "48 frames decided of 48 captured" in res.stdout
    # and the modules of edge/ import nothing of torch even when it is there
    res = subprocess.run([sys.executable, "-c", "import sys, edge.runtime.run, edge.tools.bench, edge.runtime.pipeline, edge.sources, "
                          "edge.outputs, edge.records.store, edge.view.server, edge.bundle.install, edge.tools.check, edge.tools.predict; "
                          "print('torch' in sys.modules)"], capture_output=True, text=True, cwd=ROOT)
    assert res.stdout.strip() == "False", res.stderr


def test_inspect_all_gives_every_frame_a_verdict(bundle, tmp_path):
    """A source faster than the engine: back-pressure, no frame lost, every verdict names its frame."""
    cfg = write_config(tmp_path, bundle, {"uri": CAT + "/test/good", "options": {"loop": True}},
                       engine={"batch": 4}, queue_size=2, max_frames=120,
                       records={"db": str(tmp_path / "r.db"), "save": "flagged"})
    res = edge("run", cfg)
    assert res.returncode == 0, res.stderr
    assert "120 frames decided of 120 captured" in res.stdout and "0 dropped" in res.stdout
    seqs = [r[0] for r in rows(tmp_path / "r.db", "SELECT seq FROM records ORDER BY seq")]
    assert seqs == list(range(120))
    batches = [json.loads(r[0])["batch"] for r in rows(tmp_path / "r.db", "SELECT extra FROM records")]
    assert max(batches) > 1                   # frames waiting in the queue were batched


@pytest.fixture(scope="module")
def slow_bundle(tmp_path_factory):
    """A PatchCore graph at 256 x 256 on one thread: tens of ms a frame, far slower than the source."""
    out = tmp_path_factory.mktemp("slow") / "bundle"
    res = edge("train", "--method", "patchcore", "--data", CAT, "--out", out, "--no-eval")
    assert res.returncode == 0, res.stderr
    return str(out)


def test_latest_mode_drops_are_counted(slow_bundle, tmp_path):
    bundle = slow_bundle
    """An unpaced GStreamer source against a slower engine: old frames are dropped, every drop counted."""
    from tests.gst_servers import require_gst
    require_gst("videotestsrc")
    store = RecordStore(str(tmp_path / "r.db"), str(tmp_path / "img"), save="none")
    store.start_run(bundle, {})
    src = open_source("gst://videotestsrc is-live=false pattern=ball ! video/x-raw,width=320,height=240 "
                      "! videoconvert ! appsink sync=false", {"drop": True})   # unpaced: far faster than the engine
    b = Bundle(bundle)
    src.start()
    pipe = Pipeline(src, Preprocessor.for_bundle(b), OrtEngine(b.graph_path(), threads=1), b.threshold,
                    PipelineSettings(mode="latest", batch=1, queue_size=1, max_frames=150), store=store)
    pipe.start()
    assert pipe.join(timeout=120)
    src.close()
    s = pipe.stats.snapshot()
    store.end_run(s)
    store.close()
    assert s["dropped"] > 0 and s["captured"] == 150
    decided = rows(tmp_path / "r.db", "SELECT count(*) FROM records")[0][0]
    assert decided == s["decided"] and decided + pipe.stats.dropped >= 150
    dropped_events = rows(tmp_path / "r.db", "SELECT detail FROM events WHERE kind = 'dropped'")
    counted = sum(json.loads(d[0]).get("count", 1) for d in dropped_events)
    assert counted == s["dropped"]


def test_sigterm_drains_in_flight_frames(bundle, tmp_path):
    cfg = write_config(tmp_path, bundle, {"uri": IMPURITY, "options": {"loop": True, "fps": 40}})
    proc = subprocess.Popen([sys.executable, "-m", "edge.cli", "run", str(cfg)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            time.sleep(0.3)
            try:
                if os.path.exists(tmp_path / "r.db") and rows(tmp_path / "r.db", "SELECT count(*) FROM records")[0][0] > 20:
                    break
            except sqlite3.OperationalError:        # the file exists, its tables not yet
                pass
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert "SIGTERM: draining" in err
    summary = out.strip().splitlines()[-1]
    decided, captured = [int(w) for w in summary.replace(",", " ").split() if w.isdigit()][:2]
    assert decided == captured > 20
    assert rows(tmp_path / "r.db", "SELECT count(*) FROM records")[0][0] == decided
    assert rows(tmp_path / "r.db", "SELECT ended IS NOT NULL FROM runs")[0][0] == 1


def test_camera_lost_and_back_is_recorded_while_the_run_goes_on(bundle, tmp_path):
    from tests.gst_servers import RtspServer, free_port
    server = RtspServer(port=free_port()).start()      # skips when GstRtspServer is missing
    b = Bundle(bundle)
    store = RecordStore(str(tmp_path / "r.db"), str(tmp_path / "img"), save="none")
    store.start_run(bundle, {})
    src = open_source(server.url, {"transport": "tcp", "latency_ms": 0, "stall_s": 2,
                                   "reconnect": {"initial_s": 0.2, "max_s": 0.5}})
    src.start()
    pipe = Pipeline(src, Preprocessor.for_bundle(b), OrtEngine(b.graph_path()), b.threshold, store=store)
    pipe.start()
    try:
        def wait(cond, t=30):
            end = time.monotonic() + t
            while time.monotonic() < end and not cond():
                time.sleep(0.1)
            assert cond()
        wait(lambda: pipe.stats.decided >= 10)
        server.stop()
        wait(lambda: pipe.stats.outages == 1)
        before = pipe.stats.decided
        server.start()
        wait(lambda: pipe.stats.decided >= before + 10)
    finally:
        pipe.stop()
        pipe.join(timeout=30)
        src.close()
        server.stop()
        store.close()
    kinds = [r[0] for r in rows(tmp_path / "r.db", "SELECT kind FROM events ORDER BY id")]
    assert "source_lost" in kinds and "source_reopened" in kinds
    seqs = [r[0] for r in rows(tmp_path / "r.db", "SELECT seq FROM records ORDER BY seq")]
    assert seqs == sorted(set(seqs)) and len(seqs) == pipe.stats.decided


def test_min_area_and_threshold_override(bundle, tmp_path):
    b = Bundle(bundle)
    src = open_source(IMPURITY, {})
    src.start()
    pipe = Pipeline(src, Preprocessor.for_bundle(b), OrtEngine(b.graph_path()), b.threshold, PipelineSettings(min_area=0.5))
    pipe.start()
    pipe.join(timeout=60)
    s = pipe.stats.snapshot()
    assert s["decided"] == 48 and s["rejects"] == 0       # no impurity covers half the frame
    cfg = write_config(tmp_path, bundle, IMPURITY, decision={"threshold": 1e9})
    res = edge("run", cfg)
    assert res.returncode == 0 and "0 rejected" in res.stdout


@pytest.mark.parametrize("patch, where", [
    ({"mode": "fastest"}, "config.mode"),
    ({"engine": {"batch": 0}}, "engine.batch"),
    ({"engine": {"precison": "fp16"}}, "engine"),
    ({"decision": {"min_area": 2}}, "decision.min_area"),
    ({"line": {"timing": {"mode": "delay", "delay_ms": 300}, "outputs": [{"type": "fax"}]}}, "line.outputs[0]"),
    ({"source": None}, "source"),
])
def test_bad_config_names_the_key(bundle, tmp_path, patch, where):
    cfg = {"bundle": bundle, "source": IMPURITY}
    cfg.update(patch)
    with pytest.raises(EdgeError) as err:
        validate(cfg)
    assert where in str(err.value)
    path = write_config(tmp_path, bundle, IMPURITY, **{k: v for k, v in patch.items() if k != "source"})
    if "source" in patch:
        path.write_text(path.read_text().replace(json.dumps(IMPURITY), "null"))
    res = edge("run", path)
    assert res.returncode == 2 and where in res.stderr and "Traceback" not in res.stderr


def test_missing_bundle_and_source_are_clear(bundle, tmp_path):
    res = edge("run", write_config(tmp_path, str(tmp_path / "nope"), IMPURITY))
    assert res.returncode == 2 and "nope" in res.stderr
    res = edge("run", write_config(tmp_path, bundle, str(tmp_path / "no-such-folder")))
    assert res.returncode == 2 and "no-such-folder" in res.stderr


def test_overrides_on_the_command_line(bundle, tmp_path):
    cfg = write_config(tmp_path, "elsewhere", "also-elsewhere")
    res = edge("run", cfg, "--bundle", bundle, "--source", IMPURITY, "--records", tmp_path / "o.db", "--max-frames", 7)
    assert res.returncode == 0, res.stderr
    assert "7 frames decided of 7 captured" in res.stdout
    assert rows(tmp_path / "o.db", "SELECT count(*) FROM records")[0][0] == 7
