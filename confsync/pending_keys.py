"""The keys that changed for each resource since its last apply: what its log event names.

A resource is not applied while its dest's file work is stuck (dest_io.py: a frozen
filesystem), which may last months; with keys that come and go meanwhile (instances, leases)
its set of changed keys grew with every new key, and the daemon's memory with it. Past KEPT keys
a resource's set stops growing and later changes are only counted. Nothing is lost by that:
the render reads every value from the mirror; these keys only name what changed.
"""

from __future__ import annotations

from collections.abc import Collection

KEPT = 1000  # keys named per resource; the log event shows 20 of them


class PendingKeys:
    def __init__(self, kept: int = KEPT) -> None:
        self.kept = kept
        self._keys: dict[str, set[str]] = {}
        self._more: dict[str, int] = {}  # changes past `kept`, counted, not named

    def add(self, name: str, keys: Collection[str]) -> None:
        have = self._keys.setdefault(name, set())
        if len(have) + len(keys) <= self.kept:
            have.update(keys)
            return
        new = [key for key in keys if key not in have]
        room = max(0, self.kept - len(have))
        have.update(new[:room])
        if len(new) > room:
            self._more[name] = self._more.get(name, 0) + len(new) - room

    def take(self, name: str) -> tuple[set[str], int]:
        """Forget `name`'s keys; (the keys named, how many changes in all: more than the keys
        named when some were only counted)."""
        keys = self._keys.pop(name, set())
        return keys, len(keys) + self._more.pop(name, 0)

    def clear(self) -> None:
        self._keys.clear()
        self._more.clear()

    def __len__(self) -> int:
        """The keys held, all resources together."""
        return sum(len(keys) for keys in self._keys.values())
