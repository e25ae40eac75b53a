"""Progress reports: what the engine hands its callback, and the rate meter behind them."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Progress:
    #: "download", "unpack" or "done".
    phase: str
    bytes_done: int
    bytes_total: int
    files_done: int
    files_total: int
    #: Bytes per second over the last few seconds.
    rate: float
    #: Seconds left at the current rate, None while unknown.
    eta: float | None
    #: Of `bytes_done`, the bytes taken from the content store instead of the source
    #: (`fetch/blobs.py`): counted done from the first report, never fetched.
    bytes_reused: int = 0

    @property
    def fraction(self) -> float:
        return self.bytes_done / self.bytes_total if self.bytes_total else 1.0


ProgressCallback = Callable[[Progress], None]


class RateMeter:
    """Bytes per second over a sliding window of samples."""

    def __init__(self, window: float = 5.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.window = window
        self._clock = clock
        self._samples: deque[tuple[float, int]] = deque()

    def sample(self, total_bytes: int) -> float:
        now = self._clock()
        self._samples.append((now, total_bytes))
        while len(self._samples) > 2 and now - self._samples[1][0] >= self.window:
            self._samples.popleft()
        first_time, first_bytes = self._samples[0]
        elapsed = now - first_time
        return (total_bytes - first_bytes) / elapsed if elapsed > 0 else 0.0


def eta(remaining: int, rate: float) -> float | None:
    return remaining / rate if rate > 0 else (0.0 if remaining == 0 else None)
