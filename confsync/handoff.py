"""The follower's hand-off of watch batches to the loop, bounded while the loop is busy.

The loop's queue had no cap: a loop held for minutes (a check near its timeout, a reload that
hangs, a frozen filesystem) while etcd kept sending grew by every event it sent (1,000 puts/s
of 1 KB values: 1.4 MB a second, for as long as the loop was held). Now the batches of one
prefix that the loop has not taken yet are one entry: each new batch is merged into it, the
last change per key at the newest revision. Applied whole, that is exactly the prefix's state
at that revision (no event lost, no state applied that etcd never held), and what waits grows
with the keys changed, not with time.

Churn of new names (instances put and deleted under ever new ids) still grows it by a
deletion per name. Past `LIMIT` bytes waiting, the entries are dropped (they read as an empty
batch at revision 0, below any snapshot: the loop skips them) and the caller reads a fresh
snapshot once the loop has taken what is queued: the existing catch-up path, at the cost of
one full read.
"""

from __future__ import annotations

import queue
import threading

from confsync.stores import Change, ChangeBatch

# Bytes of keys and values (plus ENTRY_COST per change) waiting for the loop before the
# backlog is dropped for a snapshot. Far above what a loop that keeps up ever holds.
LIMIT = 32 << 20
ENTRY_COST = 200  # a Change, its tuple slot and dict entry, roughly, in CPython


class BacklogDropped(Exception):
    """The loop did not take `limit` bytes of changes in time; they were dropped."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"over {limit / (1 << 20):g} MiB of changes waited for a loop held "
                         f"(a slow check or reload?); dropped them")
        self.limit = limit


def _cost(change: Change) -> int:
    return len(change.key) + len(change.value or b"") + ENTRY_COST


class BatchReceived:
    """One prefix's changes handed to the loop. Until the loop reads `batch` (which takes the
    entry), later batches of its prefix may be merged into it by the follower."""

    __slots__ = ("_backlog", "_batch", "_merged", "first_revision", "generation", "prefix",
                 "revision", "size")

    def __init__(self, batch: ChangeBatch, generation: int = 0,
                 backlog: Backlog | None = None) -> None:
        self._batch = batch
        self._merged: dict[str, Change] | None = None  # set at the first merge
        self._backlog = backlog
        self.generation = generation
        self.prefix = batch.prefix
        self.revision = batch.revision
        # The revision of its first batch: merged, an entry may end a revision the loop has
        # part of and go on to later ones (see the daemon's `_settle`).
        self.first_revision = batch.revision
        self.size = sum(map(_cost, batch.changes)) if backlog is not None else 0

    @property
    def batch(self) -> ChangeBatch:
        """The changes, merged; reading them takes the entry (nothing is merged in after)."""
        backlog = self._backlog
        if backlog is not None:
            backlog.take(self)
        return self._batch

    def __repr__(self) -> str:
        return f"BatchReceived({self.prefix!r}@{self.revision}, generation={self.generation})"

    # ---- under the backlog's lock

    def _merge(self, batch: ChangeBatch) -> int:
        """Add a later batch of the same prefix; return the bytes it added."""
        merged = self._merged
        if merged is None:
            merged = self._merged = {c.key: c for c in self._batch.changes}
        added = 0
        for change in batch.changes:
            old = merged.pop(change.key, None)  # (popped: the dict's order is the batch's)
            merged[change.key] = change
            added += _cost(change) - (_cost(old) if old is not None else 0)
        self.revision = max(self.revision, batch.revision)
        self.size += added
        return added

    def _seal(self) -> None:
        if self._merged is not None:
            self._batch = ChangeBatch(self.revision, tuple(self._merged.values()), self.prefix)
            self._merged = None
        self._backlog = None

    def _drop(self) -> None:
        self._batch = ChangeBatch(0, (), self.prefix)
        self._merged = None
        self._backlog = None
        self.revision = self.first_revision = self.size = 0


class Backlog:
    """What one follower handed to the loop's queue `out` and the loop has not taken yet."""

    def __init__(self, out: queue.SimpleQueue[object], generation: int,
                 limit: int | None = None) -> None:
        self._out = out
        self._generation = generation
        self.limit = LIMIT if limit is None else limit
        self._lock = threading.Condition(threading.Lock())
        self._open: dict[str, BatchReceived] = {}  # per prefix: the entry batches merge into
        self._waiting: set[BatchReceived] = set()  # every entry not taken yet
        self.size = 0  # bytes waiting
        self.dropped = False  # over the limit: batches are refused until `resume`

    def put_batch(self, batch: ChangeBatch) -> bool:
        """Queue `batch`, merged into its prefix's waiting entry if there is one. False when
        this passed the limit: everything waiting was dropped; so is every batch until
        `resume` (the caller reads a snapshot)."""
        with self._lock:
            if self.dropped:
                return True
            entry = self._open.get(batch.prefix)
            if entry is not None:
                self.size += entry._merge(batch)
            else:
                entry = BatchReceived(batch, self._generation, self)
                self._open[batch.prefix] = entry
                self._waiting.add(entry)
                self.size += entry.size
                self._out.put(entry)
            if self.size <= self.limit:
                return True
            for waiting in self._waiting:
                waiting._drop()
            self._waiting.clear()
            self._open.clear()
            self.size = 0
            self.dropped = True
            self._lock.notify_all()
            return False

    def put(self, event: object) -> None:
        """Queue any other event; batches after it are never merged into entries before it."""
        with self._lock:
            self._open.clear()
            self._out.put(event)

    def take(self, entry: BatchReceived) -> None:
        with self._lock:
            if entry not in self._waiting:
                return
            self._waiting.discard(entry)
            if self._open.get(entry.prefix) is entry:
                del self._open[entry.prefix]
            self.size -= entry.size
            entry._seal()
            if not self._waiting:
                self._lock.notify_all()

    def wait_taken(self, stop: threading.Event, poll: float = 0.1) -> bool:
        """Block until the loop took every entry (dropped ones are read as taken), or `stop`;
        True when taken."""
        with self._lock:
            while not stop.is_set():
                if not self._waiting and self._out.empty():
                    return True
                self._lock.wait(poll)
        return False

    def resume(self) -> None:
        with self._lock:
            self.dropped = False
