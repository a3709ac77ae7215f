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
A new cause says how many times the one it replaces failed unlogged since it was last said
(that count was dropped: the operator never learnt the old cause went on).

A resource whose failure alternates with success (a value flapping in etcd, a check failing
every other time) logged its failure and its recovery at every switch, forever. Past FLAPS
switches to failing within EVERY it is failing intermittently: a summary of its failures and
recoveries at most every EVERY, and its end once it stays well, or failing, for SETTLE
seconds (RepeatedFailures).
"""

from __future__ import annotations

import collections
import math
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field

from confsync.said import Said, shape

EVERY = 300.0  # seconds between two logs of the same failure of one resource
FLAPS = 3  # switches to failing within EVERY said one by one; more: failing intermittently
MAX_SHAPES = 16  # causes an intermittent failure tells apart (each said at once)
SETTLE = 30.0  # an intermittent failure's end: the resource stayed well (or failing) this long
@dataclass
class _Said:
    shape: str
    reason: str
    at: float  # when it was last logged
    unsaid: int = 0  # retries that failed the same way since
    again: bool = False  # a configuration reload: its next failure is said, whatever it is


@dataclass
class _Flap:
    """An intermittent failure's counts since `since` (its last summary, or the first switch
    of the window it was found in)."""

    since: float
    failures: int
    recoveries: int
    shapes: set[str]  # the causes it has failed with: another is said at once
    due: bool = False  # said at its next failure, whenever (a configuration reload)

    def said(self, now: float) -> Said:
        said = Said(failures=self.failures, recoveries=self.recoveries, over=now - self.since)
        self.since, self.failures, self.recoveries, self.due = now, 0, 0, False
        return said

    def said_if_due(self, now: float, every: float, shape: str) -> Said | None:
        """A failure with `shape`: said with the counts when it is time to, or a new cause
        (one of the first MAX_SHAPES: a cause made anew at each try must not grow it)."""
        new = shape not in self.shapes and len(self.shapes) < MAX_SHAPES
        if new:
            self.shapes.add(shape)
        return self.said(now) if new or self.due or now - self.since >= every else None


@dataclass
class _Resource:
    since: float  # when it last switched (to failing or back)
    failing: _Said | None = None  # the failure last logged, while it fails
    onsets: collections.deque[float] = field(default_factory=collections.deque)
    flap: _Flap | None = None  # failing intermittently: counted, summarized every `every`


class RepeatedFailures:
    """Per resource, the failure last logged, and its switches between failing and not. Used
    by the watch loop's thread only.

    A failure that alternates with success (a value flapping in etcd, a check that fails every
    other time) was two lines a flap, forever. The first FLAPS switches to failing within
    `every` are said one by one, as is any failure after a quiet `every`; past that the
    resource fails intermittently: one summary at once, then at most one every `every` while
    it goes on (and at once when it fails with another cause), and its end is said once the
    resource has stayed well (or failing) SETTLE seconds (`settled`). So an outage and its
    recovery are never hidden: a failure is only kept quiet while the one before it ended
    less than SETTLE seconds ago, and failed the same way as one said."""

    def __init__(self, every: float = EVERY, clock: Callable[[], float] = time.monotonic,
                 flaps: int = FLAPS, settle: float = SETTLE) -> None:
        self.every = every
        self.flaps = flaps
        self.settle = settle
        self._clock = clock
        # Resources failing now, or that switched within `every`: bounded by the set.
        self._state: dict[str, _Resource] = {}

    def failed(self, name: str, reason: str) -> Said | None:
        """An apply of `name` failed with `reason`. Returns None when it is not to be logged,
        else how to say it."""
        now, new = self._clock(), shape(reason)
        state = self._state.get(name)
        if state is None:
            state = self._state[name] = _Resource(now)
        said = state.failing
        if said is not None:  # failing still: a retry, or a data change
            if state.flap is not None:
                said.shape, said.reason = new, reason
                # (A failure that lasts is said by `settled`.)
                return state.flap.said_if_due(now, math.inf, new)
            if said.again:
                state.failing = _Said(new, reason, now)
                return Said(said.unsaid) if said.shape == new else \
                    Said(before=said.reason, before_unsaid=said.unsaid)
            if said.shape != new:
                state.failing = _Said(new, reason, now)
                return Said(before=said.reason, before_unsaid=said.unsaid) if said.unsaid \
                    else Said()
            if now - said.at >= self.every:
                unsaid, said.at, said.unsaid = said.unsaid, now, 0
                return Said(unsaid)
            said.unsaid += 1
            return None
        # A switch to failing.
        state.since, state.failing = now, _Said(new, reason, now)
        while state.onsets and now - state.onsets[0] >= self.every:
            state.onsets.popleft()
        state.onsets.append(now)
        if state.flap is not None:
            state.flap.failures += 1
            return state.flap.said_if_due(now, self.every, new)
        if len(state.onsets) > self.flaps:
            state.flap = _Flap(state.onsets[0], len(state.onsets), len(state.onsets) - 1, {new})
            return state.flap.said(now)
        return Said()

    def succeeded(self, name: str) -> bool:
        """An apply of `name` went through. Whether its recovery is to be said now (it was
        failing, and not intermittently: that recovery is said once it lasts)."""
        state = self._state.get(name)
        if state is None or state.failing is None:
            return False
        state.failing, state.since = None, self._clock()
        if state.flap is not None:
            state.flap.recoveries += 1
            return False
        return True

    def settled(self) -> list[tuple[str, str | None, Said]]:
        """Resources that failed intermittently and stayed well (reason None) or failing (the
        reason) SETTLE seconds since: each is said once, with the switches since the last
        summary. Called at the loop's heartbeat; also forgets the resources quiet for `every`."""
        now, out = self._clock(), []
        for name, state in list(self._state.items()):
            if state.flap is not None and now - state.since >= self.settle:
                said, state.flap = state.flap.said(now), None
                if state.failing is not None:
                    state.failing.at, state.failing.unsaid = now, 0
                out.append((name, None if state.failing is None else state.failing.reason,
                            said))
            elif state.failing is None and state.flap is None and \
                    now - state.since >= self.every:
                del self._state[name]
        return out

    def clear(self, keep: Collection[str] = ()) -> None:
        """A configuration reload: every resource's first failure under it is said again,
        a flapping one's as a summary (its switches are kept, or each SIGHUP of a deploy
        would say three flaps one by one again, and each recovery between). Resources not in
        `keep`, the new set, are forgotten."""
        for name in [n for n in self._state if n not in keep]:
            del self._state[name]
        for state in self._state.values():
            if state.flap is not None:
                state.flap.due = True
            elif state.failing is not None:
                state.failing.again = True

    def __len__(self) -> int:
        return len(self._state)


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
