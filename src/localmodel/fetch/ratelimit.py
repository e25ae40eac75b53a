"""A token bucket shared by all download threads, to cap the bytes per second taken from a source."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class TokenBucket:
    """Allows `rate` bytes per second on average, with bursts up to `burst` bytes.

    `take(n)` may overdraw the bucket; the caller then sleeps until the debt is repaid. This
    keeps the lock short and serves threads roughly in arrival order.
    """

    def __init__(self, rate: float, *, burst: float | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = rate
        self.burst = burst if burst is not None else rate / 4
        self._clock = clock
        self._tokens = self.burst
        self._stamp = clock()
        self._lock = threading.Lock()

    def reserve(self, amount: int) -> float:
        """Take `amount` tokens; return how many seconds the caller must wait first."""
        with self._lock:
            now = self._clock()
            self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
            self._stamp = now
            self._tokens -= amount
            return 0.0 if self._tokens >= 0 else -self._tokens / self.rate

    def take(self, amount: int, *, cancelled: threading.Event | None = None) -> None:
        """Take `amount` tokens, sleeping as needed (woken early if `cancelled` is set)."""
        wait = self.reserve(amount)
        if wait > 0:
            if cancelled is not None:
                cancelled.wait(wait)
            else:
                time.sleep(wait)
