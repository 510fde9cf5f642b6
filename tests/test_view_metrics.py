"""/metrics: Prometheus' own parser (prometheus_client.parser) reads what the live view serves,
and the figures are those of the run's status; the token guards it off loopback."""

import base64
import json
import time
import urllib.error
import urllib.request

import pytest

from edge.common.errors import EdgeError
from edge.common.status import Part, Percentiles, RunStatus
from edge.runtime.types import Decision
from edge.view.server import LiveView

parser = pytest.importorskip("prometheus_client.parser", reason="prometheus-client is not installed")


def fetch(port, path, auth=None):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers={"Authorization": auth} if auth else {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read()


def test_metrics_are_read_by_the_prometheus_parser():
    st = RunStatus(frames=120, rejects=4, drops=2, late=1, faults=0, outages=1, fps=9.5, reject_rate=4 / 120,
                   latency_ms=Percentiles(30, 60, 90), source=Part(True, "streaming"), engine=Part(True, "onnxruntime"),
                   identity={"bundle_id": "pc-7f3a", "method": "patchcore", "engine": "onnxruntime",
                             "precision": "fp32", "version": "0.1.0"})
    with LiveView(port=0) as view:
        for i, lat in enumerate((0.004, 0.012, 0.04, 0.3, 7.0)):
            view.update(None, None, Decision(i, 0, time.time(), 0.1, False, "ok", lat, extra={"engine_ms": 8.0,
                                                                                               "batch": 2}), 0.5)
        view.set_status(st)
        code, headers, body = fetch(view.port, "/metrics")
    assert code == 200 and headers["Content-Type"].startswith("text/plain; version=0.0.4")
    fams = {f.name: f for f in parser.text_string_to_metric_families(body.decode())}
    value = {f.name: f.samples[0].value for f in fams.values() if f.type == "counter"}
    assert value == {"edge_frames": 120, "edge_rejects": 4, "edge_drops": 2, "edge_late": 1, "edge_faults": 0,
                     "edge_outages": 1}
    lat = {s.labels.get("le"): s.value for s in fams["edge_latency_seconds"].samples if s.name.endswith("_bucket")}
    assert fams["edge_latency_seconds"].type == "histogram"
    assert (lat["0.005"], lat["0.02"], lat["0.05"], lat["0.5"], lat["5"], lat["+Inf"]) == (1, 2, 3, 4, 4, 5)
    eng = {s.name: s.value for s in fams["edge_engine_seconds"].samples}
    assert eng["edge_engine_seconds_count"] == 5 and eng["edge_engine_seconds_sum"] == pytest.approx(0.02)
    info = fams["edge_info"].samples[0]
    assert info.labels == st.identity and info.value == 1
    assert fams["edge_up"].samples[0].value == 1
    parts = {s.labels["part"]: s.value for s in fams["edge_part_ok"].samples}
    assert parts == {"source": 1, "engine": 1, "line": -1}


def test_token_guards_everything_but_healthz():
    with LiveView(port=0, token="s3cret-t0ken") as view:
        view.set_status(RunStatus(source=Part(True, "streaming")))
        assert fetch(view.port, "/healthz")[0] == 200
        for path in ("/", "/status.json", "/metrics", "/snapshot.jpg", "/gallery.json"):
            code, headers, _ = fetch(view.port, path)
            assert code == 401 and headers["WWW-Authenticate"].startswith("Basic")
        assert fetch(view.port, "/metrics?token=s3cret-t0ken")[0] == 401        # never in the URL
        assert fetch(view.port, "/metrics", "Bearer wrong")[0] == 401
        assert fetch(view.port, "/metrics", "Bearer s3cret-t0ken")[0] == 200
        basic = "Basic " + base64.b64encode(b"operator:s3cret-t0ken").decode()
        assert fetch(view.port, "/status.json", basic)[0] == 200


def test_grafana_dashboard_uses_the_served_metrics():
    import json
    import os
    import re
    from tests.helpers import ROOT
    with open(os.path.join(ROOT, "deploy", "grafana", "lineside-edge.json")) as f:
        dash = json.load(f)
    exprs = " ".join(t["expr"] for p in dash["panels"] for t in p["targets"])
    used = set(re.findall(r"\bedge_[a-z_]+", exprs))
    served = {"edge_frames_total", "edge_rejects_total", "edge_drops_total", "edge_late_total", "edge_faults_total",
              "edge_outages_total", "edge_latency_seconds_bucket", "edge_engine_seconds_bucket", "edge_info",
              "edge_up", "edge_part_ok", "edge_fps", "edge_reject_rate"}
    assert used <= served and {"edge_latency_seconds_bucket", "edge_info", "edge_frames_total"} <= used


def test_view_off_loopback_needs_a_token_from_the_config(tmp_path, monkeypatch):
    from edge.common.errors import EdgeError
    from edge.runtime.config import validate
    base = {"bundle": str(tmp_path), "source": str(tmp_path)}
    with pytest.raises(EdgeError, match=r"^view.token: the live view on 0.0.0.0 \(not loopback\) needs a token"):
        validate(dict(base, view={"host": "0.0.0.0"}), str(tmp_path))
    assert validate(dict(base, view={}), str(tmp_path)).view.token is None
    monkeypatch.setenv("VIEW_TOKEN", "s3cret-t0ken")
    cfg = validate(dict(base, view={"host": "0.0.0.0", "token_env": "VIEW_TOKEN"}), str(tmp_path))
    assert cfg.view.token.reveal() == "s3cret-t0ken" and "s3cret" not in repr(cfg) + str(cfg.to_dict())
    view = LiveView(host="127.0.0.1", port=0, token=cfg.view.token)
    assert view.access() == "token required"


def test_edge_check_reads_the_status_contract():
    from edge.tools.check import CheckFailed, check_url
    with LiveView(port=0) as view:
        view.set_status(RunStatus(frames=1234, rejects=5, fps=9.87, source=Part(True, "streaming"),
                                  engine=Part(True, "onnxruntime")))
        out = check_url(f"http://127.0.0.1:{view.port}/healthz")
        assert out.endswith("-> 200 ok; 1,234 frames, 5 rejects, 0 drops, 0 late, 0 faults, 9.9 fps, "
                            "latency p95 0 ms; camera streaming, engine onnxruntime, line none"), out
        view.set_status(RunStatus(frames=1300, source=Part(False, "camera lost")))
        with pytest.raises(CheckFailed, match=r"-> 503 source: camera lost; 1,300 frames.*camera camera lost"):
            check_url(f"http://127.0.0.1:{view.port}/healthz")


def test_several_cameras_in_the_status_and_the_metrics():
    """Version 2 of the contract: cameras and parts survive the round trip through /status.json,
    /metrics names each camera; a status without them is still written as version 1."""
    from edge.common.status import CameraStatus, PartsStatus, PartVerdict
    single = RunStatus(frames=3)
    assert single.to_dict()["version"] == 1 and "cameras" not in single.to_dict()
    cams = [CameraStatus("top", frames=10, rejects=1, fps=4.5, source=Part(True, "streaming")),
            CameraStatus("side", frames=7, drops=2, outages=1, group=0, source=Part(False, "camera lost"))]
    parts = PartsStatus(cameras=["top", "side"], parts=5, rejects=2, failsafe=1,
                        recent=[PartVerdict(4, True, "failsafe:missing:side", {"top": [9]}, {"top": False}, ["side"], 400.0)])
    st = RunStatus(frames=17, cameras=cams, parts=parts, source=Part(False, "camera lost (side)"))
    d = json.loads(json.dumps(st.to_dict()))
    assert d["version"] == 2 and RunStatus.from_dict(d) == st
    assert RunStatus.from_dict(d).parts.recent[0].failsafe
    with pytest.raises(EdgeError, match=r"status.cameras\[\]: unknown keys colour"):
        RunStatus.from_dict(dict(d, cameras=[dict(d["cameras"][0], colour=1)]))
    with LiveView(port=0) as view:
        view.set_status(d)
        code, _, body = fetch(view.port, "/metrics")
    fams = {f.name: f for f in parser.text_string_to_metric_families(body.decode())}
    per = {(f.name, s.labels.get("camera")): s.value for f in fams.values() for s in f.samples if "camera" in s.labels}
    assert per[("edge_camera_frames", "top")] == 10 and per[("edge_camera_drops", "side")] == 2
    assert per[("edge_camera_source_ok", "side")] == 0 and per[("edge_camera_fps", "top")] == 4.5
    assert fams["edge_parts_failsafe"].samples[0].value == 1 and fams["edge_up"].samples[0].value == 0
