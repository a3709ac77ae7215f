"""Run `confsync watch` as a real subprocess and wait for what it does."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from confsync.processes import state
from tests.support.cli import REPO


def wait_for(predicate: Callable[[], object], timeout: float = 10.0, interval: float = 0.02,
             what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def read(path: Path) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        return ""


def reads(path: Path, text: str) -> bool:
    """For wait_for(functools.partial(reads, dest, expected)) inside a loop."""
    return read(path) == text


def running(pid: int) -> bool:
    """Whether `pid` runs: a zombie (ended, its parent or adopter yet to reap it) or no such
    process does not."""
    return state(pid) not in (None, "Z")


def catches(pid: int, signum: int) -> bool:
    """The process has a handler for `signum` (SigCgt in /proc/<pid>/status)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    caught = next(line.split()[1] for line in status.splitlines() if line.startswith("SigCgt"))
    return bool(int(caught, 16) >> (signum - 1) & 1)


class WatchProcess:
    def __init__(self, *args: str, log: Path, env: dict[str, str] | None = None,
                 wrapper: Sequence[str] = (), cwd: Path | None = None) -> None:
        self.log = log
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("CONFSYNC_")}
        full_env.update(env or {})
        self._log_fh = log.open("ab")
        self.proc = subprocess.Popen([*wrapper, sys.executable, "-m", "confsync", "watch", *args],
                                     stdout=self._log_fh, stderr=subprocess.STDOUT,
                                     env=full_env, cwd=cwd or REPO)

    def output(self) -> str:
        return read(self.log)

    def wait_log(self, text: str, timeout: float = 10.0, count: int = 1) -> None:
        wait_for(lambda: self.output().count(text) >= count, timeout, what=f"log {text!r}"
                 f" x{count}; log so far:\n{self.output()[-3000:]}")

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def stop(self, timeout: float = 15.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.send_signal(signal.SIGCONT)  # a test that stopped it may have failed
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log_fh.close()
        return self.proc.returncode
