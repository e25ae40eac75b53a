"""The one exponential backoff formula every retry loop uses (localmodel.backoff)."""

from __future__ import annotations

from localmodel.backoff import exponential_delay


def test_doubles_from_base_up_to_the_cap() -> None:
    assert [exponential_delay(n, base=1.0, cap=5.0) for n in range(5)] == [1.0, 2.0, 4.0, 5.0, 5.0]
    assert [exponential_delay(n, base=0.25, cap=1.0) for n in range(4)] == [0.25, 0.5, 1.0, 1.0]


def test_other_factors_and_a_cap_below_base() -> None:
    assert exponential_delay(2, base=10.0, cap=1000.0, factor=3.0) == 90.0
    assert exponential_delay(0, base=2.0, cap=1.0) == 1.0


def test_a_long_outage_stays_at_the_cap_without_overflow() -> None:
    assert exponential_delay(10**6, base=0.2, cap=4.0) == 4.0
    assert exponential_delay(-3, base=0.5, cap=30.0) == 0.5
