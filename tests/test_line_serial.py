"""The serial output through a socat pseudo-terminal pair: the box writes one side, the test
reads the other as a simple PLC or stack light would."""

import time

from edge.outputs import LineIO
from edge.runtime.types import Decision

from tests.line_servers import pty_pair, wait_until  # noqa: F401 (fixture)


def test_lines_on_the_wire(pty_pair):
    import serial
    box, plc = pty_pair
    far = serial.Serial(plc, 9600, timeout=0.05)
    got = []

    def lines():
        got.extend(x.decode().rstrip("\r\n") for x in far.readlines())
        return got

    io = LineIO({"timing": {"delay_ms": 20, "pulse_ms": 10}, "heartbeat_ms": 50,
                 "outputs": [{"type": "serial", "port": box, "baud": 9600,
                              "messages": {"heartbeat": "", "verdict": "V{seq}:{verdict}:{part_id}"}}]}).start()
    t0 = time.monotonic()
    io.expect(5, t0, part_id="B5")
    io.decide(Decision(5, t0, time.time(), 0.9, True, "score"))
    assert wait_until(lambda: "R0" in lines(), 5)
    io.fault("source", "camera gone")
    io.healthy()
    io.close()
    wait_until(lambda: lines()[-1:] == ["S OFF"], 3)
    far.close()
    assert got == ["S READY", "V5:NG:B5", "R1", "R0", "S FAULT", "S READY", "S OFF"]
