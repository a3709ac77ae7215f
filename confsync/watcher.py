"""The watch loop's I/O half: one thread that owns every call to the store.

It takes the snapshot, opens the watch from snapshot revision + 1, and when the stream breaks it
backs off (capped, jittered) and resumes from the last delivered revision + 1 with a new client,
so no event is ever lost or applied twice. A compacted revision means a fresh snapshot; so does
a store reset (another cluster, or revisions gone back), whose snapshot also replaces the
resume points. It hands everything to the daemon's queue in order; it never renders.

It never dies of an error: an unexpected exception (a bug, or a ConfigError such as an unreadable
`password_file` met while reconnecting) is logged, reported as a lost stream, and the follower
starts over after a backoff from the revisions it had delivered. Every event carries the
follower's `generation`, so the daemon can drop what a stopped follower had already queued.
"""

from __future__ import annotations

import logging
import queue
import random
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from confsync.backoff import Backoff
from confsync.errors import (
    ConfigError,
    LongReplay,
    ReplayTooLarge,
    RevisionCompacted,
    StoreReset,
    StoreUnavailable,
)
from confsync.handoff import Backlog, BacklogDropped, BatchReceived
from confsync.logs import Repeats, Rereads
from confsync.stores import (
    ChangeBatch,
    ReplayComplete,
    ReplayStarted,
    Snapshot,
    Store,
    WatchHandle,
)

log = logging.getLogger(__name__)

__all__ = ["Backoff", "BatchReceived", "ReplayArrived", "ReplayBegan", "SnapshotTaken",
           "StoreFollower", "StreamState"]

# A compaction or a store reset sends every sidecar of a fleet back to a full read at the same
# moment (a gRPC proxy even cancels all their watches at once): each waits a random part of
# this before re-reading, so the cluster sees a spread instead of a herd.
RESNAPSHOT_JITTER = 4.0


@dataclass(frozen=True)
class SnapshotTaken:
    snapshot: Snapshot
    reason: str  # "start", "compacted", "resync", "resume", "reset", "long replay", ...
    generation: int = 0
    cause: StoreReset | None = None  # for "reset": old and new cluster id and revisions


@dataclass(frozen=True)
class StreamState:
    connected: bool
    revision: int
    reason: str = ""
    generation: int = 0
    # Connected: the store's revision as the watches were created (0: not known). Batches up
    # to it are a replay of what the stream missed; later ones are live.
    replay_until: int = 0
    # Connected: whether a ReplayArrived follows (some prefix changed by `replay_until`; it
    # may also have come already); None: the store cannot tell.
    replay_pending: bool | None = None


@dataclass(frozen=True)
class ReplayArrived:
    """Every prefix's replay up to the connected StreamState's `replay_until` is queued."""

    generation: int = 0


@dataclass(frozen=True)
class ReplayBegan:
    """A live watch got a lagging one's replay (a gRPC proxy resumed upstream by itself): a
    ReplayArrived follows once every prefix's part up to it is queued."""

    generation: int = 0


_RESYNC_NOW = object()  # wakes `_follow` for an immediate resync snapshot
_NEW_INTERVAL = object()  # wakes `_follow` to resync at `resync_interval` from now on


class StoreFollower(threading.Thread):
    """Follows `prefixes` in `store` and posts SnapshotTaken/BatchReceived/StreamState to `out`."""

    def __init__(self, store: Store, prefixes: Sequence[str], out: queue.SimpleQueue[object],
                 resync_interval: float = 0.0, backoff: Backoff | None = None,
                 generation: int = 0, resume: Mapping[str, int] | None = None,
                 first_snapshot: str = "start") -> None:
        """`resume`: revisions a previous follower of the same prefixes delivered; when they
        cover every prefix, the watch resumes from them without a snapshot."""
        super().__init__(name=f"confsync-follower-{generation}", daemon=True)
        self.store = store
        self.prefixes = tuple(prefixes)
        self.out = out
        # Batches of a prefix the loop has not taken yet merge, and past a cap are dropped
        # for a snapshot: a loop held for minutes must not hold every event meanwhile.
        self._backlog = Backlog(out, generation)
        self.resync_interval = resync_interval
        self.backoff = backoff or Backoff()
        self.generation = generation
        self._stop_event = threading.Event()
        self._errors: queue.Queue[object] = queue.Queue()
        self._lock = threading.Lock()
        # Last revision delivered per watched prefix: watches of several prefixes share one
        # stream but are not ordered against each other, so each resumes from its own point.
        self._last: dict[str, int] = {p: r for p, r in (resume or {}).items()
                                      if p in self.prefixes and r > 0}
        # (No prefixes at all, every resource keys = []: nothing to resume, and the snapshot
        # is what renders them.)
        self._first_snapshot: str | None = (
            None if self._last and set(self._last) == set(self.prefixes) else first_snapshot)
        self._pending_reset: StoreReset | None = None
        # Resyncs requested, and the last request a taken snapshot answers (read after it):
        # a request left unanswered by a follower that died is owed by its successor.
        self._resync_requests = 0
        self._resync_answered = 0
        self.reconnects = 0
        self.internal_errors = 0  # unexpected exceptions survived (each logged with traceback)
        self._config_errors = Repeats()  # (an unreadable password_file fails every retry)
        self._drops = Repeats()  # (a loop held again and again: one warning per 5 minutes)
        self._rereads = Rereads()  # (a re-read retried while etcd stays away)

    def positions(self) -> dict[str, int]:
        """The last revision delivered per prefix (what a successor resumes from)."""
        with self._lock:
            return dict(self._last)

    def request_resync(self) -> None:
        """Take a fresh snapshot now (the daemon lost track of its mirror)."""
        with self._lock:
            self._resync_requests += 1
        self._errors.put(_RESYNC_NOW)

    def set_resync_interval(self, seconds: float) -> None:
        """Re-read a snapshot every `seconds` (0: never) from now on: a config reload changed
        `[watch] interval` and kept this follower (same prefixes and store). It went on at the
        interval it was started with, so a SIGHUP that set one re-rendered at it but never
        re-read etcd."""
        self.resync_interval = seconds
        self._errors.put(_NEW_INTERVAL)

    def resync_owed(self) -> bool:
        """Whether a requested resync has no snapshot read after it yet (a successor of a dead
        follower must then start with one, not resume: the loop lost track of an event that
        this follower's positions already count as delivered)."""
        with self._lock:
            return self._resync_answered < self._resync_requests

    # ---- called from the store's thread

    def _sink(self, item: ChangeBatch | ReplayComplete | ReplayStarted | Exception) -> None:
        if isinstance(item, Exception):
            self._errors.put(item)
            return
        if isinstance(item, ReplayStarted):
            self._backlog.put(ReplayBegan(self.generation))
            return
        if isinstance(item, ReplayComplete):
            self._backlog.put(ReplayArrived(self.generation))
            return
        with self._lock:
            keys = [item.prefix] if item.prefix else list(self._last)
            if item.prefix and item.revision <= self._last.get(item.prefix, 0):
                return  # replayed by a resume: already delivered
            for key in keys:
                self._last[key] = max(self._last.get(key, 0), item.revision)
            if not self._backlog.put_batch(item):
                # The loop never gets what was dropped: a successor of this follower owes
                # it a snapshot too, not a resume from the positions that count it.
                self._resync_requests += 1
                self._errors.put(BacklogDropped(self._backlog.limit))

    # ---- the thread

    def stop(self) -> None:
        self._stop_event.set()
        self._errors.put(None)

    def _snapshot(self, reason: str) -> Snapshot | None:
        """Post a snapshot; on failure post the lost stream and return None (no waiting)."""
        if reason in ("compacted", "reset", "replay too large", "long replay"):
            delay = random.uniform(0, RESNAPSHOT_JITTER)
            if self._stop_event.wait(delay):
                return None
            self._rereads.trying(reason, delay)
        with self._lock:
            answers = self._resync_requests
        try:
            snapshot = self.store.snapshot(self.prefixes)
        except (StoreUnavailable, ConfigError) as exc:
            self._lost(str(exc))
            return None
        self._rereads.done(reason, snapshot.revision)
        with self._lock:
            cause, self._pending_reset = self._pending_reset, None
            if reason == "reset":
                # Another history: its revisions replace ours (a max() would keep the old ones).
                self._last.clear()
            for prefix in self.prefixes:
                self._last[prefix] = max(self._last.get(prefix, 0), snapshot.revision)
            self._resync_answered = max(self._resync_answered, answers)
            self._backlog.put(SnapshotTaken(snapshot, reason, self.generation, cause=cause))
        return snapshot

    def _catch_up(self, error: RevisionCompacted, start: int) -> str:
        """The watch cannot replay from `start`: log why; the reason of the snapshot taken."""
        if isinstance(error, LongReplay):
            log.info("watch from revision %d: %s; reading every prefix at one revision "
                     "instead", start, error)
            return "long replay"
        if isinstance(error, ReplayTooLarge):
            log.warning("watch from revision %d: %s; taking a fresh snapshot", start, error)
            return "replay too large"
        log.warning("watch from revision %d: compacted (up to %d); taking a fresh snapshot",
                    start, error.compacted_revision)
        return "compacted"

    def _after_drop(self, error: BacklogDropped) -> str:
        """The loop was held while changes passed the backlog's cap, and they were dropped:
        wait (watching nothing) until it has taken what is queued, then re-read. A snapshot
        read sooner would wait in the queue too, and a watch resumed meanwhile fill it again."""
        level = logging.WARNING if self._drops.due("backlog") else logging.INFO
        log.log(level, "watch: %s; a fresh snapshot follows once the loop is free", error)
        if self._backlog.wait_taken(self._stop_event):
            self._backlog.resume()
        return "backlog"

    def _on_reset(self, reset: StoreReset) -> str:
        log.warning("watch: %s; taking a fresh snapshot", reset)
        with self._lock:
            self._pending_reset = reset
        return "reset"

    def _lost(self, reason: str) -> None:
        self._backlog.put(StreamState(False, self._resume_revision() - 1, reason,
                                      self.generation))

    def _degraded(self, reason: str) -> None:
        """Report the stream lost and wait out the backoff. Each try says why at debug: the
        loop warns on the first loss only, and a watch down longer than its outage was
        otherwise a blank in every log (a retry that failed, or one that never ran?)."""
        self._lost(reason)
        delay = self.backoff.next()
        log.debug("store follower: %s; trying again in %.1fs", reason, delay)
        self._stop_event.wait(delay)

    def _resume_revision(self) -> int:
        with self._lock:
            return min(self._last.values(), default=0) + 1

    def run(self) -> None:
        """Follow until stopped. Each unexpected error is logged with its traceback, reported
        as a lost stream, and followed by a fresh start (after a backoff) from `_last`."""
        while not self._stop_event.is_set():
            try:
                self._run()
                return
            except Exception as exc:
                self.internal_errors += 1
                delay = self.backoff.next()
                log.exception("store follower: unexpected error; restarting it in %.1fs from "
                              "revision %d", delay, self._resume_revision())
                self._lost(f"internal error: {type(exc).__name__}: {exc}")
                self._stop_event.wait(delay)

    def _run(self) -> None:
        while not self._stop_event.is_set():
            if self._first_snapshot is not None:
                if self._snapshot(self._first_snapshot) is None:
                    self._stop_event.wait(self.backoff.next())
                    continue
                self._first_snapshot = None
            start = self._resume_revision()
            with self._lock:  # (each prefix from its own point; `start` is the lowest)
                starts = {p: r + 1 for p, r in self._last.items()}
            try:
                handle = self.store.watch(self.prefixes, start, self._sink, starts)
            except RevisionCompacted as exc:
                self._first_snapshot = self._catch_up(exc, start)
                continue
            except StoreReset as exc:
                self._first_snapshot = self._on_reset(exc)
                continue
            except (StoreUnavailable, ConfigError) as exc:
                if isinstance(exc, ConfigError) and self._config_errors.due(str(exc)):
                    log.error("store follower: %s; retrying", exc)
                self._degraded(str(exc))
                continue
            self._skip_to(getattr(handle, "delivered", {}))
            self._backlog.put(StreamState(True, start - 1, generation=self.generation,
                                          replay_until=getattr(handle, "replay_until", 0),
                                          replay_pending=getattr(handle, "replay_pending",
                                                                 None)))
            error = self._follow(handle)
            if error is None:
                return
            self.reconnects += 1
            if isinstance(error, BacklogDropped):
                self._first_snapshot = self._after_drop(error)
            elif isinstance(error, RevisionCompacted):
                self._first_snapshot = self._catch_up(error, start)
            elif isinstance(error, StoreReset):
                # Found on a live stream (the position check, a proxy's other cluster): the
                # mirror is another history's until the jittered snapshot is in, so the
                # stream counts as lost meanwhile (/ready said 200 for those 0-4 s).
                self._lost(str(error))
                self._first_snapshot = self._on_reset(error)
            else:
                self._degraded(str(error))

    def _skip_to(self, delivered: Mapping[str, int]) -> None:
        """The store found that these prefixes hold at these revisions what they held at
        their resume points (and watches them from there): a later resume starts there too."""
        with self._lock:
            for prefix, revision in delivered.items():
                if prefix in self._last:
                    self._last[prefix] = max(self._last[prefix], revision)

    def _follow(self, handle: WatchHandle) -> Exception | None:
        """Block until the watch fails (return its error) or we are stopped (return None).

        A failed resync says so (a lost stream: the data can no longer be vouched for) and is
        retried with its own backoff; the next one that works says the stream is back, so one
        failed resync never leaves the daemon degraded for good.
        """
        connected_at = time.monotonic()
        interval = self.resync_interval
        next_resync = connected_at + interval if interval else None
        resync_backoff = Backoff(base=min(1.0, interval or 1.0), cap=max(interval, 1.0))
        resync_failed = False
        try:
            while True:
                timeout = None if next_resync is None else max(0.0, next_resync - time.monotonic())
                try:
                    error = self._errors.get(timeout=timeout)
                except queue.Empty:
                    error = _RESYNC_NOW
                if error is _NEW_INTERVAL:
                    interval = self.resync_interval
                    resync_backoff = Backoff(base=min(1.0, interval or 1.0),
                                             cap=max(interval, 1.0))
                    if not resync_failed:  # (a failed one is retried on its own backoff)
                        next_resync = time.monotonic() + interval if interval else None
                    continue
                if error is _RESYNC_NOW:
                    snapshot = self._snapshot("resync")
                    if snapshot is None:
                        resync_failed = True
                        retry = resync_backoff.next()
                        next_resync = time.monotonic() + (min(retry, interval) if interval
                                                          else retry)
                        continue
                    if resync_failed:
                        resync_failed = False
                        resync_backoff.reset()
                        self._backlog.put(StreamState(True, snapshot.revision,
                                                      generation=self.generation))
                    next_resync = time.monotonic() + interval if interval else None
                    continue
                if error is None or self._stop_event.is_set():
                    return None
                if time.monotonic() - connected_at > 5:
                    self.backoff.reset()  # a stream that lived a while starts a fresh backoff
                assert isinstance(error, Exception)
                return error
        finally:
            handle.cancel()
