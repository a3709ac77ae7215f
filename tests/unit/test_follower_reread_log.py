"""A full re-read that fails (etcd gone right after a compaction) is retried without an INFO
line per try (pure follower logic: a file store whose watch says compacted once, and whose
snapshots then fail a few times)."""

from __future__ import annotations

import logging
import queue
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

from confsync import watcher
from confsync.errors import RevisionCompacted, StoreUnavailable
from confsync.logs import Rereads
from confsync.stores.base import Snapshot, WatchHandle, WatchSink
from confsync.stores.file import FileStore
from confsync.watcher import Backoff, SnapshotTaken, StoreFollower
from tests.support.daemon import wait_for

FAILED_READS = 6


class CutOffStore(FileStore):
    """The first watch says compacted; the next FAILED_READS snapshots fail, as with etcd
    gone; then everything works."""

    def __init__(self, paths: Sequence[Path]) -> None:
        super().__init__(paths)
        self.watches = 0
        self.snapshots = 0

    def snapshot(self, prefixes: Sequence[str]) -> Snapshot:
        self.snapshots += 1
        if 2 <= self.snapshots <= 1 + FAILED_READS:
            raise StoreUnavailable("etcd http://127.0.0.1:1: cannot connect")
        return super().snapshot(prefixes)

    def watch(self, prefixes: Sequence[str], start_revision: int, sink: WatchSink,
              starts: Mapping[str, int] | None = None) -> WatchHandle:
        self.watches += 1
        if self.watches == 1:
            raise RevisionCompacted(start_revision)
        return super().watch(prefixes, start_revision, sink, starts)


def test_a_reread_retried_while_cut_off_is_one_info_line_then_its_outcome(
        tmp_path: Path, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Cut off from etcd after a compaction, "re-reading every key (compacted)" was an INFO
    line at every retry (~10 s apart) for as long as it lasted."""
    monkeypatch.setattr(watcher, "RESNAPSHOT_JITTER", 0.0)
    data = tmp_path / "data.yaml"
    data.write_text("a:\n  v: '1'\n")
    store = CutOffStore([data])
    out: queue.SimpleQueue[object] = queue.SimpleQueue()
    follower = StoreFollower(store, ("/a",), out, backoff=Backoff(base=0.01, cap=0.01))
    caplog.set_level(logging.DEBUG, logger="confsync.watcher")
    follower.start()
    taken = []
    try:
        def compacted_snapshot() -> bool:
            while not out.empty():
                event = out.get()
                if isinstance(event, SnapshotTaken):
                    taken.append(event.reason)
            return "compacted" in taken
        wait_for(compacted_snapshot, 10, what=f"the re-read\n{caplog.text}")
    finally:
        follower.stop()
        follower.join(timeout=5)
    rereads = [(r.levelno, r.getMessage()) for r in caplog.records
               if "re-read" in r.getMessage()]
    assert [level for level, _ in rereads] == \
        [logging.INFO] + [logging.DEBUG] * FAILED_READS + [logging.INFO], rereads
    assert f"try {FAILED_READS + 1}" in rereads[-2][1], rereads
    assert "(compacted) at revision" in rereads[-1][1], rereads
    assert f"after {FAILED_READS + 1} tries" in rereads[-1][1], rereads


def test_a_reread_failing_for_long_is_said_again_every_five_minutes(
        caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    rereads = Rereads(every=300, clock=lambda: now[0])
    caplog.set_level(logging.DEBUG, logger="confsync.watcher")
    for _ in range(61):  # ten minutes of tries every 10 s
        rereads.trying("compacted", 1.0)
        now[0] += 10
    rereads.done("compacted", 42)
    info = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert info == ["re-reading every key (compacted) after 1.00s of jitter",
                    "re-reading every key (compacted) after 1.00s of jitter: try 31 (the "
                    "earlier ones failed)",
                    "re-reading every key (compacted) after 1.00s of jitter: try 61 (the "
                    "earlier ones failed)",
                    "re-read every key (compacted) at revision 42 after 61 tries"], info
    caplog.clear()
    rereads.trying("reset", 0.5)  # the next one is new
    rereads.done("reset", 43)  # and worked at once: nothing more to say
    assert [r.levelno for r in caplog.records] == [logging.INFO]
