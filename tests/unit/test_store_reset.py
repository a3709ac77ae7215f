"""The follower and the daemon's mirror after a store reset (pure logic, with a fake store)."""

from __future__ import annotations

import queue
from collections.abc import Sequence
from pathlib import Path

import pytest

from confsync import watcher
from confsync.errors import StoreReset
from confsync.stores import Snapshot, WatchSink
from confsync.watcher import SnapshotTaken, StoreFollower, StreamState
from tests.support.cli import write_resource


class _Handle:
    def cancel(self) -> None:
        pass


class FakeStore:
    """First history up to revision 40; after the "recreation", revision 3 of another cluster."""

    name = "fake"

    def __init__(self) -> None:
        self.snapshots = [Snapshot(40, {"/k/a": b"old"}, cluster_id=1),
                          Snapshot(3, {"/k/b": b"new"}, cluster_id=2)]
        self.watch_starts: list[int] = []

    def snapshot(self, prefixes: Sequence[str]) -> Snapshot:
        return self.snapshots.pop(0)

    def watch(self, prefixes: Sequence[str], start_revision: int, sink: WatchSink,
              starts: object = None) -> _Handle:
        self.watch_starts.append(start_revision)
        if len(self.watch_starts) == 1:
            raise StoreReset(1, 2, start_revision - 1, 3)
        return _Handle()

    def close(self) -> None:
        pass


def test_reset_replaces_resume_points_with_the_new_snapshot(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(watcher, "RESNAPSHOT_JITTER", 0.0)
    store = FakeStore()
    out: queue.SimpleQueue[object] = queue.SimpleQueue()
    follower = StoreFollower(store, ["/k/"], out)
    follower.start()
    try:
        events = []
        while len(events) < 3:
            events.append(out.get(timeout=5))
    finally:
        follower.stop()
        follower.join(timeout=5)
    start, reset, connected = events
    assert isinstance(start, SnapshotTaken) and start.reason == "start"
    assert isinstance(reset, SnapshotTaken) and reset.reason == "reset"
    assert reset.cause is not None and reset.cause.new_cluster == 2
    assert reset.snapshot.revision == 3
    assert isinstance(connected, StreamState) and connected.connected
    # Watched from the new snapshot's revision + 1, not from the old history's 41.
    assert store.watch_starts == [41, 4]


class _CountingStore:
    """Snapshots at rising revisions; `during_read` runs inside a read (a request meanwhile)."""

    name = "counting"

    def __init__(self) -> None:
        self.revision = 10
        self.during_read: list[object] = []

    def snapshot(self, prefixes: Sequence[str]) -> Snapshot:
        for call in self.during_read:
            call()  # type: ignore[operator]
        self.during_read = []
        self.revision += 1
        return Snapshot(self.revision, {"/k/a": b"v"})

    def watch(self, prefixes: Sequence[str], start_revision: int, sink: WatchSink,
              starts: object = None) -> _Handle:
        return _Handle()

    def close(self) -> None:
        pass


def test_a_resync_is_owed_until_a_snapshot_read_after_its_request() -> None:
    store = _CountingStore()
    follower = StoreFollower(store, ["/k/"], queue.SimpleQueue())
    assert not follower.resync_owed()
    follower.request_resync()
    assert follower.resync_owed()
    # A read already under way when the request came does not answer it ...
    store.during_read = [follower.request_resync]
    assert follower._snapshot("resync") is not None
    assert follower.resync_owed()
    # ... one started after it does.
    assert follower._snapshot("resync") is not None
    assert not follower.resync_owed()


def test_the_successor_of_a_dead_follower_that_owed_a_resync_starts_with_a_snapshot(
        tmp_path: Path) -> None:
    """A loop error asks the follower for a resync (the loop may have lost an event); a follower
    dead at that moment never took it, and its successor resumed from positions that count the
    lost event as delivered: the files stayed stale until the next change of those keys."""
    from confsync.daemon import Daemon
    from confsync.settings import Settings, WatchSettings

    data = tmp_path / "data.yaml"
    data.write_text("k:\n  a: v\n")
    write_resource(tmp_path / "cd", "k", "{{ getv('/k/a') }}\n",
                   f'dest = "{tmp_path / "out"}"\nkeys = ["/k"]')
    daemon = Daemon(Settings(confdir=tmp_path / "cd", backend="file", file_paths=(data,),
                             watch=WatchSettings(wait_min=0, wait_max=0)))
    daemon.ready = True
    for owed in (False, True):
        dead = StoreFollower(_CountingStore(), ["/k/"], daemon.events,
                             resume={"/k/": 7})  # never started: not alive
        if owed:
            dead.request_resync()
        daemon.follower = dead
        daemon._follower_restart_at = 0.0  # its restart is due
        daemon._check_parts(1.0)
        successor = daemon.follower
        try:
            assert successor is not dead and successor.is_alive()
            if owed:
                event = daemon.events.get(timeout=5)
                assert isinstance(event, SnapshotTaken) and event.reason == "resync"
            else:
                assert successor.positions() == {"/k/": 7}
        finally:
            successor.stop()
            successor.join(timeout=5)
        while not daemon.events.empty():
            daemon.events.get_nowait()


class _LiveResetStore(FakeStore):
    """The watch opens; its position check then finds another history on the live stream."""

    def watch(self, prefixes: Sequence[str], start_revision: int, sink: WatchSink,
              starts: object = None) -> _Handle:
        self.watch_starts.append(start_revision)
        if len(self.watch_starts) == 1:
            sink(StoreReset(1, 2, start_revision - 1, 3))
        return _Handle()


def test_a_reset_found_on_a_live_stream_is_a_lost_stream_until_the_snapshot(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Through a gRPC proxy the stream stays open and the 10 s position check finds the
    reset: /ready said 200 for the 0-4 s of jitter and the read, with the old history's
    files (no StreamState between the watch and the reset's snapshot)."""
    monkeypatch.setattr(watcher, "RESNAPSHOT_JITTER", 0.0)
    store = _LiveResetStore()
    out: queue.SimpleQueue[object] = queue.SimpleQueue()
    follower = StoreFollower(store, ["/k/"], out)
    follower.start()
    try:
        events = [out.get(timeout=5) for _ in range(4)]
    finally:
        follower.stop()
        follower.join(timeout=5)
    start, connected, lost, reset = events
    assert isinstance(start, SnapshotTaken) and start.reason == "start"
    assert isinstance(connected, StreamState) and connected.connected
    assert isinstance(lost, StreamState) and not lost.connected
    assert "store reset" in lost.reason
    assert isinstance(reset, SnapshotTaken) and reset.reason == "reset"
