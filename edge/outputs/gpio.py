"""GPIO outputs (a direct ejector or a PLC digital input) and a GPIO encoder input.

Backends are thin: `gpiod` (libgpiod v2 Python bindings), `jetson` (Jetson.GPIO) and
`memory` (the in-process line, for tests). Each is imported only when chosen."""

import threading

from ..common.errors import EdgeError
from .base import Output
from .memory import MemoryPins

ROLES = ("reject_line", "heartbeat_line", "fault_line", "stop_line", "ready_line")


class GpiodPins:
    def __init__(self, chip, lines, active_low, where):
        try:
            import gpiod
            from gpiod.line import Direction, Value
        except ImportError as e:
            raise EdgeError(f"backend gpiod (chip {chip}) needs the gpiod package (libgpiod v2): {e}",
                            where) from None
        self._on, self._off = Value.ACTIVE, Value.INACTIVE
        settings = gpiod.LineSettings(direction=Direction.OUTPUT, output_value=Value.INACTIVE,
                                      active_low=active_low)
        try:
            self._req = gpiod.request_lines(chip, consumer="lineside", config={tuple(lines): settings})
        except (OSError, ValueError) as e:
            raise EdgeError(f"cannot request lines {lines} on {chip}: {e}", where) from None

    def set(self, line, value):
        self._req.set_value(line, self._on if value else self._off)

    def close(self):
        self._req.release()


class JetsonPins:
    def __init__(self, mode, lines, active_low, where):
        try:
            import Jetson.GPIO as GPIO
        except (ImportError, RuntimeError) as e:
            raise EdgeError(f"backend jetson needs Jetson.GPIO on a Jetson: {e}", where) from None
        self._g, self._lines = GPIO, list(lines)
        self._hi, self._lo = (GPIO.LOW, GPIO.HIGH) if active_low else (GPIO.HIGH, GPIO.LOW)
        GPIO.setwarnings(False)
        GPIO.setmode(getattr(GPIO, mode))
        try:
            for ln in self._lines:
                GPIO.setup(ln, GPIO.OUT, initial=self._lo)
        except (ValueError, RuntimeError) as e:
            raise EdgeError(f"cannot set up pins {self._lines} ({mode}): {e}", where) from None

    def set(self, line, value):
        self._g.output(line, self._hi if value else self._lo)

    def close(self):
        self._g.cleanup(self._lines)


class GpioOutput(Output):
    """reject_line pulses; heartbeat_line toggles on every heartbeat (and so stops toggling when
    the inspector is unhealthy); fault_line, stop_line and ready_line follow the status."""
    inline = True
    kind = "gpio"

    def start(self):
        c = self.cfg
        self.lines = {r: c[r] for r in ROLES if c.get(r) is not None}
        if c["backend"] == "memory":
            self.pins = MemoryPins()
        elif c["backend"] == "gpiod":
            self.pins = GpiodPins(c["chip"], list(self.lines.values()), c["active_low"], self.where)
        else:
            self.pins = JetsonPins(c["mode"], list(self.lines.values()), c["active_low"], self.where)
        self._beat = False

    def _set(self, role, value):
        line = self.lines.get(role)
        if line is not None:
            self.pins.set(line, bool(value))

    def pulse(self, on, seq):
        self._set("reject_line", on)

    def heartbeat(self, n):
        self._beat = not self._beat
        self._set("heartbeat_line", self._beat)

    def status(self, s):
        self._set("fault_line", s["fault"])
        self._set("stop_line", s["stop_line"])
        self._set("ready_line", s["ready"])

    def close(self):
        for role in self.lines:
            self._set(role, False)
        self.pins.close()


class GpioEncoder:
    """Counts rising edges of an encoder line in a thread (gpiod) or a callback (Jetson)."""

    def __init__(self, cfg, where="line.timing.encoder"):
        self.cfg, self.where, self.value = cfg, where, 0
        self._stop = threading.Event()
        self._thread = None
        self._close = lambda: None

    def count(self):
        return self.value

    def start(self):
        c = self.cfg
        if c["backend"] == "jetson":
            try:
                import Jetson.GPIO as GPIO
            except (ImportError, RuntimeError) as e:
                raise EdgeError(f"backend jetson needs Jetson.GPIO on a Jetson: {e}", self.where) from None
            GPIO.setmode(getattr(GPIO, c["mode"]))
            GPIO.setup(c["line"], GPIO.IN)
            GPIO.add_event_detect(c["line"], GPIO.RISING, callback=self._tick)
            self._close = lambda: GPIO.cleanup(c["line"])
            return
        try:
            import gpiod
            from gpiod.line import Direction, Edge
        except ImportError as e:
            raise EdgeError(f"backend gpiod needs the gpiod package: {e}", self.where) from None
        settings = gpiod.LineSettings(direction=Direction.INPUT, edge_detection=Edge.RISING)
        try:
            req = gpiod.request_lines(c["chip"], consumer="lineside-encoder", config={c["line"]: settings})
        except (OSError, ValueError) as e:
            raise EdgeError(f"cannot request encoder line {c['line']} on {c['chip']}: {e}", self.where) from None

        def run():
            while not self._stop.is_set():
                if req.wait_edge_events(0.2):
                    self.value += len(req.read_edge_events())
            req.release()
        self._thread = threading.Thread(target=run, name="line-encoder", daemon=True)
        self._thread.start()

    def _tick(self, _channel):
        self.value += 1

    def close(self):
        self._stop.set()
        if self._thread:
            self._thread.join(1.0)
        self._close()
