"""The master CLI (`haproxy -W -S <socket>`): trigger a reload and confirm it with `show proc`.

Measured on 2.6: signals sent while a reload runs can be lost, so reloads are serialised and each
one is confirmed (the master's reload counter goes up, its failed counter does not) before the
next is sent. A failed reload (a config that passed `-c` but cannot bind) keeps the old workers.

Since 3.1 the master no longer loads the configuration: it re-executes in milliseconds and counts
the reload, then the new worker loads the file (seconds for a big one) while the old workers
serve the old one, and a worker that fails counts as a failed reload only then. The counter alone
confirmed reloads the old file was still serving (and that then failed). So a reload is confirmed
only once the master's `_loadstatus` (the command behind `reload`'s own answer, since 2.7; it
waits while a new worker starts) says the load finished; 2.6 does not know it, and needs no
wait: its master answers only once loaded. A `reload` sent while another one loads is refused
there ("Another reload is still in progress"): that one confirms it if it began after the file
was in place, else ours is sent again once it is done.
"""

from __future__ import annotations

import contextlib
import errno
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from confsync.haproxy.sockets import SocketUnavailable, query

_MASTER_LINE = re.compile(r"^(\d+)\s+master\s+(\d+)\s+\[failed:\s*(\d+)\]", re.MULTILINE)
_WORKER_LINE = re.compile(r"^(\d+)\s+worker\s+(\d+)\s", re.MULTILINE)
_LOCKS: dict[str, threading.Lock] = {}
_LOCKS_GUARD = threading.Lock()
# While the master CLI does not answer during a confirmed reload, whether the master still runs
# is asked this often (a reload keeps it refusing for up to a second or so; a stop for good).
WAIT_SLICE = 0.1
ANSWER_MIN = 5.0  # the least a `reload` sent is given to answer
REFUSAL_WAIT = 2.0  # how long a `reload`'s answer is read (3.1+ refuses at once; else it acts)
T = TypeVar("T")


class ReloadNotConfirmed(Exception):
    """The reload failed, or was not seen to finish in time."""


class MasterGone(Exception):
    """The master stopped (its process gone, or another master in its place) before the
    reload was confirmed: nothing is left to confirm it, and what starts next reads the file."""


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


_IN_PROGRESS = "Another reload is still in progress"


def _failure(answer: str) -> str | None:
    """What a `reload` or `_loadstatus` answer (2.7+: `Success=0|1`, `--`, the startup log)
    says went wrong; None for a success or any other answer."""
    first, _, log = answer.lstrip().partition("\n")
    if first.strip() != "Success=0":
        return None
    alerts = [line.strip() for line in log.splitlines() if "[ALERT]" in line]
    return "; ".join(alerts[-3:]) or "the new worker failed to start"


def load_status(path: Path, retry_for: float = 2.0, timeout: float = 5.0) -> str | None:
    """Wait until the master's last (re)load has finished: None when it loaded, or when this
    HAProxy cannot say (2.6, whose master answers only once loaded); else what its startup log
    says went wrong. On 3.1 and later the answer comes only once the new worker is ready or
    has failed: `timeout` must allow for loading the configuration. Raises SocketUnavailable
    as `show_proc` does, also when the master closes without answering (it stopped)."""
    text = query(path, "_loadstatus", timeout=timeout, retry_for=retry_for)
    if text.startswith(("Success=", "Unknown command")):
        return _failure(text)
    raise SocketUnavailable(errno.ECONNRESET, f"{path}: no answer to `_loadstatus` (master "
                            f"stopped?): {text[:100]!r}")


def show_proc(path: Path, retry_for: float = 2.0, timeout: float = 5.0) -> MasterStatus:
    """The master's counters. Raises SocketUnavailable when no master answers within
    `retry_for` (each wait for an answer bounded by `timeout`: a stopped master accepts
    connections and never answers), also when it closes without a word: 2.6's master does
    that now and then during a reload (seen under load), which failed the reload confirmed
    and rolled back a good file."""
    deadline = time.monotonic() + retry_for
    while not (text := query(path, "show proc", timeout=timeout,
                             retry_for=max(0.0, deadline - time.monotonic()))).strip():
        if time.monotonic() >= deadline:
            raise SocketUnavailable(errno.ECONNRESET, f"{path}: closed without answering "
                                    "`show proc` (reloading or stopping?)")
        time.sleep(0.005)
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
                     timeout: float = 30.0,
                     runs: Callable[[], bool] | None = None) -> tuple[MasterStatus, float]:
    """Reload (by `trigger`, default `reload` on the master CLI) and wait until it is confirmed.

    Returns the master's status after the reload and the seconds it took. Raises
    SocketUnavailable when no master answers (nothing was sent), ReloadNotConfirmed when the
    reload failed or did not finish within `timeout`, MasterGone when the master stopped
    first. One reload per master at a time within this process.

    A reload by someone else (`systemctl reload`: SIGUSR2 to the master) may be under way: the
    master CLI then refuses connections while the new process loads the configuration, for as
    long as that takes, so reading the counters and sending `reload` wait for it up to
    `timeout` (not a fixed half second, which failed our reload on a slow-loading file).
    A stopped master (SIGSTOP, a paused VM) is waited for the same way: it is found by its
    process, and its CLI answers once it runs again.

    `runs()`: False when the caller's master surely no longer runs (its process is gone). While
    the CLI does not answer it is asked every WAIT_SLICE: a master stopped (`systemctl stop`,
    a crash) just before or after the reload was sent cost the whole `timeout` of waiting for
    an answer that could not come, then a failed reload and a rollback of a good file.
    """

    def wait(ask: Callable[[float], T], least: float, sent: bool) -> T:
        """ask(retry_for) until it answers, `timeout` runs out (SocketUnavailable), or the
        master is gone (MasterGone)."""
        until = max(deadline, time.monotonic() + least)
        while True:
            left = until - time.monotonic()
            try:
                return ask(min(left, WAIT_SLICE) if runs is not None else max(left, 0.0))
            except SocketUnavailable:
                if runs is not None and not runs():
                    raise MasterGone("HAProxy's master stopped before the reload was "
                                     f"{'confirmed' if sent else 'sent'}") from None
                if time.monotonic() >= until:
                    raise

    def answer() -> float:  # what `reload`, once sent, may take to answer (it may have acted)
        return max(ANSWER_MIN, deadline - time.monotonic())

    def loaded(least: float) -> str | None:
        """load_status, within `timeout` (it only asks: no floor, which held the step, and
        the daemon's loop, 5 s past reload_timeout per wait)."""
        return wait(lambda retry: load_status(
            path, retry_for=retry, timeout=max(0.05, deadline - time.monotonic())), least, sent)

    def settled() -> MasterStatus:
        """The counters once no reload is loading (3.1+: one loading is not counted yet)."""
        loaded(0.1)
        return wait(lambda retry: show_proc(path, retry_for=retry), 0.1, sent)

    with _lock(path):
        deadline = time.monotonic() + timeout
        sent, why = False, None
        # A reload under way (someone else's) is waited for first: 3.1 and later count it
        # before its worker has loaded, and refuse another `reload` until then.
        loaded(max(2.0, timeout))
        before = wait(lambda retry: show_proc(path, retry_for=retry), max(2.0, timeout), False)
        start = time.monotonic()
        while trigger is None:
            # The master re-executes and may drop the connection: expected. HAProxy 2.7 and
            # later answer only once the new configuration is loaded: the answer may take up
            # to the whole `timeout` (a fixed 5 s failed, and rolled back, a slow-loading one).
            # Its answer is not waited for past REFUSAL_WAIT: a refusal comes at once, and what
            # else it says the counters and `_loadstatus` say too. On 3.1+ an outside reload
            # landing while ours loads re-executes the master and the answer never comes: it
            # failed (and rolled back) a reload that the other one, counted after `before`,
            # loaded. Sent, whether read or not: the counters tell, within `timeout`.
            said = ""
            with contextlib.suppress(ConnectionResetError, BrokenPipeError, TimeoutError):
                said = wait(lambda retry: query(
                    path, "reload", timeout=min(answer(), REFUSAL_WAIT), retry_for=retry,
                    idempotent=False), 0.5, False)
            sent = True
            if _IN_PROGRESS not in said:
                why = _failure(said)
                break
            # Refused (3.1+): another reload loads. One counted after `before` (read after the
            # file was in place and nothing loaded) began after it, and its worker loads this
            # file: it is confirmed as ours would be, once loaded. (Sending ours again once it
            # is done lost to a steady stream of reloads, each sent the moment the last one
            # had loaded.) One counted before is waited for, then ours is sent again.
            if wait(lambda retry: show_proc(path, retry_for=retry), 0.1,
                    True).reloads > before.reloads:
                break
            if time.monotonic() >= deadline:
                raise ReloadNotConfirmed(f"reload not sent within {timeout:.0f}s: HAProxy "
                                         "said another reload was still in progress")
            before = settled()
        if trigger is not None:
            try:
                trigger()
            except ProcessLookupError:  # the process signalled is gone
                if runs is None or runs():
                    raise
                raise MasterGone("HAProxy's master stopped before the reload was sent") from None
            sent = True
        while True:
            try:
                status = wait(lambda retry: show_proc(path, retry_for=retry), 0.1, True)
                if status.reloads > before.reloads and status.failed == before.failed:
                    # Counted; on 3.1+ perhaps still loading: confirmed once it has loaded.
                    why = loaded(0.1) or why
                    status = wait(lambda retry: show_proc(path, retry_for=retry), 0.1, True)
            except SocketUnavailable:
                raise ReloadNotConfirmed(f"reload not confirmed within {timeout:.0f}s: master "
                                         f"CLI {path} stopped answering, or HAProxy was still "
                                         "loading") from None
            if status.pid != before.pid:  # (a reload keeps the pid: the master re-executes)
                raise MasterGone(f"HAProxy's master stopped before the reload was confirmed "
                                 f"(pid {status.pid} answers now, not {before.pid})")
            if status.failed > before.failed:
                raise ReloadNotConfirmed(
                    f"HAProxy rejected the new configuration (reload failed, reloads "
                    f"{status.reloads}, failed {status.failed}); the old workers keep serving. "
                    + (f"HAProxy said: {why}. " if why else "") +
                    "HAProxy's master logs why to its own stderr (`journalctl -u haproxy`); "
                    "what `haproxy -c` accepts fails there most often on a bind or on its "
                    "file-descriptor limit (about twice maxconn)")
            if status.reloads > before.reloads:
                return status, time.monotonic() - start
            if time.monotonic() >= deadline:
                raise ReloadNotConfirmed(f"reload not confirmed within {timeout:.0f}s "
                                         f"(reload counter stayed at {status.reloads})")
            time.sleep(0.01)
