"""Finding the process a reload signal goes to, and when a process started. Both reload paths
use it; it imports nothing of confsync's but the log helpers."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from confsync.logs import Repeats

log = logging.getLogger(__name__)
_stale = Repeats()


def boot_clock() -> float:
    """Seconds since boot (CLOCK_BOOTTIME): the clock of the kernel's process start times, so
    "did this process start after that moment" needs no wall clock (which may jump)."""
    return time.clock_gettime(time.CLOCK_BOOTTIME)


def started_at(pid: int) -> float | None:
    """When process `pid` started, in `boot_clock()` seconds, rounded down to the kernel's
    clock tick (so a value above a time means it surely started after it); None if unknown."""
    try:
        data = Path(f"/proc/{pid}/stat").read_bytes()
        fields = data[data.rindex(b")") + 2:].split()
        return int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22, starttime, in ticks
    except (OSError, ValueError, IndexError):
        return None


def state(pid: int) -> str | None:
    """The kernel's one-letter state of `pid` ('R', 'S', 'Z' ...), None if there is no such
    process."""
    try:
        data = Path(f"/proc/{pid}/stat").read_bytes()
        return data[data.rindex(b")") + 2:][:1].decode()
    except (OSError, ValueError):
        return None


def _names(pid: int) -> tuple[str, str] | None:
    """(kernel name, basename of argv[0]) of `pid`, None if it is gone."""
    try:
        comm = Path(f"/proc/{pid}/comm").read_text().rstrip("\n")
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return None
    return comm, os.path.basename(argv[0].decode(errors="replace")) if argv else ""


def _matches(process: str, names: tuple[str, str]) -> bool:
    # The kernel cuts a process's name to 15 characters; psutil's process_iter compares the
    # same `name` (which it completes from argv[0]), so a long name matches there and here.
    comm, argv0 = names
    return process in (comm, argv0) or (len(comm) == 15 and process.startswith(comm))


def pidfile_pid(pidfile: Path, process: str | None) -> int | None:
    """The pid in `pidfile` if it names the process meant, else None.

    A pidfile outlives its process (a crash, SIGKILL, a container restarted with its writable
    layer and /run kept), and its number is handed to another process sooner or later; in a
    container, where pids are small, almost at once. A signal sent there (SIGHUP, SIGUSR2)
    reloads or kills the wrong program. So the pid is refused when it is confsync itself, a
    zombie, or, with `process` set too, a process of another name (start-stop-daemon's
    --pidfile with --name). confsync's parent is not refused as such: an HAProxy master that
    runs confsync in a `program` section is its parent and the right target. Each refusal is
    logged, at most every 5 minutes per pidfile and pid.
    """
    try:
        text = pidfile.read_text().split()
        pid = int(text[0]) if text else 0
    except (OSError, ValueError):
        return None
    if pid <= 0:
        return None
    why = None
    if pid == os.getpid():
        why = "confsync itself"
    else:
        names = _names(pid)
        if names is None or state(pid) in (None, "Z", "X"):
            return None  # gone, or exited and not yet reaped: nothing runs to be signalled
        if process is not None and not _matches(process, names):
            why = f"{names[0]!r}, not {process!r}"
    if why is None:
        return pid
    message = f"{pidfile} names pid {pid}, which is {why}: a stale pidfile, not used"
    if _stale.due(message):
        log.warning("%s", message)
    return None


def find_process(pidfile: Path | None, process: str | None) -> int | None:
    """The target pid: from a pidfile, else the oldest process whose name or argv[0] matches.

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
    for proc in psutil.process_iter(["name", "cmdline", "create_time", "ppid", "status"]):
        info = proc.info
        if info["status"] == psutil.STATUS_ZOMBIE:
            continue
        argv0 = os.path.basename(info["cmdline"][0]) if info["cmdline"] else ""
        if process in (info["name"], argv0):
            candidates.append((info["create_time"] or 0.0, proc.pid, info["ppid"]))
    pids = {pid for _, pid, _ in candidates}
    roots = [c for c in candidates if c[2] not in pids]  # skip workers of a matching master
    return min(roots or candidates)[1] if candidates else None
