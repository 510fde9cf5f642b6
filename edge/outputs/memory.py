"""The in-process line: an output that records every edge, verdict, heartbeat and status with
its monotonic time. Tests and the benchmark read it back; GPIO's `memory` backend uses the
same pins. Also an in-process encoder whose count a test or simulator sets."""

import threading
import time

from .base import Output

LINES = {}   # name -> MemoryLine, so a test can find the line a run's YAML created


class MemoryPins:
    """Named digital lines that remember every change: [(t, line, value)]."""

    def __init__(self):
        self.lock = threading.Lock()
        self.values = {}
        self.edges = []

    def set(self, line, value):
        t = time.monotonic()
        with self.lock:
            if self.values.get(line) != value:
                self.values[line] = value
                self.edges.append((t, line, value))

    def close(self):
        pass

    def pulses(self, line="reject"):
        """[(t_on, t_off or None)] of one line."""
        out = []
        with self.lock:
            for t, ln, v in self.edges:
                if ln != line:
                    continue
                if v:
                    out.append([t, None])
                elif out and out[-1][1] is None:
                    out[-1][1] = t
        return [tuple(p) for p in out]


class MemoryLine(Output):
    inline = True
    kind = "memory"

    def __init__(self, cfg, where, emit):
        super().__init__(cfg, where, emit)
        self.pins = MemoryPins()
        self.lock = threading.Lock()
        self.verdicts, self.heartbeats, self.statuses, self.events_seen = [], [], [], []
        self.pulse_seqs = []
        LINES[self.name] = self

    def pulse(self, on, seq):
        self.pins.set("reject", bool(on))
        if on:
            with self.lock:
                self.pulse_seqs.append(seq)

    def pulses(self):
        return self.pins.pulses("reject")

    def verdict(self, v):
        with self.lock:
            self.verdicts.append(dict(v, t=time.monotonic()))

    def heartbeat(self, n):
        with self.lock:
            self.heartbeats.append((time.monotonic(), n))

    def status(self, s):
        with self.lock:
            self.statuses.append(dict(s, t=time.monotonic()))
        self.pins.set("fault", s["fault"])
        self.pins.set("stop_line", s["stop_line"])

    def event(self, ev):
        with self.lock:
            self.events_seen.append(ev)


class MemoryEncoder:
    """An encoder count set by a test or simulator (thread-safe by the GIL: one int)."""

    def __init__(self, cfg=None):
        self.value = 0

    def start(self):
        pass

    def count(self):
        return self.value

    def advance(self, n=1):
        self.value += n

    def close(self):
        pass
