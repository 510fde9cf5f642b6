"""One engine for the cameras that share a bundle: frames of all of them go into one engine
call, up to the engine's batch, after waiting no longer than `wait_s` for a fuller batch.

Each camera has its own bounded Feed, so a camera that is slow or lost never holds up the
others: in inspect-all mode only that camera's capture waits when its own feed is full; in
latest mode its own oldest frame is dropped. The batcher takes frames round-robin (a camera
with a backlog cannot starve the others), and stops waiting for a fuller batch as soon as
every camera that is running has given a frame to it (its next frame is a period away).

Several workers may call run() at once (`workers` engine calls in flight: on a CPU, one
single-threaded call per core keeps every core busy, where one call's own threads leave cores
idle between its operators). Batches are formed one at a time and handed on in the order they
were formed, so each camera's frames stay in capture order. While several workers wait for
work, the frames at hand are shared between them (a batch of ceil(cameras / idle workers)):
on a CPU a frame costs the same in a batch of one or of four, and two half batches side by side
decide each frame sooner than one full batch; under a backlog every batch is full."""

import collections
import threading
import time


class Feed:
    """A camera's frames on their way to its group's engine."""

    def __init__(self, camera, size, mode, cond):
        self.camera, self.size, self.mode, self.cond = camera, max(1, int(size)), mode, cond
        self.items = collections.deque()
        self.closed = False        # the camera's capture has ended
        self.stalled = False       # the camera is lost for now: not waited for
        self.aborted = False       # the engine has failed: nothing is taken any more

    def put(self, item):
        """Queue one frame; returns the frame dropped to make room (latest mode) or None."""
        with self.cond:
            dropped = None
            if self.mode == "latest" and len(self.items) >= self.size:
                dropped = self.items.popleft()
            while len(self.items) >= self.size and not self.aborted:
                self.cond.wait(0.5)                  # inspect-all: back-pressure on this camera only
            if self.aborted:
                return item
            self.items.append(item)
            self.cond.notify_all()
            return dropped

    def set_stalled(self, stalled):
        with self.cond:
            self.stalled = stalled
            self.cond.notify_all()

    def close(self):
        with self.cond:
            self.closed = True
            self.cond.notify_all()


class Batcher:
    """Takes batches from its feeds and hands (feed items, maps, scores, engine seconds) to
    `deliver`. run() returns when every feed is closed and empty."""

    def __init__(self, engine, batch, wait_s, cond=None):
        self.engine, self.batch, self.wait_s = engine, max(1, int(batch)), max(0.0, float(wait_s))
        self.cond = cond or threading.Condition()
        self.feeds = []
        self._rr = 0
        self.calls = 0
        self.frames = 0
        self.workers = 1                             # run() callers expected (engine calls at once)
        self._idle = 0                               # workers waiting for a batch
        self._filling = False                        # a worker is forming a batch
        self._formed = 0                             # batches formed (the next one's ticket)
        self._handed = 0                             # batches handed on

    def feed(self, camera, size, mode):
        f = Feed(camera, size, mode, self.cond)
        self.feeds.append(f)
        return f

    def abort(self):
        with self.cond:
            for f in self.feeds:
                f.aborted = True
                f.items.clear()
            self.cond.notify_all()

    def _take(self, items, given, limit=None):
        """Round-robin: one frame per feed per pass, until the batch is full (`limit` frames)."""
        n = len(self.feeds)
        limit = self.batch if limit is None else limit
        progress = True
        while len(items) < limit and progress:
            progress = False
            for k in range(n):
                f = self.feeds[(self._rr + k) % n]
                if f.items and len(items) < limit:
                    items.append((f, f.items.popleft()))
                    given.add(id(f))
                    progress = True
        self._rr = (self._rr + 1) % max(1, n)

    def _next_batch(self):
        """(ticket, items), or None when every feed is closed and empty."""
        with self.cond:
            self._idle += 1
            try:
                while self._filling:                 # one batch is formed at a time
                    self.cond.wait(0.5)
                self._filling = True
                items = self._fill()
                if items is None:
                    return None
                ticket = self._formed
                self._formed += 1
                return ticket, items
            finally:
                self._idle -= 1
                self._filling = False
                self.cond.notify_all()

    def _limit(self):
        """This batch's size: full with one worker or one waiting; else the running cameras
        shared between the workers waiting for a batch."""
        if self.workers <= 1 or self._idle <= 1:
            return self.batch
        running = sum(1 for f in self.feeds if not (f.closed or f.stalled or f.aborted)) or 1
        return max(1, min(self.batch, -(-running // self._idle)))

    def _fill(self):
        while not any(f.items for f in self.feeds):
            if all(f.closed or f.aborted for f in self.feeds):
                return None
            self.cond.wait(0.5)
        items, given = [], set()
        self._take(items, given, self._limit())
        until = time.monotonic() + self.wait_s
        while len(items) < self._limit():
            waiting = [f for f in self.feeds if id(f) not in given and not (f.closed or f.stalled or f.aborted)]
            left = until - time.monotonic()
            if not waiting or left <= 0:
                break
            self.cond.wait(left)
            self._take(items, given, self._limit())
        return items

    def run(self, deliver, inputs_of=lambda item: item[1]):
        import numpy as np
        buf = None
        while True:
            got = self._next_batch()
            if got is None:
                return
            ticket, items = got
            n = len(items)
            if n == 1:
                frames = inputs_of(items[0][1])[None]
            else:
                first = inputs_of(items[0][1])
                if buf is None or buf.shape[1:] != first.shape:
                    buf = np.empty((self.batch,) + first.shape, first.dtype)
                for i, (_, it) in enumerate(items):
                    buf[i] = inputs_of(it)
                frames = buf[:n]
            t0 = time.monotonic()
            try:
                maps, scores = self.engine.infer(frames)
            except BaseException:
                with self.cond:                      # the batches after it are not held back
                    self._turn(ticket)
                    self._handed += 1
                    self.cond.notify_all()
                raise
            spent = time.monotonic() - t0
            with self.cond:
                self._turn(ticket)
                try:
                    self.calls += 1
                    self.frames += n
                    deliver(items, maps, scores, spent)
                finally:
                    self._handed += 1
                    self.cond.notify_all()

    def _turn(self, ticket):
        """Wait (holding the condition) until the batches formed before this one are handed on."""
        while self._handed < ticket:
            self.cond.wait(0.5)
