"""Reject signals to the line: Modbus TCP, OPC UA, GPIO, MQTT, serial, and an in-process line,
behind one object (LineIO) with a reject schedule, a heartbeat and a fail-safe.
See docs/line-io.md. Each backend's library is imported only when an output uses it."""

from .config import validate_line_config
from .lineio import LineIO

__all__ = ["LineIO", "validate_line_config"]
