"""OPC UA against a real asyncua server on loopback holding the Inspector.* variables."""

import time

import pytest

from edge.common.errors import EdgeError
from edge.outputs import LineIO
from edge.runtime.types import Decision

from tests.line_servers import opcua_plc, wait_until  # noqa: F401 (fixture)


def cfg(endpoint, **over):
    return {"timing": {"delay_ms": 30, "pulse_ms": 5}, "heartbeat_ms": 50,
            "failsafe": {"on_fault": "stop_line"},
            "outputs": [dict({"type": "opcua", "endpoint": endpoint}, **over)]}


def test_variables_on_the_server(opcua_plc):
    n = opcua_plc.test_nodes
    io = LineIO(cfg(opcua_plc.endpoint)).start()
    assert wait_until(lambda: n["Heartbeat"].read_value() >= 2, 5)
    assert n["Ready"].read_value() is True and n["Fault"].read_value() is False
    t0 = time.monotonic()
    io.expect(11, t0, encoder=777, part_id="XJ-11")
    io.decide(Decision(11, t0, time.time(), 0.625, True, "score", encoder=777, part_id="XJ-11"))
    assert wait_until(lambda: n["VerdictCount"].read_value() == 1, 5)
    assert (n["LastSeq"].read_value(), n["LastPartId"].read_value(), n["LastEncoder"].read_value(),
            n["LastVerdict"].read_value(), n["LastScore"].read_value()) == (11, "XJ-11", 777, 2, 0.625)
    assert wait_until(lambda: io.stats()["pulses"] == 1, 2)
    io.fault("queue", "frame queue overflow")
    assert wait_until(lambda: n["Fault"].read_value(), 5)
    assert (n["Ready"].read_value(), n["StopLine"].read_value(), n["FaultCode"].read_value()) == (False, True, 3)
    hb = n["Heartbeat"].read_value()
    time.sleep(0.25)
    assert n["Heartbeat"].read_value() == hb
    io.close()
    assert n["Reject"].read_value() is False and n["RejectCount"].read_value() == 1


def test_missing_variable_or_server_is_an_error_at_start(opcua_plc):
    with pytest.raises(EdgeError, match=r"line.outputs\[0\].node_prefix: .* no usable variable ns=2;s=Box.Ready"):
        LineIO(cfg(opcua_plc.endpoint, node_prefix="ns=2;s=Box.")).start()
    with pytest.raises(EdgeError, match=r"line.outputs\[0\]: cannot reach OPC UA server at opc.tcp://127.0.0.1:9/"):
        LineIO(cfg("opc.tcp://127.0.0.1:9/", timeout_ms=500)).start()
