"""Which failures of a resource to log.

A check_cmd or reload_cmd that fails for days is retried every 15-30 s (planner.py), and each
try logged an ERROR, its "trying again" line and, for a reload, the failed reload back into
the previous file: about 800 lines an hour for one failing check and one failing reload. A
template broken for good under keys that churn (per-request or per-deploy keys) failed at
every render, one ERROR per wait_max (2 s): 28,800 lines an hour. The operator knows after
the first: /ready and `confsync_applies{outcome="failed"}` say it as long as it lasts.

A failure like the one last logged for the resource is now logged at most once every `every`
seconds, saying how many were not (DEBUG lines in between); the first failure and one with
another reason are logged at once. A number standing alone does not make a reason another
one (a pid, a count, a duration: HAProxy's messages name its pid), nor the pid and attempt
number of a staged file's name (a check's output names it, a new attempt each try); a number
that is part of a name does: a key, a server, a host or an address differing only in its
digits (`server-1`, `server-2`; 10.0.0.1, 10.0.0.2) is another cause, said at once.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

EVERY = 300.0  # seconds between two logs of the same failure of one resource
# A staged file's pid and attempt number (applier._staged_name: `.haproxy.cfg.812.37.confsync`).
_STAGED = re.compile(r"\.[0-9]+\.[0-9]+(?=\.confsync\b)")
# A number standing alone, with a unit perhaps (`pid 812`, `(812)`, `#3`, `12.5s`, `exited 1`),
# not one inside a name, path or address (`server-2`, `/pool/2`, `10.0.0.2`, `host:8080`).
_ALONE = re.compile(r"(?<![\w./:@-])[0-9]+(?:\.[0-9]+)?(?:ms|s)?(?![\w/:@-]|\.[0-9A-Za-z])")


def shape(reason: str) -> str:
    """`reason` with its noise blanked: what two tries' messages must share to be one."""
    return _ALONE.sub("#", _STAGED.sub(".#.#", reason))


@dataclass
class _Said:
    shape: str
    at: float  # when it was last logged
    unsaid: int = 0  # retries that failed the same way since


class RepeatedFailures:
    """Per resource, the failure last logged. Used by the watch loop's thread only."""

    def __init__(self, every: float = EVERY, clock: Callable[[], float] = time.monotonic) -> None:
        self.every = every
        self._clock = clock
        self._said: dict[str, _Said] = {}  # only resources failing now: bounded by the set

    def failed(self, name: str, reason: str) -> int | None:
        """An apply of `name` failed with `reason`. Returns None when it is not to be logged,
        else how many applies failed the same way unlogged since it last was (0: new)."""
        now, new = self._clock(), shape(reason)
        said = self._said.get(name)
        if said is None or said.shape != new:
            self._said[name] = _Said(new, now)
            return 0
        if now - said.at >= self.every:
            unsaid, said.at, said.unsaid = said.unsaid, now, 0
            return unsaid
        said.unsaid += 1
        return None

    def succeeded(self, name: str) -> bool:
        """An apply of `name` went through: its next failure is a new one. Whether it was
        failing (its recovery is to be said, whatever it found)."""
        return self._said.pop(name, None) is not None

    def clear(self) -> None:
        """A configuration reload: every resource's first failure under it is said again."""
        self._said.clear()

    def __len__(self) -> int:
        return len(self._said)


class RepeatedWarnings:
    """Per resource, the warnings its last render gave (values `skip_invalid` left out) and
    when each was last logged. One bad instance in a pool that keeps changing was warned
    about at every render: 24,000 lines an hour under per-request keys. A warning that stays
    is logged every `every` seconds; one gone (the value fixed) and back is new. Bounded by
    the warnings of the last renders. Used by the watch loop's thread only."""

    def __init__(self, every: float = EVERY, clock: Callable[[], float] = time.monotonic) -> None:
        self.every = every
        self._clock = clock
        self._said: dict[str, dict[str, float]] = {}  # resource -> warning -> when logged

    def due(self, name: str, warnings: Sequence[str]) -> list[bool]:
        """`name` rendered, giving `warnings`: for each, whether to log it now."""
        now, before = self._clock(), self._said.pop(name, {})
        after: dict[str, float] = {}
        due = []
        for warning in warnings:
            at = after.get(warning, before.get(warning))
            if at is not None and now - at < self.every:
                due.append(False)
                after[warning] = at
            else:
                due.append(True)
                after[warning] = now
        if after:
            self._said[name] = after
        return due

    def clear(self) -> None:
        """A configuration reload: every warning is said again."""
        self._said.clear()

    def __len__(self) -> int:
        return sum(len(said) for said in self._said.values())
