"""The `line:` section: defaults, and errors that name the key at fault."""

import sys

import pytest

from edge.common.errors import EdgeError
from edge.outputs import LineIO, validate_line_config


def err(cfg):
    with pytest.raises(EdgeError) as e:
        validate_line_config(cfg)
    return str(e.value)


def test_defaults_and_idempotent():
    c = validate_line_config({"timing": {"delay_ms": 350}, "outputs": [{"type": "memory"}]})
    assert c["timing"]["mode"] == "delay" and c["timing"]["pulse_ms"] == 40
    assert c["failsafe"] == {"on_late": "reject", "on_fault": "reject_all", "drain_ms": 5000.0}
    assert c["heartbeat_ms"] == 500
    assert c["outputs"][0]["name"] == "memory[0]"
    assert validate_line_config(c) == c
    m = validate_line_config({"timing": {"delay_ms": 1},
                              "outputs": [{"type": "modbus", "host": "127.0.0.1"}]})["outputs"][0]
    assert (m["port"], m["unit"], m["reg_base"], m["coil_base"], m["coils"]) == (502, 1, 0, 0, True)


@pytest.mark.parametrize("cfg, message", [
    ({"timing": {"delay_ms": 1}, "outputs": [{"type": "memory"}, {"type": "modbus", "host": "h", "port": 99999}]},
     "line.outputs[1].port: must be 1..65535, got 99999"),
    ({"timing": {"delay_ms": 1}, "outputs": [{"type": "profibus"}]},
     "line.outputs[0].type: unknown output type 'profibus'"),
    ({"timing": {"delay_ms": 1}, "outputs": [{"type": "modbus", "host": "h", "reg_base": 65530}]},
     "line.outputs[0].reg_base: must be 0..65520, got 65530"),
    ({"timing": {"delay_ms": 1}, "outputs": [{"type": "modbus"}]}, "line.outputs[0].host: is required"),
    ({"timing": {"delay_ms": 1}, "outputs": [{"type": "modbus", "host": "h", "hots": 1}]},
     "line.outputs[0]: unknown key 'hots'"),
    ({"timing": {"mode": "delay"}}, "line.timing.delay_ms: is required in delay mode"),
    ({"timing": {"mode": "encoder"}}, "line.timing.pulses: is required"),
    ({"timing": {"mode": "warp"}}, "line.timing.mode: must be one of delay, encoder, plc"),
    ({"timing": {"delay_ms": 1}, "failsafe": {"on_fault": "panic"}}, "line.failsafe.on_fault: must be one of"),
    ({"timing": {"delay_ms": 1}, "outputs": [{"type": "opcua", "endpoint": "http://x"}]},
     "line.outputs[0].endpoint: must start with opc.tcp://"),
    ({"timing": {"delay_ms": 1}, "outputs": [{"type": "mqtt", "host": "h", "topic_prefix": "a/#"}]},
     "line.outputs[0].topic_prefix"),
    ({"timing": {"delay_ms": 1}, "outputs": [{"type": "gpio", "reject_line": 3, "fault_line": 3}]},
     "line.outputs[0]: the same line is used twice"),
    ({"timing": {"delay_ms": 1}, "outputs": [{"type": "serial", "port": "/dev/x", "messages": {"bogus": "x"}}]},
     "line.outputs[0].messages: unknown key 'bogus'"),
    ({"timing": {"delay_ms": 1}, "outputs": {"type": "memory"}}, "line.outputs: must be a list"),
    ({"timing": {"delay_ms": 1}, "outputs": [{"type": "memory", "name": "a"}, {"type": "memory", "name": "a"}]},
     "line.outputs[1].name: duplicate output name 'a'"),
    ({"timing": {"mode": "encoder", "pulses": 10, "encoder": {"source": "modbus", "host": "h"}}},
     "line.timing.encoder.register: is required"),
])
def test_bad_config_names_the_key(cfg, message):
    assert message in err(cfg)


def test_unreachable_backends_fail_at_start_with_a_clear_error(tmp_path):
    io = LineIO({"timing": {"delay_ms": 10},
                 "outputs": [{"type": "serial", "port": str(tmp_path / "no-such-tty")}]})
    with pytest.raises(EdgeError, match=r"line.outputs\[0\]: cannot reach serial port at .*no-such-tty"):
        io.start()
    io = LineIO({"timing": {"delay_ms": 10},
                 "outputs": [{"type": "gpio", "backend": "gpiod", "chip": str(tmp_path / "gpiochip9"),
                              "reject_line": 3}]})
    with pytest.raises(EdgeError, match=r"line.outputs\[0\]: .*gpiochip9"):
        io.start()


def test_edge_outputs_never_import_torch_and_import_backends_lazily():
    import subprocess
    code = ("import sys, edge.outputs, edge.outputs.memory, edge.outputs.gpio, edge.outputs.modbus, "
            "edge.outputs.mqtt, edge.outputs.opcua, edge.outputs.serial_line; "
            "assert 'torch' not in sys.modules; "
            "assert not {'pymodbus', 'asyncua', 'paho', 'serial', 'gpiod'} & set(sys.modules), sys.modules.keys()")
    subprocess.run([sys.executable, "-c", code], check=True)
