"""A reload is confirmed once HAProxy has loaded it, on every version's master CLI.

HAProxy 3.1 and later count a reload in `show proc` as soon as the master has re-executed
(milliseconds), while the new worker still loads the file and the old one serves the old
file; a worker that then fails is counted as a failed reload only later. `_loadstatus` (what
`reload` itself answers with) waits while the new worker starts. 2.6 does not know it (its
master answers only once loaded). These fakes answer as those masters do (measured on 2.6.12
and 3.2.0); the real ones are in tests/integration/test_haproxy_reload_race.py.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from confsync.haproxy.master_cli import ReloadNotConfirmed, load_status, reload_confirmed
from tests.support.unix_cli import UnixCLI

UNKNOWN = "Unknown command, but maybe one of the following ones is a better match:\n  ...\n"


def show_proc(reloads: int, failed: int = 0) -> str:
    return ("#<PID>          <type>          <reloads>       <uptime>        <version>\n"
            f"4899            master          {reloads} [failed: {failed}]   0d00h00m20s     "
            "3.2.0\n# workers\n5060            worker          0               0d00h00m00s"
            "     3.2.0\n")


class FakeMaster(UnixCLI):
    """A master CLI on a UNIX socket: `answer(command)` -> text, called as each command
    comes (it may sleep: HAProxy answers `_loadstatus` only once the worker has loaded)."""

    def __init__(self, path: Path, answer: Callable[[str], str]) -> None:
        self.commands: list[str] = []

        def record(command: str) -> str:
            self.commands.append(command)
            return answer(command)

        super().__init__(path, record)


@pytest.fixture
def sockdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="hxl"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


class Master31:
    """HAProxy 3.1+: `reload` counts at once; the worker is ready `load` seconds later
    (`fails`: it exits instead, and the failed counter goes up then)."""

    def __init__(self, load: float, fails: bool = False, busy_until: float = 0.0,
                 outside_after_show: int = 0) -> None:
        self.reloads, self.failed, self.load, self.fails = 0, 0, load, fails
        self.loaded_at = busy_until  # a reload already loading until then (someone else's)
        self.outside_after_show = outside_after_show  # someone's SIGUSR2 after that `show proc`
        self.shows = 0
        self.lost_answer = 0.0  # `reload` answers that much later (an outside re-exec lost it)
        self.lock = threading.Lock()

    def _settle(self) -> None:
        if self.fails and self.loaded_at and time.monotonic() >= self.loaded_at:
            self.failed, self.fails = self.failed + 1, False

    def signal(self) -> None:
        """SIGUSR2 to the master: counted at once, loaded `load` seconds later."""
        with self.lock:
            self.reloads += 1
            self.loaded_at = time.monotonic() + self.load

    def __call__(self, command: str) -> str:
        with self.lock:
            self._settle()
            if command == "show proc":
                answer = show_proc(self.reloads, self.failed)
                self.shows += 1
                if self.shows == self.outside_after_show:
                    self.reloads += 1
                    self.loaded_at = time.monotonic() + self.load
                return answer
            if command == "reload":
                if time.monotonic() < self.loaded_at:
                    return "Success=0\n--\nAnother reload is still in progress.\n"
                self.reloads += 1
                self.loaded_at = time.monotonic() + self.load
                wait = self.load + self.lost_answer
            else:
                assert command == "_loadstatus", command
                wait = self.loaded_at - time.monotonic()
        time.sleep(max(0.0, wait))
        with self.lock:
            self._settle()
            return "Success=0\n--\n[ALERT] (1) : cannot bind\n" if self.failed else "Success=1\n"


def test_a_reload_counted_before_its_worker_loaded_is_confirmed_only_once_loaded(
        sockdir: Path) -> None:
    """On 3.1+ the counter went up 1-40 ms after SIGUSR2, and confsync said confirmed while
    the old file was served for the whole load (1 s here; seconds with big ACL files)."""
    master = Master31(load=0.6)
    fake = FakeMaster(sockdir / "m.sock", master)
    try:
        began = time.monotonic()
        status, _ = reload_confirmed(fake.path, master.signal, timeout=10.0)
        assert time.monotonic() - began >= 0.6
        assert status.reloads == 1
    finally:
        fake.close()


def test_a_worker_failing_after_the_count_is_a_failed_reload(sockdir: Path) -> None:
    """The 3.1+ worker fails after the master counted the reload: not confirmed, and the
    reason from HAProxy's startup log is in the error."""
    fake = FakeMaster(sockdir / "m.sock", Master31(load=0.3, fails=True))
    try:
        with pytest.raises(ReloadNotConfirmed, match="cannot bind"):
            reload_confirmed(fake.path, timeout=10.0)
    finally:
        fake.close()


def test_a_reload_under_way_is_waited_for_and_ours_is_still_sent(sockdir: Path) -> None:
    """A reload by someone else loading when ours comes: 3.1+ refuses `reload` then ("Another
    reload is still in progress"); confsync's reload is not lost, nor confirmed by the
    other one, which may have read the file before it was in place."""
    master = Master31(load=0.2, busy_until=time.monotonic() + 0.4)
    fake = FakeMaster(sockdir / "m.sock", master)
    try:
        status, _ = reload_confirmed(fake.path, timeout=10.0)
        assert status.reloads == 1 and "reload" in fake.commands
        assert time.monotonic() >= master.loaded_at
    finally:
        fake.close()


def test_a_reload_refused_for_one_begun_after_the_counters_is_confirmed_by_it(
        sockdir: Path) -> None:
    """Someone's reload begins between confsync's reading of the counters and its `reload`,
    which 3.1+ refuses. That reload began after the file was in place, so it loads it: it is
    waited for and confirms, and no reload of confsync's is left to come. (Sending ours again
    once it was done never got through a steady stream of outside reloads.)"""
    master = Master31(load=0.4, outside_after_show=1)
    fake = FakeMaster(sockdir / "m.sock", master)
    try:
        status, _ = reload_confirmed(fake.path, timeout=10.0)
        assert time.monotonic() >= master.loaded_at
        assert status.reloads == 1 and fake.commands.count("reload") == 1
    finally:
        fake.close()


def test_a_master_without_load_status_is_confirmed_by_its_counter(sockdir: Path) -> None:
    """2.6 answers `_loadstatus` with its list of commands (its master answers once loaded)."""
    counts = {"n": 3}

    def answer(command: str) -> str:
        if command == "reload":
            counts["n"] += 1
            return ""  # 2.6 closes the connection as it re-executes
        return show_proc(counts["n"], 1) if command == "show proc" else UNKNOWN

    fake = FakeMaster(sockdir / "m.sock", answer)
    try:
        status, _ = reload_confirmed(fake.path, timeout=5.0)
        assert (status.reloads, status.failed) == (4, 1)
        assert load_status(fake.path) is None
    finally:
        fake.close()


def test_a_load_longer_than_the_reload_timeout_is_not_waited_past_it(sockdir: Path) -> None:
    """`reload_timeout` bounds the step (the daemon's loop waits on it): asking whether the
    load is done had a 5 s floor per wait, and held the step seconds past it."""
    master = Master31(load=3.0)
    fake = FakeMaster(sockdir / "m.sock", master)
    try:
        began = time.monotonic()
        with pytest.raises(ReloadNotConfirmed, match="still loading"):
            reload_confirmed(fake.path, master.signal, timeout=1.0)
        assert time.monotonic() - began < 2.0
    finally:
        fake.close()


def test_a_reload_whose_answer_is_lost_is_confirmed_by_the_counters(sockdir: Path) -> None:
    """3.1+: an outside reload re-executing the master while ours loads loses the answer to
    our `reload` (measured on 3.2.0 under load: "no answer to `reload` within 6.7s"). That
    failed the reload and rolled the file back, though a reload counted after the counters
    were read loaded it; the counters and `_loadstatus` tell, within `timeout`."""
    master = Master31(load=0.5)
    master.lost_answer = 20.0
    fake = FakeMaster(sockdir / "m.sock", master)
    try:
        status, seconds = reload_confirmed(fake.path, timeout=8.0)
        assert status.reloads == 1 and seconds < 5.0
    finally:
        fake.close()
