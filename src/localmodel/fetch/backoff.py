"""Retry timing: exponential backoff with jitter, honouring a server's Retry-After. Pure.

The budget counts failures in a row; the engine resets it once a retried request delivers
real progress (1 MiB), so a long download over a flaky link is not failed by errors spread
across hours, while a server that drops every connection after a few bytes still is.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from localmodel.backoff import exponential_delay


@dataclass(frozen=True)
class BackoffPolicy:
    #: Failures in a row tolerated before giving up.
    max_retries: int = 6
    #: First delay, in seconds; doubles on each failure in a row.
    base_delay: float = 0.5
    #: Longest delay we choose ourselves.
    max_delay: float = 30.0
    #: Longest Retry-After we obey; a server asking for more gets this.
    max_retry_after: float = 300.0


def backoff_delay(failures: int, policy: BackoffPolicy, *, retry_after: float | None = None,
                  rand: random.Random | None = None) -> float:
    """Seconds to wait before the next attempt, after `failures` failures in a row (>= 1).

    "Equal jitter": half the exponential delay is fixed, half is random, so clients that
    failed together spread out but none retries immediately. A Retry-After from the server
    wins when it is longer.
    """
    if failures < 1:
        raise ValueError("failures counts from 1")
    exponential = exponential_delay(failures - 1, base=policy.base_delay, cap=policy.max_delay)
    draw: float = rand.random() if rand is not None else random.random()
    delay = exponential / 2 + draw * exponential / 2
    if retry_after is not None and retry_after > 0:
        delay = max(delay, min(retry_after, policy.max_retry_after))
    return delay


@dataclass
class RetryBudget:
    """Failures in a row for one request; `progress()` when bytes arrive resets it."""

    policy: BackoffPolicy
    failures: int = field(default=0)

    def failed(self) -> bool:
        """Count one failure; True if another attempt is allowed."""
        self.failures += 1
        return self.failures <= self.policy.max_retries

    def progress(self) -> None:
        self.failures = 0
