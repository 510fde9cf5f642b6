"""Logging for the `edge` command, configured once by the CLI.

    text: the message alone (warnings and errors prefixed), as a person reads it on a terminal;
    json: one JSON object per line (time, level, logger, message, and `data` when a record
          carries it), for journald and log shippers (the systemd unit passes --log-format json).

Modules log through logging.getLogger(__name__); progress bars (edge.common.progress) are not
log records and stay on stderr as they are."""

import datetime
import json
import logging
import sys

FORMATS = ("text", "json")
PACKAGES = ("edge", "train", "convert")


class _Stderr(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the time (so redirections and test captures see it)."""

    def __init__(self):
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value):
        pass


class TextFormatter(logging.Formatter):
    def format(self, record):
        msg = record.getMessage()
        if record.levelno >= logging.WARNING and not msg.startswith(("warning", "error")):
            msg = f"{record.levelname.lower()}: {msg}"
        if record.exc_info:
            msg += "\n" + self.formatException(record.exc_info)
        return msg


class JsonFormatter(logging.Formatter):
    def format(self, record):
        doc = {"time": datetime.datetime.fromtimestamp(record.created, datetime.timezone.utc)
               .isoformat(timespec="milliseconds"),
               "level": record.levelname.lower(), "logger": record.name, "message": record.getMessage()}
        data = getattr(record, "data", None)
        if data is not None:
            doc["data"] = data
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


def setup(fmt="text", level=logging.INFO):
    """Send the toolkit's log records to stderr in `fmt`; calling it again replaces the setup."""
    handler = _Stderr()
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    for name in PACKAGES:
        logger = logging.getLogger(name)
        for old in [h for h in logger.handlers if isinstance(h, _Stderr)]:
            logger.removeHandler(old)
        logger.addHandler(handler)
        logger.setLevel(level)
        # This handler writes them; a root handler that an imported library sets up (onnxruntime's
        # quantization calls logging.basicConfig on import) would print every line twice.
        logger.propagate = False
    return handler
