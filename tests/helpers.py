"""Small helpers shared by the tests."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PIPED = os.path.join(ROOT, "data", "piped")


def edge(*args, cwd=None, timeout=600, env=None):
    """Run the `edge` command in a child process; returns CompletedProcess with text output."""
    return subprocess.run([sys.executable, "-m", "edge.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd or ROOT, timeout=timeout, env=env)
