"""The guard that takes a command along when a signal ends confsync (confsync/stop_along.py):
its edges, with real child processes and the handler called as the signal would call it.
The end-to-end cases (a real `confsync once` stopped in its check or reload) are in
tests/integration/test_once_stopped.py."""

from __future__ import annotations

import signal
import subprocess
import threading
from pathlib import Path

import pytest

from confsync import stop_along
from confsync.errors import Stopped
from confsync.processes import state
from tests.support.daemon import wait_for

SIGNALS = stop_along.SIGNALS


def _gone(pid: int) -> bool:
    return state(pid) in (None, "Z")


def _start(script: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(["sh", "-c", script], start_new_session=True)


def test_a_signal_while_the_command_starts_stops_it_once_it_waits() -> None:
    guard = stop_along.Guard()
    guard.handle(signal.SIGTERM, None)  # (unarmed: recorded, nothing raised)
    proc = _start("exec sleep 60")
    with pytest.raises(Stopped) as stopped, guard.running(proc, ["sleep", "60"]):
        proc.wait(60)
    assert stopped.value.signum == signal.SIGTERM
    assert proc.returncode == -signal.SIGTERM  # it got the signal confsync got


def test_what_ignores_the_signal_is_killed_after_the_grace(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stop_along, "GRACE", 0.2)
    kid = tmp_path / "kid"
    proc = _start(f"trap '' TERM; sleep 60 & echo $! > {kid}; wait")
    wait_for(lambda: kid.exists() and kid.read_text().strip(), 30, what="the background child")
    guard = stop_along.Guard()
    with pytest.raises(Stopped), guard.running(proc, ["sh"]):
        guard.handle(signal.SIGTERM, None)
    assert proc.returncode == -signal.SIGKILL
    wait_for(lambda: _gone(int(kid.read_text())), 30, what="its group killed")


def test_what_the_command_started_has_the_grace_too(tmp_path: Path) -> None:
    """A shell leader ends at once on SIGTERM; the helper it started traps it to clean up
    (0.5 s). Its group was SIGKILLed as soon as the leader was gone, the cleanup cut: the
    README promises the group SIGKILL only after the grace (2 s)."""
    kid, cleaned = tmp_path / "kid", tmp_path / "cleaned"
    helper = f"trap 'sleep 0.5; echo done > {cleaned}; exit 0' TERM; echo $$ > {kid}; " \
             "while :; do sleep 0.05; done"
    proc = _start(f"sh -c \"{helper}\" & wait")
    wait_for(lambda: kid.exists() and kid.read_text().strip(), 30, what="the helper")
    guard = stop_along.Guard()
    with pytest.raises(Stopped), guard.running(proc, ["sh"]):
        guard.handle(signal.SIGTERM, None)
    assert proc.returncode == -signal.SIGTERM
    wait_for(lambda: _gone(int(kid.read_text())), 30, what="the helper gone")
    assert cleaned.exists()  # its trap ran to the end


def test_a_second_signal_does_not_cut_the_stop_short() -> None:
    guard = stop_along.Guard()
    proc = _start("exec sleep 60")
    with pytest.raises(Stopped), guard.running(proc, ["sleep"]):
        with pytest.raises(Stopped):
            guard.handle(signal.SIGINT, None)
        guard.handle(signal.SIGTERM, None)  # (returns: the first one is under way)
        raise Stopped(signal.SIGINT)
    assert proc.returncode == -signal.SIGINT


def test_a_signal_outside_the_wait_raises_as_the_command_ends() -> None:
    before = {s: signal.getsignal(s) for s in SIGNALS}
    with pytest.raises(Stopped) as stopped, stop_along.guard() as guard:
        assert guard is not None
        guard.handle(signal.SIGHUP, None)
    assert stopped.value.signum == signal.SIGHUP
    assert {s: signal.getsignal(s) for s in SIGNALS} == before  # restored


def test_nothing_is_caught_off_the_main_thread() -> None:
    seen: list[object] = []

    def run() -> None:
        with stop_along.guard() as guard:
            seen.append(guard)
            seen.append({s: signal.getsignal(s) for s in SIGNALS})

    before = {s: signal.getsignal(s) for s in SIGNALS}
    thread = threading.Thread(target=run)
    thread.start()
    thread.join(30)
    assert seen == [None, before]


def test_a_signal_someone_handles_is_left_to_them() -> None:
    def mine(signum: int, frame: object) -> None:
        """A daemon's own handler."""

    before = {s: signal.getsignal(s) for s in SIGNALS}
    try:
        for signum in SIGNALS:
            signal.signal(signum, mine)
        with stop_along.guard() as guard:
            assert guard is None
            assert all(signal.getsignal(s) is mine for s in SIGNALS)
    finally:
        for signum, handler in before.items():
            signal.signal(signum, handler)
