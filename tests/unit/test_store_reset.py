"""The follower and the daemon's mirror after a store reset (pure logic, with a fake store)."""

from __future__ import annotations

import queue
from collections.abc import Sequence

import pytest

from confsync import watcher
from confsync.errors import StoreReset
from confsync.stores import Snapshot, WatchSink
from confsync.watcher import SnapshotTaken, StoreFollower, StreamState


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

    def watch(self, prefixes: Sequence[str], start_revision: int, sink: WatchSink) -> _Handle:
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
