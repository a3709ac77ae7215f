"""The exec child's process group at stop: what the child started goes with it.

The child leads its own group, and what it starts (a shell's command, HAProxy's workers, a
script's helpers) is in that group unless it moved itself out. Signalling the child alone left
those behind: after stop_timeout's SIGKILL (the child cannot pass anything on) or after a
wrapper exited on stop_signal without passing it on. Outside a container's PID namespace or a
systemd cgroup nobody else cleans them up, and they keep the service's ports.

The group is only signalled while its leader is unreaped (alive or a zombie): the leader's pid
names the group until then, so it cannot be a new process's pid that happens to be equal.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable

from confsync import children
from confsync.children import exited, killpg

POLL = 0.02


def wait_exited(pid: int, deadline: float,
                cut: Callable[[], bool] = lambda: False) -> bool:
    """Wait (not reap) until `pid` exits, `deadline` (monotonic) passes or `cut()` is true."""
    while not exited(pid):
        if time.monotonic() >= deadline or cut():
            return False
        time.sleep(POLL)
    return True


def members(pgid: int, leader: int) -> list[int]:
    """The live processes of group `pgid` other than `leader` (zombies do not count)."""
    import psutil

    found = []
    for pid in psutil.pids():
        if pid == leader:
            continue
        try:
            if os.getpgid(pid) == pgid and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                found.append(pid)
        except (OSError, psutil.Error):
            continue
    return found


def stop_leftovers(leader: int, signum: int, deadline: float,
                   cut: Callable[[], bool] = lambda: False,
                   strays: Callable[[], list[int]] = list) -> list[int]:
    """The leader has exited (unreaped): send `signum` to what is left of its group and to
    `strays()` (its descendants that left the group: ops/strays.py, each signalled once, also
    one found later), wait until `deadline` (or `cut()`), SIGKILL what remains. Returns the pids
    that were left."""
    left, out = members(leader, leader), strays()
    if not left and not out:
        return []
    if left:
        killpg(leader, signum)
    sent = set(out)
    send(out, signum)
    while time.monotonic() < deadline and not cut():
        if children.adopts():
            children.reap_orphans()  # PID 1 or a subreaper: the leftovers are ours to reap
        group, out = members(leader, leader), strays()
        if not group and not out:
            return left + sorted(sent)
        send([pid for pid in out if pid not in sent], signum)
        sent.update(out)
        time.sleep(POLL)
    if members(leader, leader):
        killpg(leader, signal.SIGKILL)
    out = strays()
    send(out, signal.SIGKILL)
    return left + sorted(sent | set(out))


def send(pids: list[int], signum: int) -> None:
    """Signal processes that may be gone (or, set-uid, not ours to signal)."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signum)
