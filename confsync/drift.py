"""When a dest that someone else changed may be rewritten (the daemon looks every heartbeat).

A package upgrade that installs its own `haproxy.cfg` and restarts the service, a
config-management run, an operator's hand edit: each leaves the service on a file that is not
etcd's, with nothing in etcd changing to make confsync look. Without `[watch] interval` it
stayed so for good while `/ready` said 200. The daemon now stats every dest each heartbeat and
renders a changed one again (a touch or a chmod the resource does not set renders equal and
writes nothing).

Two writers that each put their own file back (a second confsync, a config-management tool
run on a timer) would reload the service in a loop. So the first change is repaired at once and
a resource whose dest keeps changing gets repairs spaced by a doubling delay, up to 5 minutes;
10 quiet minutes start it afresh. Pure logic with the clock passed in.
"""

from __future__ import annotations

from dataclasses import dataclass

from confsync.backoff import Backoff

REPAIR_GAP_FIRST = 1.0  # seconds between the first repair of a resource and the next one
REPAIR_GAP_CAP = 300.0  # the longest wait between repairs of a dest that keeps changing
QUIET_RESET = 600.0  # no change for this long: the next one is repaired at once again


@dataclass
class _Repairs:
    backoff: Backoff
    not_before: float
    last: float  # when the last change was seen


class DriftGuard:
    """Per resource: may its changed dest be rewritten now?"""

    def __init__(self, first_gap: float = REPAIR_GAP_FIRST, cap: float = REPAIR_GAP_CAP,
                 quiet: float = QUIET_RESET) -> None:
        self.first_gap = first_gap
        self.cap = cap
        self.quiet = quiet
        self._repairs: dict[str, _Repairs] = {}

    def may_repair(self, name: str, now: float) -> bool:
        """Called when the dest of `name` is seen changed; True when it is rewritten now
        (counted as a repair), False while the writer fight's delay runs."""
        entry = self._repairs.get(name)
        if entry is None or now - entry.last >= self.quiet:
            entry = _Repairs(Backoff(self.first_gap, self.cap, jitter=False), now, now)
            self._repairs[name] = entry
        entry.last = now
        if now < entry.not_before:
            return False
        entry.not_before = now + entry.backoff.next()
        return True

    def delay(self, name: str, now: float) -> float:
        """Seconds until `name` may be repaired again (0 when it may now)."""
        entry = self._repairs.get(name)
        return 0.0 if entry is None else max(0.0, entry.not_before - now)

    def keep(self, names: set[str]) -> None:
        """Forget resources a config reload dropped."""
        for name in [n for n in self._repairs if n not in names]:
            del self._repairs[name]
