"""Looking a registration's maintenance file up, off the loop's thread.

The file may live on a mount that stops answering (a hung NFS or FUSE server), where a stat
blocks until the server is back. The loop used to look itself, every tick: stuck in that stat,
it took no check result, no signal and no heartbeat, while the etcd thread kept the lease, and
with it a stale "ready", alive. Now each file is looked up on a thread of its own, one lookup at
a time (a hung one holds that thread alone and never piles up more), and the loop reads the
last answer; a lookup unanswered for STUCK is one that cannot be made (the last known state is
kept, as for a directory that cannot be read).
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from confsync.paths import expand_user
from confsync.register import lease_clock

log = logging.getLogger("confsync.register")

INTERVAL = 0.1  # between lookups (the loop's tick)
STUCK = 1.0  # a lookup unanswered this long is taken for a hung filesystem
STUCK_WHY = f"no answer from its filesystem within {STUCK:g}s (a hung mount?)"


class MaintenanceLookup:
    """Looks `path` up every INTERVAL on its own thread; `look` gives the last answer."""

    def __init__(self, path: Path, interval: float = INTERVAL) -> None:
        self.path = path
        self.interval = interval
        self._lock = threading.Lock()
        self._answer: tuple[bool | None, str | None] = (None, None)
        self._asking_since: float | None = None  # lease_clock: the lookup under way
        self._answered = threading.Event()
        self._stop = threading.Event()
        self._thread = self._new_thread()

    def _new_thread(self) -> threading.Thread:
        return threading.Thread(target=self._run, daemon=True, name=f"maintenance-{self.path}")

    def start(self) -> MaintenanceLookup:
        self._thread.start()
        return self

    def first(self, timeout: float) -> None:
        """Wait up to `timeout` for the first answer (a file there at start publishes maint
        from the first state on, never "ready" first)."""
        self._answered.wait(timeout)

    def stop(self) -> None:
        self._stop.set()

    def revive(self) -> None:
        """Called by the loop each tick: a thread killed by a bug is started again."""
        if self._stop.is_set() or self._thread.is_alive() or self._thread.ident is None:
            return
        log.error("register: the lookup of %s stopped unexpectedly; starting it again",
                  self.path)
        with self._lock:
            self._asking_since = None
        self._thread = self._new_thread()
        self._thread.start()

    def look(self, now: float) -> tuple[bool | None, str | None]:
        """(whether the file exists, None when that is not known; why it cannot be told, None
        when it can)."""
        with self._lock:
            since, answer = self._asking_since, self._answer
        if since is not None and now - since > STUCK:
            return None, STUCK_WHY
        return answer

    def _run(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                self._asking_since = lease_clock.now()
            try:
                # (A `~user` not known yet, ValueError: cannot be told, as an unsearchable
                # directory; the file may be in a home directory LDAP cannot name for now.)
                answer: tuple[bool | None, str | None] = (expand_user(self.path).exists(), None)
            except (OSError, ValueError) as exc:  # a directory on the way we may not search
                answer = (None, getattr(exc, "strerror", None) or str(exc))
            with self._lock:
                self._asking_since = None
                self._answer = answer
            self._answered.set()
            self._stop.wait(self.interval)
