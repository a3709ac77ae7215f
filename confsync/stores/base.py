"""What every store gives, and what the rest of confsync relies on: snapshots, change batches,
the watch sink. Backends import only this module, so the package's factories (confsync.stores)
are the one place that knows the backends, and the arrows stay one way.
"""

# No `from __future__ import annotations` here: it makes each NamedTuple field's annotation a
# string, which typing compiles (a ForwardRef per field) as the class is made, on every run;
# the records of the one-shot path before etcd is asked cost 0.06 ms more so (issue 11).
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import NamedTuple, Protocol

# The records are NamedTuples, not dataclasses: one `exec` each to create, where a frozen
# dataclass's six were ~0.3 ms apiece of every one-shot run on Python 3.11 (issue 11). Only
# `isinstance` tells the watch sink's items apart (a NamedTuple equals any equal tuple).


class Snapshot(NamedTuple):
    """Every key under the asked prefixes, all read at `revision`."""

    revision: int
    values: dict[str, bytes]
    # The store's identity (etcd's header.cluster_id; 0 where there is none). A snapshot from
    # another cluster is a different history: its revisions cannot be compared with ours.
    cluster_id: int = 0


class Change(NamedTuple):
    key: str
    value: bytes | None  # None: the key was deleted


class ChangeBatch(NamedTuple):
    """All changes of one watch response; an empty batch is a progress notification."""

    revision: int
    changes: tuple[Change, ...]
    # The watched prefix this batch belongs to. Watches of several prefixes share a stream but
    # are not ordered against each other, so resume points are tracked per prefix.
    prefix: str = ""


class ReplayComplete(NamedTuple):
    """Every prefix that changed while a watch was away has sent its replay up to `revision`
    (the handle's `replay_until`): the prefixes' replays are unordered against each other, so
    until then the mirror may hold one prefix's half of a txn."""

    revision: int


class ReplayStarted(NamedTuple):
    """A replay up to `revision` is on its way: said before a resume's watches are created
    (the first one's replay can come while the next is), or when a live watch got a lagging
    one's replay (several revisions in one response, or older than the server's: a gRPC proxy
    resumed its upstream watches itself, one after the other). A ReplayComplete follows once
    every changed prefix has sent its part; until then the mirror may hold half of a txn."""

    revision: int


# The watch sink gets batches in revision order (and a ReplayComplete after the batches it
# covers, each ReplayStarted followed by one), or one exception after which the watch is dead:
# StoreUnavailable (resume from last revision + 1), RevisionCompacted (take a fresh snapshot) or
# StoreReset (another cluster, or revisions went back: a fresh snapshot replaces the mirror).
WatchSink = Callable[[ChangeBatch | ReplayComplete | ReplayStarted | Exception], None]


class WatchHandle(Protocol):
    """A running watch. A handle may also carry `replay_until: int`, the store's revision as
    the watch was created (etcd's: what comes up to it is a replay of what was missed); the
    follower reads it with a default of 0, unknown, so stores without revisions need none; and
    `replay_pending: bool`, whether a ReplayComplete follows (absent: not known); and
    `delivered: dict[str, int]`, revisions up to which prefixes are known to hold what they
    held at their resume points (their watches start after them, and so does a later resume)."""

    def cancel(self) -> None: ...


class Store(Protocol):
    name: str

    def snapshot(self, prefixes: Sequence[str]) -> Snapshot: ...

    def watch(self, prefixes: Sequence[str], start_revision: int, sink: WatchSink,
              starts: Mapping[str, int] | None = None) -> WatchHandle:
        """Start delivering changes after `start_revision - 1` to `sink` from a store thread;
        `starts`: a later start for some prefixes (each resumes from its own last revision: a
        store may use it, and need not).

        Raises StoreUnavailable, RevisionCompacted, or StoreReset when the store is no longer
        the history `start_revision` belongs to. The sink must only enqueue: rendering on the
        store's thread would stall the stream.
        """
        ...

    def close(self) -> None: ...


def merge_prefixes(prefixes: Iterable[str]) -> tuple[str, ...]:
    """Drop prefixes covered by a shorter one, so one key is never delivered twice."""
    merged: list[str] = []
    for prefix in sorted(set(prefixes)):
        if merged and prefix.startswith(merged[-1]):
            continue
        merged.append(prefix)
    return tuple(merged)
