"""A resource's `owner` and `group` names, looked up when a file is written, not when conf.d loads.

A name the system does not know *yet* is a state of the machine, not a mistake in the file: at
boot, users served by LDAP or sssd are unknown until that service is up, and a package or a
configuration run may create the service's user after confsync started. Refused at load, such a
resource was left out until the next SIGHUP (its file never written, /ready green without it);
looked up at the apply, it fails that apply, says why, and is tried again until the name
resolves.

A name found is kept (a lookup can block on a slow directory service), but not for the
process's life: a user deleted and made again by a package (`deluser` and `adduser --system`
on a purge and reinstall) or a move to LDAP gets another id, and a `watch` of months went on
giving its files the old id, through SIGHUPs and after the name was gone (the service then
could not read its file, or another user who got the old id could), `/ready` 200. A config
reload forgets every id (`forget`), and the watch loop looks each again every REFRESH seconds
(`changed`) and rewrites the files of a name whose id moved or that is gone.

In `watch` (`bound_lookups`), a lookup runs on a thread of its own, waited for at most
LOOKUP_PATIENCE: with LDAP or sssd
down, getpwnam() can block for minutes or for good, and on the watch loop's thread it stopped
every resource, the heartbeat, /health and systemd's watchdog ping (the restart then blocked
again at the same lookup). A name not answered in time fails that write at step `owner`
(`NotAnswered`; dest is left as it is and the write is tried again); its lookup runs on, and
its answer, when it comes, is kept for the next try. A name has at most one lookup under way:
a try while one has not returned waits for that one, so a hung directory service holds one
thread per name, whatever the number of tries. A lookup that answers after a write gave up on
it tells the loop, which tries that write again at once, not at its backoff. The 10-minute
look again (`changed`) waits for no lookup at all: one not answered yet is asked about at the
next heartbeat. `once` and `check` look names up in place, as they do their file work (a
thread for each name costs 0.2-0.4 ms a name where the lookup itself takes 6 us).
"""

from __future__ import annotations

import grp
import pwd
import threading
import time
from collections.abc import Callable

from confsync.threaded_call import ThreadedCall

REFRESH = 600.0  # seconds an id found is used before the name is looked up again
# Seconds a write waits for a name's lookup (a local file answers in microseconds, LDAP through
# sssd in milliseconds; 5 s is under /health's heartbeat allowance and far under WatchdogSec).
LOOKUP_PATIENCE = 5.0
# ... while another name's lookup has not answered within its patience: the directory service
# is hung for every name, and twenty names must not hold the loop 5 s each.
STUCK_PATIENCE = 0.2

# (kind, name) -> (its id, time.monotonic() when it was looked up)
_known: dict[tuple[str, str], tuple[int, float]] = {}
# (kind, name) -> its lookup under way (at most one a name); removed by the lookup as it returns
_asked: dict[tuple[str, str], _Lookup] = {}
# (kind, name) -> the id it had, for a name `changed` looks up again
_refreshing: dict[tuple[str, str], tuple[int, _Lookup]] = {}
_lock = threading.Lock()
# Whether lookups run on threads, with a deadline (`watch`: bound_lookups).
_bounded = False
# Told (kind, name) when a lookup a write gave up on has answered (the watch loop's queue).
_on_late_answer: Callable[[str, str], None] | None = None


class UnknownName(LookupError):
    """No such user or group on this system, for now."""


class NotAnswered(LookupError):
    """The system's lookup of a name (NSS: LDAP, sssd...) has not returned in time."""


class _Lookup:
    """One name's lookup on its own thread (threaded_call.py); its answer kept once it
    returns."""

    def __init__(self, kind: str, name: str) -> None:
        self.kind, self.name = kind, name
        self.call: ThreadedCall[int] = ThreadedCall(
            lambda: _find(kind, name), f"confsync-{kind}-lookup", on_end=self._returned)
        self.started, self.done = self.call.started, self.call.done

    @property
    def found(self) -> int | None:
        return _found(self.call) if self.call.done.is_set() else None

    @property
    def error(self) -> BaseException | None:
        return self.call.error if self.call.done.is_set() else None

    def _returned(self, call: ThreadedCall[int]) -> None:
        """(On the lookup's thread, before it is `done`; `self.call` is perhaps not assigned
        yet: `call` is it.)"""
        found = _found(call)
        with _lock:
            if _asked.get((self.kind, self.name)) is self:
                del _asked[self.kind, self.name]
            if found is not None:  # a late answer is kept for the next try
                _known.setdefault((self.kind, self.name), (found, time.monotonic()))
            tell = _on_late_answer if call.given_up else None
        if tell is not None:
            tell(self.kind, self.name)

    def answer(self) -> int:
        return self.call.answer()


def _found(call: ThreadedCall[int]) -> int | None:
    """The id a lookup that returned found (None: it raised)."""
    return call.answer() if call.error is None else None


def user_id(name: str) -> int:
    return _lookup("user", name)


def group_id(name: str) -> int:
    return _lookup("group", name)


def _find(kind: str, name: str) -> int:
    try:
        return pwd.getpwnam(name).pw_uid if kind == "user" else grp.getgrnam(name).gr_gid
    except (KeyError, ValueError):  # ValueError: a NUL in the name, which no name has
        raise UnknownName(f"no such {kind} {name!r} on this system (yet: looked up again at "
                          "each try)") from None


def _ask(kind: str, name: str) -> _Lookup:
    """The name's lookup under way, or a new one (the caller holds _lock)."""
    lookup = _asked.get((kind, name))
    if lookup is None:
        lookup = _asked[kind, name] = _Lookup(kind, name)
    return lookup


def _lookup(kind: str, name: str) -> int:
    """The name's id: known, or looked up; raises UnknownName (or NotAnswered: bounded)."""
    with _lock:
        known = _known.get((kind, name))
    if known is not None:
        return known[0]
    if _bounded:
        return _bounded_lookup(kind, name)
    found = _find(kind, name)
    with _lock:
        _known[kind, name] = (found, time.monotonic())
    return found


def _bounded_lookup(kind: str, name: str) -> int:
    """Looked up on the name's thread, waiting at most the patience; raises UnknownName, or
    NotAnswered (its lookup runs on, and tells when it answers)."""
    with _lock:
        lookup = _ask(kind, name)
        now = time.monotonic()
        hung = any(now - other.started >= LOOKUP_PATIENCE for other in _asked.values()
                   if other is not lookup)
    patience = min(LOOKUP_PATIENCE, STUCK_PATIENCE) if hung else LOOKUP_PATIENCE
    if not lookup.call.wait(patience):
        waited = time.monotonic() - lookup.started
        raise NotAnswered(f"looking up {kind} {name!r} has not returned after {waited:.1f}s "
                          "(the system's user database: LDAP or sssd down?); dest is left as "
                          "it is, and it is tried again (one lookup at a time)")
    return lookup.answer()


def bound_lookups(on_late_answer: Callable[[str, str], None] | None) -> None:
    """Look names up on threads, with a deadline, from now on (the watch daemon), and have
    `on_late_answer(kind, name)` called (on the lookup's thread) when a lookup that a write
    gave up on answers."""
    global _bounded, _on_late_answer
    _bounded, _on_late_answer = True, on_late_answer


def forget() -> None:
    """Look every name up again at its next write (a configuration reload)."""
    with _lock:
        _known.clear()
        _refreshing.clear()


def changed(clock: Callable[[], float] = time.monotonic) -> dict[tuple[str, str], str]:
    """Look up again each name found more than REFRESH seconds ago, waiting for none (a name
    whose lookup has not returned keeps its id, and is asked about at the next call);
    returns those whose id moved or that are gone, (kind, name) -> what happened. A gone name
    is forgotten, so its next write fails at step `owner`, as at a start."""
    now = clock()
    moved: dict[tuple[str, str], str] = {}
    with _lock:
        for key, (found, at) in _known.items():
            if now - at >= REFRESH and key not in _refreshing:
                _known[key] = (found, now)  # (not due again while this lookup is under way)
                _refreshing[key] = (found, _ask(*key))
        answered = [(key, was, lookup) for key, (was, lookup) in _refreshing.items()
                    if lookup.done.is_set()]
        for (kind, name), was, lookup in answered:
            del _refreshing[kind, name]
            if isinstance(lookup.error, UnknownName):
                _known.pop((kind, name), None)
                moved[kind, name] = f"{kind} {name!r} is gone (it was id {was})"
            elif lookup.found is not None:
                _known[kind, name] = (lookup.found, now)
                if lookup.found != was:
                    moved[kind, name] = f"{kind} {name!r} is now id {lookup.found} (it was {was})"
    return moved
