"""The one backoff helper: jittered for reconnects, exact for restart delays."""

from __future__ import annotations

from confsync.backoff import Backoff


def test_exact_delays_double_up_to_the_cap_and_reset() -> None:
    b = Backoff(base=1.0, cap=5.0, jitter=False)
    assert [b.next() for _ in range(5)] == [1.0, 2.0, 4.0, 5.0, 5.0]
    b.reset()
    assert b.next() == 1.0


def test_jittered_delays_stay_within_half_and_whole() -> None:
    b = Backoff(base=0.2, cap=1.0)
    for expected in (0.2, 0.4, 0.8, 1.0, 1.0):
        assert expected / 2 <= b.next() <= expected
