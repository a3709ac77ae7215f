"""Who listens on a port, told so that a failed HAProxy test names the process that serves:
its pid, parent, process group, age, command line, and which master the test started it
under (an HAProxy master the test stopped whose worker lives on, with SO_REUSEPORT, takes
a share of the connections and serves its own config's servers)."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence

import psutil


def listeners(port: int) -> dict[int | None, int]:
    """pid -> number of TCP sockets it listens with on `port` (None: not ours to see)."""
    found: dict[int | None, int] = {}
    for conn in psutil.net_connections(kind="tcp"):
        if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port:
            found[conn.pid] = found.get(conn.pid, 0) + 1
    return found


def describe(pid: int | None, masters: Sequence[int]) -> str:
    """One line about listener `pid`: who it is and whose (`masters`: the pids of the masters
    the test started, oldest first; the last is the current one)."""
    if pid is None:
        return "pid unknown"
    try:
        proc = psutil.Process(pid)
        with proc.oneshot():
            ppid, pgid = proc.ppid(), os.getpgid(pid)
            age = time.time() - proc.create_time()
            argv = " ".join(proc.cmdline())
            status = proc.status()
    except (psutil.Error, OSError) as exc:
        return f"pid {pid}: gone ({type(exc).__name__})"
    group = next((m for m in (pgid, ppid, pid) if m in masters), None)
    if group is None:
        whose = "not started by this test's HAProxyStack"
    elif group == masters[-1]:
        whose = f"of the current master {group}"
    else:
        whose = (f"STRAY: of master {group}, started #{masters.index(group) + 1} of "
                 f"{len(masters)} and stopped since")
    return (f"pid {pid} ppid {ppid} pgid {pgid} {status}, {age:.1f} s old, {whose}: "
            f"{argv[:200]}")


def strays(port: int, masters: Sequence[int]) -> list[int]:
    """Listeners on `port` that are not the current master's family (the last of `masters`)."""
    current = masters[-1] if masters else None
    out = []
    for pid in listeners(port):
        if pid is None:
            continue
        try:
            pgid = os.getpgid(pid)
        except OSError:
            continue
        if pgid != current:
            out.append(pid)
    return out


def report(port: int, masters: Sequence[int]) -> str:
    """Every listener on `port`, one line each."""
    found = listeners(port)
    if not found:
        return f"nothing listens on :{port}"
    return "\n".join(f"  {describe(pid, masters)} ({n} socket(s))" for pid, n in found.items())
