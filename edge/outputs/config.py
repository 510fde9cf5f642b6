"""Validation of the run YAML's `line:` section: every error names the key path at fault."""

import logging

from ..common.errors import EdgeError
from ..common.validate import _bool, _choice, _known, _num, _str
from .secrets import SUFFIXES, Secret, read_path, read_secret

log = logging.getLogger(__name__)

OUTPUT_TYPES = ("modbus", "opcua", "gpio", "mqtt", "serial", "memory")
FAULT_KINDS = ("source", "engine", "queue", "records")

# Modbus map sizes (see modbus.py and docs/line-io.md).
MODBUS_REGS = 16
MODBUS_COILS = 5

_SERIAL_TEMPLATES = {
    "verdict": "V {seq} {part_id} {verdict} {score:.3f}",
    "reject_on": "R1",
    "reject_off": "R0",
    "heartbeat": "H {n}",
    "status": "S {state}",
}


def _line(d, key, where, required=False):
    """A GPIO line: an offset (int) or a name / Jetson pin name (str)."""
    v = d.get(key)
    if v is None:
        if required:
            raise EdgeError("is required", f"{where}.{key}")
        return None
    if isinstance(v, bool) or not isinstance(v, (int, str)) or (isinstance(v, int) and v < 0):
        raise EdgeError(f"must be a line offset (>= 0) or a line name, got {v!r}", f"{where}.{key}")
    return v


PASSWORD_KEYS = {"password" + s for s in SUFFIXES}
OPCUA_POLICIES = ("Basic256Sha256", "Aes128Sha256RsaOaep", "Aes256Sha256RsaPss")


def _credentials(o, w, out, secure):
    """username / password* of an output; warns (once) when a password would travel in the clear."""
    was_secret = isinstance(o.get("password"), Secret)
    out["username"] = _str(o, "username", w)
    out["password"] = read_secret(o, "password", w)
    if out["password"] is not None and not out["username"]:
        raise EdgeError("a password needs a username", f"{w}.username")
    if out["password"] is not None and not secure and not was_secret:
        log.warning("%s: the password is sent without transport security (set %s); anyone on the "
                    "plant network can read it", w, "tls" if out["type"] == "mqtt" else "security")


def _mqtt_tls(t, w, base_dir):
    if t is None:
        return None
    _known(t, {"ca_file", "cert_file", "key_file", "key_credential"}, w)
    tls = {"ca_file": read_path(t, "ca", w, base_dir, required=True),
           "cert_file": read_path(t, "cert", w, base_dir),
           "key_file": read_path(t, "key", w, base_dir)}
    if (tls["cert_file"] is None) != (tls["key_file"] is None):
        raise EdgeError("a client certificate needs both cert_file and key_file (or key_credential)", w)
    return tls


def _opcua_security(sec, w, base_dir):
    if sec is None:
        return None
    _known(sec, {"policy", "mode", "certificate_file", "private_key_file", "private_key_credential",
                 "server_certificate_file"}, w)
    return {"policy": _choice(sec, "policy", w, OPCUA_POLICIES, "Basic256Sha256"),
            "mode": _choice(sec, "mode", w, ("Sign", "SignAndEncrypt"), "SignAndEncrypt"),
            "certificate_file": read_path(sec, "certificate", w, base_dir, required=True),
            "private_key_file": read_path(sec, "private_key", w, base_dir, required=True),
            "server_certificate_file": read_path(sec, "server_certificate", w, base_dir, required=True)}


def _modbus_conn(o, w):
    return {
        "host": _str(o, "host", w, required=True),
        "port": _num(o, "port", w, 1, 65535, 502),
        "unit": _num(o, "unit", w, 0, 255, 1),
        "timeout_ms": _num(o, "timeout_ms", w, 10, 60000, 1000),
    }


def _output(o, w, base_dir=None):
    if not isinstance(o, dict):
        raise EdgeError(f"must be a mapping with a 'type', got {o!r}", w)
    t = o.get("type")
    if t not in OUTPUT_TYPES:
        raise EdgeError(f"unknown output type {t!r} (known: {', '.join(OUTPUT_TYPES)})", f"{w}.type")
    out = {"type": t, "name": _str(o, "name", w, default=f"{t}{w[w.rfind('['):]}")}
    common = {"type", "name"}
    if t == "modbus":
        _known(o, common | {"host", "port", "unit", "timeout_ms", "reg_base", "coil_base", "coils"}, w)
        out.update(_modbus_conn(o, w))
        out["reg_base"] = _num(o, "reg_base", w, 0, 65536 - MODBUS_REGS, 0)
        out["coils"] = _bool(o, "coils", w, True)
        out["coil_base"] = _num(o, "coil_base", w, 0, 65536 - MODBUS_COILS, 0)
    elif t == "opcua":
        _known(o, common | {"endpoint", "node_prefix", "timeout_ms", "security", "username"} | PASSWORD_KEYS, w)
        ep = _str(o, "endpoint", w, required=True)
        if not ep.startswith("opc.tcp://"):
            raise EdgeError(f"must start with opc.tcp://, got {ep!r}", f"{w}.endpoint")
        out["endpoint"] = ep
        out["node_prefix"] = _str(o, "node_prefix", w, default="ns=2;s=Inspector.")
        out["timeout_ms"] = _num(o, "timeout_ms", w, 100, 60000, 2000)
        out["security"] = _opcua_security(o.get("security"), f"{w}.security", base_dir)
        _credentials(o, w, out, out["security"] is not None)   # the token is encrypted in both modes
    elif t == "gpio":
        _known(o, common | {"backend", "chip", "mode", "active_low", "reject_line", "heartbeat_line",
                            "fault_line", "stop_line", "ready_line"}, w)
        out["backend"] = _choice(o, "backend", w, ("gpiod", "jetson", "memory"), "gpiod")
        out["chip"] = _str(o, "chip", w, default="/dev/gpiochip0")
        out["mode"] = _choice(o, "mode", w, ("BOARD", "BCM", "CVM", "TEGRA_SOC"), "BOARD")
        out["active_low"] = _bool(o, "active_low", w, False)
        out["reject_line"] = _line(o, "reject_line", w, required=True)
        for k in ("heartbeat_line", "fault_line", "stop_line", "ready_line"):
            out[k] = _line(o, k, w)
        used = [v for k, v in out.items() if k.endswith("_line") and v is not None]
        if len(set(used)) != len(used):
            raise EdgeError(f"the same line is used twice: {used}", w)
    elif t == "mqtt":
        _known(o, common | {"host", "port", "topic_prefix", "qos", "client_id", "keepalive_s",
                            "username", "heartbeat", "timeout_ms", "tls"} | PASSWORD_KEYS, w)
        out["host"] = _str(o, "host", w, required=True)
        out["tls"] = _mqtt_tls(o.get("tls"), f"{w}.tls", base_dir)
        out["port"] = _num(o, "port", w, 1, 65535, 8883 if out["tls"] else 1883)
        prefix = _str(o, "topic_prefix", w, default="lineside/box")
        if not prefix or any(c in prefix for c in "#+") or prefix.endswith("/"):
            raise EdgeError(f"must be a topic without wildcards or a trailing '/', got {prefix!r}",
                            f"{w}.topic_prefix")
        out["topic_prefix"] = prefix
        out["qos"] = _num(o, "qos", w, 0, 2, 1)
        out["client_id"] = _str(o, "client_id", w, default="")
        out["keepalive_s"] = _num(o, "keepalive_s", w, 1, 3600, 10)
        _credentials(o, w, out, out["tls"] is not None)
        out["heartbeat"] = _bool(o, "heartbeat", w, True)
        out["timeout_ms"] = _num(o, "timeout_ms", w, 100, 60000, 3000)
    elif t == "serial":
        _known(o, common | {"port", "baud", "eol", "messages", "timeout_ms"}, w)
        out["port"] = _str(o, "port", w, required=True)
        out["baud"] = _num(o, "baud", w, 50, 4000000, 9600)
        out["eol"] = _str(o, "eol", w, default="\r\n")
        out["timeout_ms"] = _num(o, "timeout_ms", w, 10, 60000, 500)
        msgs = o.get("messages", {})
        _known(msgs, set(_SERIAL_TEMPLATES), f"{w}.messages")
        out["messages"] = dict(_SERIAL_TEMPLATES)
        for k, v in msgs.items():
            out["messages"][k] = _str(msgs, k, f"{w}.messages", default="") or ""
    else:  # memory
        _known(o, common, w)
    return out


def _encoder(e, w):
    _known(e, {"source", "bits", "backend", "chip", "line", "mode", "host", "port", "unit",
               "timeout_ms", "register", "words", "poll_ms"}, w)
    out = {"source": _choice(e, "source", w, ("memory", "gpio", "modbus"), "memory"),
           "bits": _num(e, "bits", w, 8, 64, 32)}
    if out["source"] == "gpio":
        out["backend"] = _choice(e, "backend", w, ("gpiod", "jetson"), "gpiod")
        out["chip"] = _str(e, "chip", w, default="/dev/gpiochip0")
        out["mode"] = _choice(e, "mode", w, ("BOARD", "BCM", "CVM", "TEGRA_SOC"), "BOARD")
        out["line"] = _line(e, "line", w, required=True)
    elif out["source"] == "modbus":
        out.update(_modbus_conn(e, w))
        out["words"] = _num(e, "words", w, 1, 2, 2)
        out["register"] = _num(e, "register", w, 0, 65536 - out["words"], None)
        out["poll_ms"] = _num(e, "poll_ms", w, 0.2, 1000, 2, float)
        out["bits"] = 16 * out["words"]
    return out


def validate_line_config(cfg, where="line", base_dir=None):
    """Check the `line:` section and return it normalised, with every default filled in.
    Relative certificate and key paths are taken from `base_dir` (the config file's folder);
    passwords become Secrets (edge/outputs/secrets.py)."""
    if cfg is None:
        cfg = {}
    _known(cfg, {"timing", "failsafe", "heartbeat_ms", "reconnect", "outputs"}, where)
    w = f"{where}.timing"
    t = cfg.get("timing", {}) or {}
    _known(t, {"mode", "delay_ms", "pulses", "pulse_ms", "encoder", "poll_ms", "spin_ms",
               "rt_priority"}, w)
    mode = _choice(t, "mode", w, ("delay", "encoder", "plc"), "delay")
    if mode == "delay" and t.get("delay_ms") is None:
        raise EdgeError("is required in delay mode", f"{w}.delay_ms")
    timing = {
        "mode": mode,
        # in plc mode delay_ms is the deadline for a verdict (0: no deadline, the PLC owns it)
        "delay_ms": _num(t, "delay_ms", w, 0, 600000, 0, float),
        "pulse_ms": _num(t, "pulse_ms", w, 1, 60000, 40, float),
        "poll_ms": _num(t, "poll_ms", w, 0.1, 100, 0.5, float),
        "spin_ms": _num(t, "spin_ms", w, 0, 20, 1.0, float),
        # SCHED_FIFO for the scheduler thread (and one less for the output threads), where
        # the box allows it (root or CAP_SYS_NICE); refused -> an `rt_denied` event, runs on
        "rt_priority": _num(t, "rt_priority", w, 0, 99, 10),
        "pulses": None,
        "encoder": None,
    }
    if mode == "encoder":
        timing["pulses"] = _num(t, "pulses", w, 1, 2**31 - 1, None)
        timing["encoder"] = _encoder(t.get("encoder", {}) or {}, f"{w}.encoder")
    w = f"{where}.failsafe"
    f = cfg.get("failsafe", {}) or {}
    _known(f, {"on_late", "on_fault", "drain_ms"}, w)
    failsafe = {
        "on_late": _choice(f, "on_late", w, ("reject", "ignore"), "reject"),
        "on_fault": _choice(f, "on_fault", w, ("reject_all", "stop_line", "fault_only"), "reject_all"),
        "drain_ms": _num(f, "drain_ms", w, 0, 600000, 5000, float),
    }
    w = f"{where}.reconnect"
    r = cfg.get("reconnect", {}) or {}
    _known(r, {"min_ms", "max_ms"}, w)
    reconnect = {"min_ms": _num(r, "min_ms", w, 10, 600000, 200, float)}
    reconnect["max_ms"] = _num(r, "max_ms", w, reconnect["min_ms"], 600000,
                               max(5000, reconnect["min_ms"]), float)
    outs = cfg.get("outputs", [])
    if not isinstance(outs, list):
        raise EdgeError(f"must be a list of outputs, got {type(outs).__name__}", f"{where}.outputs")
    outputs = [_output(o, f"{where}.outputs[{i}]", base_dir) for i, o in enumerate(outs)]
    names = [o["name"] for o in outputs]
    for i, n in enumerate(names):
        if n in names[:i]:
            raise EdgeError(f"duplicate output name {n!r}", f"{where}.outputs[{i}].name")
    return {
        "timing": timing,
        "failsafe": failsafe,
        "heartbeat_ms": _num(cfg, "heartbeat_ms", where, 10, 60000, 500, float),
        "reconnect": reconnect,
        "outputs": outputs,
    }
