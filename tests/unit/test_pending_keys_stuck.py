"""The keys a resource waits to name while its dest is stuck on a frozen filesystem (a real
loop-mounted ext4 frozen with fsfreeze; skipped without root): bounded, whatever the churn
(pure loop logic: a Daemon on the file backend, fed its queue's events by hand)."""

from __future__ import annotations

import logging
import time
import tracemalloc
from pathlib import Path

import pytest

from confsync.daemon import Daemon
from confsync.handoff import BatchReceived
from confsync.settings import Settings, WatchSettings
from confsync.stores import Change, ChangeBatch, Snapshot
from confsync.watcher import SnapshotTaken, StreamState
from tests.support.cli import write_resource
from tests.support.disk import freeze, loop_ext4, thaw


def _churn(daemon: Daemon, first: int, count: int) -> None:
    """Instances that come and go (a key put, then deleted), each at a revision of its own;
    the loop applies what is due as it would."""
    for n in range(first, first + count):
        key = f"/k/i{n:08d}"
        daemon._handle(BatchReceived(ChangeBatch(10 + 2 * n, (Change(key, b"x"),), "/k")))
        daemon._handle(BatchReceived(ChangeBatch(11 + 2 * n, (Change(key, None),), "/k")))
        if n % 200 == 0:
            daemon.apply(daemon.planner.due(time.monotonic() + 1))


def test_key_churn_while_a_dest_is_frozen_keeps_memory_bounded_and_loses_no_change(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A dest stuck on I/O holds its resource until the filesystem returns, for months if
    need be; each changed key was remembered for its log event meanwhile: +3 MB per 20,000
    instances that came and went, for as long as it stayed frozen. Now a resource names at
    most 1,000 keys and counts the rest; at thaw the file is etcd's state of then."""
    data = tmp_path / "data.yaml"
    data.write_text("k:\n  v: '1'\n")
    confdir = tmp_path / "cd"
    with loop_ext4(tmp_path / "fs") as fs:
        dest = fs / "out"
        write_resource(confdir, "app", "{{ getv('/k/v') }} {{ ls('/k') | length }}\n",
                       f'dest = "{dest}"\nkeys = ["/k"]')
        daemon = Daemon(Settings(confdir=confdir, backend="file", file_paths=(data,),
                                 watch=WatchSettings(wait_min=0, wait_max=0)),
                        {"confdir": str(confdir), "backend": "file",
                         "file_paths": [str(data)]})
        assert daemon.syncer.io is not None
        daemon.syncer.io.patience = 0.2
        try:
            daemon._handle(SnapshotTaken(Snapshot(5, {"/k/v": b"1"}), "start"))
            daemon._handle(StreamState(True, 5))
            assert dest.read_text() == "1 1\n"
            freeze(fs)
            try:
                daemon._handle(BatchReceived(ChangeBatch(6, (Change("/k/v", b"2"),), "/k")))
                daemon.apply(daemon.planner.due(time.monotonic() + 1))
                assert daemon.syncer.io_stuck(daemon.state.resources[0])
                _churn(daemon, 0, 2_000)  # (past the keys named)
                tracemalloc.start()
                try:
                    before = tracemalloc.get_traced_memory()[0]
                    _churn(daemon, 2_000, 20_000)
                    grown = tracemalloc.get_traced_memory()[0] - before
                finally:
                    tracemalloc.stop()
                assert grown < 300_000, f"{grown} bytes more after 20,000 keys came and went"
                daemon._handle(BatchReceived(ChangeBatch(99_999, (Change("/k/v", b"3"),),
                                                         "/k")))
            finally:
                thaw(fs)
            caplog.set_level(logging.INFO, "confsync")
            daemon._handle(daemon.events.get(timeout=10))  # IoReturned: the write is done
            daemon.apply(daemon.planner.due(time.monotonic() + 1))
            assert dest.read_text() == "3 1\n"
            event = [r for r in caplog.records if getattr(r, "changed_count", 0)][-1]
            assert event.changed_count > 40_000 and len(event.changed_keys) == 20
            assert len(daemon.pending_keys) == 0
        finally:
            daemon.store.close()
