"""Several cameras in one `edge run`: the configuration, one engine call for the cameras that
share a bundle, parts seen by several cameras, and a run of three real cameras (two GStreamer
test sources sharing a bundle, one RTSP camera with its own bundle that is stopped and started
again mid-run) with parts tied together by a trigger number read from a Modbus PLC."""

import collections
import json
import os
import re
import threading
import time

import numpy as np
import pytest

from edge.bundle.manifest import Bundle
from edge.common.errors import EdgeError
from edge.engines.onnxrt import OrtEngine
from edge.runtime.batcher import Batcher
from edge.runtime.cameras_config import MultiRunConfig, PartsConfig
from edge.runtime.config import RunConfig, validate
from edge.runtime.parts import PartJoiner, combine
from edge.runtime.types import Decision
from tests.helpers import PIPED, edge, rows
from tests.line_servers import modbus_plc  # noqa: F401  (fixture)

CAT = os.path.join(PIPED, "PA_BDP01_TL")
GST = ("gst://videotestsrc is-live=true pattern={p} ! video/x-raw,width=160,height=120,framerate={fps}/1 "
       "! videoconvert ! appsink")


@pytest.fixture(scope="module")
def bundles(tmp_path_factory, padim96):
    """The session's 96 px PaDiM bundle (shared by cameras) and one of 64 px of their own."""
    path = tmp_path_factory.mktemp("cams") / "own"
    res = edge("train", "--method", "padim", "--data", CAT, "--out", path, "--size", "64", "--no-eval")
    assert res.returncode == 0, res.stderr
    return [padim96, str(path)]


# ---- configuration ----------------------------------------------------------------------
def test_single_camera_config_is_unchanged():
    assert isinstance(validate({"bundle": "b", "source": "folder://x"}), RunConfig)


def test_cameras_take_the_top_level_as_defaults(tmp_path):
    cfg = validate({"bundle": "b", "engine": {"precision": "int8", "batch": 8}, "decision": {"min_area": 0.1},
                    "cameras": [{"id": "top", "source": "rtsp://a/s", "roi": [0, 0, 64, 32]},
                                {"id": "side", "source": "rtsp://b/s", "bundle": "c", "engine": {"batch": 2},
                                 "decision": {"threshold": 3.5}}],
                    "parts": {"cameras": ["top", "side"]}}, str(tmp_path))
    assert isinstance(cfg, MultiRunConfig)
    top, side = cfg.cameras
    assert (top.id, top.roi, top.run.engine.precision, top.run.engine.batch) == ("top", (0, 0, 64, 32), "int8", 8)
    assert (side.run.engine.precision, side.run.engine.batch) == ("int8", 2)      # merged, not replaced
    assert side.run.bundle == str(tmp_path / "c") and side.run.decision.threshold == 3.5
    assert side.run.decision.min_area == 0.1
    assert cfg.parts.combine == "any" and cfg.parts.id_source == "capture_time"


def test_camera_mqtt_topics_carry_the_camera_id():
    cfg = validate({"bundle": "b", "cameras": [
        {"id": "top", "source": "rtsp://a/s", "line": {"timing": {"delay_ms": 100},
                                                       "outputs": [{"type": "mqtt", "host": "h"}]}}]})
    out = cfg.cameras[0].run.line["outputs"][0]
    assert out["topic_prefix"] == "lineside/box/top" and out["name"] == "top.mqtt[0]"


@pytest.mark.parametrize("raw, where", [
    ({"cameras": [{"id": "a", "source": "rtsp://a/s"}]}, "cameras[0].bundle"),
    ({"bundle": "b", "cameras": []}, "cameras"),
    ({"bundle": "b", "source": "rtsp://x/y", "cameras": [{"id": "a", "source": "rtsp://a/s"}]}, "source"),
    ({"bundle": "b", "cameras": [{"id": "a b", "source": "rtsp://a/s"}]}, "cameras[0].id"),
    ({"bundle": "b", "cameras": [{"id": "a", "source": "x://"}, {"id": "a", "source": "y://"}]}, "cameras[1].id"),
    ({"bundle": "b", "cameras": [{"id": "a", "source": "rtsp://a/s", "decision": {"threshold": "hi"}}]},
     "cameras[0].decision.threshold"),
    ({"bundle": "b", "cameras": [{"id": "a", "source": "rtsp://a/s", "roi": [0, 0, -1, 3]}]}, "cameras[0].roi"),
    ({"bundle": "b", "cameras": [{"id": "a", "source": "rtsp://a/s", "colour": 1}]}, "cameras[0]"),
    ({"bundle": "b", "cameras": [{"id": "a", "source": "rtsp://a/s", "line": {"timing": {"mode": "x"}}}]},
     "cameras[0].line.timing.mode"),
    ({"bundle": "b", "cameras": [{"id": "a", "source": "x://"}, {"id": "c", "source": "y://"}],
      "parts": {"cameras": ["a", "b"]}}, "parts.cameras"),
    ({"bundle": "b", "cameras": [{"id": "a", "source": "x://"}, {"id": "c", "source": "y://"}],
      "parts": {"cameras": ["a", "c"], "combine": "vote"}}, "parts.combine"),
    ({"bundle": "b", "cameras": [{"id": "a", "source": "x://"}, {"id": "c", "source": "y://"}],
      "parts": {"cameras": ["a", "c"], "id": {"source": "modbus"}}}, "parts.id.host"),
    ({"bundle": "b", "batch_wait_ms": -1, "cameras": [{"id": "a", "source": "x://"}]}, "config.batch_wait_ms"),
    ({"bundle": "b", "engine_workers": 0, "cameras": [{"id": "a", "source": "x://"}]}, "config.engine_workers"),
    ({"bundle": "b", "engine_workers": "many", "cameras": [{"id": "a", "source": "x://"}]}, "config.engine_workers"),
])
def test_bad_camera_config_names_the_key(raw, where):
    with pytest.raises(EdgeError) as err:
        validate(raw)
    assert err.value.where == where, str(err.value)


# ---- one engine call for several cameras ------------------------------------------------------
def test_frames_of_cameras_sharing_a_bundle_go_into_one_engine_call(bundles):
    b = Bundle(bundles[0])
    engine = OrtEngine(b.graph_path())
    h, w = b.input_hw
    batcher = Batcher(engine, 4, wait_s=3600)
    a, c, lost = batcher.feed("a", 8, "inspect-all"), batcher.feed("c", 8, "inspect-all"), batcher.feed("l", 8, "inspect-all")
    for i in range(3):
        a.put((f"a{i}", np.full((h, w, 3), 40 * i, np.uint8)))
    c.put(("c0", np.zeros((h, w, 3), np.uint8)))
    lost.set_stalled(True)          # a lost camera is not waited for, though its feed is open
    calls = []
    t = threading.Thread(target=batcher.run, args=(lambda items, maps, scores, s: calls.append(
        ([it[0] for _, it in items], maps.shape, scores.shape)),))
    t.start()
    end = time.monotonic() + 60
    while not calls and time.monotonic() < end:
        time.sleep(0.01)
    for f in (a, c, lost):
        f.close()
    t.join(60)
    assert not t.is_alive()
    assert calls[0][0] == ["a0", "c0", "a1", "a2"]             # round-robin, one call of four
    assert calls[0][1][0] == 4 and calls[0][2] == (4,)
    assert len(calls) == 1 and batcher.calls == 1 and batcher.frames == 4


def test_engine_calls_side_by_side_keep_each_cameras_order(bundles):
    """Two workers take batches of one shared engine at once; every frame is handed on once, and
    batches in the order they were formed, so each camera's frames stay in capture order."""
    b = Bundle(bundles[0])
    engine = OrtEngine(b.graph_path(), threads=1)
    h, w = b.input_hw
    batcher = Batcher(engine, 3, wait_s=0)
    feeds = [batcher.feed(cid, 4, "inspect-all") for cid in ("a", "c")]
    got, lock = [], threading.Lock()

    def deliver(items, maps, scores, spent):
        with lock:
            got.append([it[0] for _, it in items])
    workers = [threading.Thread(target=batcher.run, args=(deliver,)) for _ in range(2)]
    for t in workers:
        t.start()
    rng = np.random.default_rng(0)
    for i in range(30):                      # the captures: frames of varied content, two cameras
        for f in feeds:
            f.put(((f.camera, i), rng.integers(0, 255, (h, w, 3), dtype=np.uint8)))
    for f in feeds:
        f.close()
    for t in workers:
        t.join(120)
    assert not any(t.is_alive() for t in workers)
    order = [label for batch in got for label in batch]
    for cid in ("a", "c"):
        assert [i for c, i in order if c == cid] == list(range(30))
    assert batcher.calls == len(got) and batcher.frames == 60


def test_engine_plan():
    from edge.runtime.run_cameras import engine_plan
    assert engine_plan("onnxruntime", None, None, cores=2) == (2, 1)       # one single-threaded call per core
    assert engine_plan("onnxruntime", None, None, cores=16) == (4, 4)
    assert engine_plan("onnxruntime", 2, None, cores=2) == (1, 2)          # engine.threads given: kept
    assert engine_plan("onnxruntime", None, 1, cores=2) == (1, 2)          # engine_workers given: kept
    assert engine_plan("tensorrt", None, None, cores=8) == (1, None)       # one execution context


# ---- parts ------------------------------------------------------------------------------------
def test_combination_rules():
    assert combine("any", {"a": False, "b": True}) and not combine("any", {"a": False, "b": False})
    assert not combine("all", {"a": False, "b": True}) and combine("all", {"a": True, "b": True})
    assert combine("majority", {"a": True, "b": True, "c": False})
    assert not combine("majority", {"a": True, "b": False})


def _d(seq, reject, t):
    return Decision(seq, t, time.time(), 2.0 if reject else 0.5, reject, "score" if reject else "ok")


def test_part_verdict_is_decided_once_and_sent_once_to_its_ejector():
    from edge.outputs import LineIO
    from edge.outputs.memory import LINES
    line = LineIO({"timing": {"mode": "delay", "delay_ms": 60000}, "failsafe": {"drain_ms": 0},
                   "outputs": [{"type": "memory", "name": "part-ejector"}]}).start()
    seen = []
    cfg = PartsConfig(cameras=("top", "side"), deadline_ms=60000)
    j = PartJoiner(cfg, line, lambda kind, d: seen.append((kind, d))).start()
    now = time.monotonic()
    assert j.view("top", _d(0, False, now), key=7) == 7
    assert j.view("side", _d(0, True, now), key=7) == 7           # both views: decided now
    assert j.view("top", _d(1, False, now), key=7) == 7           # a view after its part was decided
    j.view("top", _d(2, False, now), key=8)
    j.view("side", _d(1, False, now), key=8)
    j.view("side", _d(2, False, now), key=9)                      # top never sees part 9
    j.close()
    line.close()
    parts = {d["part"]: d for k, d in seen if k == "part"}
    assert parts[7]["reject"] and parts[7]["reason"] == "any:side" and parts[7]["views"] == {"top": [0], "side": [0]}
    assert not parts[8]["reject"] and parts[8]["missing"] == []
    assert parts[9]["reject"] and parts[9]["missing"] == ["top"] and parts[9]["reason"].startswith("failsafe")
    assert [k for k, _ in seen].count("view_after_part") == 1
    verdicts = [(v["seq"], v["reject"]) for v in LINES["part-ejector"].verdicts]
    assert sorted(verdicts) == [(7, True), (8, False), (9, True)]  # once per part
    assert j.stats()["failsafe"] == 1


def test_parts_matched_by_capture_time():
    seen = []
    j = PartJoiner(PartsConfig(cameras=("a", "b"), tolerance_ms=30, deadline_ms=60000), None,
                   lambda k, d: seen.append(d) if k == "part" else None)
    t = 1000.0
    n1 = j.view("a", _d(0, False, t))
    n2 = j.view("a", _d(1, False, t + 0.1))        # the next part on camera a
    assert j.view("b", _d(0, True, t + 0.01)) == n1
    assert j.view("b", _d(1, False, t + 0.12)) == n2 != n1
    j.close()
    assert [(d["part"], d["reject"]) for d in seen] == [(n1, True), (n2, False)]


# ---- three real cameras ------------------------------------------------------------------------
def _median_score(bundle, uri, roi):
    """The median score of a few frames of a test source: a threshold that passes some views and rejects others."""
    from edge.runtime.preprocess import Preprocessor
    from edge.sources import open_source
    b = Bundle(bundle)
    pre = Preprocessor(*b.input_hw, roi)
    engine = OrtEngine(b.graph_path())
    src = open_source(uri).start()
    try:
        frames = [src.read(timeout=10) for _ in range(9)]
    finally:
        src.close()
    scores = [float(engine.infer(pre(f.image)[None])[1][0]) for f in frames if f is not None]
    engine.close()
    return float(np.median(scores))


def test_three_cameras_one_lost_and_back_parts_joined(bundles, tmp_path, modbus_plc):  # noqa: F811
    from edge.outputs.memory import LINES
    from edge.runtime.run_cameras import build_pipeline, close_all, open_cameras
    from tests.gst_servers import RtspServer, free_port, require_gst
    require_gst("videotestsrc", "videoconvert", "appsink")
    server = RtspServer(port=free_port()).start()          # skips when GstRtspServer is missing
    shared, own = bundles
    db = str(tmp_path / "r.db")
    raw = {
        "bundle": shared, "engine": {"batch": 4}, "batch_wait_ms": 20, "status_every_s": 0.2,
        "records": {"db": db, "save": "none"},
        "cameras": [
            {"id": "top", "source": GST.format(p="ball", fps=10), "decision": {"threshold": 1e12}},
            {"id": "side", "source": GST.format(p="snow", fps=10), "roi": [20, 0, 120, 120]},
            {"id": "lane2", "bundle": own,
             "source": {"uri": server.url, "options": {"transport": "tcp", "latency_ms": 1, "stall_s": 2,
                                                       "reconnect": {"initial_s": 0.2, "max_s": 0.5}}},
             "line": {"timing": {"mode": "delay", "delay_ms": 300}, "failsafe": {"drain_ms": 0},
                      "outputs": [{"type": "memory"}]}},
        ],
        "parts": {"cameras": ["top", "side"], "deadline_ms": 400,
                  "id": {"source": "modbus", "host": "127.0.0.1", "port": modbus_plc.port, "register": 10,
                         "words": 1, "poll_ms": 2},
                  "line": {"timing": {"mode": "delay", "delay_ms": 1500}, "failsafe": {"drain_ms": 3000},
                           "outputs": [{"type": "memory", "name": "part-ejector"}]}},
    }
    raw["cameras"][1]["decision"] = {"threshold": _median_score(shared, GST.format(p="snow", fps=10), (20, 0, 120, 120))}
    cfg = validate(raw, str(tmp_path))
    stop_trigger = threading.Event()

    def trigger():                                    # the PLC counts parts, one every 300 ms
        client, n = modbus_plc.client(), 0
        try:
            while not stop_trigger.wait(0.3):
                n += 1
                client.write_register(10, n)
        finally:
            client.close()
    trig = threading.Thread(target=trigger, daemon=True)
    trig.start()
    opened = open_cameras(cfg)
    pipe = build_pipeline(cfg, opened)
    cams = {c.id: c for c in opened["cameras"]}
    store = opened["store"]
    store.start_run(shared, cfg.to_dict())

    def wait(cond, t=60):
        end = time.monotonic() + t
        while time.monotonic() < end and not cond():
            time.sleep(0.05)
        assert cond()
    try:
        pipe.start()
        wait(lambda: all(c.stats.decided >= 10 for c in cams.values()))
        server.stop()
        wait(lambda: cams["lane2"].stats.outages == 1)
        during = cams["top"].stats.decided
        wait(lambda: cams["top"].stats.decided >= during + 10)      # the others go on meanwhile
        assert cams["lane2"].lost
        before = cams["lane2"].stats.decided
        server.start()
        wait(lambda: cams["lane2"].stats.decided >= before + 10)
    finally:
        pipe.stop()
        pipe.join(timeout=60)
        stop_trigger.set()
        opened["joiner"].close()
        snap = pipe.snapshot()
        store.end_run(snap["total"])
        close_all(opened)
        server.stop()
    assert not pipe.errors
    recs = collections.defaultdict(dict)
    for seq, reject, part_id, extra in rows(db, "SELECT seq, reject, part_id, extra FROM records"):
        recs[json.loads(extra)["camera"]][seq] = (bool(reject), part_id)
    for cid in ("top", "side"):                           # every frame of the live cameras decided
        s = snap["cameras"][cid]
        assert s["decided"] == s["captured"] and s["dropped"] == 0 and s["outages"] == 0
        assert sorted(recs[cid]) == list(range(s["decided"]))
    assert not any(r for r, _ in recs["top"].values())
    assert snap["cameras"]["lane2"]["outages"] == 1 and len(recs["lane2"]) == snap["cameras"]["lane2"]["decided"]
    events = [(k, json.loads(d)) for k, d in rows(db, "SELECT kind, detail FROM events ORDER BY id")]
    lane2 = [k for k, d in events if d.get("camera") == "lane2"]
    assert "source_lost" in lane2 and "source_reopened" in lane2 and "line_fault" in lane2
    assert not any(k == "source_lost" and d.get("camera") != "lane2" for k, d in events)
    parts = [d for k, d in events if k == "part"]
    assert len(parts) >= 10 and len({p["part"] for p in parts}) == len(parts)       # once each
    complete = [p for p in parts if not p["missing"]]
    assert complete
    assert {p["reject"] for p in complete} == {True, False}                  # the views disagree at times
    for p in parts:
        views = {c: [recs[c][s][0] for s in seqs] for c, seqs in p["views"].items()}
        for c, seqs in p["views"].items():
            assert all(recs[c][s][1] == str(p["part"]) for s in seqs)          # each view names its part
        if p["missing"]:
            assert p["reject"] and p["reason"].startswith("failsafe")
        else:
            assert p["reject"] == any(any(v) for v in views.values())
    ejected = collections.Counter(v["seq"] for v in LINES["part-ejector"].verdicts)
    assert set(ejected) == {p["part"] for p in parts} and set(ejected.values()) == {1}


def test_edge_run_with_two_cameras_on_the_command_line(bundles, tmp_path):
    """`edge run` with a cameras: list: both cameras' frames decided, every record names its camera."""
    from tests.gst_servers import require_gst
    require_gst("videotestsrc", "videoconvert", "appsink")
    finite = "gst://videotestsrc num-buffers=12 pattern={p} ! video/x-raw,width=96,height=96 ! videoconvert ! appsink"
    cfg = {"bundle": bundles[0], "records": {"db": str(tmp_path / "r.db")}, "batch_wait_ms": 50,
           "cameras": [{"id": "left", "source": finite.format(p="ball")},
                       {"id": "right", "source": finite.format(p="smpte"), "decision": {"threshold": -1e12}}]}
    path = tmp_path / "run.yaml"
    path.write_text(json.dumps(cfg))
    res = edge("run", path, "--quiet")
    assert res.returncode == 0, res.stderr
    assert "summary left: 12 frames decided of 12 captured" in res.stdout
    assert "summary right: 12 frames decided of 12 captured, 12 rejected" in res.stdout
    got = collections.Counter(json.loads(e)["camera"] for (e,) in rows(tmp_path / "r.db", "SELECT extra FROM records"))
    assert got == {"left": 12, "right": 12}
    res = edge("run", path, "--source", "rtsp://x/y")
    assert res.returncode == 2 and "--source" in res.stderr


def test_the_documented_example_is_a_valid_configuration(tmp_path):
    import re
    import yaml
    text = open(os.path.join(os.path.dirname(PIPED), "..", "docs", "cameras.md")).read()
    cfg = validate(yaml.safe_load(re.search(r"```yaml\n(.*?)```", text, re.S).group(1)), str(tmp_path))
    assert [c.id for c in cfg.cameras] == ["top", "side", "lane2"]
    assert cfg.parts.id_source == "modbus" and cfg.parts.counter["register"] == 120
    assert cfg.cameras[2].run.line["outputs"][0]["name"] == "lane2.modbus[0]"
    assert cfg.bundle == "/opt/lineside/current" and cfg.records.db == "/var/lib/lineside/records.db"


def test_edge_check_reads_a_cameras_configuration(tmp_path):
    from edge.tools.check import _from_config
    path = tmp_path / "run.yaml"
    path.write_text(json.dumps({"bundle": "b", "records": {"db": "r.db"}, "view": {"port": 8088},
                                "cameras": [{"id": "a", "source": "rtsp://a/s"}]}))
    bundle, engine, db, url = _from_config(str(path))
    assert (bundle, db, url) == (str(tmp_path / "b"), str(tmp_path / "r.db"), "http://127.0.0.1:8088/healthz")
    assert engine["kind"] == "auto"


def test_live_page_shows_every_camera_and_the_parts(bundles, tmp_path):
    """A real `edge run` with three cameras and the live view: headless Chromium sees a tile per
    camera (its frame, figures and state), the part verdicts with their fail-safe, and the RTSP
    camera's outage on its own tile once it is stopped."""
    import signal
    import subprocess
    import sys
    import cv2
    from edge.common.status import RunStatus
    from tests.gst_servers import RtspServer, free_port, require_gst
    from tests.helpers import ROOT
    from tests.test_operator_screen import CHROMIUM, chromium, dot, figure, get, wait
    if CHROMIUM is None:
        pytest.skip("Debian's chromium is not installed")
    require_gst("videotestsrc", "videoconvert", "appsink")
    server = RtspServer(port=free_port()).start()          # skips when GstRtspServer is missing
    port = free_port()
    shared, own = bundles
    cfg = {"bundle": shared, "mode": "latest", "status_every_s": 0.5, "batch_wait_ms": 20,
           "records": {"db": str(tmp_path / "r.db"), "save": "none"}, "view": {"port": port},
           "cameras": [
               {"id": "top", "source": GST.format(p="ball", fps=10), "decision": {"threshold": 1e12}},
               {"id": "side", "source": GST.format(p="snow", fps=3), "decision": {"threshold": 1e12}},
               {"id": "lane2", "bundle": own, "decision": {"threshold": -1e12},
                "source": {"uri": server.url, "options": {"transport": "tcp", "latency_ms": 1, "stall_s": 2,
                                                          "reconnect": {"initial_s": 0.5, "max_s": 1}}}}],
           # side gives a view a third as often as top: top's other parts miss it at the deadline
           "parts": {"cameras": ["top", "side"], "deadline_ms": 300}}
    (tmp_path / "run.yaml").write_text(json.dumps(cfg))
    proc = subprocess.Popen([sys.executable, "-m", "edge.cli", "run", str(tmp_path / "run.yaml"), "--quiet"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"

    def status():
        code, body = get(base + "/status.json")
        return json.loads(body) if code == 200 else {}

    def ready():
        s = status().get("status") or {}
        return (len(s.get("cameras", [])) == 3 and all(c["frames"] > 0 for c in s["cameras"])
                and (s.get("parts") or {}).get("failsafe", 0) > 0)
    try:
        wait(lambda: get(base + "/healthz")[0] == 200, what="/healthz 200", proc=proc)
        wait(ready, what="every camera decided and a fail-safe part", proc=proc)
        st = RunStatus.from_dict(status()["status"])
        assert [c.id for c in st.cameras] == ["top", "side", "lane2"] and st.version == 2
        assert st.frames == sum(c.frames for c in st.cameras) and st.identity["cameras"] == 3
        assert {c.group for c in st.cameras if c.id != "lane2"} == {0} and st.cameras[2].group == 1
        assert any(p.failsafe and p.missing == ["side"] and p.reject for p in st.parts.recent)
        for cid in ("top", "side", "lane2"):
            code, jpeg = get(f"{base}/camera/{cid}.jpg")
            assert code == 200 and cv2.imdecode(np.frombuffer(jpeg, np.uint8), 1) is not None
        assert get(base + "/camera/nope.jpg")[0] == 404

        dom = chromium(base + "/?mode=snapshot", "--dump-dom")
        assert '<body class="multi">' in dom
        for cid in ("top", "side", "lane2"):
            assert dot(dom, f"tile_{cid}") == "dot ok" and figure(dom, f"tile_{cid}_state") == "streaming"
            assert re.match(r"[\d.]+ /s · [\d,]+ frames", figure(dom, f"tile_{cid}_figs")), cid
            assert f'id="tile_{cid}_img"' in dom and f'src="/camera/{cid}.jpg' in dom
        assert figure(dom, "tile_lane2_verdict").startswith("REJECT #")        # threshold below every score
        assert figure(dom, "tile_top_verdict").startswith("OK #")
        assert "REJECT (fail-safe)" in dom and "side missing" in dom and "failsafe:missing:side" in dom
        assert re.search(r'id="parts_counts">\(top \+ side: [\d,]+ decided', dom)
        shots = tmp_path / "screenshots"
        shots.mkdir()
        chromium(base + "/?mode=snapshot", f"--screenshot={shots / 'cameras-1366x768.png'}")

        server.stop()                                          # the RTSP camera goes away mid-run
        wait(lambda: get(base + "/healthz")[0] == 503, what="/healthz 503 after lane2 stopped")
        assert b"camera lost (lane2)" in get(base + "/healthz")[1]
        wait(lambda: json.loads(get(base + "/status.json")[1])["tiles"]["lane2"]["age_s"] > 2.5,
             what="lane2's last frame older than the page's 2 s")        # the page says its age past 2 s
        dom = chromium(base + "/?mode=snapshot", "--dump-dom")
        assert dot(dom, "tile_lane2") == "dot bad" and figure(dom, "tile_lane2_state") == "camera lost"
        assert 'class="tile lost" id="tile_lane2"' in dom and dot(dom, "tile_top") == "dot ok"
        assert re.search(r"last frame [\d.]+ s ago", figure(dom, "tile_lane2_lat"))
        chromium(base + "/?mode=snapshot", f"--screenshot={shots / 'cameras-lost-1366x768.png'}")
        print(f"\nscreenshots: {shots}")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            out, err = proc.communicate(timeout=60)
        finally:
            proc.kill()
            server.stop()
    assert proc.returncode == 0, err
    assert "live view on http://127.0.0.1" in err
    summary = json.loads(rows(tmp_path / "r.db", "SELECT summary FROM runs")[0][0])
    assert summary.pop("error") is None and summary.pop("batching")["engine_calls"] > 0
    final = RunStatus.from_dict(summary)                      # the records keep the status contract
    assert [c.id for c in final.cameras] == ["top", "side", "lane2"] and final.cameras[2].outages >= 1
    assert final.parts.parts > 0 and final.frames == sum(c.frames for c in final.cameras)
