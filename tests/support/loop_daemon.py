"""A Daemon fed its queue's events by hand (no follower running): for the loop's pure logic."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

from confsync.daemon import Daemon
from confsync.settings import Settings, WatchSettings
from confsync.stores import Snapshot
from confsync.watcher import SnapshotTaken
from tests.support.cli import write_resource


def one_key_daemon(tmp_path: Path, more: str = "") -> Daemon:
    """Resource `a` (`/a/n` into tmp_path/out; `more`: more of its conf.d lines), its first
    snapshot (revision 5, n = 0) taken and rendered."""
    data = tmp_path / "data.yaml"
    data.write_text("a:\n  n: '0'\n")
    dest, confdir = tmp_path / "out", tmp_path / "cd"
    write_resource(confdir, "a", "{{ getv('/a/n') }}\n",
                   f'dest = "{dest}"\nkeys = ["/a"]\n{more}')
    daemon = Daemon(Settings(confdir=confdir, backend="file", file_paths=(data,),
                             watch=WatchSettings(wait_min=0, wait_max=0)),
                    {"confdir": str(confdir), "backend": "file", "file_paths": [str(data)],
                     "watch.wait_min": "0s", "watch.wait_max": "0s"})
    daemon._handle(SnapshotTaken(Snapshot(5, {"/a/n": b"0"}), "start"))
    assert dest.read_text() == "0\n"
    return daemon


def iterate_until(daemon: Daemon, done: Callable[[], object], what: str,
                  timeout: float = 20.0) -> None:
    """Loop iterations, each a heartbeat, until `done()` (retries come at their backoff, and
    threads of the daemon answer meanwhile); AssertionError naming `what` past `timeout`."""
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while not done():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        daemon._last_beat = 0.0
        daemon._iterate()
        pause.wait(0.05)
