"""One blocking call on a thread of its own, waited for with a deadline and left running past it.

Python cannot cancel a call blocked in the kernel (a user lookup while sssd hangs, a read of
/proc/PID/cmdline behind a process stuck on a dead NFS mount): the watch loop waits for it at
most its patience, then goes on without it. The call's owner keeps it while it runs, so that a
hung service holds one thread, however many times it is asked (owners.py, processes.py).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class ThreadedCall(Generic[T]):
    """fn() started on a daemon thread at once; `wait` for it, then `answer`. `on_end(call)`
    runs on that thread once fn returned, before the call is `done` (keep it short: a waiter
    giving up waits for it)."""

    def __init__(self, fn: Callable[[], T], name: str,
                 on_end: Callable[[ThreadedCall[T]], None] | None = None) -> None:
        self.started = time.monotonic()
        self.done = threading.Event()
        self.given_up = False  # a caller stopped waiting for it before it returned
        self._result: T | None = None
        self._error: BaseException | None = None
        self._lock = threading.Lock()
        self._fn, self._on_end = fn, on_end
        threading.Thread(target=self._run, name=name, daemon=True).start()

    def _run(self) -> None:
        try:
            self._result = self._fn()
        except BaseException as exc:  # handed to whoever waits, or to the next caller
            self._error = exc
        with self._lock:  # (given_up is final here: a waiter gives up only before `done`)
            if self._on_end is not None:  # before `done`: who sees it done sees what it kept
                self._on_end(self)
            self.done.set()

    def wait(self, patience: float) -> bool:
        """Whether it returned within `patience` seconds of its start; if not, it counts as
        given up (it runs on)."""
        if self.done.wait(max(0.0, self.started + patience - time.monotonic())):
            return True
        with self._lock:
            self.given_up = not self.done.is_set()
            return not self.given_up

    @property
    def error(self) -> BaseException | None:
        """What the call raised (None: it returned, or has not yet)."""
        return self._error

    def answer(self) -> T:
        """What the call returned, or raises what it raised (only once `done`)."""
        if self._error is not None:
            raise self._error
        return self._result  # type: ignore[return-value]
