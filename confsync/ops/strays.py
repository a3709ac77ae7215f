"""The exec child's descendants that left its process group: found by a mark in their
environment, and stopped with the group (procgroup.py).

A descendant that calls setsid() or setpgid() leaves the child's group: a daemonizing helper, a
double-forking worker, `nohup setsid cmd &` in a wrapper, start-stop-daemon. Signalling the group
missed it; orphaned, it was reparented to init and lived on, holding the service's port, so every
restart of the child failed to bind and the crash loop ended confsync (outside a container or a
cgroup that cleans up, it stayed for good).

Two things find them. confsync makes itself a child subreaper when it starts a child
(children.become_subreaper), so they stay its descendants once their parents are gone. And the
child's environment carries MARK, with a value drawn per Supervisor (after those of the
exec-mode confsyncs above: `joined`), which what the child starts inherits across fork, setsid
and exec: it tells the child's family from what confsync's own check and reload commands and
probes leave behind, which never get it and are not the child's to stop. A process that
clears its environment (`env -i`, sudo) is not recognised, nor one of another user where
confsync lacks CAP_SYS_PTRACE (the shipped unit, Docker's default capabilities): its
environment cannot be read.
"""

from __future__ import annotations

import os
import secrets
import signal
import time

from confsync.ops.procgroup import send
from confsync.settings import EXEC_MARK_ENV

MARK = EXEC_MARK_ENV
POLL = 0.02


def new_mark() -> str:
    return secrets.token_hex(8)


def joined(inherited: str | None, mark: str) -> str:
    """The child's MARK: `mark` after the marks of the exec-mode confsyncs above this one (a
    `register --exec` run by a `watch --exec`). Each one finds the child's family by its own:
    with the inner one's mark in place of the outer one's, what the inner one left when it
    died (killed, or the outer's SIGKILL at the end of stop_timeout) was the outer one's to
    stop, and it knew none of it."""
    return f"{inherited} {mark}" if inherited else mark


def find(mark: str, group: int) -> list[int]:
    """Live descendants of confsync whose environment has MARK=`mark`, outside process group
    `group` (the child's: procgroup signals that one as a whole)."""
    import psutil

    try:
        descendants = psutil.Process().children(recursive=True)
    except psutil.Error:
        return []
    found = []
    for proc in descendants:
        try:
            if proc.status() == psutil.STATUS_ZOMBIE or os.getpgid(proc.pid) == group:
                continue
            if mark in proc.environ().get(MARK, "").split():
                found.append(proc.pid)
        except (OSError, psutil.Error):  # gone meanwhile, or not ours to read (nor to signal)
            continue
    return found


def kill(mark: str, group: int, seconds: float = 1.0) -> list[int]:
    """SIGKILL them, again while new ones appear (one forked meanwhile), for `seconds` at most.
    Returns the pids found first."""
    first = found = find(mark, group)
    deadline = time.monotonic() + seconds
    while found and time.monotonic() < deadline:
        send(found, signal.SIGKILL)
        time.sleep(POLL)
        found = find(mark, group)
    return first
