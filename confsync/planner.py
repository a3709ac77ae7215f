"""Debounce and retry: which resources to render now.

A resource becomes due when no change touched it for `wait_min` (the quiet period), or when
`wait_max` has passed since its first pending change, whichever comes first. A resource whose
apply failed for a reason outside its data (check, disk, reload) is due again after a capped,
jittered exponential backoff, until an apply succeeds. Pure logic with the clock passed in, so
it is tested without sleeping.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from confsync.resources import Resource
from confsync.watcher import Backoff

RETRY_BASE = 1.0  # seconds before the first retry of a failed apply
RETRY_CAP = 30.0  # the longest wait between two retries (but see RETRY_SHARE)
# A retry waits at least this many times what the failed try cost the loop, so a failure that
# keeps the loop busy (a template that always runs into render_timeout, a check_cmd that always
# times out) takes at most a tenth of its time: every 30 s, a 30 s timeout held every other
# resource for half of it.
RETRY_SHARE = 9.0


@dataclass
class _Pending:
    resource: Resource
    first: float
    last: float


@dataclass
class _Retry:
    resource: Resource
    at: float
    backoff: Backoff


class Planner:
    def __init__(self, wait_min: float, wait_max: float, retry_base: float = RETRY_BASE,
                 retry_cap: float = RETRY_CAP) -> None:
        self.wait_min = wait_min
        self.wait_max = wait_max
        self.retry_base = retry_base
        self.retry_cap = retry_cap
        self._pending: dict[str, _Pending] = {}
        self._retries: dict[str, _Retry] = {}
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

    def retry(self, resource: Resource, now: float, cost: float = 0.0) -> float:
        """Schedule another try of a failed apply; return the delay chosen.

        Each consecutive failure doubles the wait (jittered, capped at `retry_cap`), and it is
        at least RETRY_SHARE times the `cost` (seconds) of the try that failed; a change
        touching the resource meanwhile renders it at its debounce deadline as usual.
        """
        entry = self._retries.get(resource.name)
        backoff = entry.backoff if entry is not None else Backoff(self.retry_base,
                                                                  self.retry_cap)
        delay = max(backoff.next(), RETRY_SHARE * cost)
        self._retries[resource.name] = _Retry(resource, now + delay, backoff)
        return delay

    def settled(self, name: str) -> None:
        """The last apply worked (or failed on its data): no retry, and a fresh backoff."""
        self._retries.pop(name, None)

    def retrying(self, name: str) -> bool:
        return name in self._retries

    def pending(self, name: str) -> bool:
        """A render of `name` waits for its debounce deadline."""
        return name in self._pending

    def due(self, now: float) -> list[Resource]:
        """Pop and return every resource whose debounce or retry deadline has passed."""
        ready = {p.resource.name: p.resource for p in self._pending.values()
                 if self._deadline(p) <= now}
        for name in ready:
            del self._pending[name]
        for name, entry in self._retries.items():
            if entry.at <= now and name not in ready and name not in self._pending:
                ready[name] = entry.resource
        for name in ready:
            fired = self._retries.get(name)
            if fired is not None:
                fired.at = float("inf")  # keeps its backoff until `retry` or `settled`
        return list(ready.values())

    def due_by(self, when: float) -> list[Resource]:
        """The resources with a change whose debounce deadline is `when` or earlier, left
        pending (what `due` will return then, retries aside)."""
        return [p.resource for p in self._pending.values() if self._deadline(p) <= when]

    def next_deadline(self) -> float | None:
        deadlines = [self._deadline(p) for p in self._pending.values()]
        # A retry of a resource with a change pending fires with that change (`due`): its own
        # time, passed, would have the loop wait with a timeout of 0 (spin) until then.
        deadlines += [r.at for name, r in self._retries.items()
                      if r.at != float("inf") and name not in self._pending]
        return min(deadlines, default=None)

    def clear(self) -> None:
        """Drop everything pending and every retry: the caller is about to render every
        resource anyway (and with new definitions)."""
        self._pending.clear()
        self._retries.clear()

    def __len__(self) -> int:
        return len(self._pending) + sum(1 for r in self._retries.values()
                                        if r.at != float("inf"))
