"""Metrics derived from batch outcomes, read back from the registry the way a scrape would."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
from prometheus_client import generate_latest

from confsync.errors import ResourceError
from confsync.ops.http import parse_address
from confsync.ops.metrics import Metrics
from confsync.outcome import FAILED, UNCHANGED, UPDATED, Outcome
from confsync.resources import Resource
from confsync.targets import ReloadKind, ReloadResult


def resource(name: str, **kw: object) -> Resource:
    return Resource(name=name, source=Path(f"/x/{name}.toml"), src=Path("/x/t"),
                    dest=Path(f"/x/{name}.conf"), keys=("/a",), prefix="", **kw)  # type: ignore[arg-type]


def fail(r: Resource, step: str) -> Outcome:
    return Outcome(r, FAILED, ResourceError(r.name, step, "boom"), seconds=0.01)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def m(clock: Clock) -> Metrics:
    return Metrics(clock=clock, wall=lambda: 1_700_000_000.0)


def v(m: Metrics, name: str, **labels: str) -> float | None:
    return m.registry.get_sample_value(name, labels)


def test_outcomes_by_resource_outcome_and_step(m: Metrics) -> None:
    web = resource("web", check_cmd=("true",), reload_cmd=("true",))
    api = resource("api", reload_signal=signal.SIGUSR2, process="x")
    plain = resource("plain")
    m.started([web, api, plain])
    m.batch_applied(7, ["/a/1", "/a/2", "/a/3"], [
        Outcome(web, UPDATED, seconds=0.02,
                reload=ReloadResult(ReloadKind.COMMAND, "ran `true` in 1 ms")),
        Outcome(api, UPDATED, seconds=0.03,
                reload=ReloadResult(ReloadKind.RUNTIME, "runtime API: 1 command(s)")),
        Outcome(plain, UNCHANGED, seconds=0.001),
    ])
    assert v(m, "confsync_applies_total", resource="web", outcome="updated") == 1
    assert v(m, "confsync_applies_total", resource="plain", outcome="unchanged") == 1
    assert v(m, "confsync_apply_duration_seconds_count", resource="web") == 1
    assert v(m, "confsync_apply_duration_seconds_sum", resource="api") == pytest.approx(0.03)
    assert v(m, "confsync_renders_total", resource="plain", outcome="ok") == 1
    assert v(m, "confsync_checks_total", resource="web", outcome="ok") == 1
    assert v(m, "confsync_checks_total", resource="plain", outcome="ok") is None
    assert v(m, "confsync_reloads_total", resource="web", outcome="ok") == 1
    assert v(m, "confsync_runtime_updates_total", resource="api", outcome="ok") == 1
    assert v(m, "confsync_reloads_total", resource="api", outcome="ok") is None
    assert v(m, "confsync_resource_last_success_timestamp_seconds",
             resource="plain") == 1_700_000_000.0
    assert v(m, "confsync_debounced_changes_total") == 3
    assert v(m, "confsync_batches_total") == 1
    assert v(m, "confsync_applied_revision") == 7

    m.batch_applied(8, ["/a/1"], [fail(web, "check"), fail(plain, "guard"),
                                  fail(api, "reload")])
    assert v(m, "confsync_checks_total", resource="web", outcome="failed") == 1
    assert v(m, "confsync_apply_failures_total", resource="web", step="check") == 1
    assert v(m, "confsync_reloads_total", resource="web", outcome="failed") is None
    assert v(m, "confsync_guard_trips_total", resource="plain") == 1
    assert v(m, "confsync_renders_total", resource="plain", outcome="ok") == 1, \
        "a guard trip is not a render"
    assert v(m, "confsync_reloads_total", resource="api", outcome="failed") == 1
    assert v(m, "confsync_resource_ok", resource="web") == 0
    # the timestamp of the last success stays where it was
    assert v(m, "confsync_resource_last_success_timestamp_seconds",
             resource="plain") == 1_700_000_000.0

    m.batch_applied(9, ["/a/1"], [fail(plain, "render")])
    assert v(m, "confsync_renders_total", resource="plain", outcome="failed") == 1


def test_a_resource_dropped_by_a_config_reload_leaves_no_series(m: Metrics) -> None:
    web, old = resource("web"), resource("old", check_cmd=("true",))
    m.started([web, old])
    m.batch_applied(3, ["/a/1"], [Outcome(web, UPDATED, seconds=0.01), fail(old, "check"),
                                  Outcome(old, UPDATED, seconds=0.01, check_seconds=0.01)])
    assert v(m, "confsync_resource_ok", resource="old") == 1
    assert v(m, "confsync_apply_failures_total", resource="old", step="check") == 1
    m.started([web])  # SIGHUP: "old" is no longer managed
    scraped = generate_latest(m.registry).decode()
    assert 'resource="old"' not in scraped, scraped
    assert v(m, "confsync_resource_ok", resource="web") == 1
    assert v(m, "confsync_applies_total", resource="web", outcome="updated") == 1
    _, detail = m.readiness()
    assert not any("old" in reason for reason in detail["reasons"]), detail


def test_revisions_and_watch(m: Metrics) -> None:
    m.snapshot_loaded(10, 5)
    m.watch_connected(11)
    m.changes_received(15, 4)
    assert v(m, "confsync_store_revision") == 15
    m.batch_applied(12, ["/a"], [])
    assert v(m, "confsync_store_revision") == 15, "never goes backwards"
    assert v(m, "confsync_applied_revision") == 12
    assert v(m, "confsync_changes_received_total") == 4
    assert v(m, "confsync_watch_reconnects_total") == 0
    m.watch_lost("boom")
    assert v(m, "confsync_watch_connected") == 0
    m.watch_connected(16)
    m.watch_lost("boom")
    m.watch_connected(16)
    assert v(m, "confsync_watch_reconnects_total") == 2
    assert v(m, "confsync_watch_lost_total") == 2
    assert v(m, "confsync_snapshots_total") == 1


def test_readiness(m: Metrics) -> None:
    a, b = resource("a"), resource("b")
    m.started([a, b])
    assert m.readiness()[0] is False
    m.batch_applied(3, [], [Outcome(a, UPDATED), fail(b, "render")])
    m.ready(3)
    m.watch_connected(4)
    ok, detail = m.readiness()
    assert not ok and detail["reasons"] == ["failing: b"]
    m.batch_applied(5, ["/a/x"], [Outcome(b, UPDATED)])
    assert m.readiness() == (True, {"revision": 5, "resources": 2, "reasons": []})
    assert v(m, "confsync_ready") == 1
    m.watch_lost("etcd gone")
    assert m.readiness()[1]["reasons"] == ["watch not connected"]
    assert v(m, "confsync_ready") == 0
    # a config reload that drops the failing resource clears it
    m.watch_connected(6)
    m.batch_applied(6, [], [fail(b, "check")])
    m.started([a])
    assert m.readiness()[0] is True


def test_ready_waits_for_the_renders_a_watch_back_from_an_outage_left_due(m: Metrics) -> None:
    a = resource("a")
    m.started([a])
    m.ready(3)
    m.watch_connected(3)
    m.watch_lost("etcd gone")
    m.watch_connected(9)
    m.catching_up(["a"])
    ok, detail = m.readiness()
    assert not ok and detail["reasons"] == ["catching up after the watch came back: a"]
    assert v(m, "confsync_ready") == 0 and v(m, "confsync_watch_connected") == 1
    m.catching_up([])
    assert m.readiness()[0] is True and v(m, "confsync_ready") == 1


def test_health_follows_heartbeats(m: Metrics, clock: Clock) -> None:
    m.heartbeat()
    assert m.health(10.0)[0] is True
    clock.now += 10.5
    ok, detail = m.health(10.0)
    assert not ok and detail["heartbeat_age_seconds"] == 10.5
    m.heartbeat()
    assert m.health(10.0)[0] is True


def test_a_heartbeat_may_be_late_by_the_longest_bounded_step(m: Metrics, clock: Clock) -> None:
    """A check_cmd of 25 s (30 s allowed) is no stuck loop: /health said 503 after 10 s."""
    m.step_bound(30.0)
    m.heartbeat()
    clock.now += 25
    assert m.health(10.0)[0] is True
    clock.now += 15.5  # past every bound: stuck
    ok, detail = m.health(10.0)
    assert not ok and detail["max_age"] == 40.0
    m.step_bound(0.0)  # a SIGHUP removed the slow resource
    m.heartbeat()
    clock.now += 10.5
    assert m.health(10.0)[0] is False


def test_own_registry_so_instances_do_not_collide() -> None:
    first, second = Metrics(), Metrics()
    first.batches.inc()
    assert second.registry.get_sample_value("confsync_batches_total") == 0


@pytest.mark.parametrize(("text", "expected"), [
    ("127.0.0.1:9500", ("127.0.0.1", 9500)),
    ("[::1]:9500", ("::1", 9500)),
    (":9500", ("0.0.0.0", 9500)),
    ("localhost:0", ("localhost", 0)),
])
def test_parse_address(text: str, expected: tuple[str, int]) -> None:
    assert parse_address(text) == expected


@pytest.mark.parametrize("text", ["9500", "::1:9500", "host:", "host:99999", "[nope]:1"])
def test_parse_address_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_address(text)


def test_check_and_reload_durations_when_outcome_carries_them(m: Metrics) -> None:
    web = resource("web", check_cmd=("true",), reload_cmd=("true",))
    outcome = Outcome(web, UPDATED, seconds=0.3,
                      reload=ReloadResult(ReloadKind.COMMAND, "ran `true`"),
                      check_seconds=0.2, reload_seconds=0.05)
    m.batch_applied(3, ["/a/x"], [outcome])
    assert v(m, "confsync_check_duration_seconds_sum", resource="web") == pytest.approx(0.2)
    assert v(m, "confsync_reload_duration_seconds_sum", resource="web") == pytest.approx(0.05)


def test_exec_child_state_is_read_at_scrape_time(tmp_path: Path) -> None:
    import sys

    from confsync.ops.supervisor import ExecPolicy, Supervisor

    m = Metrics()
    sup = Supervisor(ExecPolicy(argv=(sys.executable, "-c", "import time; time.sleep(30)")))
    m.track_exec(sup)
    m.started([])
    m.watch_connected(1)
    m.ready(1)
    assert v(m, "confsync_exec_child_up") == 0
    assert "exec child not running" in m.readiness()[1]["reasons"]
    sup.start()
    try:
        assert v(m, "confsync_exec_child_up") == 1
        assert v(m, "confsync_exec_restarts_total") == 0
        assert v(m, "confsync_exec_crash_loop") == 0
        assert m.readiness()[0], m.readiness()
    finally:
        sup.stop(timeout=5)
    assert v(m, "confsync_exec_child_up") == 0
    ok, detail = m.readiness()
    assert not ok and detail["reasons"] == ["exec child not running"]


def test_a_target_found_stopped_between_changes_is_not_ready(m: Metrics) -> None:
    a = resource("a")
    m.started([a])
    m.batch_applied(3, [], [Outcome(a, UNCHANGED, reload=ReloadResult(ReloadKind.IN_STEP,
                                                                        "master answers"))])
    m.ready(3)
    m.watch_connected(3)
    assert m.readiness()[0] is True and v(m, "confsync_reload_target_up", resource="a") == 1
    m.target_probed(a, ReloadResult(ReloadKind.NO_TARGET, "no HAProxy master on /x"))
    ok, detail = m.readiness()
    assert not ok and detail["reasons"] == ["not running: a (no HAProxy master on /x)"]
    assert v(m, "confsync_reload_target_up", resource="a") == 0
    assert v(m, "confsync_ready") == 0
    # the next apply finds it again (probed: in step, nothing reloaded)
    m.batch_applied(4, [], [Outcome(a, UNCHANGED, reload=ReloadResult(
        ReloadKind.IN_STEP, "started after the file was in place"))])
    assert m.readiness()[0] is True and v(m, "confsync_reload_target_up", resource="a") == 1
    assert v(m, "confsync_reloads_total", resource="a", outcome="ok") is None
    m.started([])  # dropped by a configuration reload: a late probe result is ignored
    m.target_probed(a, ReloadResult(ReloadKind.NO_TARGET, "gone"))
    assert m.readiness()[1]["reasons"] == []


def test_a_reload_action_removed_by_a_config_reload_is_no_target_not_running(m: Metrics) -> None:
    """A resource whose signal target was not running, edited to reload nothing (the service
    is reloaded by something else now): /ready said `not running` about it for the daemon's
    life, and `reload_target_up` stayed 0, as nothing else ever asked that target again."""
    signalled = resource("web", reload_signal=signal.SIGHUP, process="no-such-process")
    m.started([signalled])
    m.ready(1)
    m.watch_connected(1)
    m.batch_applied(2, ["/a"], [Outcome(signalled, UPDATED, seconds=0.01, reload=ReloadResult(
        ReloadKind.NO_TARGET, "no process for no-such-process"))])
    assert not m.readiness()[0]
    plain = resource("web")  # SIGHUP: the same resource, no reload action any more
    m.started([plain])
    m.batch_applied(3, [], [Outcome(plain, UNCHANGED, seconds=0.01)])
    ok, detail = m.readiness()
    assert ok, detail
    assert 'confsync_reload_target_up{resource="web"}' not in \
        generate_latest(m.registry).decode()


def test_ready_names_a_write_refused_for_permission_not_etcd_unreachable() -> None:
    from confsync.register.metrics import RegisterMetrics

    metrics = RegisterMetrics([])
    metrics.etcd(True)
    metrics.refused("/reg/web-1", "PERMISSION_DENIED: etcdserver: permission denied")
    ready, body = metrics.readiness()
    assert not ready
    assert body["reasons"] == ["etcd refuses writing /reg/web-1 (permission denied): "
                               "PERMISSION_DENIED: etcdserver: permission denied"]
    metrics.refused("", "")
    assert metrics.readiness()[0]


def test_register_counters_are_exported_at_zero_from_the_start() -> None:
    """The README's `confsync_register_conflicts_total` was absent until the first conflict:
    nothing to alert on, and `increase()` misses a series that appears at 1."""
    from pathlib import Path

    from prometheus_client import generate_latest

    from confsync.register.config import parse_registration
    from confsync.register.metrics import RegisterMetrics

    web = parse_registration(Path("web.toml"), {"service": "web", "port": 8080}, "", "n1",
                             lambda: "10.0.0.1")
    text = generate_latest(RegisterMetrics([web]).registry).decode()
    assert 'confsync_register_conflicts_total{registration="web"} 0.0' in text
    assert 'confsync_register_state_changes_total{registration="web"} 0.0' in text
