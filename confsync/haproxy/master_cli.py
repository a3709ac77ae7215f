"""The master CLI (`haproxy -W -S <socket>`): trigger a reload and confirm it with `show proc`.

Measured on 2.6: signals sent while a reload runs can be lost, so reloads are serialised and each
one is confirmed (the master's reload counter goes up, its failed counter does not) before the
next is sent. A failed reload (a config that passed `-c` but cannot bind) keeps the old workers.
"""

from __future__ import annotations

import contextlib
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from confsync.haproxy.sockets import SocketUnavailable, query

_MASTER_LINE = re.compile(r"^(\d+)\s+master\s+(\d+)\s+\[failed:\s*(\d+)\]", re.MULTILINE)
_WORKER_LINE = re.compile(r"^(\d+)\s+worker\s+(\d+)\s", re.MULTILINE)
_LOCKS: dict[str, threading.Lock] = {}
_LOCKS_GUARD = threading.Lock()


class ReloadNotConfirmed(Exception):
    """The reload failed, or was not seen to finish in time."""


@dataclass(frozen=True)
class MasterStatus:
    pid: int
    reloads: int
    failed: int
    # The worker forked at the last (re)load: the one that has seen no reload (0), if listed.
    worker: int | None = None
    # Workers left from earlier reloads ("# old workers"): alive while connections they
    # accepted stay open, or until `hard-stop-after`.
    old_workers: tuple[int, ...] = ()


def show_proc(path: Path, retry_for: float = 2.0, timeout: float = 5.0) -> MasterStatus:
    """The master's counters. Raises SocketUnavailable when no master answers within
    `retry_for` (each wait for an answer bounded by `timeout`: a stopped master accepts
    connections and never answers)."""
    text = query(path, "show proc", timeout=timeout, retry_for=retry_for)
    match = _MASTER_LINE.search(text)
    if match is None:
        raise ReloadNotConfirmed(f"unexpected `show proc` answer from {path}: {text[:200]!r}")
    workers = [(int(w[1]), int(w[2])) for w in _WORKER_LINE.finditer(text)]
    current = [pid for pid, reloads in workers if reloads == 0]
    return MasterStatus(int(match[1]), int(match[2]), int(match[3]),
                        max(current) if current else None,
                        tuple(pid for pid, reloads in workers if reloads > 0))


def _lock(path: Path) -> threading.Lock:
    with _LOCKS_GUARD:
        return _LOCKS.setdefault(str(path), threading.Lock())


def reload_confirmed(path: Path, trigger: Callable[[], None] | None = None,
                     timeout: float = 30.0) -> tuple[MasterStatus, float]:
    """Reload (by `trigger`, default `reload` on the master CLI) and wait until it is confirmed.

    Returns the master's status after the reload and the seconds it took. Raises
    SocketUnavailable when no master answers (nothing was sent), ReloadNotConfirmed when the
    reload failed or did not finish within `timeout`. One reload per master at a time within
    this process.

    A reload by someone else (`systemctl reload`: SIGUSR2 to the master) may be under way: the
    master CLI then refuses connections while the new process loads the configuration, for as
    long as that takes, so reading the counters and sending `reload` wait for it up to
    `timeout` (not a fixed half second, which failed our reload on a slow-loading file).
    A stopped master (SIGSTOP, a paused VM) is waited for the same way: it is found by its
    process, and its CLI answers once it runs again.
    """
    with _lock(path):
        deadline = time.monotonic() + timeout
        before = show_proc(path, retry_for=max(2.0, timeout))
        start = time.monotonic()
        if trigger is None:
            # The master re-executes and may drop the connection: expected.
            try:
                with contextlib.suppress(ConnectionResetError, BrokenPipeError):
                    query(path, "reload", retry_for=max(0.5, deadline - time.monotonic()),
                          idempotent=False)
            except TimeoutError as exc:  # sent; whether the master read it, nobody knows
                raise ReloadNotConfirmed(str(exc)) from None
        else:
            trigger()
        while True:
            try:
                status = show_proc(path, retry_for=max(0.1, deadline - time.monotonic()))
            except SocketUnavailable:
                raise ReloadNotConfirmed(f"master CLI {path} stopped answering after the "
                                         "reload") from None
            if status.failed > before.failed:
                raise ReloadNotConfirmed(
                    f"HAProxy rejected the new configuration (reload failed, reloads "
                    f"{status.reloads}, failed {status.failed}); the old workers keep serving. "
                    "HAProxy's master logs why to its own stderr (`journalctl -u haproxy`); "
                    "what `haproxy -c` accepts fails there most often on a bind or on its "
                    "file-descriptor limit (about twice maxconn)")
            if status.reloads > before.reloads:
                return status, time.monotonic() - start
            if time.monotonic() >= deadline:
                raise ReloadNotConfirmed(f"reload not confirmed within {timeout:.0f}s "
                                         f"(reload counter stayed at {status.reloads})")
            time.sleep(0.01)
