"""LineIO: the outputs, the reject schedule, the heartbeat and the fail-safe behind one object.

One slot per expected part: at the part's ejector time (capture + delay, or capture encoder
count + pulses) the slot looks at what is known about the part then - a verdict, none, or a
fault - and acts. Verdicts may come in any order; each part still fires in its own slot."""

import collections
import logging
import threading
import time

from ..common.errors import EdgeError
from .base import LATE
from .config import FAULT_KINDS, validate_line_config
from .failsafe import FailSafe
from .scheduler import Scheduler

log = logging.getLogger(__name__)


def _build_output(cfg, where, emit, reconnect):
    t = cfg["type"]
    if t == "memory":
        from .memory import MemoryLine
        return MemoryLine(cfg, where, emit)
    if t == "gpio":
        from .gpio import GpioOutput
        return GpioOutput(cfg, where, emit)
    if t == "modbus":
        from .modbus import ModbusOutput
        return ModbusOutput(cfg, where, emit, reconnect)
    if t == "opcua":
        from .opcua import OpcuaOutput
        return OpcuaOutput(cfg, where, emit, reconnect)
    if t == "mqtt":
        from .mqtt import MqttOutput
        return MqttOutput(cfg, where, emit, reconnect)
    from .serial_line import SerialOutput
    return SerialOutput(cfg, where, emit, reconnect)


def _build_encoder(cfg):
    if cfg["source"] == "memory":
        from .memory import MemoryEncoder
        return MemoryEncoder(cfg)
    if cfg["source"] == "gpio":
        from .gpio import GpioEncoder
        return GpioEncoder(cfg)
    from .modbus import ModbusEncoder
    return ModbusEncoder(cfg)


class _Part:
    __slots__ = ("seq", "t_capture", "encoder", "part_id", "t_slot", "decision")

    def __init__(self, seq, t_capture, encoder, part_id, t_slot):
        self.seq, self.t_capture, self.encoder, self.part_id = seq, t_capture, encoder, part_id
        self.t_slot, self.decision = t_slot, None


class LineIO:
    def __init__(self, cfg, where="line"):
        cfg = validate_line_config(cfg, where)     # idempotent: a normalised config passes as is
        self.cfg = cfg
        t = cfg["timing"]
        self.mode, self.pulse_s = t["mode"], t["pulse_ms"] / 1000
        self.delay_s = t["delay_ms"] / 1000 if (t["delay_ms"] or self.mode == "delay") else None
        self.pulses = t["pulses"]
        self.failsafe = FailSafe(cfg["failsafe"])
        self._lock = threading.RLock()
        self._events = []
        self.encoder = _build_encoder(t["encoder"]) if self.mode == "encoder" else None
        self.scheduler = Scheduler(spin_s=t["spin_ms"] / 1000, poll_s=t["poll_ms"] / 1000,
                                   encoder=self.encoder,
                                   encoder_bits=t["encoder"]["bits"] if self.encoder else 32,
                                   rt_priority=t["rt_priority"], emit=self._emit)
        io_opts = dict(cfg["reconnect"], rt_priority=max(0, t["rt_priority"] - 1))
        self.outputs = [_build_output(o, f"{where}.outputs[{i}]", self._emit, io_opts)
                        for i, o in enumerate(cfg["outputs"])]
        self._parts = {}                                   # seq -> _Part, until its slot
        self._done = collections.OrderedDict()             # seq -> (t_slot, action), recent
        self._active = 0                                   # reject pulses now on
        self._fault = None
        self._fault_since = None
        self._started = self._closed = False
        self._beat = 0
        self.counts = collections.Counter()

    # --- events ---------------------------------------------------------------------------
    def _emit(self, ev):
        ev.setdefault("t", time.time())
        with self._lock:
            self._events.append(ev)
            if len(self._events) > 100000:            # nobody is draining: keep the newest
                del self._events[:50000]
        self.counts[ev["kind"]] += 1
        for o in self.outputs:
            try:
                o.event(ev)
            except Exception:
                log.exception("line output %s: event", o.name)

    def events(self):
        with self._lock:
            out, self._events = self._events, []
        return out

    def _each(self, method, *args):
        for o in self.outputs:
            try:
                getattr(o, method)(*args)
            except Exception as e:
                log.error("line output %s: %s failed: %s", o.name, method, e)

    def telemetry(self, run_status):
        """Publish the run's status (a dict of edge.common.status.RunStatus) to the outputs
        that carry telemetry (MQTT)."""
        self._each("telemetry", run_status)

    # --- lifecycle ----------------------------------------------------------------------
    def start(self):
        started = []
        try:
            if self.encoder:
                self.encoder.start()
            for o in self.outputs:
                o.start()
                started.append(o)
        except BaseException:
            for o in started:
                try:
                    o.close()
                except Exception:
                    pass
            if self.encoder:
                self.encoder.close()
            raise
        self._started = True
        self._each("status", self.failsafe.status(True, None))
        self.scheduler.every(self.cfg["heartbeat_ms"] / 1000, self._heartbeat)
        self.scheduler.start()
        return self

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()

    def close(self):
        if self._closed or not self._started:
            self._closed = True
            return
        deadline = time.monotonic() + self.cfg["failsafe"]["drain_ms"] / 1000
        while time.monotonic() < deadline:
            with self._lock:
                if not self._parts and not self._active:
                    break
            time.sleep(0.002)
        self.scheduler.stop()
        with self._lock:
            left = sorted(self._parts)
            self._parts.clear()
            active, self._active = self._active, 0
        if active:
            self._each("pulse", False, None)
        if left:
            self._emit({"kind": "abandoned", "seqs": left[:100], "count": len(left),
                        "detail": "parts still before the ejector at close"})
        self._closed = True
        self._each("status", {"ready": False, "fault": self._fault is not None,
                              "fault_kind": self._fault, "stop_line": False, "reject_all": False})
        for o in self.outputs:
            try:
                o.close()
            except Exception as e:
                log.error("line output %s: close failed: %s", o.name, e)
        if self.encoder:
            self.encoder.close()

    # --- parts and verdicts ------------------------------------------------------------------
    def expect(self, seq, t_capture, encoder=None, part_id=None):
        """A frame was captured: the part's slot is booked now, verdict or not."""
        if self.mode == "encoder" and encoder is None:
            encoder = self.encoder.count()
        if self.mode == "plc" and self.delay_s is None:
            return                                  # the PLC owns the deadline
        t_slot = t_capture + self.delay_s if self.delay_s is not None else None
        with self._lock:
            if seq in self._parts or seq in self._done:
                return
            passed = (self.scheduler.encoder_distance(encoder) >= self.pulses if self.mode == "encoder"
                      else t_slot <= time.monotonic())
            if passed:                  # booked after its own slot: a pulse now would hit another part
                self._done[seq] = (t_slot, "slot_passed")
            else:
                self._parts[seq] = _Part(seq, t_capture, encoder, part_id, t_slot)
        if passed:
            self._emit({"kind": "late", "seq": seq, "part_id": part_id, "stage": "expect",
                        "detail": "the part had passed the ejector before it was booked"})
            return
        if self.mode == "encoder":
            self.scheduler.at_count(encoder, self.pulses, self._slot, seq)
        else:
            self.scheduler.at(t_slot, self._slot, seq)

    def decide(self, d):
        """A verdict: published now; the reject itself fires in the part's slot."""
        self.counts["verdicts"] += 1
        late = None
        with self._lock:
            part = self._parts.get(d.seq)
            if part is not None:
                part.decision = d
            elif d.seq in self._done:
                late = self._done[d.seq]
        if part is None and late is None and not (self.mode == "plc" and self.delay_s is None):
            self.expect(d.seq, d.t_capture, d.encoder, d.part_id)    # never expected: book it now
            with self._lock:
                part = self._parts.get(d.seq)
                if part is not None:
                    part.decision = d
                else:
                    late = self._done.get(d.seq)
        encoder = d.encoder if d.encoder is not None else (part.encoder if part else None)
        part_id = d.part_id if d.part_id is not None else (part.part_id if part else None)
        v = {"seq": d.seq, "part_id": part_id, "encoder": encoder, "reject": bool(d.reject),
             "code": 2 if d.reject else 1, "score": float(d.score), "reason": d.reason,
             "wall": d.wall, "late": late is not None}
        if late is not None:
            v["code"], v["reject"] = LATE, False          # informational: the part has gone
            t_slot, action = late
            self._emit({"kind": "late", "seq": d.seq, "part_id": part_id, "verdict_reject": bool(d.reject),
                        "late_ms": None if t_slot is None else round((time.monotonic() - t_slot) * 1000, 1),
                        "action": action})
        elif d.reject:
            self.counts["rejects"] += 1
        self._each("verdict", v)

    def _slot(self, seq):
        """Scheduler thread: the part is at the ejector (or, in plc mode, at its deadline)."""
        with self._lock:
            part = self._parts.pop(seq, None)
            if part is None:
                return
            d, fault = part.decision, self._fault
            reject, code, kind, reason = self.failsafe.at_slot(d, fault)
            if reject and self.mode != "plc":
                self._active += 1
            self._done[seq] = (part.t_slot, reason if not reject else f"reject:{reason}")
            while len(self._done) > 4096:
                self._done.popitem(last=False)
        if reject and self.mode != "plc":
            self.counts["pulses"] += 1
            for o in self.outputs:
                if o.inline:
                    o.pulse(True, seq)
            self.scheduler.at(time.monotonic() + self.pulse_s, self._pulse_off)
            for o in self.outputs:
                if not o.inline:
                    o.pulse(True, seq)
        if kind is None:
            return
        if kind == "failsafe_reject":
            self.counts["failsafe_rejects"] += 1
            self.counts["rejects"] += 1
        self._emit({"kind": kind, "seq": seq, "part_id": part.part_id, "reason": reason})
        if code is not None:
            self._each("verdict", {"seq": seq, "part_id": part.part_id, "encoder": part.encoder,
                                   "reject": reject, "code": code, "score": 0.0, "reason": reason,
                                   "wall": time.time(), "late": False})

    def _pulse_off(self):
        with self._lock:
            self._active -= 1
            off = self._active == 0
        if off:
            self._each("pulse", False, None)

    # --- health -----------------------------------------------------------------------------
    def _heartbeat(self):
        if self._fault is None and not self._closed:
            self._beat = (self._beat + 1) & 0xFFFF
            self._each("heartbeat", self._beat)

    def fault(self, kind, detail=""):
        """The inspector is unhealthy: heartbeat stops, fault bit, the configured action."""
        if kind not in FAULT_KINDS:
            raise EdgeError(f"must be one of {', '.join(FAULT_KINDS)}, got {kind!r}", "fault kind")
        with self._lock:
            if self._fault == kind:
                return
            first = self._fault is None
            self._fault = kind
            if first:
                self._fault_since = time.monotonic()
            pending = len(self._parts)
        self._emit({"kind": "fault", "fault": kind, "detail": str(detail),
                    "action": self.failsafe.on_fault, "pending": pending})
        self._each("status", self.failsafe.status(True, kind))

    def healthy(self):
        with self._lock:
            if self._fault is None:
                return
            kind, self._fault = self._fault, None
            dur = time.monotonic() - self._fault_since
        self._emit({"kind": "healthy", "after": kind, "fault_s": round(dur, 3)})
        self._each("status", self.failsafe.status(True, None))

    def stats(self):
        c = self.counts
        errs = sorted(self.scheduler.errors)
        out = {k: c[k] for k in ("verdicts", "rejects", "pulses", "late", "failsafe_rejects", "missed")}
        with self._lock:
            out["pending"] = len(self._parts)
        out.update(mode=self.mode, healthy=self._fault is None, fault=self._fault, heartbeat=self._beat,
                   gaps=c["plc_gap"] + c["output_gap"],
                   outputs={o.name: o.info() for o in self.outputs})
        if errs:
            out["timing_error_ms"] = {"p50": round(errs[len(errs) // 2] * 1000, 3),
                                      "p99": round(errs[int(len(errs) * 0.99)] * 1000, 3),
                                      "max": round(errs[-1] * 1000, 3)}
        return out
