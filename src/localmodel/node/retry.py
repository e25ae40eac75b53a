"""Exponential backoff for failed downloads. Pure: the random draw is passed in."""

from __future__ import annotations

from localmodel.backoff import exponential_delay
from localmodel.node.settings import RetrySettings


def backoff_seconds(
    failures: int, settings: RetrySettings, *, retry_after: float | None = None, draw: float = 0.5
) -> float:
    """Seconds to wait after the `failures`-th failure in a row (1 = the first failure).

    `draw` in [0, 1) spreads the delay by ±`settings.jitter`; 0.5 means no spread. A server's
    Retry-After is honoured when it asks for longer, but never beyond `max_seconds`.
    """
    if failures < 1:
        return 0.0
    base = exponential_delay(failures - 1, base=settings.initial_seconds, cap=settings.max_seconds,
                             factor=settings.factor)
    spread = 1.0 + settings.jitter * (2.0 * draw - 1.0)
    delay = min(settings.max_seconds, base * spread)
    if retry_after is not None and retry_after > delay:
        delay = min(settings.max_seconds, retry_after)
    return max(0.0, delay)
