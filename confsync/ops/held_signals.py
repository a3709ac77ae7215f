"""SIGHUP before a daemon's own handler exists: held for it, never fatal.

SIGHUP's default action ends the process, and `watch` and `register` install their handlers
only after their imports, settings and set-up (0.2-0.5 s, longer on a loaded host). A SIGHUP in
that window (a config-management run that edits conf.d and reloads, `docker kill -s HUP`, a
reloader sidecar reacting to a mounted ConfigMap) ended confsync with status 129. `entry()`
holds it from the start; the loop takes what was held when it installs its own handler and
reloads then, since the edit that caused the SIGHUP may have come after the settings were read.
A Python handler (not SIG_IGN) so that exec'd children still start with the default action.

SIGUSR1 and SIGUSR2 end a process without a handler too: a logrotate-style `kill -USR1`, or a
signal meant for the service sent to the unit's main process, ended confsync. They mean nothing
to confsync itself: ignored from the start (exec mode relays them to its child once it runs,
`forward_signals`), again by a Python handler so that children start with the default action.

SIGTERM is held too: as PID 1 of a container without an init, which ignores a signal it has no
handler for, a stop during start-up (a pod deleted as it starts) was lost: `register` went on
to register the node, and `watch` ran, until the SIGKILL. The start-up before the handlers is
bounded (no wait on etcd there), so a held SIGTERM is acted on within it.
"""

from __future__ import annotations

import signal
from collections.abc import Collection
from types import FrameType

HELD = (signal.SIGHUP,)
STOP = (signal.SIGTERM,)
IGNORED = (signal.SIGUSR1, signal.SIGUSR2)  # (until exec mode relays them: supervisor.py)

_held: list[int] = []


def _record(signum: int, frame: FrameType | None) -> None:
    _held.append(signum)


def _ignore(signum: int, frame: FrameType | None) -> None:
    """Nothing to do: not SIG_IGN, which children would inherit."""


def hold(stop: bool = False) -> None:
    """Record HELD signals (and STOP ones with `stop`) until a daemon installs its own handlers
    and calls take(); ignore IGNORED ones for good. STOP first: once SIGHUP is held, so is
    SIGTERM."""
    for signum in IGNORED:
        signal.signal(signum, _ignore)
    for signum in (*(STOP if stop else ()), *HELD):
        signal.signal(signum, _record)


def take(signums: Collection[int] = HELD) -> list[int]:
    """The signals of `signums` held so far, oldest first; call right after installing the real
    handlers for them. The others stay held."""
    taken = list(_held)
    del _held[:len(taken)]
    _held[:0] = [s for s in taken if s not in signums]  # (one step: a handler may append)
    return [s for s in taken if s in signums]


def stop_held() -> bool:
    """A STOP signal is held (for a start-up step that waits, e.g. for a `once` to finish)."""
    return any(s in STOP for s in _held)
