"""A search of the process table that does not return must not hold the watch loop.

Reading /proc/PID/cmdline waits for that process's memory-map lock, which a process stuck
faulting on a dead NFS or FUSE mount holds for good: psutil.process_iter read every process's
cmdline on the loop's thread (a `process = "name"` signal target, at each reload and probe),
and one stuck process anywhere on the host stopped every resource, the heartbeat, /health and
the watchdog ping. The stuck read is given by the test here (a fake `argv` that blocks until
released); the real daemon is tests/integration/test_process_search_hangs.py.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from psutil import _pslinux

from confsync import processes
from confsync.errors import ResourceError
from confsync.handoff import BatchReceived
from confsync.outcome import Outcome, Status
from confsync.resources import Resource
from confsync.stores import Change, ChangeBatch
from confsync.targets import ReloadFailed
from confsync.watcher import StreamState
from tests.support.loop_daemon import iterate_until, one_key_daemon

# How long the fake read hangs at most: the old code, which waited for it, gets its answer
# after that (and so goes on, where the test expects a failure in time) instead of hanging.
HANG_LIMIT = 15.0
NOBODY = "confsync-test-no-such-program"  # (no process has this name: every argv is read)


class StuckTable:
    """Reads of a process's cmdline as on a host where one process's memory is locked for
    good: the first blocks until `release()` (at most HANG_LIMIT). (`processes.argv`, and
    psutil's, which the search read every process's with before.)"""

    def __init__(self, real: Callable[[int], list[str]],
                 real_psutil: Callable[[Any], list[str]]) -> None:
        self.real, self.real_psutil = real, real_psutil
        self.released = threading.Event()
        self.reads = 0

    def argv(self, pid: int) -> list[str]:
        self.reads += 1
        self.released.wait(HANG_LIMIT)
        return self.real(pid)

    def psutil_cmdline(self, proc: Any) -> list[str]:
        self.reads += 1
        self.released.wait(HANG_LIMIT)
        return self.real_psutil(proc)

    def release(self) -> None:
        self.released.set()


@pytest.fixture
def stuck(monkeypatch: pytest.MonkeyPatch) -> Iterator[StuckTable]:
    fake = StuckTable(getattr(processes, "argv", lambda pid: []), _pslinux.Process.cmdline)
    monkeypatch.setattr(processes, "SEARCH_PATIENCE", 0.5, raising=False)
    monkeypatch.setattr(processes, "_bounded", True, raising=False)  # (as `watch` sets it)
    monkeypatch.setattr(processes, "_searching", None, raising=False)
    monkeypatch.setattr(processes, "argv", fake.argv, raising=False)
    monkeypatch.setattr(_pslinux.Process, "cmdline", lambda proc: fake.psutil_cmdline(proc))
    yield fake
    fake.release()  # the search left hanging ends, before the next test's
    for thread in threading.enumerate():
        if thread.name == "confsync-process-search":
            thread.join(5)


def _wait(condition: Callable[[], object], what: str) -> None:
    pause = threading.Event()
    for _ in range(200):
        if condition():
            return
        pause.wait(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _comm(pid: str) -> str | None:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return None


def _searches() -> int:
    return [t.name for t in threading.enumerate()].count("confsync-process-search")


def test_a_hung_search_fails_in_time_and_starts_no_second_one(stuck: StuckTable) -> None:
    with pytest.raises(ReloadFailed) as raised:  # (a TableNotAnswered)
        processes.find_process(None, NOBODY)
    assert ("the process table did not answer: searching /proc for the process named "
            f"'{NOBODY}' has not returned after 0.5s") in str(raised.value)
    assert raised.value.untouched  # (a reload failing here sent nothing to its target)
    for _ in range(5):  # each try while it hangs: no new search, no new thread
        with pytest.raises(ReloadFailed, match="an earlier search has not"):
            processes.find_process(None, "haproxy")
    assert stuck.reads == 1 and _searches() == 1
    stuck.release()
    _wait(lambda: _searches() == 0, "the search that hung to return")
    assert processes.find_process(None, NOBODY) is None  # answered: searched again


def test_only_the_named_processes_arguments_are_read(
        stuck: StuckTable, monkeypatch: pytest.MonkeyPatch) -> None:
    """A name the kernel has (this test's own process) is found from /proc/PID/stat alone:
    a process stuck elsewhere on the host does not hold it."""
    stuck.release()
    own = Path(f"/proc/{os.getpid()}/comm").read_text().strip()
    alike = sum(1 for entry in os.listdir("/proc") if entry.isdigit()
                and _comm(entry) == own)
    assert processes.find_process(None, own) is not None
    assert stuck.reads <= alike  # (cmdline of name-alikes only, if any)


def test_the_loop_goes_on_while_a_signal_targets_search_hangs(
        stuck: StuckTable, tmp_path: Path) -> None:
    """Through the daemon's loop: the resource whose `process` is searched for fails its
    reload at step `reload`, saying the process table did not answer; another resource is
    written meanwhile, at a data change; once the table answers, the retry goes through."""
    daemon = one_key_daemon(tmp_path)
    dest = tmp_path / "svc.out"
    (tmp_path / "cd" / "conf.d" / "svc.toml").write_text(
        f'[template]\nsrc = "a.tmpl"\ndest = "{dest}"\nkeys = ["/a"]\n'
        f'reload_signal = "SIGHUP"\nprocess = "{NOBODY}"\n')
    failed: list[ResourceError] = []
    written: list[Outcome] = []  # svc's applies that went through
    real_apply = daemon.apply

    def apply(resources: list[Resource]) -> list[Outcome]:
        outcomes = real_apply(resources)
        failed.extend(o.error for o in outcomes if o.status is Status.FAILED and o.error)
        written.extend(o for o in outcomes
                       if o.resource.name == "svc" and o.status is Status.UPDATED)
        return outcomes

    daemon.apply = apply  # type: ignore[method-assign]
    other = tmp_path / "out"
    try:
        daemon.reload_config()  # (svc's first apply: its reload searches for the process)
        daemon._handle(StreamState(True, 5))
        iterate_until(daemon, lambda: failed, "the failed reload")
        assert [(e.resource, e.step) for e in failed] == [("svc", "reload")]
        assert ("reload failed: the process table did not answer: searching /proc for the "
                f"process named '{NOBODY}' has not returned after 0.5s") in str(failed[0])
        for n in (b"1", b"2"):  # the loop goes on: a's changes are written, svc fails again
            daemon._handle(BatchReceived(ChangeBatch(6, (Change("/a/n", n),), "/a")))
            iterate_until(daemon, lambda n=n: other.read_bytes() == n + b"\n",
                           "the other resource")
        assert len(failed) >= 2 and all("did not answer" in str(e) for e in failed)
        assert stuck.reads == 1 and _searches() == 1  # (the retries started no search)
        stuck.release()
        count = len(failed)
        iterate_until(daemon, lambda: written, "the retry, answered")
        assert len(failed) == count and dest.exists()
        assert written[0].reload is not None and "no process for" in str(written[0].reload)
    finally:
        daemon.store.close()
