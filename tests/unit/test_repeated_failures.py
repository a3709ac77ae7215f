"""Which failures are logged: the first, a new reason, then the same one every 5 minutes."""

from __future__ import annotations

import pytest

from confsync.repeated_failures import RepeatedFailures, RepeatedWarnings


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
    assert failures.failed("app", CHECK.format(pid=7, n=1)) == 0
    said = []
    for n in range(2, 42):  # ten minutes of retries every 15 s, each with a new attempt, pid
        clock.now += 15
        said.append(failures.failed("app", CHECK.format(pid=100 + n, n=n)))
    assert [s for s in said if s is not None] == [19, 19]  # at 300 s and 600 s
    assert said.count(None) == 38


def test_a_new_reason_another_resource_and_a_success_are_said_at_once() -> None:
    clock = Clock()
    failures = RepeatedFailures(every=300, clock=clock)
    assert failures.failed("app", "check failed: exited 1") == 0
    assert failures.failed("app", "check failed: exited 1") is None
    assert failures.failed("app", "reload failed: exited 1") == 0  # another reason
    assert failures.failed("app", "reload failed: exited 1") is None
    assert failures.failed("other", "reload failed: exited 1") == 0  # per resource
    failures.succeeded("app")
    assert failures.failed("app", "reload failed: exited 1") == 0
    failures.succeeded("app")
    failures.succeeded("other")
    assert len(failures) == 0  # nothing kept of a resource that is not failing


def test_a_configuration_reload_says_each_failure_again() -> None:
    failures = RepeatedFailures(every=300, clock=Clock())
    failures.failed("app", "check failed")
    assert failures.failed("app", "check failed") is None
    failures.clear()
    assert failures.failed("app", "check failed") == 0


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
    assert failures.failed("app", first) == 0
    assert failures.failed("app", first) is None
    assert failures.failed("app", then) == 0


def test_pids_counts_and_durations_alone_do_not_make_another_failure() -> None:
    failures = RepeatedFailures(every=300, clock=Clock())
    assert failures.failed("app", "reload failed: pid 812 exited (reload #3, failed 1) "
                                  "after 12.5s") == 0
    assert failures.failed("app", "reload failed: pid 4431 exited (reload #4, failed 2) "
                                  "after 9.75s") is None
