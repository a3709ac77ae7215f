"""One capped exponential backoff for every retry loop: the store follower, the registrar,
HAProxy's sockets and the exec-mode child's restarts."""

from __future__ import annotations

import random


class Backoff:
    """Delays base, 2*base, 4*base ... capped at `cap`.

    With `jitter` (the default) each delay is d/2 + uniform(0, d/2), so many clients retrying the
    same server spread out; without it the delays are exact (a restart delay an operator set).
    """

    def __init__(self, base: float = 0.1, cap: float = 10.0, jitter: bool = True) -> None:
        self.base = base
        self.cap = cap
        self.jitter = jitter
        self.attempts = 0

    def peek(self) -> float:
        """The next delay without jitter and without counting an attempt."""
        return min(self.cap, self.base * 2.0**self.attempts)

    def next(self) -> float:
        delay = self.peek()
        self.attempts = min(self.attempts + 1, 30)
        return delay / 2 + random.uniform(0, delay / 2) if self.jitter else delay

    def reset(self) -> None:
        self.attempts = 0
