"""A serial line (pyserial) for simple PLCs and stack lights: one ASCII line per message,
each from a configurable template (an empty template sends nothing)."""

from .base import CODE_NAMES, QueuedOutput


class SerialOutput(QueuedOutput):
    kind = "serial port"

    def __init__(self, cfg, where, emit, reconnect):
        super().__init__(cfg, where, emit, reconnect)
        self.address = cfg["port"]
        self._port = None
        self._state = "READY"

    def _connect(self):
        try:
            import serial
        except ImportError as e:
            raise RuntimeError(f"the serial output needs pyserial: {e}") from None
        t = self.cfg["timeout_ms"] / 1000
        self._port = serial.serial_for_url(self.cfg["port"], baudrate=self.cfg["baud"], timeout=t,
                                           write_timeout=t)

    def _disconnect(self):
        if self._port is not None:
            self._port.close()
            self._port = None

    def _do(self, op, line):
        self._port.write(line)
        self._port.flush()

    def _resync(self):
        self._send("status", direct=True, state=self._state)

    def _send(self, key, direct=False, **fields):
        tpl = self.cfg["messages"][key]
        if not tpl:
            return
        line = (tpl.format(**fields) + self.cfg["eol"]).encode("ascii", "replace")
        if direct:
            self._do("line", line)
        else:
            self.submit("line", line)

    def pulse(self, on, seq):
        self._send("reject_on" if on else "reject_off", seq=seq)

    def heartbeat(self, n):
        self._send("heartbeat", n=n)

    def verdict(self, v):
        self._send("verdict", seq=v["seq"], part_id=v["part_id"] if v["part_id"] is not None else "-",
                   verdict=CODE_NAMES.get(v["code"], "?"), score=v["score"] or 0.0,
                   encoder=v["encoder"] if v["encoder"] is not None else "-", reason=v["reason"])

    def status(self, s):
        self._state = "STOP" if s["stop_line"] else "FAULT" if s["fault"] else "READY" if s["ready"] else "OFF"
        self._send("status", state=self._state)
