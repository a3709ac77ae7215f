"""A signal that ends confsync while one of its commands runs takes the command along.

`once` and `check` keep the default action of SIGTERM, SIGINT, SIGHUP, SIGUSR1 and SIGUSR2
(each ends a process): they must stay stoppable wherever they are (start.py holds nothing for
them). But a check or reload command runs in a session of its own (commands.run_command: its
timeout kills its whole group), so a `once` stopped during a 30 s check_cmd (a `docker stop`,
a systemd stop, Ctrl-C) ended alone: the command ran on, orphaned, and the staged file stayed
beside dest.

So while a command runs on the main thread, those of the five signals left at their default
action are caught: the command's process group gets the signal, then SIGKILL after GRACE, and
errors.Stopped unwinds what was under way (the staged file removed, the confdir lock released)
for the CLI to end the process by the same signal (a shell's status 128+signal). Outside that
window nothing is installed: `once` pays nothing and stays stoppable. Signals someone handles
(the daemons' own handlers) and commands on other threads (the daemons' workers, `register`'s
checks) are left alone: there a stop is the daemon's to carry out.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Iterator, Sequence
from subprocess import Popen
from types import FrameType
from typing import Any

from confsync import children
from confsync.errors import Stopped
from confsync.ops import procgroup

# SIGUSR1/SIGUSR2 too: a logrotate-style `kill -USR1` ended `once` alone (138), the command
# orphaned and the staged file left.
SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)
# How long the command's group has to end on the signal before SIGKILL: a reload script's trap
# may clean up, and a container's stop gives confsync 10 s in all.
GRACE = 2.0
_POLL = 0.01
log = logging.getLogger(__name__)


def _default(signum: int, handler: Any) -> bool:
    """Whether `handler` is the signal's default: SIG_DFL, or for SIGINT Python's own
    KeyboardInterrupt (which would unwind, but leave the command running)."""
    return handler is signal.SIG_DFL or (
        signum == signal.SIGINT and handler is signal.default_int_handler)


class Guard:
    """The signals caught while one command may run; armed (`running`) while it does."""

    def __init__(self) -> None:
        self.received: int | None = None
        self.raised = False
        self._armed = False

    def handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received is None:
            self.received = signum
        if self._armed and not self.raised:  # (once: a second signal must not cut the stop)
            self.raised = True
            raise Stopped(signum)

    @contextlib.contextmanager
    def running(self, proc: Popen[bytes], argv: Sequence[str]) -> Iterator[None]:
        """Around the wait for `proc`: a signal raises Stopped into it, and `proc`'s process
        group is stopped before it goes on up. A signal that came while it started is acted
        on here."""
        self._armed = True
        try:
            if self.received is not None and not self.raised:
                self.raised = True
                raise Stopped(self.received)
            yield
        except Stopped as stop:
            self._armed = False
            stop_group(proc, stop.signum, argv)
            raise
        finally:
            self._armed = False


def stop_group(proc: Popen[bytes], signum: int, argv: Sequence[str]) -> None:
    """Send `signum` to `proc`'s group, SIGKILL what is left of it after GRACE, reap `proc`.

    The group is signalled only while its leader is unreaped (alive or a zombie): until then
    its pid names that group and no other (as in ops/procgroup.py)."""
    if proc.returncode is None and not _reaped(proc.pid):
        name = signal.Signals(signum).name
        log.warning("%s while `%s` (pid %d) ran: stopping it and its process group with "
                    "confsync", name, " ".join(argv), proc.pid)
        children.killpg(proc.pid, signum)
        deadline = time.monotonic() + GRACE
        while not children.exited(proc.pid) and time.monotonic() < deadline:
            time.sleep(_POLL)
        # What it started has the same grace: a shell leader ends at once, and its helper's
        # trap (a cleanup) was cut by the SIGKILL a poll later.
        while time.monotonic() < deadline and procgroup.members(proc.pid, proc.pid):
            time.sleep(procgroup.POLL)
        children.killpg(proc.pid, signal.SIGKILL)  # (what ignored it, or outlived the grace)
    proc.wait()


def _reaped(pid: int) -> bool:
    """Whether our child `pid` is gone for good (reaped): its pid may name another group."""
    try:
        os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return True
    return False


@contextlib.contextmanager
def guard() -> Iterator[Guard | None]:
    """Catch the SIGNALS left at their default action while the body (a command's start and
    wait) runs; None where nothing is caught (not the main thread, or every one handled). A
    signal that came outside `Guard.running` raises Stopped as the body ends, whatever it
    raised: the stop wins over its outcome."""
    if threading.current_thread() is not threading.main_thread():
        yield None
        return
    caught = Guard()
    previous: dict[signal.Signals, Any] = {}
    for signum in SIGNALS:
        handler = signal.getsignal(signum)
        if _default(signum, handler):
            previous[signum] = handler
            signal.signal(signum, caught.handle)
    if not previous:
        yield None
        return
    try:
        yield caught
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if caught.received is not None and not caught.raised:
            caught.raised = True
            raise Stopped(caught.received)
