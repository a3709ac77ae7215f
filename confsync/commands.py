"""Run an operator's check or reload command: argv only, never a shell, always a timeout.

Only `{{src}}` and `{{dest}}` are substituted into it (placeholders.py), so nothing from the data
can ever reach a command line.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import select
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import IO

from confsync import children, stop_along
from confsync.fdlimit import describe
from confsync.ops import procgroup

MAX_OUTPUT = 4000  # characters of command output kept in an error
# The most a command (and whatever it leaves running) may write to its output file, which is
# memory (see _output_file). Writes past it fail (EPERM).
OUTPUT_CAP = 16 * 1024 * 1024
log = logging.getLogger(__name__)


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


def _wait_then_end_group(proc: subprocess.Popen[bytes], timeout: float) -> None:
    """Wait for `proc` to exit, SIGKILL what is left of its process group, then reap it.

    The group is killed while its leader is a zombie, not yet reaped: until then its pid names
    that group and no other. A check like `sh -c "probe & ..."` left a process behind at each
    run (10 a second at interval 100ms), outliving the registrar: within hours the unit's
    TasksMax refused every fork, every exec check failed and the node left its pools."""
    if not _exited_within(proc.pid, timeout):
        raise subprocess.TimeoutExpired(proc.args, timeout)
    children.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _exited_within(pid: int, timeout: float) -> bool:
    """Whether child `pid` exits within `timeout`, without reaping it (a pidfd wakes us at
    its exit; without one, waitid(WNOWAIT) is polled)."""
    try:
        fd = os.pidfd_open(pid)
    except OSError:  # (no pidfd: an old kernel, a seccomp filter)
        return procgroup.wait_exited(pid, time.monotonic() + timeout)
    try:
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        return bool(poller.poll(max(timeout, 0.0) * 1000))
    finally:
        os.close(fd)


def _tail(data: bytes) -> str:
    text = data.decode("utf-8", "replace").strip()
    return text if len(text) <= MAX_OUTPUT else "..." + text[-MAX_OUTPUT:]


def _read_tail(fh: IO[bytes]) -> bytes:
    """The last bytes written to the output file so far (a background child may still write).
    The end is the command's write offset (it shares the file description), not the size: a
    capped file has its full size from the start."""
    end = os.lseek(fh.fileno(), 0, os.SEEK_CUR)
    fh.seek(max(0, end - 4 * MAX_OUTPUT))
    tail = fh.read(min(end, 4 * MAX_OUTPUT))
    if end >= OUTPUT_CAP:
        tail += f"\n(output past {OUTPUT_CAP >> 20} MiB refused)".encode()
    return tail


def _output_file(program: str) -> IO[bytes] | None:
    """Where a command's output goes: an anonymous in-memory file (memfd) where the kernel has
    them. It lives on no filesystem, so a full, read-only or missing /tmp cannot fail the
    command's writes (a check that prints, then minds its write errors, failed with them).

    It is memory, so it is capped (OUTPUT_CAP, sealed against growth): a command printing
    without end (`yes`, a whole journal) filled 2.6 GB in a 1 s check timeout, and a background
    child it left holding its output (a reload's daemon logging to stdout) grew it for as long
    as it ran."""
    memfd_create = getattr(os, "memfd_create", None)
    if memfd_create is not None:
        try:
            fd = memfd_create("confsync-output", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        except OSError:
            pass  # no memfd (seccomp, old kernel): a temporary file instead
        else:
            try:
                os.ftruncate(fd, OUTPUT_CAP)  # (sparse: memory is used as it is written)
                fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_GROW | fcntl.F_SEAL_SHRINK)
            except OSError:
                os.close(fd)
            else:
                return open(fd, "w+b")
    try:
        return tempfile.TemporaryFile()
    except OSError as exc:
        log.warning("no temporary file for the output of `%s` (%s); its output is not kept",
                    program, exc.strerror)
        return None


# Where programs that PATH lacks often are: cron's PATH is /usr/bin:/bin, and haproxy, nginx,
# sshd and the like live in an sbin.
_SBIN = ("/usr/local/sbin", "/usr/sbin", "/sbin")


def cannot_run(program: str, exc: OSError, path: str | None = None) -> str:
    """Why `program` did not start. A bare name missing from PATH (`path`, else confsync's
    own) names that PATH and, when an sbin has it, the absolute path to give instead: under
    cron's or a container's PATH=/usr/bin:/bin, `haproxy -c` failed as "cannot run `haproxy`:
    No such file or directory" while /usr/sbin/haproxy was there."""
    if isinstance(exc, FileNotFoundError) and "/" not in program:
        search = os.environ.get("PATH", os.defpath) if path is None else path
        found = shutil.which(program, path=os.pathsep.join(
            d for d in _SBIN if d not in search.split(os.pathsep)))
        return (f"cannot run `{program}`: not found in PATH ({search})"
                + (f"; {found} exists: write that path in the command, or add "
                   f"{os.path.dirname(found)} to confsync's PATH" if found else ""))
    return f"cannot run `{program}`: {describe(exc)}"


def run_command(argv: Sequence[str], timeout: float,
                end_group: bool = False) -> CommandResult:
    """Run with stdin closed, stdout+stderr captured; on timeout kill its whole process group.

    Output goes to an anonymous file (see _output_file), not a pipe: a command that leaves a
    daemonized child holding its stdout would otherwise block us until that child exits. Only
    the command's own exit is waited for, and its status decides.

    `end_group`: what the command leaves running in its process group when it exits is
    killed too (a probe's work ends with its exit; a reload may start a daemon there).
    """
    start = time.monotonic()
    out = _output_file(argv[0])
    try:
        with stop_along.guard() as stop:
            return _run(argv, timeout, out, start, stop, end_group)
    finally:
        if out is not None:
            out.close()


def _run(argv: Sequence[str], timeout: float, out: IO[bytes] | None, start: float,
         stop: stop_along.Guard | None, end_group: bool = False) -> CommandResult:
    try:
        proc = children.start(argv, stdin=subprocess.DEVNULL,
                              stdout=out if out is not None else subprocess.DEVNULL,
                              stderr=subprocess.STDOUT, start_new_session=True)
    except OSError as exc:
        return CommandResult(False, None, cannot_run(argv[0], exc), time.monotonic() - start)
    try:
        try:
            with stop.running(proc, argv) if stop is not None else contextlib.nullcontext():
                if end_group:
                    _wait_then_end_group(proc, timeout)
                else:
                    proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            output = _tail(_read_tail(out)) if out is not None else ""
            return CommandResult(False, None,
                                 f"`{' '.join(argv)}` timed out after {timeout:g}s and was killed"
                                 + (f"; output: {output}" if output else ""),
                                 time.monotonic() - start)
    finally:
        children.done(proc)
    output = _tail(_read_tail(out)) if out is not None else ""
    return CommandResult(proc.returncode == 0, proc.returncode, output,
                         time.monotonic() - start)
