"""Records reach the plant: the outbox in the record store, forwarded to a real mosquitto that is
stopped and restarted in the middle of an `edge run`, and to an HTTP endpoint that fails for a
while; what was not sent survives closing the store and goes, in order, on the next open."""

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from edge.common.errors import EdgeError
from edge.records.outbox import Forwarder, validate_forward
from edge.records.store import RecordStore
from edge.runtime.types import Decision
from tests.helpers import PIPED, ROOT, edge
from tests.line_servers import free_port, stop_process, wait_port, wait_until

IMPURITY = os.path.join(PIPED, "PA_BDP01_TL", "test", "impurity")


def decision(seq, reject=False):
    return Decision(seq, 0.0, time.time(), 0.9 if reject else 0.1, reject, "score" if reject else "ok", 0.02)


class Plant(BaseHTTPRequestHandler):
    """An HTTP endpoint that answers 503 while `down`, and keeps what it accepted."""
    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        code = 503 if self.server.down else 200
        if not self.server.down:
            self.server.got.append(json.loads(body))
        self.send_response(code)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *a):
        pass


@pytest.fixture
def plant():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Plant)
    srv.down, srv.got = True, []
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def test_http_outbox_keeps_order_across_outage_and_restart(plant, tmp_path):
    cfg = validate_forward({"http": {"url": f"http://127.0.0.1:{plant.server_port}/in", "timeout_s": 2},
                            "images": True})
    store = RecordStore(str(tmp_path / "r.db"), str(tmp_path / "img"), save="flagged", outbox=True)
    store.start_run(None, {})
    fw = Forwarder(store, cfg, retry_s=(0.05, 0.1)).start()
    for i in range(10):
        store.add(decision(i, reject=i % 3 == 0), *((__import__("numpy").zeros((32, 32, 3), "uint8"),
                                                     __import__("numpy").zeros((8, 8), "float32")) if i % 3 == 0 else (None, None)), 0.5)
    store.flush()
    wait_until(lambda: fw.failures >= 2, timeout=10)         # the plant is down: nothing leaves
    assert plant.got == [] and store.outbox_backlog() == 10
    fw.close(drain_s=0)
    store.close()                                           # the box restarts with 10 waiting

    store = RecordStore(str(tmp_path / "r.db"), str(tmp_path / "img"), save="flagged", outbox=True)
    store.start_run(None, {})
    plant.down = False
    fw = Forwarder(store, cfg, retry_s=(0.05, 0.1)).start()
    for i in range(10, 15):
        store.add(decision(i), None, None, 0.5)
    store.flush()
    assert wait_until(lambda: store.outbox_backlog() == 0, timeout=20)
    fw.close()
    store.close()
    assert [m["seq"] for m in plant.got] == list(range(1, 16))             # in order, once each here
    assert [m["decision"]["seq"] for m in plant.got] == list(range(15))
    with_image = [m for m in plant.got if "image" in m]
    assert [m["decision"]["seq"] for m in with_image] == [0, 3, 6, 9] and with_image[0]["image"]["base64"]


def test_forward_section_errors_name_the_key():
    with pytest.raises(EdgeError, match=r"records.forward: give exactly one of mqtt: or http:"):
        validate_forward({"images": True})
    with pytest.raises(EdgeError, match=r"records.forward.http.url: must be an http"):
        validate_forward({"http": {"url": "ftp://x"}})
    with pytest.raises(EdgeError, match=r"records.forward.mqtt.host: is required"):
        validate_forward({"mqtt": {"port": 1883}})


class Broker:
    """Debian's mosquitto on a fixed port, with persistence, stopped and started at will."""
    def __init__(self, tmp_path):
        self.exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        if not os.path.exists(self.exe):
            pytest.skip("mosquitto is not installed (Debian package mosquitto)")
        pytest.importorskip("paho.mqtt.client")
        self.port = free_port()
        self.conf = tmp_path / "mosquitto.conf"
        self.conf.write_text(f"user root\nlistener {self.port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
                             f"persistence_location {tmp_path}/\n")
        self.proc = None

    def start(self):
        self.proc = subprocess.Popen([self.exe, "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        assert wait_port(self.port), "mosquitto did not start"
        return self

    def stop(self):
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None


class Subscriber:
    """The plant's side: a persistent session (clean_session false), so the broker keeps its
    messages while it reconnects."""
    def __init__(self, port, topic):
        import paho.mqtt.client as mqtt
        self.got = []
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="plant-mes", clean_session=False,
                             protocol=mqtt.MQTTv311)
        self.c.reconnect_delay_set(0.2, 0.5)
        self.c.on_message = lambda c, u, m: self.got.append(json.loads(m.payload))
        ok = threading.Event()
        self.c.on_subscribe = lambda *a: ok.set()
        self.c.on_connect = lambda c, *a: c.subscribe(topic, qos=1)
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()
        assert ok.wait(5)

    def close(self):
        self.c.disconnect()
        self.c.loop_stop()


def test_mqtt_outbox_during_a_run_with_the_broker_restarted(tmp_path):
    broker = Broker(tmp_path).start()
    sub = Subscriber(broker.port, "plant/records")
    out = tmp_path / "bundle"
    res = edge("train", "--method", "padim", "--data", os.path.join(PIPED, "PA_BDP01_TL"), "--out", out,
               "--size", "96", "--no-eval")
    assert res.returncode == 0, res.stderr
    cfg = {"bundle": str(out), "source": {"uri": IMPURITY, "options": {"loop": True, "fps": 25}},
           "max_frames": 150, "status_every_s": 0.5,
           "records": {"db": str(tmp_path / "r.db"), "save": "flagged",
                       "forward": {"mqtt": {"host": "127.0.0.1", "port": broker.port, "topic": "plant/records",
                                            "client_id": "line3-records", "timeout_s": 2}}}}
    (tmp_path / "run.yaml").write_text(json.dumps(cfg))
    proc = subprocess.Popen([sys.executable, "-m", "edge.cli", "run", str(tmp_path / "run.yaml"), "--quiet"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert wait_until(lambda: len(sub.got) >= 20, timeout=90), "no records reached the plant"
        broker.stop()                                  # the plant's broker goes down mid-run
        time.sleep(2.0)
        during = len(sub.got)
        broker.start()
        out_, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert "kept in the outbox" in err                   # it noticed, and kept them
    # whatever the run could not send in its last seconds is sent by the next start
    store = RecordStore(str(tmp_path / "r.db"), str(tmp_path / "images"), outbox=True)
    fw = Forwarder(store, validate_forward(cfg["records"]["forward"])).start()
    assert wait_until(lambda: store.outbox_backlog() == 0, timeout=30)
    fw.close()
    store.close()
    assert wait_until(lambda: len({m["seq"] for m in sub.got}) >= 150, timeout=30)
    sub.close()
    broker.stop()
    seqs = [m["seq"] for m in sub.got]
    first = sorted(set(seqs), key=seqs.index)
    assert first == sorted(first) == list(range(1, 151))          # in order, nothing missing
    assert during < 150                                             # the outage happened mid-run
    frames = [m["decision"]["seq"] for m in sorted({m["seq"]: m for m in sub.got}.values(), key=lambda m: m["seq"])]
    assert frames == list(range(150))                               # every decision, by its frame
