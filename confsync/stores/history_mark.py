"""One write confsync saw, to tell etcd's history from another one at the same revisions.

A cluster recreated (empty data dir) or restored from a backup with the same configuration
keeps its cluster id, and once it has written past the highest revision confsync saw (a
confsync stopped meanwhile: SIGSTOP, a paused VM, or a long outage of a busy etcd) neither the
id nor the revision tells: a watch "from revision N+1" is accepted and brings another history's
later writes on top of a mirror of the old one (stale values, /ready 200). The last write seen
is the tell: in the history we followed, reading its key at its revision gives it back. Its
revisions and version are compared, not its value: read every 10 s, a value of a megabyte
would cost a fleet of sidecars more than the watch.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any

_MOD_REVISION = operator.attrgetter("mod_revision")  # (a lambda cost a snapshot 2x as much)


@dataclass(frozen=True)
class HistoryMark:
    """A put as etcd reported it (at `mod_revision`), less its value."""

    key: bytes
    mod_revision: int
    create_revision: int
    version: int

    @classmethod
    def of(cls, kv: Any) -> HistoryMark:
        """From an etcd KeyValue (a watch event's or a range's)."""
        return cls(bytes(kv.key), int(kv.mod_revision), int(kv.create_revision),
                   int(kv.version))

    @staticmethod
    def latest(kvs: Any, current: HistoryMark | None) -> HistoryMark | None:
        """The mark of the newest of `kvs` when newer than `current`, else `current`."""
        newest = max(kvs, key=_MOD_REVISION, default=None)
        if newest is None or (current is not None
                              and int(newest.mod_revision) < current.mod_revision):
            return current
        return HistoryMark.of(newest)

    def differs(self, kv: Any | None) -> str | None:
        """How `kv`, this key read at `mod_revision` from the server, shows another history;
        None when it is this write."""
        name = self.key.decode("utf-8", "backslashreplace")
        if kv is None:
            return f"{name}, written at revision {self.mod_revision}, is not there at it"
        if (int(kv.mod_revision), int(kv.create_revision), int(kv.version)) != (
                self.mod_revision, self.create_revision, self.version):
            return (f"{name} at revision {self.mod_revision} is another write (modified at "
                    f"{int(kv.mod_revision)}, version {int(kv.version)})")
        return None
