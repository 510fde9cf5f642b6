"""Files written so that a crash or power cut never leaves a half-written one."""

import contextlib
import fcntl
import hashlib
import os
import shutil
import tempfile

from .errors import EdgeError


def read_limited(path, limit, what):
    """The bytes of a file of at most `limit` bytes; EdgeError naming the file for anything else
    (unreadable, or larger, without reading more than limit + 1 bytes)."""
    try:
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except OSError as exc:
        raise EdgeError(f"cannot read the {what}: {exc.strerror}", path) from None
    if len(data) > limit:
        size = f"{limit >> 20} MiB" if limit >= 1 << 20 else f"{limit} bytes"
        raise EdgeError(f"{what} is larger than {size}", path)
    return data


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
    A staging folder left by a process that died (kill -9, power cut) is removed by the next
    StagedDir of the same `out`; one that a live process still holds (an flock on its
    `.staging.lock`) is left alone.
    """

    LOCK = ".staging.lock"

    def __init__(self, final_path):
        self.final = os.path.abspath(final_path)
        self.tmp = None
        self._lockfd = None

    def __enter__(self):
        parent = os.path.dirname(self.final)
        os.makedirs(parent, exist_ok=True)
        self.tmp = tempfile.mkdtemp(prefix=self._prefix(), suffix=".partial", dir=parent)
        self._lockfd = os.open(os.path.join(self.tmp, self.LOCK), os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(self._lockfd, fcntl.LOCK_EX)
        self.removed_stale = self._remove_stale(parent)
        return self.tmp

    def _prefix(self):
        return "." + os.path.basename(self.final) + "."

    def _remove_stale(self, parent):
        removed = []
        for name in os.listdir(parent):
            path = os.path.join(parent, name)
            if (not name.startswith(self._prefix()) or path == self.tmp or not os.path.isdir(path)
                    or not (name.endswith(".partial")
                            # the previous `out` during the swap: only once `out` is there again
                            or (name.endswith(".partial.old") and os.path.isdir(self.final)))):
                continue
            try:
                fd = os.open(os.path.join(path, self.LOCK), os.O_RDONLY)
            except OSError:
                fd = None                               # no lock file: not being written
            try:
                if fd is not None:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue                                # a live process is building it
            finally:
                if fd is not None:
                    os.close(fd)
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
        return removed

    def _unlock(self):
        if self._lockfd is not None:
            os.close(self._lockfd)
            self._lockfd = None

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            self._unlock()
            return False
        try:
            os.unlink(os.path.join(self.tmp, self.LOCK))
        except FileNotFoundError:
            pass
        old = None
        try:
            if os.path.exists(self.final):
                old = self.tmp + ".old"
                os.replace(self.final, old)
            os.replace(self.tmp, self.final)
        finally:
            self._unlock()
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
