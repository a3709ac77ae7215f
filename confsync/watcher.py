"""The watch loop's I/O half: one thread that owns every call to the store.

It takes the snapshot, opens the watch from snapshot revision + 1, and when the stream breaks it
backs off (capped, jittered) and resumes from the last delivered revision + 1 with a new client,
so no event is ever lost or applied twice. A compacted revision means a fresh snapshot. It hands
everything to the daemon's queue in order; it never renders.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

from confsync.backoff import Backoff
from confsync.errors import RevisionCompacted, StoreUnavailable
from confsync.stores import ChangeBatch, Snapshot, Store, WatchHandle

log = logging.getLogger(__name__)

__all__ = ["Backoff", "BatchReceived", "SnapshotTaken", "StoreFollower", "StreamState"]


@dataclass(frozen=True)
class SnapshotTaken:
    snapshot: Snapshot
    reason: str  # "start", "compacted", "resync"


@dataclass(frozen=True)
class BatchReceived:
    batch: ChangeBatch


@dataclass(frozen=True)
class StreamState:
    connected: bool
    revision: int
    reason: str = ""


class StoreFollower(threading.Thread):
    """Follows `prefixes` in `store` and posts SnapshotTaken/BatchReceived/StreamState to `out`."""

    def __init__(self, store: Store, prefixes: Sequence[str], out: queue.SimpleQueue[object],
                 resync_interval: float = 0.0, backoff: Backoff | None = None) -> None:
        super().__init__(name="confsync-follower", daemon=True)
        self.store = store
        self.prefixes = tuple(prefixes)
        self.out = out
        self.resync_interval = resync_interval
        self.backoff = backoff or Backoff()
        self._stop_event = threading.Event()
        self._errors: queue.Queue[Exception | None] = queue.Queue()
        self._lock = threading.Lock()
        # Last revision delivered per watched prefix: watches of several prefixes share one
        # stream but are not ordered against each other, so each resumes from its own point.
        self._last: dict[str, int] = {}
        self.reconnects = 0

    # ---- called from the store's thread

    def _sink(self, item: ChangeBatch | Exception) -> None:
        if isinstance(item, Exception):
            self._errors.put(item)
            return
        with self._lock:
            keys = [item.prefix] if item.prefix else list(self._last)
            if item.prefix and item.revision <= self._last.get(item.prefix, 0):
                return  # replayed by a resume: already delivered
            for key in keys:
                self._last[key] = max(self._last.get(key, 0), item.revision)
            self.out.put(BatchReceived(item))

    # ---- the thread

    def stop(self) -> None:
        self._stop_event.set()
        self._errors.put(None)

    def _snapshot(self, reason: str) -> Snapshot | None:
        try:
            snapshot = self.store.snapshot(self.prefixes)
        except StoreUnavailable as exc:
            self._degraded(str(exc))
            return None
        with self._lock:
            for prefix in self.prefixes:
                self._last[prefix] = max(self._last.get(prefix, 0), snapshot.revision)
            self.out.put(SnapshotTaken(snapshot, reason))
        return snapshot

    def _degraded(self, reason: str) -> None:
        self.out.put(StreamState(False, self._resume_revision() - 1, reason))
        self._stop_event.wait(self.backoff.next())

    def _resume_revision(self) -> int:
        with self._lock:
            return min(self._last.values(), default=0) + 1

    def run(self) -> None:
        reason: str | None = "start"
        while not self._stop_event.is_set():
            if reason is not None:
                if self._snapshot(reason) is None:
                    continue
                reason = None
            start = self._resume_revision()
            try:
                handle = self.store.watch(self.prefixes, start, self._sink)
            except RevisionCompacted as exc:
                log.warning("watch from revision %d: compacted (up to %d); taking a fresh "
                            "snapshot", start, exc.compacted_revision)
                reason = "compacted"
                continue
            except StoreUnavailable as exc:
                self._degraded(str(exc))
                continue
            self.out.put(StreamState(True, start - 1))
            error = self._follow(handle)
            if error is None:
                return
            self.reconnects += 1
            if isinstance(error, RevisionCompacted):
                log.warning("watch: revision compacted (up to %d); taking a fresh snapshot",
                            error.compacted_revision)
                reason = "compacted"
            else:
                self._degraded(str(error))

    def _follow(self, handle: WatchHandle) -> Exception | None:
        """Block until the watch fails (return its error) or we are stopped (return None)."""
        connected_at = time.monotonic()
        next_resync = connected_at + self.resync_interval if self.resync_interval else None
        try:
            while True:
                timeout = None if next_resync is None else max(0.0, next_resync - time.monotonic())
                try:
                    error = self._errors.get(timeout=timeout)
                except queue.Empty:
                    self._snapshot("resync")
                    next_resync = time.monotonic() + self.resync_interval
                    continue
                if error is None or self._stop_event.is_set():
                    return None
                if time.monotonic() - connected_at > 5:
                    self.backoff.reset()  # a stream that lived a while starts a fresh backoff
                return error
        finally:
            handle.cancel()
