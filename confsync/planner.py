"""Debounce: which resources to render now.

A resource becomes due when no change touched it for `wait_min` (the quiet period), or when
`wait_max` has passed since its first pending change, whichever comes first. Pure logic with the
clock passed in, so it is tested without sleeping.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from confsync.resources import Resource


@dataclass
class _Pending:
    resource: Resource
    first: float
    last: float


class Planner:
    def __init__(self, wait_min: float, wait_max: float) -> None:
        self.wait_min = wait_min
        self.wait_max = wait_max
        self._pending: dict[str, _Pending] = {}
        self.debounced = 0  # changes folded into an already pending render

    def _windows(self, resource: Resource) -> tuple[float, float]:
        wait_min = resource.wait_min if resource.wait_min is not None else self.wait_min
        wait_max = resource.wait_max if resource.wait_max is not None else self.wait_max
        return wait_min, max(wait_min, wait_max)

    def touch(self, resources: Iterable[Resource], now: float) -> None:
        for resource in resources:
            pending = self._pending.get(resource.name)
            if pending is None:
                self._pending[resource.name] = _Pending(resource, now, now)
            else:
                pending.last = now
                pending.resource = resource
                self.debounced += 1

    def _deadline(self, pending: _Pending) -> float:
        wait_min, wait_max = self._windows(pending.resource)
        return min(pending.last + wait_min, pending.first + wait_max)

    def due(self, now: float) -> list[Resource]:
        """Pop and return every resource whose deadline has passed."""
        ready = [p for p in self._pending.values() if self._deadline(p) <= now]
        for pending in ready:
            del self._pending[pending.resource.name]
        return [p.resource for p in ready]

    def next_deadline(self) -> float | None:
        return min((self._deadline(p) for p in self._pending.values()), default=None)

    def clear(self) -> None:
        """Drop everything pending: the caller is about to render every resource anyway."""
        self._pending.clear()

    def __len__(self) -> int:
        return len(self._pending)
