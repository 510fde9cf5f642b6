"""What the record store does when its disk fills up (`records.on_full`).

    failsafe  (default) the first write that finds the disk full trips the store: the run
              faults (the line's fail-safe acts, edge run exits 3), no image is written after,
              and the reserve is freed so that the decisions still in flight, the events and
              the run's end are written.
    degrade   the line keeps running. Images go first: no image is written while the disk
              holds less than the reserve (or after a write found it full; tried again every
              `retry_s`); rows go next, when a commit finds the disk full. Every dropped image
              and row is counted, the first and last dropped frame named, reported in an event
              `records_dropped` as soon as a commit succeeds again, and in the run's summary.

The reserve is a file of `reserve_bytes` next to the database (`<db>.reserve`), made when the
store opens for writing: a disk that cannot hold it refuses the run before it starts. It is
freed for the run's end (and, under failsafe, at the trip), and made again at the next open.
"""

import errno
import os
import shutil
import sqlite3
import threading
import time

from ..common.errors import EdgeError

POLICIES = ("failsafe", "degrade")
_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
_SQLITE_FULL = 13


def is_full(exc):
    """True for an error that means the disk (or the user's quota) is full."""
    if isinstance(exc, OSError):
        return exc.errno in _FULL_ERRNOS
    if isinstance(exc, sqlite3.Error):
        return getattr(exc, "sqlite_errorcode", None) == _SQLITE_FULL or "disk is full" in str(exc)
    return False


class FullDisk:
    def __init__(self, policy, db_path, images_dir, reserve_bytes=512 * 1024, retry_s=5.0):
        if policy not in POLICIES:
            raise EdgeError(f"must be one of {', '.join(POLICIES)}, got {policy!r}", "records.on_full")
        self.policy = policy
        self.reserve_path = db_path + ".reserve"
        self.images_dir = images_dir
        self.reserve_bytes = int(reserve_bytes)
        self.retry_s = float(retry_s)
        self.tripped = None                    # failsafe: what found the disk full first
        self.lock = threading.Lock()
        self.counts = {"images_dropped": 0, "rows_dropped": 0, "events_dropped": 0}
        self.first_seq = self.last_seq = None
        self.full_at = None                    # time.time() of the first full write
        self._unreported = 0
        self._images_off_until = 0.0
        self._next_free_check = 0.0

    # ---------------------------------------------------------------- the reserve

    def make_reserve(self):
        if not self.reserve_bytes:
            return
        try:
            if os.path.isfile(self.reserve_path) and os.path.getsize(self.reserve_path) >= self.reserve_bytes:
                return
            fd = os.open(self.reserve_path, os.O_WRONLY | os.O_CREAT, 0o600)
            try:
                os.posix_fallocate(fd, 0, self.reserve_bytes)
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            free = _free(os.path.dirname(self.reserve_path))
            try:
                os.unlink(self.reserve_path)
            except OSError:
                pass
            why = "disk full" if exc.errno in _FULL_ERRNOS else exc.strerror
            raise EdgeError(f"{why}: cannot keep {self.reserve_bytes // 1024} kB in reserve for the run's last "
                            f"records ({free // 1024} kB free)", self.reserve_path) from None

    def release(self):
        """Free the reserve (for the run's end; under failsafe at the trip). True if it was there."""
        try:
            os.unlink(self.reserve_path)
            return True
        except FileNotFoundError:
            return False

    # ---------------------------------------------------------------- decisions

    def images_paused(self):
        """True while images are not to be written: tripped, a write found the disk full less
        than `retry_s` ago, or the images' disk holds less than the reserve (checked once a second)."""
        if self.tripped:
            return True
        now = time.monotonic()
        if now < self._images_off_until:
            return True
        if self.images_dir and now >= self._next_free_check:
            self._next_free_check = now + 1.0
            if _free(self.images_dir) < self.reserve_bytes:
                self._images_off_until = now + 1.0
                return True
        return False

    def full(self, what, exc=None):
        """A write (`images` or `rows`) found the disk full: under failsafe, trip and free the
        reserve (True: the caller may try once more); under degrade, pause images."""
        with self.lock:
            if self.full_at is None:
                self.full_at = time.time()
            self._images_off_until = time.monotonic() + self.retry_s
            if self.policy == "failsafe" and self.tripped is None:
                self.tripped = f"{what}: {exc}" if exc is not None else what
                self.release()
                return True
        return False

    def dropped(self, kind, n, seqs=()):
        """Count `n` dropped `images_dropped` / `rows_dropped` / `events_dropped` (frames `seqs`)."""
        with self.lock:
            self.counts[kind] += n
            self._unreported += n
            for s in seqs:
                self.first_seq = s if self.first_seq is None else min(self.first_seq, s)
                self.last_seq = s if self.last_seq is None else max(self.last_seq, s)

    def unreported(self):
        """The counts for an event `records_dropped`, once, after drops since the last one."""
        with self.lock:
            if not self._unreported:
                return None
            self._unreported = 0
            return self.report()

    def report(self):
        out = dict(self.counts, on_full=self.policy, first_seq=self.first_seq, last_seq=self.last_seq,
                   full_at=self.full_at)
        if self.tripped:
            out["tripped"] = self.tripped
        return out

    def any(self):
        return self.full_at is not None or any(self.counts.values())

    def describe(self):
        c = self.counts
        return (f"{c['images_dropped']} images, {c['rows_dropped']} rows and {c['events_dropped']} events "
                f"dropped (disk full, on_full: {self.policy})")


def _free(folder):
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return 0
