"""Running copies whose owed reload lost its resource at a config reload, kept a while.

A resource removed (or moved to another dest, or left reloading nothing) while its reload was
owed leaves its running copy (running_copy.py) with no resource to make that reload. Removed at
once, a resource added back by the next reload found its file current and reloaded nothing:
the owed reload was lost, and the service ran the old file until the next change in etcd (a
config-management run that deletes conf.d files and writes them again sends a SIGHUP, or the
conf.d watcher reloads, in between). Kept for good, it was taken, by any later run with a
resource on that dest, for a reload still owed and for what the service ran (`check`: exit
4, months later).

So such a copy is kept for LEFT_GRACE: a resource with a reload on that dest added back
meanwhile finds it at its first apply and makes the reload (as a successor finds a killed
run's); past the grace, or when the daemon stops, it is removed.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

LEFT_GRACE = 600.0  # seconds a copy whose reload no resource owes now is kept for one to come back


class LeftCopies:
    """Dests whose running copy lost its resource, and since when (time.monotonic())."""

    def __init__(self, since: dict[Path, float] | None = None) -> None:
        self._since: dict[Path, float] = dict(since or {})

    def carried(self, left: Iterable[Path], reloading: set[Path], now: float) -> LeftCopies:
        """Those of a config reload's successor: these, and the dests of `left` (owed
        copies of the resources gone), less those a resource reloads again (`back`)."""
        since = {d: t for d, t in self._since.items() if d not in reloading}
        since.update((d, now) for d in left if d not in reloading)
        return LeftCopies(since)

    def back(self, reloading: set[Path]) -> set[Path]:
        """Those a resource of `reloading` took up again: its first apply looks for the copy."""
        return self._since.keys() & reloading

    def expired(self, now: float) -> list[Path]:
        """Those kept LEFT_GRACE, forgotten here: for the caller to remove."""
        gone = [d for d, t in self._since.items() if now - t >= LEFT_GRACE]
        for dest in gone:
            del self._since[dest]
        return gone

    def take_all(self) -> list[Path]:
        """Every one, forgotten here (a stop: no resource of this run will take them up)."""
        gone = list(self._since)
        self._since.clear()
        return gone
