"""/health never says the conf.d/templates watcher recovered while none runs.

A start that failed (conf.d unreadable) marked `local-files` failed; the next heartbeat's start
met conf.d replaced as it scheduled it (a deploy or a ConfigMap update: the path resolved, then
its directory deleted), which leaves no watcher until the heartbeat after, and was taken for a
success: "runs again" logged and `local-files` recovered (/health 200) with no watcher. The
daemon's loop is driven by hand here; the watcher's start is the real one, handed a directory
that is replaced just before it schedules it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from confsync import daemon as daemon_module
from confsync.fswatch import start_observer
from confsync.ops.events import Observer
from confsync.settings import Settings, WatchSettings
from confsync.stores import Snapshot
from confsync.watcher import SnapshotTaken
from tests.support.cli import write_resource


class Parts(Observer):
    """What /health is told of the daemon's parts."""

    def __init__(self) -> None:
        self.failed: dict[str, str] = {}

    def part_failed(self, part: str, reason: str) -> None:
        self.failed[part] = reason

    def part_recovered(self, part: str) -> None:
        self.failed.pop(part, None)


def _confdir(tmp_path: Path) -> tuple[Path, Path]:
    """(data file, confdir) of one resource rendering /a/n, with the file backend."""
    data, confdir = tmp_path / "data.yaml", tmp_path / "cd"
    data.write_text("a:\n  n: '0'\n")
    write_resource(confdir, "a", "{{ getv('/a/n') }}\n",
                   f'dest = "{tmp_path / "out"}"\nkeys = ["/a"]\n')
    return data, confdir


def _daemon(data: Path, confdir: Path, parts: Parts) -> daemon_module.Daemon:
    """A daemon with `[watch] confdir` on, its parts' health told to `parts`."""
    return daemon_module.Daemon(
        Settings(confdir=confdir, backend="file", file_paths=(data,),
                 watch=WatchSettings(wait_min=0, wait_max=0, confdir=True)),
        {"confdir": str(confdir), "backend": "file", "file_paths": [str(data)],
         "watch.confdir": True}, observers=[parts])


def test_a_start_that_met_its_directory_replaced_is_no_recovery(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data, confdir = _confdir(tmp_path)
    # conf.d as a ConfigMap mounts it: a link to a directory that each update replaces
    (tmp_path / "v1").mkdir()
    (confdir / "conf.d").rename(tmp_path / "v1" / "conf.d")
    (confdir / "conf.d").symlink_to(tmp_path / "v1" / "conf.d")
    parts = Parts()
    daemon = _daemon(data, confdir, parts)
    starts: list[str] = []

    def failing_then_replaced(handler: Any, paths: Sequence[str], **kwargs: Any) -> Any:
        starts.append("start")
        if len(starts) == 1:
            raise PermissionError(13, "Permission denied", paths[0])
        if len(starts) == 2:  # an update between the link's lookup and the schedule
            (tmp_path / "v2").mkdir()
            (tmp_path / "v1" / "conf.d").rename(tmp_path / "v2" / "conf.d")
            os.rmdir(tmp_path / "v1")
            (confdir / "conf.d").unlink()
            (confdir / "conf.d").symlink_to(tmp_path / "v2" / "conf.d")
        return start_observer(handler, paths, **kwargs)

    monkeypatch.setattr(daemon_module, "start_observer", failing_then_replaced)
    try:
        daemon._handle(SnapshotTaken(Snapshot(5, {"/a/n": b"0"}), "start"))
        for _ in range(10):  # the first start fails, the second meets conf.d replaced
            daemon._last_beat = 0.0
            daemon._iterate()
            if daemon._local_observer is not None:
                break
            assert "local-files" in parts.failed, f"no watcher, but healthy (start {starts})"
        assert len(starts) == 3 and daemon._local_observer is not None
        assert parts.failed == {}  # it runs: recovered
    finally:
        if daemon._local_observer is not None:
            daemon_module.stop_observer(daemon._local_observer)
        daemon.store.close()


def test_a_watcher_that_cannot_start_with_the_daemon_does_not_end_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """conf.d unreadable (or removed) between its load and the watcher's start: the start
    raised out of `run()` before the loop began, a traceback and exit 1, where every later
    start failing the same way is a failed part the heartbeat tries again."""
    data, confdir = _confdir(tmp_path)
    parts = Parts()
    daemon = _daemon(data, confdir, parts)

    def unreadable(handler: Any, paths: Sequence[str], **kwargs: Any) -> Any:
        raise PermissionError(13, "Permission denied", paths[0])

    monkeypatch.setattr(daemon_module, "start_observer", unreadable)
    monkeypatch.setattr(daemon, "_install_signal_handlers", lambda: None)  # (pytest's own)
    daemon.stopping = True  # the loop itself is not under test: only what comes before it
    assert daemon.run() == 0
    assert "Permission denied" in parts.failed.get("local-files", "")
