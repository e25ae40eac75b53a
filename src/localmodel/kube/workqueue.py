"""A work queue of keys with per-key dedup and rate-limited requeue (client-go's contract).

A key is queued at most once; a key added while a worker processes it is queued again when the
worker calls `done`, so two workers never reconcile the same key at the same time. Failures are
requeued after a per-key exponential backoff that `forget` resets. `add_spaced` runs a key at once
when it has not run for a while, and otherwise at most once per interval, for keys that a burst of
events would wake over and over.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Hashable
from typing import Generic, TypeVar

from localmodel.backoff import exponential_delay

K = TypeVar("K", bound=Hashable)


class WorkQueue(Generic[K]):
    def __init__(self, *, base_delay: float = 0.5, max_delay: float = 60.0) -> None:
        self._queue: deque[K] = deque()
        self._dirty: set[K] = set()
        self._processing: set[K] = set()
        self._failures: dict[K, int] = {}
        self._timers: dict[K, asyncio.TimerHandle] = {}
        self._last_start: dict[K, float] = {}  # loop time a worker last took the key
        self._ready = asyncio.Event()
        self._base_delay = base_delay
        self._max_delay = max_delay

    def __len__(self) -> int:
        return len(self._queue)

    @property
    def processing(self) -> int:
        """Keys a worker holds (between `get` and `done`)."""
        return len(self._processing)

    @property
    def waiting(self) -> int:
        """Keys queued now or scheduled by `add_after`."""
        return len(self._queue) + sum(1 for key in self._timers if key not in self._dirty)

    def add(self, key: K) -> None:
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer.cancel()
        if key in self._dirty:
            return
        self._dirty.add(key)
        if key not in self._processing:
            self._queue.append(key)
            self._ready.set()

    def add_after(self, key: K, delay: float) -> None:
        """Queue `key` after `delay` seconds, unless an earlier add is already pending."""
        if delay <= 0:
            self.add(key)
            return
        if key in self._dirty:
            return  # already queued: that run will read the state this add was about
        loop = asyncio.get_running_loop()
        existing = self._timers.get(key)
        when = loop.time() + delay
        if existing is not None and existing.when() <= when:
            return
        if existing is not None:
            existing.cancel()
        self._timers[key] = loop.call_at(when, self._fire, key)

    def add_spaced(self, key: K, interval: float) -> None:
        """Queue `key` now if it last started `interval` seconds ago or more, else when it will have:
        the first event of a burst runs at once, the rest share one run per interval."""
        last = self._last_start.get(key)
        wait = 0.0 if last is None else last + interval - asyncio.get_running_loop().time()
        if wait <= 0:
            self.add(key)
        else:
            self.add_after(key, wait)

    def _fire(self, key: K) -> None:
        self._timers.pop(key, None)
        self.add(key)

    def add_rate_limited(self, key: K) -> float:
        failures = self._failures.get(key, 0)
        self._failures[key] = failures + 1
        delay = exponential_delay(failures, base=self._base_delay, cap=self._max_delay)
        self.add_after(key, delay)
        return delay

    def forget(self, key: K) -> None:
        self._failures.pop(key, None)

    async def get(self) -> K:
        while not self._queue:
            self._ready.clear()
            await self._ready.wait()
        key = self._queue.popleft()
        self._dirty.discard(key)
        self._processing.add(key)
        self._last_start[key] = asyncio.get_running_loop().time()
        return key

    def done(self, key: K) -> None:
        self._processing.discard(key)
        if key in self._dirty:
            self._queue.append(key)
            self._ready.set()

    def close(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
