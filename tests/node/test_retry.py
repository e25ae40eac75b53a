"""Backoff for failed downloads: grows, is capped, honours Retry-After, spreads by jitter."""

import pytest

from localmodel.node.retry import backoff_seconds
from localmodel.node.settings import RetrySettings

SETTINGS = RetrySettings(initial_seconds=10, max_seconds=600, factor=2, jitter=0.1)


@pytest.mark.parametrize(
    ("failures", "expected"),
    [(0, 0.0), (1, 10.0), (2, 20.0), (3, 40.0), (6, 320.0), (7, 600.0), (50, 600.0)],
)
def test_grows_exponentially_up_to_the_cap(failures: int, expected: float) -> None:
    assert backoff_seconds(failures, SETTINGS) == expected


def test_jitter_spreads_both_ways_within_the_fraction() -> None:
    assert backoff_seconds(2, SETTINGS, draw=0.0) == pytest.approx(18.0)
    assert backoff_seconds(2, SETTINGS, draw=0.999999) == pytest.approx(22.0, abs=1e-3)


def test_jitter_never_exceeds_the_cap() -> None:
    assert backoff_seconds(20, SETTINGS, draw=0.999) == 600.0


def test_retry_after_wins_when_longer_but_stays_capped() -> None:
    assert backoff_seconds(1, SETTINGS, retry_after=90) == 90.0
    assert backoff_seconds(3, SETTINGS, retry_after=5) == 40.0
    assert backoff_seconds(1, SETTINGS, retry_after=10_000) == 600.0
