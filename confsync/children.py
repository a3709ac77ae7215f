"""The processes confsync starts, and reaping every other child when confsync adopts orphans.

In a container without an init, confsync is PID 1 and inherits every orphan: a reload
command's background child, a check script's leftovers, HAProxy's old workers. So does an
exec-mode confsync anywhere, which makes itself a child subreaper (`become_subreaper`) to find
what its child's descendants started and moved out of its process group (ops/strays.py).
Unreaped, each stays a zombie holding a PID until the container's pid limit is reached, months
later. But a
blanket waitpid(-1) would also take the exit status of a command another thread is waiting for
(an exec probe, a check command), and Python then reports it as 0: a failed check passing. So
every process confsync starts is registered here until its owner has waited for it, and only
the others are reaped.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
from collections.abc import Sequence
from typing import Any

from confsync import fdlimit, grpc_fork

# Held while starting a process and while reaping: a child is never seen before it is ours.
_lock = threading.Lock()
_ours: set[int] = set()
_subreaper = False
PR_SET_CHILD_SUBREAPER = 36  # linux/prctl.h


def start(argv: Sequence[str], own_fd_limit: bool = False,
          **popen: Any) -> subprocess.Popen[bytes]:
    """subprocess.Popen, registered as ours until `done(proc)`; with `own_fd_limit` (the
    exec-mode service), with the open-file limit confsync was started with
    (fdlimit.for_children). Not for checks and reloads: the preexec_fn it takes makes
    subprocess fork holding the GIL, where it vforks without one; 40 registrations with an
    exec check every 200 ms (200 forks a second) then starved the registrar's etcd calls on
    a loaded host, and a short-lived check is not what select() or a close-everything
    start-up breaks on."""
    restore = fdlimit.for_children() if own_fd_limit else None
    popen["env"] = grpc_fork.child_env(popen.get("env"))
    if restore is not None:
        popen.setdefault("preexec_fn", restore)
    with _lock:
        proc: subprocess.Popen[bytes] = subprocess.Popen(list(argv), **popen)
        _ours.add(proc.pid)
    return proc


def done(proc: subprocess.Popen[bytes]) -> None:
    """Its owner has waited for it (or given it up): no longer protected from reaping."""
    with _lock:
        _ours.discard(proc.pid)


def exited(pid: int) -> bool:
    """Whether our child `pid` has exited, without reaping it (it keeps naming its group)."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


def killpg(pgid: int, signum: int) -> None:
    """Signal a process group that may be gone (or, set-uid, not ours to signal)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)


def is_init() -> bool:
    """PID 1 (a container without an init): orphans are ours to reap."""
    return os.getpid() == 1


def become_subreaper() -> bool:
    """Make confsync a child subreaper (Linux's prctl): a descendant orphaned below it (a
    daemonizing helper of the exec child, whose parent exited) becomes its child, not init's,
    so that it can still be found and stopped, and must be reaped (`adopts`). False where
    the kernel (not Linux, before 3.4) or a seccomp policy does not allow it: such orphans go
    to init, out of reach, as before."""
    global _subreaper
    if _subreaper or sys.platform != "linux":
        return _subreaper
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        _subreaper = libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        _subreaper = False
    return _subreaper


def adopts() -> bool:
    """Orphans become confsync's children: PID 1, or a child subreaper."""
    return _subreaper or is_init()


def _own_children() -> list[int]:
    """This process's children: /proc/self/task/*/children (each thread lists what it
    forked or adopted), a few reads however many processes the host runs; psutil's scan of
    every /proc/PID where the kernel has no such file (CONFIG_PROC_CHILDREN)."""
    if not os.path.exists(f"/proc/self/task/{os.getpid()}/children"):
        import psutil

        try:
            return [c.pid for c in psutil.Process().children()]
        except psutil.Error:
            return []
    found: list[int] = []
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/children", encoding="ascii") as f:
                found.extend(map(int, f.read().split()))
        except OSError:
            continue  # a thread that ended meanwhile
    return found


def reap_orphans() -> list[int]:
    """Reap every exited child confsync did not start; return their pids.

    Cheap enough for every loop tick: it reads this process's children from /proc and asks
    each one with WNOHANG.
    """
    reaped: list[int] = []
    with _lock:
        for pid in _own_children():
            if pid in _ours:
                continue
            try:
                found, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:  # not (or no longer) our child
                continue
            if found:
                reaped.append(found)
    return reaped
