"""MQTT against Debian's mosquitto on loopback: retained status, QoS 1 verdicts and events,
and the last will when the box dies."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from edge.common.errors import EdgeError
from edge.outputs import LineIO
from edge.runtime.types import Decision

from tests.line_servers import (MQTT_USER, MqttWatcher, free_port, mosquitto, mosquitto_tls,  # noqa: F401
                                wait_until)

PREFIX = "plant/line3/box"


def cfg(port, **over):
    o = dict({"type": "mqtt", "host": "127.0.0.1", "port": port, "topic_prefix": PREFIX,
              "client_id": "box-under-test"}, **over)
    return {"timing": {"delay_ms": 30, "pulse_ms": 5}, "heartbeat_ms": 50, "outputs": [o]}


def test_status_verdicts_events_and_offline_on_close(mosquitto):
    w = MqttWatcher(mosquitto, PREFIX + "/#")
    io = LineIO(cfg(mosquitto)).start()
    t0 = time.monotonic()
    io.expect(1, t0, part_id="P-1")
    io.decide(Decision(1, t0, time.time(), 0.8, True, "score", part_id="P-1"))
    io.expect(2, t0)                                     # never decided: fail-safe
    assert wait_until(lambda: len(w.on(PREFIX + "/event")) >= 1 and len(w.on(PREFIX + "/heartbeat")) >= 2, 5)
    io.fault("engine", "TensorRT error")
    io.close()
    assert wait_until(lambda: any(json.loads(p)["state"] == "offline" for p, _ in w.on(PREFIX + "/status")), 5)
    w.close()
    states = [json.loads(p)["state"] for p, _ in w.on(PREFIX + "/status")]
    assert states[0] == "online" and "fault" in states and states[-1] == "offline"
    verdicts = [json.loads(p) for p, _ in w.on(PREFIX + "/verdict")]
    assert [(v["seq"], v["verdict"], v["part_id"]) for v in verdicts] == [(1, "NG", "P-1"), (2, "FS", None)]
    events = [json.loads(p)["kind"] for p, _ in w.on(PREFIX + "/event")]
    assert events[:2] == ["failsafe_reject", "fault"]
    # a newcomer sees the retained status
    late = MqttWatcher(mosquitto, PREFIX + "/status")
    assert wait_until(lambda: late.on(PREFIX + "/status"), 5)
    p, retained = late.on(PREFIX + "/status")[0]
    assert retained and json.loads(p)["state"] == "offline"
    late.close()


BOX = """
import sys, time
from edge.outputs import LineIO
io = LineIO({"timing": {"delay_ms": 30}, "outputs": [{"type": "mqtt", "host": "127.0.0.1",
             "port": int(sys.argv[1]), "topic_prefix": sys.argv[2], "keepalive_s": 1}]}).start()
print("up", flush=True)
time.sleep(60)
"""


def test_last_will_marks_the_box_offline_when_it_dies(mosquitto):
    w = MqttWatcher(mosquitto, PREFIX + "/status")
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    box = subprocess.Popen([sys.executable, "-c", BOX, str(mosquitto), PREFIX], stdout=subprocess.PIPE,
                           text=True, env=env)
    try:
        assert box.stdout.readline().strip() == "up"
        assert wait_until(lambda: w.on(PREFIX + "/status"), 5)
        box.send_signal(signal.SIGKILL)                 # no clean disconnect: the broker sends the will
        box.wait(5)
        assert wait_until(lambda: json.loads(w.on(PREFIX + "/status")[-1][0])["state"] == "offline", 10)
    finally:
        box.kill()
        w.close()


def test_unreachable_broker_is_an_error_naming_host_and_port():
    port = free_port()
    with pytest.raises(EdgeError, match=rf"line.outputs\[0\]: cannot reach the MQTT broker at 127.0.0.1:{port}"):
        LineIO(cfg(port)).start()


# --- TLS ----------------------------------------------------------------------------------------
def tls_cfg(b, **over):
    o = {"type": "mqtt", "host": "127.0.0.1", "port": b.port, "topic_prefix": PREFIX,
         "username": MQTT_USER[0], "password_env": "TEST_MQTT_PASSWORD",
         "tls": {"ca_file": b.ca, "cert_file": b.client[0], "key_file": b.client[1]}}
    o.update(over)
    return {"timing": {"delay_ms": 30, "pulse_ms": 5}, "heartbeat_ms": 50, "outputs": [o]}


def test_tls_with_client_certificate_delivers_rejects(mosquitto_tls, monkeypatch):
    b = mosquitto_tls
    monkeypatch.setenv("TEST_MQTT_PASSWORD", MQTT_USER[1])
    w = MqttWatcher(b.port, PREFIX + "/verdict", tls=(b.ca, *b.client), auth=MQTT_USER)
    io = LineIO(tls_cfg(b)).start()
    t0 = time.monotonic()
    io.expect(5, t0, part_id="P-5")
    io.decide(Decision(5, t0, time.time(), 0.9, True, "score", part_id="P-5"))
    assert wait_until(lambda: w.on(PREFIX + "/verdict"), 5)
    stats = json.dumps(io.stats(), default=str)
    io.close()
    w.close()
    v = json.loads(w.on(PREFIX + "/verdict")[0][0])
    assert (v["seq"], v["verdict"], v["part_id"]) == (5, "NG", "P-5")
    assert MQTT_USER[1] not in stats and MQTT_USER[1] not in repr(io.cfg)


def test_tls_broker_signed_by_another_ca_is_refused(mosquitto_tls, monkeypatch):
    b = mosquitto_tls
    monkeypatch.setenv("TEST_MQTT_PASSWORD", MQTT_USER[1])
    bad = tls_cfg(b, tls={"ca_file": b.other_ca, "cert_file": b.client[0], "key_file": b.client[1]})
    with pytest.raises(EdgeError) as e:
        LineIO(bad).start()
    msg = str(e.value)
    assert msg.startswith(rf"line.outputs[0].tls: refused the MQTT broker at 127.0.0.1:{b.port}: its "
                          f"certificate does not verify against {b.other_ca}")
    assert "\n" not in msg and MQTT_USER[1] not in msg


def test_tls_broker_certificate_for_another_name_is_refused(mosquitto_tls, monkeypatch):
    b = mosquitto_tls                 # its certificate names 127.0.0.1, not localhost
    monkeypatch.setenv("TEST_MQTT_PASSWORD", MQTT_USER[1])
    with pytest.raises(EdgeError, match=r"^line.outputs\[0\].tls: refused the MQTT broker at localhost:\d+: .*"
                                        r"\(Hostname mismatch, certificate is not valid for 'localhost'\)$"):
        LineIO(tls_cfg(b, host="localhost")).start()


def test_tls_wrong_password_is_refused_without_echoing_it(mosquitto_tls, monkeypatch):
    b = mosquitto_tls
    monkeypatch.setenv("TEST_MQTT_PASSWORD", "not-the-Pa55word")
    with pytest.raises(EdgeError, match=r"did not accept the connection") as e:
        LineIO(tls_cfg(b, timeout_ms=2000)).start()
    assert "not-the-Pa55word" not in str(e.value)


def test_plain_listener_is_not_taken_for_tls(mosquitto, tmp_path):
    from tests.tls_certs import CA
    ca = CA(tmp_path)
    with pytest.raises(EdgeError, match=r"^line.outputs\[0\].tls: TLS with the MQTT broker at 127.0.0.1:\d+ failed"):
        LineIO(cfg(mosquitto, tls={"ca_file": ca.path})).start()


def test_telemetry_is_the_run_status_contract(mosquitto):
    from edge.common.status import Part, RunStatus
    st = RunStatus(frames=42, rejects=3, source=Part(True, "streaming"), identity={"bundle_id": "b1"})
    io = LineIO(cfg(mosquitto)).start()
    try:
        early = MqttWatcher(mosquitto, PREFIX + "/telemetry")
        io.telemetry(st.to_dict())
        assert wait_until(lambda: early.on(PREFIX + "/telemetry"), timeout=5)   # the broker has it now
        early.close()
        late = MqttWatcher(mosquitto, PREFIX + "/telemetry")          # retained: a late subscriber sees it
        assert wait_until(lambda: late.on(PREFIX + "/telemetry"), timeout=5)
        payload, retained = late.on(PREFIX + "/telemetry")[0]
        late.close()
    finally:
        io.close()
    assert retained and RunStatus.from_dict(json.loads(payload)) == st
