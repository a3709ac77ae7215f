"""SIGHUP before a daemon's own handler exists: held for it, never fatal.

SIGHUP's default action ends the process, and `watch` and `register` install their handlers
only after their imports, settings and set-up (0.2-0.5 s, longer on a loaded host). A SIGHUP in
that window (a config-management run that edits conf.d and reloads, `docker kill -s HUP`, a
reloader sidecar reacting to a mounted ConfigMap) ended confsync with status 129. `entry()`
holds it from the start; the loop takes what was held when it installs its own handler and
reloads then, since the edit that caused the SIGHUP may have come after the settings were read.
A Python handler (not SIG_IGN) so that exec'd children still start with the default action.
"""

from __future__ import annotations

import signal
from types import FrameType

HELD = (signal.SIGHUP,)

_held: list[int] = []


def _record(signum: int, frame: FrameType | None) -> None:
    _held.append(signum)


def hold() -> None:
    """Record HELD signals until a daemon installs its own handlers and calls take()."""
    for signum in HELD:
        signal.signal(signum, _record)


def take() -> list[int]:
    """The signals held so far, oldest first; call right after installing the real handlers."""
    taken = list(_held)
    del _held[:len(taken)]
    return taken
