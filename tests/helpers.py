"""Small helpers shared by the tests."""

import os
import shutil
import sqlite3
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PIPED = os.path.join(ROOT, "data", "piped")


# The workstation's commands (torch, onnx's quantisation). Where the tests run in a runtime-only
# environment (numpy 1.x, no torch: `make test-runtime`), EDGE_TRAIN_PYTHON names the Python of
# a full one: bundles are made there and used here, as a workstation's are on a line-side box.
WORKSTATION_COMMANDS = ("train", "quantize")


def edge(*args, cwd=None, timeout=600, env=None):
    """Run the `edge` command in a child process; returns CompletedProcess with text output."""
    python = sys.executable
    if args and args[0] in WORKSTATION_COMMANDS:
        python = os.environ.get("EDGE_TRAIN_PYTHON") or python
    return subprocess.run([python, "-m", "edge.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd or ROOT, timeout=timeout, env=env)


def rows(db, sql):
    """The rows a query gives on a record store's SQLite file (read on a connection of its own)."""
    con = sqlite3.connect(db)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def tiny_copy(root, source, counts):
    """A small MVTec-layout copy of a real category: the first `counts[sub]` files of each
    subfolder of `source` (e.g. {"train/good": 12, "test/good": 2}); returns `root` as a str."""
    for sub, n in counts.items():
        os.makedirs(os.path.join(root, sub))
        for name in sorted(os.listdir(os.path.join(source, sub)))[:n]:
            shutil.copy(os.path.join(source, sub, name), os.path.join(root, sub, name))
    return str(root)
