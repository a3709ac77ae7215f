"""A watch that never connects after its first snapshot says so (pure loop logic: the daemon
is fed its queue's events by hand, with no follower running).

etcd gone between the snapshot and the watch: the first render done, then every retry of the
watch failed, and not a line said so for as long as etcd stayed away (a loss was only said
when a connected watch went; before the first snapshot, each reason every 5 minutes)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from confsync.watcher import StreamState
from tests.support.loop_daemon import one_key_daemon


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno == logging.WARNING and "degraded" in r.getMessage()]


def test_a_watch_that_never_connects_after_the_snapshot_says_so_once(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    daemon = one_key_daemon(tmp_path)
    with caplog.at_level(logging.INFO, logger="confsync"):
        for _ in range(5):
            daemon._handle(StreamState(False, 5, "etcd: connection refused"))
    assert _warnings(caplog) == [
        "degraded: etcd: connection refused; keeping the last good files and retrying"]


def test_a_loss_after_a_connection_is_said_once_and_again_after_the_next(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    daemon = one_key_daemon(tmp_path)
    with caplog.at_level(logging.INFO, logger="confsync"):
        daemon._handle(StreamState(True, 5))
        for _ in range(3):
            daemon._handle(StreamState(False, 5, "lost"))
        daemon._handle(StreamState(True, 6))
        daemon._handle(StreamState(False, 6, "lost"))
    assert len(_warnings(caplog)) == 2
