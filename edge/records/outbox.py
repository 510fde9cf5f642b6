"""Records reach the plant: a store-and-forward outbox in the record store.

Each decision the store commits also gets an outbox row in the same transaction (store.py,
OUTBOX_SCHEMA). The Forwarder thread sends the rows oldest first to the plant's MQTT broker
(QoS 1, a row counts as sent once the broker acknowledged it) or an HTTP endpoint (POST, any
2xx counts), and deletes what was acknowledged. What could not be sent stays in the database:
across a broker outage, a restart or a crash of the box, and goes in order when the plant is
reachable again. Delivery is at least once (a message acknowledged just before a crash is
sent again); every message carries `seq`, the outbox sequence number (never reused), for the
plant to de-duplicate on.

    records:
      db: /var/lib/lineside/records.db
      forward:
        mqtt: {host: broker.plant, port: 1883, topic: lineside/line3/records, client_id: line3-records}
        # or http: {url: "https://mes.plant/api/inspections", timeout_s: 5}
        images: true          # flagged images too (base64 in the message)

Message (JSON): {"seq": 1234, "box": "line3-records", "decision": {run_id, seq, wall,
latency_ms, score, reject, reason, defect_area, threshold, part_id, encoder, engine,
image_path}, "image": {"name": "...", "type": "image/jpeg", "base64": "..."} (with images)}.
"""

import base64
import json
import logging
import os
import threading
import time
import urllib.error
import urllib.request

from ..common.errors import EdgeError
from ..common.validate import _bool, _known, _num, _str

log = logging.getLogger(__name__)


def validate_forward(d, where="records.forward"):
    """The forward section, checked: a dict with one of mqtt / http, and images."""
    if not isinstance(d, dict):
        raise EdgeError("must be a mapping with mqtt: or http:", where)
    _known(d, ("mqtt", "http", "images", "batch"), where)
    if ("mqtt" in d) == ("http" in d):
        raise EdgeError("give exactly one of mqtt: or http:", where)
    out = {"images": _bool(d, "images", where, False), "batch": _num(d, "batch", where, 1, 1000, 50)}
    if "mqtt" in d:
        m, w = d["mqtt"], f"{where}.mqtt"
        if not isinstance(m, dict):
            raise EdgeError("must be a mapping (host, port, topic...)", w)
        _known(m, ("host", "port", "topic", "client_id", "timeout_s"), w)
        out["mqtt"] = {"host": _str(m, "host", w, required=True), "port": _num(m, "port", w, 1, 65535, 1883),
                       "topic": _str(m, "topic", w, "lineside/records"),
                       "client_id": _str(m, "client_id", w, "lineside-records"),
                       "timeout_s": _num(m, "timeout_s", w, 0.1, 120, 5.0, float)}
    else:
        h, w = d["http"], f"{where}.http"
        if not isinstance(h, dict):
            raise EdgeError("must be a mapping (url, timeout_s)", w)
        _known(h, ("url", "timeout_s"), w)
        url = _str(h, "url", w, required=True)
        if not url.startswith(("http://", "https://")):
            raise EdgeError(f"must be an http:// or https:// URL, got {url!r}", f"{w}.url")
        out["http"] = {"url": url, "timeout_s": _num(h, "timeout_s", w, 0.1, 120, 5.0, float)}
    return out


class SendFailed(Exception):
    pass


class MqttSender:
    def __init__(self, cfg):
        import paho.mqtt.client as mqtt
        self.cfg = cfg
        self.box = cfg["client_id"]
        # a persistent session: messages in flight when the link drops are resent by paho too
        self._cl = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=cfg["client_id"], clean_session=False,
                               protocol=mqtt.MQTTv311)
        self._cl.reconnect_delay_set(1, 10)
        self._up = threading.Event()
        self._cl.on_connect = lambda c, u, flags, rc, props=None: self._up.set() if not rc.is_failure else None
        self._cl.on_disconnect = lambda *a: self._up.clear()
        self._started = False

    def send(self, body):
        if not self._started:
            try:
                self._cl.connect_async(self.cfg["host"], self.cfg["port"])
            except OSError as exc:
                raise SendFailed(f"MQTT broker {self.cfg['host']}:{self.cfg['port']}: {exc}") from None
            self._cl.loop_start()
            self._started = True
        if not self._up.wait(self.cfg["timeout_s"]):
            raise SendFailed(f"MQTT broker {self.cfg['host']}:{self.cfg['port']} not connected")
        info = self._cl.publish(self.cfg["topic"], body, qos=1)
        try:
            info.wait_for_publish(self.cfg["timeout_s"])
        except (RuntimeError, ValueError) as exc:
            raise SendFailed(f"MQTT publish: {exc}") from None
        if not info.is_published():
            raise SendFailed("MQTT broker did not acknowledge in time")

    def close(self):
        if self._started:
            self._cl.disconnect()
            self._cl.loop_stop()


class HttpSender:
    def __init__(self, cfg):
        self.cfg = cfg
        self.box = os.uname().nodename

    def send(self, body):
        req = urllib.request.Request(self.cfg["url"], data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=self.cfg["timeout_s"]) as resp:
                if not 200 <= resp.status < 300:
                    raise SendFailed(f"{self.cfg['url']} -> {resp.status}")
        except urllib.error.HTTPError as exc:
            raise SendFailed(f"{self.cfg['url']} -> {exc.code}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise SendFailed(f"{self.cfg['url']}: {getattr(exc, 'reason', exc)}") from None

    def close(self):
        pass


class Forwarder:
    """Sends the store's outbox, oldest first, one message at a time; retries with back-off."""

    def __init__(self, store, cfg, sender=None, retry_s=(0.5, 10.0)):
        self.store, self.cfg = store, cfg
        self.sender = sender or (MqttSender(cfg["mqtt"]) if "mqtt" in cfg else HttpSender(cfg["http"]))
        self.retry_s = retry_s
        self.sent = 0
        self.failures = 0
        self.last_error = None
        self._stop = threading.Event()
        self._thread = None

    def start(self):
        self._thread = threading.Thread(target=self._run, name="records-forward", daemon=True)
        self._thread.start()
        return self

    def message(self, seq, decision, image_path):
        msg = {"seq": seq, "box": self.sender.box, "decision": decision}
        if self.cfg.get("images") and image_path and os.path.isfile(image_path):
            with open(image_path, "rb") as f:
                data = f.read()
            msg["image"] = {"name": os.path.basename(image_path),
                            "type": "image/png" if image_path.endswith(".png") else "image/jpeg",
                            "base64": base64.b64encode(data).decode("ascii")}
        return json.dumps(msg, separators=(",", ":")).encode("utf-8")

    def step(self):
        """Send what is waiting, in order; stop at the first failure. Returns how many were sent."""
        n = 0
        for seq, decision, image in self.store.outbox_next(self.cfg.get("batch", 50)):
            self.sender.send(self.message(seq, decision, image))
            self.store.outbox_done(seq)
            self.sent += 1
            n += 1
        return n

    def _run(self):
        delay = self.retry_s[0]
        while not self._stop.is_set():
            try:
                n = self.step()
                delay = self.retry_s[0]
                if n == 0:
                    self._stop.wait(0.2)
            except SendFailed as exc:
                self.failures += 1
                if str(exc) != self.last_error:
                    log.warning("records forward: %s; kept in the outbox (%d waiting)", exc,
                                self.store.outbox_backlog())
                self.last_error = str(exc)
                self._stop.wait(delay)
                delay = min(delay * 2, self.retry_s[1])
            except Exception as exc:         # the store closing, a bad row: never the line's problem
                if self._stop.is_set():
                    break
                log.error("records forward: %s", exc)
                self._stop.wait(delay)

    def close(self, drain_s=2.0):
        """Stop; first try for up to `drain_s` to send what is left (the rest waits for the next run)."""
        end = time.monotonic() + drain_s
        while drain_s and time.monotonic() < end and self._thread is not None and self._thread.is_alive():
            try:
                if self.store.outbox_backlog() == 0:
                    break
            except Exception:
                break
            time.sleep(0.1)
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.sender.close()
