"""Files written so that a crash or power cut never leaves a half-written one."""

import contextlib
import hashlib
import os
import shutil
import tempfile


def sha256_file(path, chunk=1 << 20):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            block = f.read(chunk)
            if not block:
                return h.hexdigest()
            h.update(block)


def _fsync_dir(path):
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_file(path):
    """Open a temporary file beside `path` for binary writing; on success fsync it and rename
    it over `path`; on an exception remove it and leave `path` as it was."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(folder)


def atomic_write_bytes(path, data):
    """Write `data` to `path` through a temporary file in the same folder, fsync, rename."""
    with atomic_file(path) as f:
        f.write(data)


def atomic_write_text(path, text):
    atomic_write_bytes(path, text.encode("utf-8"))


class StagedDir:
    """Build a folder beside its final place and move it there only when complete.

    with StagedDir(out) as tmp: ... write into tmp ...
    On an exception the staging folder is removed and `out` is untouched.
    An existing `out` is replaced only after the new one is complete.
    """

    def __init__(self, final_path):
        self.final = os.path.abspath(final_path)
        self.tmp = None

    def __enter__(self):
        parent = os.path.dirname(self.final)
        os.makedirs(parent, exist_ok=True)
        self.tmp = tempfile.mkdtemp(prefix="." + os.path.basename(self.final) + ".", suffix=".partial", dir=parent)
        return self.tmp

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return False
        old = None
        if os.path.exists(self.final):
            old = self.tmp + ".old"
            os.replace(self.final, old)
        os.replace(self.tmp, self.final)
        _fsync_dir(os.path.dirname(self.final))
        if old:
            shutil.rmtree(old, ignore_errors=True)
        return False


def json_default(o):
    """json.dumps(default=...) for numpy values and anything else (as its string)."""
    import numpy as np
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)
