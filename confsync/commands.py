"""Run an operator's check or reload command: argv only, never a shell, always a timeout.

Only `{{src}}` and `{{dest}}` (or confd's spelling, `{{.src}}` and `{{.dest}}`) are substituted,
and only whole argv elements change, so nothing from the data can ever reach a command line.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

_PLACEHOLDER = re.compile(r"\{\{\s*\.?(src|dest)\s*\}\}")
_ANY_PLACEHOLDER = re.compile(r"\{\{.*?\}\}")
MAX_OUTPUT = 4000  # characters of command output kept in an error


@dataclass(frozen=True)
class CommandResult:
    ok: bool
    returncode: int | None  # None: it did not finish (timeout) or could not start
    output: str
    seconds: float

    def describe(self, argv: Sequence[str]) -> str:
        if self.returncode is None:
            head = self.output
        else:
            head = f"`{' '.join(argv)}` exited {self.returncode}"
            if self.output:
                head += f": {self.output}"
        return head


def substitute(argv: Sequence[str], src: Path, dest: Path) -> list[str]:
    values = {"src": str(src), "dest": str(dest)}
    return [_PLACEHOLDER.sub(lambda m: values[m.group(1)], arg) for arg in argv]


def unknown_placeholder(arg: str) -> str | None:
    """The first `{{...}}` in `arg` that is not a src/dest placeholder (checked at load time, so
    a confd command using other template syntax is an error, not a literal argument)."""
    for match in _ANY_PLACEHOLDER.finditer(arg):
        if not _PLACEHOLDER.fullmatch(match.group()):
            return match.group()
    return None


def _tail(data: bytes) -> str:
    text = data.decode("utf-8", "replace").strip()
    return text if len(text) <= MAX_OUTPUT else "..." + text[-MAX_OUTPUT:]


def run_command(argv: Sequence[str], timeout: float) -> CommandResult:
    """Run with stdin closed, stdout+stderr captured; on timeout kill its whole process group."""
    start = time.monotonic()
    try:
        proc = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, start_new_session=True)
    except OSError as exc:
        return CommandResult(False, None, f"cannot run `{argv[0]}`: {exc.strerror}",
                             time.monotonic() - start)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        return CommandResult(False, None,
                             f"`{' '.join(argv)}` timed out after {timeout:g}s and was killed"
                             + (f"; output: {_tail(out)}" if out else ""),
                             time.monotonic() - start)
    return CommandResult(proc.returncode == 0, proc.returncode, _tail(out),
                         time.monotonic() - start)
