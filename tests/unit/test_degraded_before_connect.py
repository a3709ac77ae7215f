"""A watch that never connects after its first snapshot says so (pure loop logic: the daemon
is fed its queue's events by hand, with no follower running).

etcd gone between the snapshot and the watch: the first render done, then every retry of the
watch failed, and not a line said so for as long as etcd stayed away (a loss was only said
when a connected watch went; before the first snapshot, each reason every 5 minutes)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from confsync.daemon import Daemon
from confsync.settings import Settings, WatchSettings
from confsync.stores import Snapshot
from confsync.watcher import SnapshotTaken, StreamState
from tests.support.cli import write_resource


def _daemon(tmp_path: Path) -> Daemon:
    data = tmp_path / "data.yaml"
    data.write_text("a:\n  n: '0'\n")
    dest, confdir = tmp_path / "out", tmp_path / "cd"
    write_resource(confdir, "a", "{{ getv('/a/n') }}\n", f'dest = "{dest}"\nkeys = ["/a"]')
    daemon = Daemon(Settings(confdir=confdir, backend="file", file_paths=(data,),
                             watch=WatchSettings(wait_min=0, wait_max=0)),
                    {"confdir": str(confdir), "backend": "file", "file_paths": [str(data)],
                     "watch.wait_min": "0s", "watch.wait_max": "0s"})
    daemon._handle(SnapshotTaken(Snapshot(5, {"/a/n": b"0"}), "start"))
    assert dest.read_text() == "0\n"
    return daemon


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno == logging.WARNING and "degraded" in r.getMessage()]


def test_a_watch_that_never_connects_after_the_snapshot_says_so_once(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    daemon = _daemon(tmp_path)
    with caplog.at_level(logging.INFO, logger="confsync"):
        for _ in range(5):
            daemon._handle(StreamState(False, 5, "etcd: connection refused"))
    assert _warnings(caplog) == [
        "degraded: etcd: connection refused; keeping the last good files and retrying"]


def test_a_loss_after_a_connection_is_said_once_and_again_after_the_next(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    daemon = _daemon(tmp_path)
    with caplog.at_level(logging.INFO, logger="confsync"):
        daemon._handle(StreamState(True, 5))
        for _ in range(3):
            daemon._handle(StreamState(False, 5, "lost"))
        daemon._handle(StreamState(True, 6))
        daemon._handle(StreamState(False, 6, "lost"))
    assert len(_warnings(caplog)) == 2
