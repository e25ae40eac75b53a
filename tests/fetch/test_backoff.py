"""Retry timing and the shared bandwidth limit, with injected randomness and clocks."""

import random

import pytest

from localmodel.fetch.backoff import BackoffPolicy, RetryBudget, backoff_delay
from localmodel.fetch.ratelimit import TokenBucket
from tests.clock import FakeClock


class FixedRandom(random.Random):
    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = value

    def random(self) -> float:
        return self.value


POLICY = BackoffPolicy(max_retries=3, base_delay=1.0, max_delay=8.0, max_retry_after=60.0)


@pytest.mark.parametrize("failures, draw, expected", [
    (1, 0.0, 0.5), (1, 1.0, 1.0),
    (2, 0.0, 1.0), (3, 0.5, 3.0),
    (4, 1.0, 8.0), (10, 1.0, 8.0),  # capped at max_delay
])
def test_delay_doubles_with_half_jitter(failures: int, draw: float, expected: float) -> None:
    assert backoff_delay(failures, POLICY, rand=FixedRandom(draw)) == pytest.approx(expected)


def test_retry_after_wins_when_longer_and_is_capped() -> None:
    assert backoff_delay(1, POLICY, retry_after=7, rand=FixedRandom(0)) == 7
    assert backoff_delay(4, POLICY, retry_after=0.1, rand=FixedRandom(1)) == 8
    assert backoff_delay(1, POLICY, retry_after=3600, rand=FixedRandom(0)) == 60


def test_failures_count_from_one() -> None:
    with pytest.raises(ValueError):
        backoff_delay(0, POLICY)


def test_budget_resets_when_bytes_arrive() -> None:
    budget = RetryBudget(POLICY)
    assert [budget.failed() for _ in range(3)] == [True, True, True]
    budget.progress()
    assert [budget.failed() for _ in range(4)] == [True, True, True, False]


def test_token_bucket_allows_burst_then_paces() -> None:
    clock = FakeClock()
    bucket = TokenBucket(1000, burst=500, clock=clock)
    assert bucket.reserve(500) == 0
    assert bucket.reserve(250) == pytest.approx(0.25)
    clock.now += 0.25  # debt repaid
    assert bucket.reserve(100) == pytest.approx(0.1)
    clock.now += 10  # refills only up to the burst
    assert bucket.reserve(600) == pytest.approx(0.1)


def test_token_bucket_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        TokenBucket(0)
