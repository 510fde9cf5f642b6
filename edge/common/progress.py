"""Progress for long work: a bar on a terminal, a line every few seconds in a log."""

import logging
import sys
import time


class Progress:
    def __init__(self, label, total, stream=None, every_s=5.0):
        self.label = label
        self.total = max(1, int(total))
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.every_s = every_s
        self.t0 = time.monotonic()
        self.last = 0.0
        self.done = 0

    def __call__(self, done, total=None):
        if total:
            self.total = max(1, int(total))
        self.done = done
        now = time.monotonic()
        finished = done >= self.total
        if not finished and now - self.last < (0.1 if self.tty else self.every_s):
            return
        self.last = now
        frac = min(1.0, done / self.total)
        elapsed = now - self.t0
        eta = elapsed / frac - elapsed if frac > 0 else 0.0
        if self.tty:
            bar = "#" * int(frac * 24)
            self.stream.write(f"\r{self.label:<18} [{bar:<24}] {done}/{self.total} {elapsed:5.1f}s eta {eta:4.1f}s")
            if finished:
                self.stream.write("\n")
        else:
            self.stream.write(f"{self.label}: {done}/{self.total} ({elapsed:.1f}s)\n")
        self.stream.flush()


def say(msg):
    """A line of news about long work, through the logging setup (edge.common.logs)."""
    logging.getLogger("edge").info(msg)
