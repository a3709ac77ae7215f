"""A reload target that stays down (its process not running) for a long time: asked again
every 30 s at most, quietly (pure loop logic: a Daemon on the file backend, fed its queue's
events by hand; the process is looked up for real)."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest

from confsync.daemon import Daemon
from confsync.ops.metrics import Metrics
from confsync.settings import Settings, WatchSettings
from confsync.stores import Snapshot
from confsync.watcher import SnapshotTaken, StreamState
from tests.support.cli import write_resource


def test_each_ask_of_a_target_still_down_is_not_two_lines(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Each retry logged the file up to date (no process) and `nothing running to reload;
    asking again`: two INFO lines every 30 s, 5,760 a day per resource for as long as the
    service stayed down. Now the first ask says what it found, and the same finding again
    at most every 5 minutes; /ready names the resource meanwhile."""
    data = tmp_path / "data.yaml"
    data.write_text("k:\n  v: '1'\n")
    confdir = tmp_path / "cd"
    write_resource(confdir, "app", "{{ getv('/k/v') }}\n",
                   f'dest = "{tmp_path / "out"}"\nkeys = ["/k"]\nreload_signal = "SIGHUP"\n'
                   f'process = "confsync-test-absent"\n')
    metrics = Metrics()
    daemon = Daemon(Settings(confdir=confdir, backend="file", file_paths=(data,),
                             watch=WatchSettings(wait_min=0, wait_max=0)),
                    {"confdir": str(confdir), "backend": "file", "file_paths": [str(data)]},
                    observers=[metrics])
    try:
        daemon._handle(SnapshotTaken(Snapshot(5, {"/k/v": b"1"}), "start"))
        daemon._handle(StreamState(True, 5))
        assert (tmp_path / "out").read_text() == "1\n"
        caplog.set_level(logging.INFO, "confsync")
        caplog.clear()
        now = time.monotonic()
        for _ in range(20):  # 20 asks, each once its backoff has passed
            now += 60
            due = daemon.planner.due(now)
            assert [r.name for r in due] == ["app"]
            daemon.apply(due)
        lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
        assert len(lines) == 1 and "no process for confsync-test-absent" in lines[0], lines
        ok, detail = metrics.readiness()
        assert not ok and any(r.startswith("not running: app") for r in detail["reasons"])
    finally:
        daemon.store.close()
