"""Debounce and backoff: pure logic, clock passed in."""

from __future__ import annotations

from pathlib import Path

from confsync.planner import Planner
from confsync.resources import Resource
from confsync.watcher import Backoff


def res(name: str, wait_min: float | None = None, wait_max: float | None = None) -> Resource:
    return Resource(name=name, source=Path(f"{name}.toml"), src=Path("t"), dest=Path(f"/{name}"),
                    keys=("/",), prefix="", wait_min=wait_min, wait_max=wait_max)


def test_quiet_period_then_due() -> None:
    p = Planner(wait_min=0.1, wait_max=1.0)
    a = res("a")
    p.touch([a], now=0.0)
    assert p.due(0.05) == []
    p.touch([a], now=0.08)  # a new change restarts the quiet period
    assert p.due(0.15) == []
    assert p.next_deadline() == 0.18
    assert p.due(0.18) == [a]
    assert p.due(10) == []
    assert p.debounced == 1


def test_wait_max_caps_a_never_quiet_stream() -> None:
    p = Planner(wait_min=0.1, wait_max=0.5)
    a = res("a")
    t = 0.0
    due = []
    while t < 2.0 and not due:
        p.touch([a], now=t)
        t += 0.05
        due = p.due(t)
    assert due == [a]
    assert 0.5 <= t < 0.6


def test_per_resource_windows() -> None:
    p = Planner(wait_min=1.0, wait_max=5.0)
    fast, slow = res("fast", wait_min=0.0), res("slow")
    p.touch([fast, slow], now=0.0)
    assert p.due(0.0) == [fast]
    assert p.due(1.0) == [slow]


def test_backoff_grows_caps_and_resets() -> None:
    b = Backoff(base=0.1, cap=2.0)
    delays = [b.next() for _ in range(10)]
    assert 0.05 <= delays[0] <= 0.1
    assert all(1.0 <= d <= 2.0 for d in delays[5:])  # capped, with jitter in [cap/2, cap]
    b.reset()
    assert b.next() <= 0.1


def test_failed_apply_is_retried_with_growing_capped_backoff() -> None:
    p = Planner(wait_min=0.0, wait_max=0.0, retry_base=1.0, retry_cap=8.0)
    a = res("a")
    now = 0.0
    delays = []
    for _ in range(8):
        delays.append(p.retry(a, now))
        deadline = p.next_deadline()
        assert deadline is not None
        assert p.due(deadline - 0.001) == []
        assert p.due(deadline) == [a]
        now = deadline
    assert 0.5 <= delays[0] <= 1.0
    assert all(4.0 <= d <= 8.0 for d in delays[4:])  # capped
    assert p.next_deadline() is None  # fired: nothing until the next outcome says retry
    p.settled("a")
    assert p.retry(a, now) <= 1.0  # a success starts a fresh backoff


def test_a_costly_failure_takes_at_most_a_tenth_of_the_loop() -> None:
    """A template that always runs into a 30 s render_timeout, retried every 30 s, held every
    other resource for half the loop's time."""
    p = Planner(wait_min=0.0, wait_max=0.0, retry_base=1.0, retry_cap=30.0)
    assert p.retry(res("slow"), 0.0, cost=30.0) == 270.0
    assert p.retry(res("quick"), 0.0, cost=0.01) <= 1.0  # cheap failures: the usual backoff


def test_a_change_renders_at_its_debounce_deadline_and_the_retry_does_not_fire_twice() -> None:
    p = Planner(wait_min=0.1, wait_max=1.0, retry_base=10.0, retry_cap=10.0)
    a = res("a")
    p.retry(a, now=0.0)
    p.touch([a], now=1.0)
    assert p.next_deadline() == 1.1
    assert p.due(1.1) == [a]
    assert p.due(100.0) == []  # the retry entry went with it
    assert not p.retrying("x")


def test_clear_drops_retries_too() -> None:
    p = Planner(wait_min=0.0, wait_max=0.0)
    p.retry(res("a"), now=0.0)
    p.clear()
    assert p.next_deadline() is None and p.due(1e9) == [] and len(p) == 0


def test_a_retry_due_while_a_change_waits_gives_no_deadline_in_the_past() -> None:
    """The retry of a failing resource came due while a change to it waited for its quiet
    period: not fired (the change renders it at its debounce deadline), but still offered as
    the next deadline, already past. The loop waited for it with a timeout of 0 and spun a
    core until the change's deadline (up to wait_max, or a resource's own longer window),
    at every retry of a resource whose keys keep changing."""
    p = Planner(wait_min=1.0, wait_max=5.0, retry_base=1.0, retry_cap=1.0)
    a = res("a")
    at = p.retry(a, now=0.0)
    p.touch([a], now=at - 0.1)
    now = at + 0.01
    assert p.due(now) == []
    deadline = p.next_deadline()
    assert deadline is not None and deadline > now
    assert p.due(deadline) == [a]
