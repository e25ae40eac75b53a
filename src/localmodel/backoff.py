"""The one exponential backoff formula, for every retry loop: the engine's ranged requests
(`fetch.backoff`), the agent's failed downloads, passes and watch, the peers' quarantine and
wait, the controller's informers and work queue. Pure; each caller keeps its own base, cap and
jitter (they are tuned to what they wait for, see the callers' comments)."""

from __future__ import annotations

#: Past this many doublings every delay is at its cap; the exponent stops here so that a long
#: outage never overflows a float.
_MAX_EXPONENT = 64


def exponential_delay(attempt: int, *, base: float, cap: float, factor: float = 2.0) -> float:
    """`base * factor ** attempt`, at most `cap`: attempt 0 waits `base`, then 2x, 4x..."""
    return min(cap, base * factor ** min(max(attempt, 0), _MAX_EXPONENT))
