"""Exec probes of `confsync register`: real processes, judged by the command's own exit."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest

from confsync.register.checks import probe_exec
from confsync.register.config import CheckSpec


def _probe_within(spec: CheckSpec, seconds: float) -> tuple[bool, str]:
    """The probe's answer, or an AssertionError when it has none after `seconds`."""
    answer: list[tuple[bool, str]] = []
    thread = threading.Thread(target=lambda: answer.append(probe_exec(spec)), daemon=True)
    thread.start()
    thread.join(seconds)
    assert answer, f"probe_exec gave no answer within {seconds}s"
    return answer[0]


def test_a_probe_leaving_a_daemonized_child_on_stderr_is_judged_by_its_exit(
        tmp_path: Path) -> None:
    # The child leaves the probe's process group (setsid) and keeps stderr open for 20 s: a
    # probe reading stderr to EOF waited for it, and the check was stuck, i.e. down.
    spec = CheckSpec("exec", timeout=1.0, command=(
        "sh", "-c", f"setsid sleep 20 & echo $! > {tmp_path}/pid; exit 0"))
    started = time.monotonic()
    try:
        assert _probe_within(spec, 5.0) == (True, f"`{spec.target}` exited 0")
        assert time.monotonic() - started < 1.0
    finally:
        pid = int((tmp_path / "pid").read_text())
        os.kill(pid, signal.SIGKILL)


def test_a_failing_probe_names_its_status_and_last_line_of_output() -> None:
    spec = CheckSpec("exec", timeout=2.0, command=("sh", "-c", "echo first; echo 'db down' >&2; exit 3"))
    ok, detail = _probe_within(spec, 5.0)
    assert not ok and detail.endswith("exited 3: db down"), detail


def test_a_hanging_probe_is_killed_at_its_timeout_with_its_group() -> None:
    spec = CheckSpec("exec", timeout=0.5, command=("sh", "-c", "sleep 30 & sleep 30"))
    started = time.monotonic()
    ok, detail = _probe_within(spec, 5.0)
    assert not ok and "timed out after 0.5s" in detail, detail
    assert time.monotonic() - started < 3.0


def test_a_missing_program_is_a_failed_probe_not_an_exception() -> None:
    ok, detail = _probe_within(CheckSpec("exec", command=("/nonexistent/check",)), 5.0)
    assert not ok and "cannot run `/nonexistent/check`" in detail, detail


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_check_thread_that_died_is_started_again_by_revive() -> None:
    from confsync.register.checks import CheckRunner, Result

    class Fatal(BaseException):
        """What no `except Exception` in the check thread catches."""

    results: list[Result] = []

    def report(result: Result) -> None:
        if not results:
            results.append(result)
            raise Fatal("a bug in the report path")
        results.append(result)

    runner = CheckRunner("web", 0, CheckSpec("exec", interval=0.05, command=("true",)), report)
    runner.start()
    try:
        deadline = time.monotonic() + 5
        while runner._thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not runner._thread.is_alive(), "the bug killed the check thread"
        assert runner.revive()
        deadline = time.monotonic() + 5
        while len(results) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(results) >= 3 and results[-1].ok, "revived: probing again"
    finally:
        runner.stop()
    runner.join(2)
    assert not runner.revive(), "a stopped check is not started again"
