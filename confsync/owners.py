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
"""

from __future__ import annotations

import grp
import pwd
import threading
import time
from collections.abc import Callable

REFRESH = 600.0  # seconds an id found is used before the name is looked up again

# (kind, name) -> (its id, time.monotonic() when it was looked up)
_known: dict[tuple[str, str], tuple[int, float]] = {}
_lock = threading.Lock()


class UnknownName(LookupError):
    """No such user or group on this system, for now."""


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


def _lookup(kind: str, name: str) -> int:
    with _lock:
        known = _known.get((kind, name))
    if known is not None:
        return known[0]
    found = _find(kind, name)
    with _lock:
        _known[kind, name] = (found, time.monotonic())
    return found


def forget() -> None:
    """Look every name up again at its next write (a configuration reload)."""
    with _lock:
        _known.clear()


def changed(clock: Callable[[], float] = time.monotonic) -> dict[tuple[str, str], str]:
    """Look up again each name found more than REFRESH seconds ago; returns those whose id
    moved or that are gone, (kind, name) -> what happened. A gone name is forgotten, so its
    next write fails at step `owner`, as at a start."""
    now = clock()
    with _lock:
        due = [(key, found) for key, (found, at) in _known.items() if now - at >= REFRESH]
    moved: dict[tuple[str, str], str] = {}
    for (kind, name), was in due:
        try:
            found = _find(kind, name)
        except UnknownName:
            with _lock:
                _known.pop((kind, name), None)
            moved[kind, name] = f"{kind} {name!r} is gone (it was id {was})"
            continue
        with _lock:
            _known[kind, name] = (found, now)
        if found != was:
            moved[kind, name] = f"{kind} {name!r} is now id {found} (it was {was})"
    return moved
