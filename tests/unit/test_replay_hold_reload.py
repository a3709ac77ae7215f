"""A SIGHUP during a resumed watch's replay waits for the replay like any render (pure loop
logic: the daemon is fed its queue's events by hand, with no follower running)."""

from __future__ import annotations

import time
from pathlib import Path

from confsync.daemon import Daemon
from confsync.handoff import BatchReceived
from confsync.settings import Settings, WatchSettings
from confsync.stores import Change, ChangeBatch, Snapshot
from confsync.watcher import SnapshotTaken, StreamState
from tests.support.cli import write_resource


def _batch(revision: int, key: str, value: bytes) -> BatchReceived:
    return BatchReceived(ChangeBatch(revision, (Change(key, value),), key[:2]))


def test_a_sighup_during_a_replay_renders_no_half_of_a_txn(tmp_path: Path) -> None:
    """After a reconnect etcd replays each prefix's missed revisions apart (its loop for
    lagging watches, every 100 ms): renders wait for the rest. A SIGHUP meanwhile applied its
    set at once: a file with /a of a txn and /b of before, which etcd never held."""
    data = tmp_path / "data.yaml"
    data.write_text("a:\n  n: '0'\nb:\n  n: '0'\n")
    dest, confdir = tmp_path / "out", tmp_path / "cd"
    write_resource(confdir, "ab", "{{ getv('/a/n') }} {{ getv('/b/n') }}\n",
                   f'dest = "{dest}"\nkeys = ["/a", "/b"]')
    daemon = Daemon(Settings(confdir=confdir, backend="file", file_paths=(data,),
                             watch=WatchSettings(wait_min=0, wait_max=0)),
                    {"confdir": str(confdir), "backend": "file", "file_paths": [str(data)],
                     "watch.wait_min": "0s", "watch.wait_max": "0s"})
    try:
        daemon._handle(SnapshotTaken(Snapshot(5, {"/a/n": b"0", "/b/n": b"0"}), "start"))
        daemon._handle(StreamState(True, 5))
        assert dest.read_text() == "0 0\n"
        daemon._handle(StreamState(False, 5, "lost"))
        daemon._handle(_batch(6, "/a/n", b"1"))  # a txn of /a and /b: /a's replay came first
        assert daemon.reload_config()
        assert dest.read_text() == "0 0\n"  # not "1 0"
        daemon._handle(_batch(6, "/b/n", b"1"))
        daemon._handle(StreamState(True, 6))
        later = time.monotonic() + 5  # past the replay hold
        assert daemon._replay_hold(later) is None
        daemon.apply(daemon.planner.due(later))
        assert dest.read_text() == "1 1\n"
    finally:
        daemon.store.close()
