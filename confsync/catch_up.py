"""What the files still owe a watch that came back: the renders its catch-up left due.

A watch back from an outage brings what it missed (a snapshot after a compaction or a reset,
a replay), and those renders wait for their debounce (`wait_min`) and, with several prefixes,
the replay hold. /ready said 200 as soon as the stream was back, vouching for files as old as
the outage for that wait. The loop now notes the resources due when it tells the watch is
back, and /ready waits until each was applied once (whatever the outcome: a failure is
/ready's "failing"). Live changes after that moment do not extend the wait, so steady
writes cannot hold /ready at 503.

Pure bookkeeping on the loop's thread; the daemon tells the observers what it returns.
"""

from __future__ import annotations

from collections.abc import Iterable


class CatchUp:
    def __init__(self) -> None:
        self._owed: set[str] = set()

    def owe(self, names: Iterable[str]) -> bool:
        """The watch is back and these resources' renders are due: whether any is owed now."""
        self._owed = set(names)
        return bool(self._owed)

    def applied(self, names: Iterable[str]) -> bool:
        """These resources were applied (or are gone from the running set): whether that
        was the last one owed."""
        if not self._owed:
            return False
        self._owed.difference_update(names)
        return not self._owed

    def keep(self, names: Iterable[str]) -> bool:
        """Only these resources run now (a reload): whether none owed is left because of it."""
        if not self._owed:
            return False
        self._owed.intersection_update(names)
        return not self._owed

    def clear(self) -> bool:
        """The watch is lost again (/ready says so): whether anything was owed."""
        owed, self._owed = bool(self._owed), set()
        return owed

    @property
    def owed(self) -> list[str]:
        return sorted(self._owed)
