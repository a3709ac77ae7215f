"""The loop's comparison of what a reload target runs with its file, between changes (pure
loop logic: a fake target stands for HAProxy, whose servers someone changed by hand).

A drift was healed only by the next data change, days later for a stable pool, while /ready
said 200. Now the heartbeat compares every TARGET_COMPARE_SECONDS; a target found STALE is
applied again at once and its probe makes the file live; one WARNING a difference."""

from __future__ import annotations

import logging
import time
from collections.abc import Hashable, Sequence
from pathlib import Path

import pytest

from confsync.daemon import TARGET_COMPARE_SECONDS, Daemon
from confsync.ops.events import Observer
from confsync.outcome import FAILED, UPDATED, Status
from confsync.resources import Resource
from confsync.targets import (
    Liveness,
    Probe,
    ReloadFailed,
    ReloadKind,
    ReloadResult,
    ReloadTarget,
    Sibling,
)
from tests.support.loop_daemon import one_key_daemon


class DriftingTarget(ReloadTarget):
    """Runs its file until told otherwise (`detail` set: what differs); a reload makes it
    run the file again, unless `fail`."""

    def __init__(self) -> None:
        self.detail: str | None = None
        self.reloads: list[bytes | None] = []
        self.fail = False

    def key(self) -> Hashable:
        return "drifting"

    def probe(self, since: float | None, quick: bool = False, compare: bool = False) -> Probe:
        if compare and self.detail is not None:
            return Probe(Liveness.STALE, self.detail)
        return Probe(Liveness.RUNNING, "runs")

    def reload(self, previous: bytes | None, content: bytes | None,
               siblings: Sequence[Sibling] = ()) -> ReloadResult:
        self.reloads.append(previous)
        if self.fail:
            raise ReloadFailed("runtime API failed and the reload too")
        self.detail = None
        return ReloadResult(ReloadKind.RUNTIME, "runtime API: 1 command(s), no reload")

    def may_skip_check(self, previous: bytes, content: bytes, checked: bytes) -> bool:
        return False


class Drifts(Observer):
    def __init__(self) -> None:
        self.seen: list[str] = []

    def target_drifted(self, resource: Resource, found: Probe) -> None:
        self.seen.append(found.detail)


def _daemon(tmp_path: Path) -> tuple[Daemon, Resource, DriftingTarget, Drifts]:
    daemon = one_key_daemon(tmp_path)
    [resource] = daemon.state.resources
    target = DriftingTarget()
    daemon.syncer._targets[resource] = target
    daemon.syncer.asked.add(resource.name)
    drifts = Drifts()
    daemon.observers.add(drifts)
    return daemon, resource, target, drifts


def _heal(daemon: Daemon, now: float) -> list[Status]:
    """What the loop does after a comparison touched a resource: apply what is due (a
    probe that makes the file live is UPDATED, with no data change)."""
    return [o.status for o in daemon.apply(daemon.planner.due(now + 1))]


def test_a_drift_is_healed_with_one_warning_a_difference(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    daemon, resource, target, drifts = _daemon(tmp_path)
    now = time.monotonic()
    daemon._compare_targets(now)
    assert drifts.seen == [] and target.reloads == []  # in step: nothing

    caplog.set_level(logging.INFO)
    target.detail = "be_web/b is not in HAProxy"
    daemon._compare_targets(now)
    assert drifts.seen == ["be_web/b is not in HAProxy"]
    assert _heal(daemon, now) == [UPDATED] and target.reloads == [None]  # made live
    target.detail = "be_web/b is not in HAProxy"  # undone again by a script
    daemon._compare_targets(now + TARGET_COMPARE_SECONDS)
    assert _heal(daemon, now + TARGET_COMPARE_SECONDS) == [UPDATED]
    target.detail = "be_web/c is not in HAProxy"  # another difference
    daemon._compare_targets(now + 2 * TARGET_COMPARE_SECONDS)
    assert _heal(daemon, now + 2 * TARGET_COMPARE_SECONDS) == [UPDATED]
    assert len(drifts.seen) == 3 and len(target.reloads) == 3
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warned == [f"resource {resource.name}: be_web/b is not in HAProxy (changed by "
                      "hand?); bringing it in step with the file",
                      f"resource {resource.name}: be_web/c is not in HAProxy (changed by "
                      "hand?); bringing it in step with the file"]


def test_a_drift_whose_repair_fails_fails_its_resource(tmp_path: Path) -> None:
    """/ready must not say 200 while HAProxy serves other servers than the file's and the
    repair failed: the apply fails (what /ready's `failing` reports) and is retried."""
    daemon, resource, target, drifts = _daemon(tmp_path)
    now = time.monotonic()
    target.detail = "HAProxy runs be_web/b at 127.0.0.9:80, the file has 127.0.0.1:80"
    target.fail = True
    daemon._compare_targets(now)
    assert _heal(daemon, now) == [FAILED]
    assert daemon.planner.retrying(resource.name)
    daemon._compare_targets(now + TARGET_COMPARE_SECONDS)  # retrying: the retry has it
    assert len(drifts.seen) == 1
