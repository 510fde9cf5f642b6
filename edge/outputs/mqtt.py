"""MQTT (paho-mqtt 2.x) for telemetry and verdicts to the plant's systems.

Topics under `topic_prefix`: status (retained, QoS 1; the last will sets it offline),
verdict and event (QoS `qos`), telemetry (the run's status, edge.common.status,
retained, QoS 0), heartbeat (QoS 0, not retained). paho's own network thread
reconnects with back-off and queues QoS>0 messages meanwhile.

With `tls:` the broker must present a certificate that the configured CA signed and that names
the configured host (hostname verification is always on); TLS 1.2 at least. The password, if
any, is a Secret (secrets.py): revealed only to paho, never in a message."""

import json
import ssl
import threading
import time

from ..common.errors import EdgeError
from .base import CODE_NAMES, Output


def _status_payload(state, s=None):
    d = {"state": state, "t": time.time()}
    if s is not None:
        d.update(ready=s["ready"], fault=s["fault_kind"], stop_line=s["stop_line"],
                 reject_all=s["reject_all"])
    return json.dumps(d)


class MqttOutput(Output):
    kind = "MQTT broker"

    def __init__(self, cfg, where, emit, reconnect):
        super().__init__(cfg, where, emit)
        self.address = f"{cfg['host']}:{cfg['port']}"
        self._reconnect = reconnect
        self._up = threading.Event()
        self._connected = False
        self._closing = False
        self._gap_since = None
        self._last_status = _status_payload("online")
        self.gaps = 0
        p = cfg["topic_prefix"]
        self.topics = {k: f"{p}/{k}" for k in ("status", "verdict", "event", "heartbeat", "telemetry")}

    def start(self):
        try:
            import paho.mqtt.client as mqtt
        except ImportError as e:
            raise EdgeError(f"MQTT needs paho-mqtt 2.x: {e}", self.where) from None
        c = self.cfg
        cl = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=c["client_id"],
                         protocol=mqtt.MQTTv311)
        if c["tls"]:
            cl.tls_set_context(self._tls_context())
        if c["username"]:
            cl.username_pw_set(c["username"], c["password"].reveal() if c["password"] else None)
        cl.will_set(self.topics["status"], _status_payload("offline"), qos=1, retain=True)
        cl.reconnect_delay_set(max(1, int(self._reconnect["min_ms"] / 1000)),
                               max(1, int(self._reconnect["max_ms"] / 1000)))
        cl.max_queued_messages_set(10000)
        cl.on_connect = self._on_connect
        cl.on_disconnect = self._on_disconnect
        self._cl = cl
        try:
            cl.connect(c["host"], c["port"], keepalive=c["keepalive_s"])
        except ssl.SSLCertVerificationError as e:
            why = (e.verify_message or str(e)).rstrip(".")
            raise EdgeError(f"refused the MQTT broker at {self.address}: its certificate does not verify "
                            f"against {c['tls']['ca_file']} ({why})", f"{self.where}.tls") from None
        except (ssl.SSLError, ConnectionResetError) as e:
            if not c["tls"]:
                raise EdgeError(f"cannot reach the MQTT broker at {self.address}: {e}", self.where) from None
            raise EdgeError(f"TLS with the MQTT broker at {self.address} failed: "
                            f"{getattr(e, 'reason', None) or e.strerror or e} (does it listen with TLS on this port?)",
                            f"{self.where}.tls") from None
        except (OSError, ValueError) as e:
            raise EdgeError(f"cannot reach the MQTT broker at {self.address}: {e}", self.where) from None
        cl.loop_start()
        if not self._up.wait(c["timeout_ms"] / 1000) or not self._connected:
            cl.loop_stop()
            raise EdgeError(f"the MQTT broker at {self.address} did not accept the connection"
                            f" ({getattr(self, '_refusal', 'no answer')})", self.where)

    def _tls_context(self):
        t, w = self.cfg["tls"], f"{self.where}.tls"
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)     # verifies the chain and the hostname
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            ctx.load_verify_locations(cafile=t["ca_file"])
        except (ssl.SSLError, OSError) as e:
            raise EdgeError(f"{t['ca_file']} is not a PEM CA certificate ({getattr(e, 'reason', None) or e})",
                            f"{w}.ca_file") from None
        if t["cert_file"]:
            try:                                           # an encrypted key fails here, no prompt
                ctx.load_cert_chain(t["cert_file"], t["key_file"], password=lambda: b"")
            except (ssl.SSLError, OSError) as e:
                raise EdgeError(f"cannot use client certificate {t['cert_file']} with key {t['key_file']}"
                                f" ({getattr(e, 'reason', None) or e}; keys must be PEM and unencrypted)",
                                f"{w}.cert_file") from None
        return ctx

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        if reason_code.is_failure:
            self._refusal = str(reason_code)
            self._up.set()
            return
        self._connected = True
        client.publish(self.topics["status"], self._last_status, qos=1, retain=True)
        if self._gap_since is not None:
            self.emit({"kind": "reconnected", "output": self.name, "address": self.address,
                       "gap_s": round(time.time() - self._gap_since, 3)})
            self._gap_since = None
        self._up.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties):
        self._connected = False
        if self._closing or self._gap_since is not None:
            return
        self.gaps += 1
        self._gap_since = time.time()
        self.emit({"kind": "output_gap", "output": self.name, "address": self.address,
                   "error": str(reason_code)})

    def _pub(self, topic, payload, qos=None, retain=False):
        self._cl.publish(self.topics[topic], payload, qos=self.cfg["qos"] if qos is None else qos,
                         retain=retain)

    def verdict(self, v):
        d = dict(v, verdict=CODE_NAMES.get(v["code"], "?"))
        self._pub("verdict", json.dumps(d, default=str))

    def heartbeat(self, n):
        if self.cfg["heartbeat"]:
            self._pub("heartbeat", str(n), qos=0)

    def status(self, s):
        state = "fault" if s["fault"] else ("online" if s["ready"] else "stopped")
        self._last_status = _status_payload(state, s)
        self._pub("status", self._last_status, qos=1, retain=True)

    def telemetry(self, run_status):
        """The run's status contract (versioned JSON), retained: a dashboard that subscribes
        later sees the last one at once."""
        self._pub("telemetry", json.dumps(run_status, default=str), qos=0, retain=True)

    def event(self, ev):
        if ev.get("output") == self.name:
            return                     # our own gap: nothing to send it over
        self._pub("event", json.dumps(ev, default=str))

    def info(self):
        return {"connected": self._connected, "gaps": self.gaps}

    def close(self):
        self._closing = True
        try:
            info = self._cl.publish(self.topics["status"], _status_payload("offline"), qos=1, retain=True)
            if self._connected:
                info.wait_for_publish(timeout=2.0)
        except (RuntimeError, ValueError):
            pass
        self._cl.disconnect()
        self._cl.loop_stop()
