"""A batch that changes no value still moves the revision the files are known to reflect (pure
loop logic: the daemon is fed its queue's events by hand, with no follower running).

A put of the value already there (a registrar re-putting its key, an operator's `etcdctl put`
of the same value) reached the mirror and changed nothing, so nothing was applied: /ready's
revision and confsync_applied_revision stayed behind etcd's for good, and an alert on "applied
behind etcd" fired for a sidecar that was current (the HAProxy chaos test waited in vain)."""

from __future__ import annotations

import time
from pathlib import Path

from confsync.daemon import Daemon
from confsync.handoff import BatchReceived
from confsync.ops.events import Observer
from confsync.stores import Change, ChangeBatch
from confsync.watcher import StreamState
from tests.support.loop_daemon import one_key_daemon


class Seen(Observer):
    def __init__(self) -> None:
        self.current: list[int] = []

    def revision_current(self, revision: int) -> None:
        self.current.append(revision)


def _daemon(tmp_path: Path) -> tuple[Daemon, Seen]:
    daemon = one_key_daemon(tmp_path)
    seen = Seen()
    daemon.observers.add(seen)
    daemon._handle(StreamState(True, 5))
    return daemon, seen


def test_a_put_of_the_same_value_is_reflected_once_nothing_waits(tmp_path: Path) -> None:
    daemon, seen = _daemon(tmp_path)
    daemon._handle(BatchReceived(ChangeBatch(9, (Change("/a/n", b"0"),), "/a")))
    daemon._note_current(time.monotonic())
    assert seen.current == [9]
    daemon._note_current(time.monotonic())
    assert seen.current == [9]  # (said once)


def test_not_while_a_render_of_an_earlier_change_waits(tmp_path: Path) -> None:
    daemon, seen = _daemon(tmp_path)
    daemon.planner.wait_min = daemon.planner.wait_max = 60.0  # (the earlier change waits)
    daemon._handle(BatchReceived(ChangeBatch(8, (Change("/a/n", b"1"),), "/a")))
    daemon._handle(BatchReceived(ChangeBatch(9, (Change("/a/n", b"1"),), "/a")))
    daemon._note_current(time.monotonic())
    assert seen.current == []  # the file still says 0: revision 9 is not reflected yet
