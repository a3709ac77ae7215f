"""DestIo: a dest's file call past its patience is left running, stuck, alone on its dest."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from confsync.dest_io import DestIo, IoStuck, Progress

A, B, C = Path("/d/a"), Path("/d/b"), Path("/d/c")


def _blocked(gate: threading.Event, calls: list[Path], dest: Path) -> bool:
    calls.append(dest)
    gate.wait(10)
    return True


def test_a_call_past_its_patience_is_stuck_and_its_dest_gets_no_second_call() -> None:
    returned: list[Path] = []
    io = DestIo(patience=0.2, on_return=returned.append)
    gate, calls = threading.Event(), []
    try:
        began = time.monotonic()
        with pytest.raises(IoStuck) as stuck:
            io.call("app", A, "stage", lambda _: _blocked(gate, calls, A))
        assert 0.2 <= time.monotonic() - began < 2
        assert stuck.value.step == "stage" and "stuck on I/O" in str(stuck.value)
        assert io.stuck(A) and not io.stuck(B)
        threads = threading.active_count()
        for _ in range(5):  # refused at once: no second call, no second thread
            with pytest.raises(IoStuck, match="an earlier stage"):
                io.call("app", A, "stage", lambda _: _blocked(gate, calls, A))
        assert calls == [A] and threading.active_count() == threads
        assert io.call("other", B, "stage", lambda _: 7) == 7  # another dest goes on
        assert io.release(A) is None  # not returned yet
    finally:
        gate.set()
    deadline = time.monotonic() + 5
    while not returned and time.monotonic() < deadline:
        time.sleep(0.01)
    assert returned == [A] and io.stuck(A)  # stuck until the loop releases it
    step, seconds = io.release(A) or ("", 0.0)
    assert step == "stage" and seconds >= 0.2 and not io.stuck(A)
    assert io.call("app", A, "stage", lambda _: 1) == 1


def test_progress_gives_a_check_its_own_time_and_errors_reach_the_caller() -> None:
    io = DestIo(patience=0.2)

    def slow_check(progress: Progress) -> str:
        progress("check", 1.0)
        time.sleep(0.5)
        progress("install", 0.0)
        return "done"

    assert io.call("app", A, "stage", slow_check) == "done"

    def fails(_: Progress) -> None:
        raise PermissionError(13, "Permission denied", str(A))

    with pytest.raises(PermissionError):
        io.call("app", A, "stage", fails)
    assert not io.stuck(A)


def test_each_stats_every_dest_in_one_call_and_stops_at_a_stuck_one() -> None:
    io = DestIo(patience=0.2)
    gate, calls = threading.Event(), []
    try:
        results, stuck = io.each([("a", A), ("b", B), ("c", C)], "stat",
                                 lambda d: d != B or _blocked(gate, calls, d))
        assert results == {A: True} and stuck is not None
        assert stuck.resource == "b" and stuck.dest == B and io.stuck(B)
        results, stuck = io.each([("a", A), ("b", B), ("c", C)], "stat", lambda d: False)
        assert results == {A: False, C: False} and stuck is None  # b skipped, still stuck
    finally:
        gate.set()
    deadline = time.monotonic() + 5
    while io.stuck(B) and time.monotonic() < deadline:  # no on_return: released at next use
        io.each([("b", B)], "stat", lambda d: False)
        time.sleep(0.01)
    assert not io.stuck(B) and calls == [B]


def _stuck_within(io: DestIo, first: Path, neighbour: Path, elsewhere: Path) -> None:
    """Blocked calls on `first`, then `neighbour`, then `elsewhere` (patience 1 s): the
    neighbour of the stuck one is given up on within NEIGHBOUR_PATIENCE, the others not."""
    gate: threading.Event = threading.Event()
    calls: list[Path] = []
    try:
        for dest, within in ((first, (1.0, 2.5)), (neighbour, (0.2, 0.8)),
                             (elsewhere, (1.0, 2.5))):
            began = time.monotonic()
            with pytest.raises(IoStuck):
                io.call("r", dest, "stage", lambda _, d=dest: _blocked(gate, calls, d))
            assert within[0] <= time.monotonic() - began < within[1], dest
    finally:
        gate.set()


def test_a_dest_beside_a_stuck_one_is_given_up_on_sooner() -> None:
    """Same directory, same filesystem: ten dests in a frozen directory must not hold the
    loop ten patiences; a dest elsewhere still gets the whole patience."""
    _stuck_within(DestIo(patience=1.0), A, B, Path("/e/c"))


def test_a_dest_on_the_filesystem_of_a_stuck_one_is_given_up_on_sooner(tmp_path: Path) -> None:
    """Another directory of the same filesystem (known by its device from an earlier call)
    is as frozen as the stuck dest's: it no longer costs the whole patience. A dest on
    another filesystem (/dev/shm, a tmpfs) still gets it."""
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    other = Path("/dev/shm")
    if not other.is_dir() or other.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip("no second filesystem at /dev/shm")
    # No slow-disk allowance: tmp_path is on a real block device, which other jobs keep
    # writing to, and that is (rightly) a slow disk waited for past the patience.
    io = DestIo(patience=1.0, slow_limit=0.0)
    for dest in (one / "a", two / "b", other / "c"):
        assert io.call("r", dest, "stage", lambda _: 1) == 1  # (devices noted)
    _stuck_within(io, one / "a", two / "b", other / "c")


def test_a_background_call_runs_one_at_a_time_and_its_error_is_logged(
        caplog: pytest.LogCaptureFixture) -> None:
    """File work nobody waits for (removing leftovers at each heartbeat): a call that has not
    returned makes the next a no-op (one blocked thread, not one per heartbeat), and what it
    raises is logged, not lost with its thread."""
    io = DestIo(patience=0.2)
    gate, calls = threading.Event(), []
    io.background("tidy", lambda: _blocked(gate, calls, A))
    deadline = time.monotonic() + 5
    while not calls and time.monotonic() < deadline:
        time.sleep(0.01)
    threads = threading.active_count()
    for _ in range(5):
        io.background("tidy", lambda: _blocked(gate, calls, A))
    assert calls == [A] and threading.active_count() == threads
    gate.set()

    def fails() -> None:
        raise OSError("boom")

    deadline = time.monotonic() + 5
    while "boom" not in caplog.text and time.monotonic() < deadline:
        io.background("tidy", fails)
        time.sleep(0.01)
    assert "tidy: unexpected error on a file worker" in caplog.text and calls == [A]
