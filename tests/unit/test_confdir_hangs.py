"""A confdir whose filesystem stops answering (a network mount whose server died) does not
stop the watch loop.

Every heartbeat stats the confdir (is its lock still on the directory its path names?) on the
loop's thread: on a hung mount that stat never returns, and every resource, the heartbeat,
/health and systemd's watchdog ping stopped with it. The stat is given by the test here (it
hangs until released); the loop is driven by hand (tests/support/loop_daemon.py).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from confsync import confdir_lock, dest_io
from confsync.daemon import Daemon
from confsync.handoff import BatchReceived
from confsync.stores import Change, ChangeBatch
from tests.support.loop_daemon import iterate_until, one_key_daemon

HANG_LIMIT = 15.0  # the old code, which waited for the stat, goes on after this


class HungStat:
    """confdir_lock.same_directory, hanging on `directory` until released."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.real = confdir_lock.same_directory
        self.released = threading.Event()
        self.calls = 0
        self.hanging = 0  # calls blocked now

    def __call__(self, fd: int | None, directory: Path) -> bool:
        if Path(directory) == self.directory:
            self.calls += 1
            self.hanging += 1
            self.released.wait(HANG_LIMIT)
            self.hanging -= 1
        return self.real(fd, directory)


@pytest.fixture
def locked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Daemon, HungStat]]:
    daemon = one_key_daemon(tmp_path)
    confdir = tmp_path / "cd"
    daemon._locks = confdir_lock.DaemonLocks(confdir_lock.try_lock(confdir, exclusive=True))
    hung = HungStat(confdir)
    monkeypatch.setattr(confdir_lock, "same_directory", hung)
    # A network mount, no block device: no disk that completes writes to wait on (dest_io's
    # look at a slow disk; tmp_path's disk may be busy with other tests)
    monkeypatch.setattr(dest_io, "_device_writes", lambda device: None)
    yield daemon, hung
    hung.released.set()
    daemon.store.close()


def _beat(daemon: Daemon) -> None:
    daemon._last_beat = 0.0
    daemon._iterate()


def test_a_confdir_that_stops_answering_holds_no_heartbeat(
        locked: tuple[Daemon, HungStat], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    daemon, hung = locked
    beats: list[float] = []
    daemon.observers.heartbeat = lambda: beats.append(time.monotonic())  # type: ignore[method-assign]
    _beat(daemon)  # its stat hangs: given up on within the dests' deadline
    assert beats and hung.hanging == 1, "the heartbeat waited for the hung stat"
    assert "confdir " in caplog.text and "does not answer" in caplog.text
    daemon._handle(BatchReceived(ChangeBatch(6, (Change("/a/n", b"1"),), "/a")))
    iterate_until(daemon, lambda: (tmp_path / "out").read_text() == "1\n", "the data change")
    for _ in range(3):  # more heartbeats while it hangs: no second stat, no second thread
        _beat(daemon)
    assert hung.calls == 1 and hung.hanging == 1 and len(beats) >= 4
    hung.released.set()
    iterate_until(daemon, lambda: hung.calls >= 2, "the stat again, once it returned")
    assert hung.hanging == 0
