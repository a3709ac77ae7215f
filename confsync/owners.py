"""A resource's `owner` and `group` names, looked up when a file is written, not when conf.d loads.

A name the system does not know *yet* is a state of the machine, not a mistake in the file: at
boot, users served by LDAP or sssd are unknown until that service is up, and a package or a
configuration run may create the service's user after confsync started. Refused at load, such a
resource was left out until the next SIGHUP (its file never written, /ready green without it);
looked up at the apply, it fails that apply, says why, and is tried again until the name
resolves. A name found once keeps its id for the life of the process (an id does not change
under a running service, and a lookup that can block on a slow directory service is paid once).
"""

from __future__ import annotations

import grp
import pwd
import threading

_known: dict[tuple[str, str], int] = {}
_lock = threading.Lock()


class UnknownName(LookupError):
    """No such user or group on this system, for now."""


def user_id(name: str) -> int:
    return _lookup("user", name)


def group_id(name: str) -> int:
    return _lookup("group", name)


def _lookup(kind: str, name: str) -> int:
    with _lock:
        known = _known.get((kind, name))
    if known is not None:
        return known
    try:
        found = pwd.getpwnam(name).pw_uid if kind == "user" else grp.getgrnam(name).gr_gid
    except (KeyError, ValueError):  # ValueError: a NUL in the name, which no name has
        raise UnknownName(f"no such {kind} {name!r} on this system (yet: looked up again at "
                          "each try)") from None
    with _lock:
        _known[kind, name] = found
    return found
