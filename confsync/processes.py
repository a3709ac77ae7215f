"""Finding the process a reload signal goes to, and when a process started. A leaf module:
both reload paths use it."""

from __future__ import annotations

import os
import time
from pathlib import Path


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


def find_process(pidfile: Path | None, process: str | None) -> int | None:
    """The target pid: from a pidfile, else the oldest process whose name or argv[0] matches.

    Oldest, because for a master-worker daemon (HAProxy, nginx) the master is the one that
    started first and the one that must get the signal.
    """
    import psutil  # lazy: only signal-reloading resources pay for it

    if pidfile is not None:
        try:
            text = pidfile.read_text().split()
            pid = int(text[0]) if text else 0
        except (OSError, ValueError):
            return None
        return pid if pid > 0 and psutil.pid_exists(pid) else None
    if process is None:
        return None
    candidates = []
    for proc in psutil.process_iter(["name", "cmdline", "create_time", "ppid"]):
        info = proc.info
        argv0 = os.path.basename(info["cmdline"][0]) if info["cmdline"] else ""
        if process in (info["name"], argv0):
            candidates.append((info["create_time"] or 0.0, proc.pid, info["ppid"]))
    pids = {pid for _, pid, _ in candidates}
    roots = [c for c in candidates if c[2] not in pids]  # skip workers of a matching master
    return min(roots or candidates)[1] if candidates else None
