"""Exponential back-off between reconnect attempts."""


class Backoff:
    """Delays initial_s, 2*initial_s, ... capped at max_s; reset() after a success."""

    def __init__(self, initial_s=0.5, max_s=10.0, factor=2.0):
        if initial_s <= 0 or max_s < initial_s or factor < 1:
            raise ValueError("back-off needs 0 < initial_s <= max_s and factor >= 1")
        self.initial_s = float(initial_s)
        self.max_s = float(max_s)
        self.factor = float(factor)
        self._next = self.initial_s
        self.attempts = 0

    def next_delay(self):
        delay = self._next
        self._next = min(self.max_s, self._next * self.factor)
        self.attempts += 1
        return delay

    def reset(self):
        self._next = self.initial_s
        self.attempts = 0
