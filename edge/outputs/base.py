"""The one interface every line output implements, and a base for outputs that talk over a
connection (a worker thread that does the I/O, reconnects with back-off and records gaps)."""

import collections
import logging
import queue
import threading
import time

from ..common.errors import EdgeError

log = logging.getLogger(__name__)

# Verdict codes written to PLCs (see docs/line-io.md).
NONE, ACCEPT, REJECT, FAILSAFE, LATE = 0, 1, 2, 3, 4
CODE_NAMES = {NONE: "none", ACCEPT: "OK", REJECT: "NG", FAILSAFE: "FS", LATE: "LATE"}
FAULT_CODES = {None: 0, "source": 1, "engine": 2, "queue": 3, "records": 4}


class Output:
    """An output to the line. LineIO calls these; `inline` outputs are called on the scheduler
    thread and must return in microseconds, the others only queue work for their own thread.

    verdict(v): v = {seq, part_id, encoder, code, reject, score, reason, wall, late}
    status(s):  s = {ready, fault, fault_kind, stop_line, reject_all}
    """
    inline = False
    kind = "output"

    def __init__(self, cfg, where, emit):
        self.cfg, self.where, self.emit = cfg, where, emit
        self.name = cfg.get("name", where)

    def start(self):
        pass

    def pulse(self, on, seq):
        pass

    def verdict(self, v):
        pass

    def heartbeat(self, n):
        pass

    def status(self, s):
        pass

    def telemetry(self, run_status):
        """The run's status (edge.common.status.RunStatus.to_dict()), every status period."""
        pass

    def event(self, ev):
        pass

    def close(self):
        pass

    def info(self):
        return {"connected": True}


class QueuedOutput(Output):
    """Work goes through a bounded queue to one worker thread. Subclasses implement
    _connect() (raise on failure), _disconnect(), _do(op, arg) (raise on a broken connection)
    and _resync() (write the whole current state after a reconnect). What is queued while the
    connection is down is dropped and counted; the state itself is kept by the subclass and
    rewritten on reconnect, so only pulse edges and intermediate values are lost."""
    gap_kind = "output_gap"
    address = "?"

    def __init__(self, cfg, where, emit, reconnect):
        super().__init__(cfg, where, emit)
        self._q = queue.Queue(maxsize=2000)
        self._min = reconnect["min_ms"] / 1000
        self._max = reconnect["max_ms"] / 1000
        self._rt = reconnect.get("rt_priority", 0)
        self._connected = False
        self._thread = None
        self.dropped = 0
        self.gaps = 0
        self.latency = collections.deque(maxlen=20000)   # seconds per _do(): the write itself
        self.delay = collections.deque(maxlen=20000)     # seconds from submit() to written

    # --- called by subclasses ---------------------------------------------------------
    def submit(self, op, arg=None):
        try:
            self._q.put_nowait((op, arg, time.perf_counter()))
        except queue.Full:
            self.dropped += 1

    # --- lifecycle ----------------------------------------------------------------------
    def start(self):
        try:
            self._connect()
        except EdgeError:
            raise
        except Exception as e:
            raise EdgeError(f"cannot reach {self.kind} at {self.address}: {e}", self.where) from None
        self._check()
        self._connected = True
        self._thread = threading.Thread(target=self._run, name=f"line-{self.name}", daemon=True)
        self._thread.start()

    def _check(self):
        """After the first connect: verify the far side has what we need (raise EdgeError)."""

    def close(self, timeout=2.0):
        if self._thread is None:
            return
        self._q.put(("_stop", None, 0.0))
        self._thread.join(timeout)
        self._thread = None
        try:
            self._disconnect()
        except Exception as e:  # closing is best effort
            log.debug("%s: close: %s", self.name, e)

    def info(self):
        return {"connected": self._connected, "dropped": self.dropped, "gaps": self.gaps}

    # --- the worker ---------------------------------------------------------------------
    def _run(self):
        from .scheduler import set_rt_priority
        set_rt_priority(self._rt)          # the scheduler already reported a refusal
        backoff, next_try, gap_since, dropped_at_gap = self._min, 0.0, None, 0
        while True:
            timeout = None if self._connected else max(0.0, next_try - time.monotonic())
            try:
                op, arg, t_submit = self._q.get(timeout=timeout)
            except queue.Empty:
                op = arg = None
            if op == "_stop":
                return
            if not self._connected and time.monotonic() >= next_try:
                try:
                    self._connect()
                    self._resync()
                    gap = time.time() - gap_since
                    self.emit({"kind": "reconnected", "output": self.name, "address": self.address,
                               "gap_s": round(gap, 3), "dropped": self.dropped - dropped_at_gap})
                    self._connected = True
                    backoff = self._min
                except Exception as e:
                    self._connected = False
                    self._safe_disconnect()
                    log.debug("%s: reconnect failed: %s", self.name, e)
                    next_try = time.monotonic() + backoff
                    backoff = min(backoff * 2, self._max)
            if op is None:
                continue
            if not self._connected:
                self.dropped += 1
                continue
            t0 = time.perf_counter()
            try:
                self._do(op, arg)
                t1 = time.perf_counter()
                self.latency.append(t1 - t0)
                self.delay.append(t1 - t_submit)
            except Exception as e:
                self._connected = False
                self.gaps += 1
                self.dropped += 1
                gap_since, dropped_at_gap = time.time(), self.dropped
                self._safe_disconnect()
                self.emit({"kind": self.gap_kind, "output": self.name, "address": self.address,
                           "error": f"{type(e).__name__}: {e}"})
                backoff, next_try = self._min, time.monotonic() + self._min

    def _safe_disconnect(self):
        try:
            self._disconnect()
        except Exception:
            pass
