"""Finding the process a reload signal goes to, and when a process started. Both reload paths
use it; it imports nothing of confsync's but the log helpers."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

from confsync.logs import Repeats
from confsync.paths import expand_user

if TYPE_CHECKING:
    import psutil

log = logging.getLogger(__name__)
_stale = Repeats()


def boot_clock() -> float:
    """Seconds since boot (CLOCK_BOOTTIME): the clock of the kernel's process start times, so
    "did this process start after that moment" needs no wall clock (which may jump)."""
    return time.clock_gettime(time.CLOCK_BOOTTIME)


def _stat_fields(pid: int) -> list[bytes] | None:
    """The fields of /proc/<pid>/stat after the command name (field 3, the state, first);
    None if there is no such process."""
    try:
        data = Path(f"/proc/{pid}/stat").read_bytes()
        return data[data.rindex(b")") + 2:].split()
    except (OSError, ValueError):
        return None


def started_at(pid: int) -> float | None:
    """When process `pid` started, in `boot_clock()` seconds, rounded down to the kernel's
    clock tick (so a value above a time means it surely started after it); None if unknown."""
    fields = _stat_fields(pid)
    try:
        return int(fields[19]) / os.sysconf("SC_CLK_TCK") if fields else None  # starttime
    except (ValueError, IndexError):
        return None


def state(pid: int) -> str | None:
    """The kernel's one-letter state of `pid` ('R', 'S', 'Z' ...), None if there is no such
    process."""
    fields = _stat_fields(pid)
    return fields[0].decode() if fields else None


def _is_named(process: str, name: str, cmdline: list[str]) -> bool:
    """`process` is the process's name (psutil's, completed past the kernel's 15 characters)
    or the basename of its argv[0]."""
    return process in (name, os.path.basename(cmdline[0]) if cmdline else "")


def pidfile_pid(pidfile: Path, process: str | None) -> int | None:
    """The pid in `pidfile` if it names the process meant, else None.

    A pidfile outlives its process (a crash, SIGKILL, a container restarted with its writable
    layer and /run kept), and its number is handed to another process sooner or later; in a
    container, where pids are small, almost at once. A signal sent there (SIGHUP, SIGUSR2)
    reloads or kills the wrong program. So the pid is refused when it is confsync itself, a
    zombie, or, with `process` set too, a process of another name (start-stop-daemon's
    --pidfile with --name); and when another user (not root, not ours) owns the pidfile or a
    link to it, one that user could not signal itself (`_not_theirs`). confsync's parent is
    not refused as such: an HAProxy master that runs confsync in a `program` section is its
    parent and the right target. Each refusal is logged, at most every 5 minutes per pidfile
    and pid.
    """
    try:
        # (A `~user` not known yet, ValueError: as a pidfile not there yet.) Non-blocking and
        # bounded: a FIFO or a link to /dev/zero there must not hold or fill confsync. Nor
        # may a terminal become ours: a session leader (a systemd service, a container's PID
        # 1) opening a user's pty through their link had it as controlling terminal, and
        # their Ctrl-C stopped confsync.
        path = expand_user(pidfile)
        fd = os.open(path,
                     os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
        with open(fd, "rb") as fh:
            opened = os.fstat(fd)
            # (None: a FIFO whose writer has written nothing yet, as an empty pidfile)
            text = (fh.read(4096) or b"").decode("utf-8").split()
        pid = int(text[0]) if text else 0
    except (OSError, ValueError):
        return None
    if pid <= 0:
        return None
    import psutil  # lazy: only signal-reloading resources pay for it

    why = None
    if pid == os.getpid():
        why = "confsync itself: a stale pidfile"
    else:
        try:
            proc = psutil.Process(pid)
            with proc.oneshot():
                if proc.status() == psutil.STATUS_ZOMBIE:
                    return None  # exited, not yet reaped: nothing runs to be signalled
                name, cmdline = proc.name(), proc.cmdline()
        except psutil.Error:
            return None  # gone
        if process is not None and not _is_named(process, name, cmdline):
            why = f"{name!r}, not {process!r}: a stale pidfile"
        else:
            why = _not_theirs(path, opened, proc)
    if why is None:
        return pid
    message = f"{pidfile} names pid {pid}, which is {why}, not used"
    if _stale.due(message):
        log.warning("%s", message)
    return None


def _not_theirs(path: Path, opened: os.stat_result, proc: psutil.Process) -> str | None:
    """Why the process the pidfile at `path` (read as `opened`) names is not one its writers could
    signal themselves, or None: a user other than root and ours who owns the pidfile (or a
    link on the way to it) chose the number, and only their own processes may get our signal
    (path_writers.py)."""
    import psutil

    from confsync.path_writers import untrusted_writers

    try:
        writers = untrusted_writers(str(path), opened)
        real, _, saved = proc.uids()
    except (OSError, ValueError, psutil.Error):  # (ValueError: replaced since it was read)
        return "a process whose owner, or its pidfile's, cannot be told"
    others = sorted(uid for uid in writers if uid not in (real, saved))
    if not others:
        return None
    return (f"a process of uid {real}, while uid {others[0]} owns the pidfile or a link to "
            f"it (and so chose the number)")


def find_process(pidfile: Path | None, process: str | None) -> int | None:
    """The target pid: from a pidfile, else the oldest process whose name or argv[0] matches
    (root's or confsync's user's first).

    Oldest, because for a master-worker daemon (HAProxy, nginx) the master is the one that
    started first and the one that must get the signal. A pidfile that is stale (see
    `pidfile_pid`) falls back to the name when `process` is given too.
    """
    if pidfile is not None:
        pid = pidfile_pid(pidfile, process)
        if pid is not None or process is None:
            return pid
    if process is None:
        return None
    import psutil  # lazy: only resources that find their target by name pay for it

    candidates = []
    trusted = (0, os.geteuid())
    for proc in psutil.process_iter(["name", "cmdline", "create_time", "ppid", "status"]):
        info = proc.info
        if info["status"] == psutil.STATUS_ZOMBIE:
            continue
        if _is_named(process, info["name"], info["cmdline"] or []):
            # Another user's only where no process of root's or ours has the name: anyone may
            # name a program `nginx`, and an older one took the reloads meant for the real one
            # after its restart (which then never reloaded, while confsync said it did). (Owners
            # asked of matches only: the scan runs each second while the target is down.)
            try:
                stranger = proc.uids().real not in trusted
            except psutil.Error:
                stranger = True
            candidates.append((stranger, info["create_time"] or 0.0, proc.pid, info["ppid"]))
    pids = {c[2] for c in candidates}
    roots = [c for c in candidates if c[3] not in pids]  # skip workers of a matching master
    return min(roots or candidates)[2] if candidates else None
