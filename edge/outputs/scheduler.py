"""A dedicated thread that fires actions at a monotonic time or at an encoder count.

Waiting is two-phase: a condition-variable wait until `spin` seconds before the deadline,
then a short spin on time.monotonic(), so the fire time does not depend on the kernel's
timer slack or a late wake-up under load. Callbacks run on this thread and must be quick."""

import collections
import heapq
import itertools
import logging
import os
import threading
import time

log = logging.getLogger(__name__)


def set_rt_priority(prio):
    """SCHED_FIFO for the calling thread; returns None, or why it was not granted."""
    if not prio:
        return None
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(prio))
        return None
    except (OSError, AttributeError) as e:
        return str(e)


class Scheduler:
    def __init__(self, spin_s=0.001, poll_s=0.0005, encoder=None, encoder_bits=32, rt_priority=0,
                 emit=None):
        self._cv = threading.Condition()
        self._heap = []            # (t, n, fn, args)
        self._enc = []             # (start, pulses, n, fn, args)
        self._n = itertools.count()
        self._spin, self._poll = spin_s, poll_s
        self._encoder, self._mod = encoder, 1 << encoder_bits
        self._rt = rt_priority
        self._emit = emit or (lambda ev: None)
        self._stop = False
        self._thread = None
        self.errors = collections.deque(maxlen=50000)   # actual - scheduled, seconds

    # --- scheduling (any thread) ---------------------------------------------------------
    def at(self, t, fn, *args):
        self._at(t, fn, args, True)

    def _at(self, t, fn, args, measure):
        with self._cv:
            heapq.heappush(self._heap, (t, next(self._n), fn, args, measure))
            if self._heap[0][0] == t:
                self._cv.notify()

    def at_count(self, start, pulses, fn, *args):
        with self._cv:
            self._enc.append((start, pulses, next(self._n), fn, args))
            self._cv.notify()

    def every(self, period, fn):
        def tick(t):
            fn()
            nxt = t + period
            now = time.monotonic()
            if nxt < now:                      # fell behind (paused machine): no burst
                nxt = now + period
            self._at(nxt, tick, (nxt,), False)
        t0 = time.monotonic() + period
        self._at(t0, tick, (t0,), False)

    def encoder_distance(self, start):
        """Pulses travelled since `start`, with wrap-around of the counter."""
        d = (self._encoder.count() - start) % self._mod
        return d - self._mod if d >= self._mod // 2 else d

    # --- the thread ------------------------------------------------------------------------
    def start(self):
        self._thread = threading.Thread(target=self._run, name="line-scheduler", daemon=True)
        self._thread.start()

    def stop(self, timeout=2.0):
        with self._cv:
            self._stop = True
            self._cv.notify()
        if self._thread:
            self._thread.join(timeout)

    def _set_priority(self):
        why = set_rt_priority(self._rt)
        if why:
            log.warning("line scheduler: real-time priority %d not granted (%s)", self._rt, why)
            self._emit({"kind": "rt_denied", "priority": self._rt, "error": why})

    def _due(self, now):
        due = []
        while self._heap and self._heap[0][0] <= now:
            t, _, fn, args, measure = heapq.heappop(self._heap)
            due.append((t if measure else None, fn, args))
        if self._enc:
            keep = []
            for item in self._enc:
                if self.encoder_distance(item[0]) >= item[1]:
                    due.append((None, item[3], item[4]))
                else:
                    keep.append(item)
            self._enc = keep
        return due

    def _run(self):
        self._set_priority()
        while True:
            with self._cv:
                if self._stop:
                    return
                due = self._due(time.monotonic())
                target = None
                if not due:
                    t_next = self._heap[0][0] if self._heap else None
                    left = None if t_next is None else t_next - time.monotonic()
                    if left is not None and left <= self._spin:
                        target = t_next
                    else:
                        wait = None if left is None else left - self._spin
                        if self._enc:
                            wait = self._poll if wait is None else min(wait, self._poll)
                        self._cv.wait(wait)
                        continue
            if target is not None:             # spin the last stretch, outside the lock
                while time.monotonic() < target:
                    pass
                continue
            for t, fn, args in due:
                if t is not None:
                    self.errors.append(time.monotonic() - t)
                try:
                    fn(*args)
                except Exception:
                    log.exception("line scheduler: action failed")
