"""Which failures are logged: the first, a new reason, then the same one every 5 minutes."""

from __future__ import annotations

import logging
import types

import pytest

from confsync.daemon import Daemon
from confsync.repeated_failures import RepeatedFailures, RepeatedWarnings
from confsync.said import FIRST, Said


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


CHECK = "resource app: check failed: `haproxy -c -f /etc/.haproxy.cfg.{pid}.{n}.confsync` " \
        "exited 1: [ALERT] ({pid}) : config : parsing [/etc/.haproxy.cfg.{pid}.{n}.confsync:4]"


def test_the_same_failure_is_logged_every_five_minutes_with_the_count() -> None:
    clock = Clock()
    failures = RepeatedFailures(every=300, clock=clock)
    assert failures.failed("app", CHECK.format(pid=7, n=1)) == FIRST
    said = []
    for n in range(2, 42):  # ten minutes of retries every 15 s, each with a new attempt, pid
        clock.now += 15
        said.append(failures.failed("app", CHECK.format(pid=100 + n, n=n)))
    assert [s for s in said if s is not None] == [Said(19), Said(19)]  # at 300 s and 600 s
    assert said.count(None) == 38


def test_a_new_reason_another_resource_and_a_success_are_said_at_once() -> None:
    clock = Clock()
    failures = RepeatedFailures(every=300, clock=clock)
    assert failures.failed("app", "check failed: exited 1") == FIRST
    assert failures.failed("app", "check failed: exited 1") is None
    assert failures.failed("app", "reload failed: exited 1") == Said(  # another reason
        before="check failed: exited 1", before_unsaid=1)
    assert failures.failed("app", "reload failed: exited 1") is None
    assert failures.failed("other", "reload failed: exited 1") == FIRST  # per resource
    failures.succeeded("app")
    assert failures.failed("app", "reload failed: exited 1") == FIRST
    failures.succeeded("app")
    failures.succeeded("other")
    clock.now += 300
    assert failures.settled() == []
    assert len(failures) == 0  # nothing kept of a resource that is not failing


def test_a_configuration_reload_says_each_failure_again() -> None:
    failures = RepeatedFailures(every=300, clock=Clock())
    failures.failed("app", "check failed")
    failures.failed("gone", "check failed")
    assert failures.failed("app", "check failed") is None
    failures.clear(keep={"app"})
    assert len(failures) == 1  # nothing kept of a resource the new set has not
    assert failures.failed("app", "check failed") == Said(1)  # with the count not logged
    assert failures.failed("app", "check failed") is None
    failures.clear(keep={"app"})
    assert failures.failed("app", "reload failed") == Said(before="check failed",
                                                           before_unsaid=1)
    failures.clear(keep={"app"})
    assert failures.succeeded("app") is True  # the reload fixed it: said


def test_a_configuration_reload_says_a_flapping_failure_again_as_a_summary() -> None:
    """A SIGHUP (a deploy) while a value flaps: the switches of the last five minutes are
    kept, so the first failure under the new set is said at once as a summary, not as three
    more failures and recoveries one by one."""
    clock = Clock()
    failures = RepeatedFailures(every=300, clock=clock, flaps=3, settle=30)
    flap(failures, clock, 6)  # (summarized at the fourth failure, t=6)
    failures.clear(keep={"app"})
    assert flap(failures, clock, 2) == [Said(failures=3, recoveries=3, over=6.0), False,
                                        None, False]
    flap(failures, clock, 1)
    failures.failed("app", "render failed: key /f/v: bad")
    failures.clear(keep={"app"})  # failing as the set is reloaded: its render says it again
    assert failures.failed("app", "render failed: key /f/v: bad") == Said(
        failures=3, recoveries=3, over=6.0)  # (since the last summary, t=12)
    assert failures.succeeded("app") is False  # (still intermittent)


BAD = "key /s/b: expected a port number 1-65535, found 0; left out"
WORSE = "key /s/d: not JSON; left out"


def test_a_value_left_out_render_after_render_is_warned_about_every_five_minutes() -> None:
    clock = Clock()
    said = RepeatedWarnings(every=300, clock=clock)
    assert said.due("pool", [BAD]) == [True]
    logged = []
    for _ in range(40):  # a pool that changes every 15 s for ten minutes, /s/b bad all along
        clock.now += 15
        logged += said.due("pool", [BAD])
    assert logged.count(True) == 2  # at 300 s and 600 s
    assert said.due("other", [BAD]) == [True]  # per resource


def test_a_value_fixed_and_broken_again_or_a_new_one_is_warned_about_at_once() -> None:
    clock = Clock()
    said = RepeatedWarnings(every=300, clock=clock)
    assert said.due("pool", [BAD]) == [True]
    assert said.due("pool", [BAD, WORSE]) == [False, True]
    assert said.due("pool", [WORSE]) == [False]  # /s/b fixed: forgotten
    assert said.due("pool", [BAD, WORSE]) == [True, False]
    assert said.due("pool", []) == [] and len(said) == 0  # nothing kept of a clean render
    said.due("pool", [BAD])
    said.clear()  # a configuration reload
    assert said.due("pool", [BAD]) == [True]


@pytest.mark.parametrize(("first", "then"), [
    ("render failed: key /svc/pool/server-1: not JSON", "render failed: key /svc/pool/server-2: not JSON"),
    ("check failed: server 10.0.0.1 cannot be resolved", "check failed: server 10.0.0.2 cannot be resolved"),
    ("reload failed: /etc/haproxy/pool1.cfg missing", "reload failed: /etc/haproxy/pool2.cfg missing"),
    ("check failed: cannot bind 127.0.0.1:8080", "check failed: cannot bind 127.0.0.1:8081"),
])
def test_a_cause_differing_only_in_the_digits_of_a_name_is_said_at_once(first: str,
                                                                         then: str) -> None:
    """The operator fixes server-1: the failure that goes on is server-2's, not the same."""
    failures = RepeatedFailures(every=300, clock=Clock())
    assert failures.failed("app", first) == FIRST
    assert failures.failed("app", first) is None
    assert failures.failed("app", then) == Said(before=first, before_unsaid=1)


def test_pids_counts_and_durations_alone_do_not_make_another_failure() -> None:
    failures = RepeatedFailures(every=300, clock=Clock())
    assert failures.failed("app", "reload failed: pid 812 exited (reload #3, failed 1) "
                                  "after 12.5s") == FIRST
    assert failures.failed("app", "reload failed: pid 4431 exited (reload #4, failed 2) "
                                  "after 9.75s") is None


def test_a_new_cause_says_how_often_the_one_it_replaces_failed_unlogged() -> None:
    """The check failed 20 times more on a bad server, then on another cause: that count
    was dropped with the old cause (the operator never learnt it went on)."""
    clock = Clock()
    failures = RepeatedFailures(every=300, clock=clock)
    assert failures.failed("app", "check failed: server a bad") == FIRST
    for _ in range(20):
        clock.now += 10
        assert failures.failed("app", "check failed: server a bad") is None
    clock.now += 10
    assert failures.failed("app", "reload failed: refused") == Said(
        before="check failed: server a bad", before_unsaid=20)
    # The new cause's own count starts afresh; a change with nothing unlogged is said plainly.
    assert failures.failed("app", "check failed: server a bad") == FIRST


def flap(failures: RepeatedFailures, clock: Clock, times: int, period: float = 2.0,
         name: str = "app", reason: str = "render failed: key /f/v: bad") -> list[object]:
    """`times` failures of `name`, each followed by a recovery, one switch every `period`/2:
    what `failed` and `succeeded` answered, in order."""
    said: list[object] = []
    for _ in range(times):
        said.append(failures.failed(name, reason))
        clock.now += period / 2
        said.append(failures.succeeded(name))
        clock.now += period / 2
    return said


def test_a_flapping_resource_is_summarized_every_five_minutes_not_logged_at_each_switch(
        ) -> None:
    clock = Clock()
    failures = RepeatedFailures(every=300, clock=clock, flaps=3, settle=30)
    said = flap(failures, clock, 4)
    assert said == [FIRST, True] * 3 + [  # the first three switches: failure and recovery
        Said(failures=4, recoveries=3, over=6.0), False]  # the fourth: a summary, at once
    said = flap(failures, clock, 300)  # ten minutes more of a flap every 2 s
    assert [s for s in said if s not in (None, False)] == [
        Said(failures=150, recoveries=150, over=300.0),
        Said(failures=150, recoveries=150, over=300.0)]
    assert failures.settled() == []  # neither well nor failing for long


def test_a_lasting_recovery_or_failure_ends_the_intermittent_summary() -> None:
    clock = Clock()
    failures = RepeatedFailures(every=300, clock=clock, flaps=3, settle=30)
    flap(failures, clock, 10)
    clock.now += 29  # well for 30 s since the last recovery
    assert failures.settled() == [("app", None, Said(failures=6, recoveries=7, over=43.0))]
    assert failures.settled() == []  # said once
    # A failure after a lasting recovery is said at once, a summary while switches of the
    # last five minutes are many; then it lasts: said as failing, once, then as any failure.
    assert failures.failed("app", "check failed: down") == Said(failures=11, recoveries=10,
                                                                over=49.0)
    clock.now += 30
    assert failures.failed("app", "check failed: down") is None
    assert failures.settled() == [("app", "check failed: down", Said(over=30.0))]
    clock.now += 299
    assert failures.failed("app", "check failed: down") is None
    clock.now += 1
    assert failures.failed("app", "check failed: down") == Said(1)
    assert failures.succeeded("app") is True  # a recovery after a lasting failure: at once


def test_a_failure_after_a_quiet_period_is_said_on_its_own_at_once() -> None:
    clock = Clock()
    failures = RepeatedFailures(every=300, clock=clock, flaps=3, settle=30)
    flap(failures, clock, 10)
    clock.now += 30
    assert [name for name, _, _ in failures.settled()] == ["app"]
    clock.now += 300  # five quiet minutes
    assert failures.settled() == [] and len(failures) == 0
    assert failures.failed("app", "check failed: down") == FIRST
    assert failures.succeeded("app") is True


def test_slow_switches_are_each_said() -> None:
    """A failure and recovery every two minutes is an outage each time, not a flap."""
    clock = Clock()
    failures = RepeatedFailures(every=300, clock=clock, flaps=3, settle=30)
    assert flap(failures, clock, 20, period=120.0) == [FIRST, True] * 20


def test_another_cause_while_failing_intermittently_is_said_at_once() -> None:
    clock = Clock()
    failures = RepeatedFailures(every=300, clock=clock, flaps=3, settle=30)
    flap(failures, clock, 5)
    assert failures.failed("app", "check failed: server-2 down") == Said(
        failures=2, recoveries=2, over=4.0)  # a new cause: the summary, with it as the last
    assert failures.failed("app", "check failed: server-2 down") is None
    assert failures.failed("app", "render failed: key /f/v: bad") is None  # seen: counted
    assert failures.failed("app", "check failed: server-3 down") == Said(over=0.0)


def test_the_watch_loop_says_the_end_of_an_intermittent_failure_once(
        caplog: pytest.LogCaptureFixture) -> None:
    """What the loop's heartbeat logs of `settled` (Daemon._say_settled, on a stand-in)."""
    clock = Clock()
    failures = RepeatedFailures(every=300, clock=clock, flaps=3, settle=30)
    flap(failures, clock, 5, name="well")
    flap(failures, clock, 5, name="down")
    failures.failed("down", "resource down: check failed: exited 1")
    clock.now += 30
    caplog.set_level(logging.DEBUG, logger="confsync")
    loop = types.SimpleNamespace(_failures=failures)
    Daemon._say_settled(loop)  # type: ignore[arg-type]
    Daemon._say_settled(loop)  # type: ignore[arg-type]
    said = sorted((r.levelname, r.getMessage()) for r in caplog.records)
    assert said == [  # ("down" was said as its cause changed: nothing since)
        ("ERROR", "resource down: failing, no longer intermittently: check failed: exited 1"),
        ("INFO", "resource well: recovered: no longer failing intermittently (1 failure, 2 "
                 "recoveries in the last 44s)")], said
