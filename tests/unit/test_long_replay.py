"""A resume of several prefixes that missed more than etcd replays at once reads a snapshot
instead (`EtcdStore.check_replay`), and the watch after that snapshot is not sent back to one:
writes faster than a snapshot read must not keep the watch from ever starting."""

from __future__ import annotations

import pytest

from confsync.errors import LongReplay, RevisionCompacted
from confsync.settings import EtcdSettings
from confsync.stores.etcd import REPLAY_REVISIONS_MAX, EtcdStore


def test_only_a_long_replay_of_several_prefixes_asks_for_a_snapshot() -> None:
    store = EtcdStore(EtcdSettings(endpoints=("http://127.0.0.1:1",)))
    store.check_replay(1, 100 * REPLAY_REVISIONS_MAX)  # one prefix's parts: states it held
    store.check_replay(2, REPLAY_REVISIONS_MAX)
    with pytest.raises(LongReplay) as raised:
        store.check_replay(2, REPLAY_REVISIONS_MAX + 1)
    assert isinstance(raised.value, RevisionCompacted)  # (the follower's snapshot path)
    assert raised.value.missed == REPLAY_REVISIONS_MAX + 1


def test_the_watch_after_a_long_replays_snapshot_starts_whatever_it_missed() -> None:
    store = EtcdStore(EtcdSettings(endpoints=("http://127.0.0.1:1",)))
    with pytest.raises(LongReplay):
        store.check_replay(3, 10 * REPLAY_REVISIONS_MAX)
    store.check_replay(3, 10 * REPLAY_REVISIONS_MAX)  # the watch after that snapshot
    with pytest.raises(LongReplay):  # a later resume is checked again
        store.check_replay(3, 10 * REPLAY_REVISIONS_MAX)


def test_the_exemption_goes_to_the_first_watch_after_the_snapshot_even_one_that_fails() -> None:
    """The watch after a long replay's snapshot that etcd does not answer (this host cut off
    from the cluster) used up no exemption: the one made when etcd was back, minutes of writes
    later, was let through unchecked and its replay came in parts, rendered mixed."""
    from confsync.errors import StoreUnavailable

    store = EtcdStore(EtcdSettings(endpoints=("http://127.0.0.1:1",), timeout=0.5))
    try:
        with pytest.raises(LongReplay):
            store.check_replay(2, 10 * REPLAY_REVISIONS_MAX)
        # (the snapshot is read; then the watch after it finds etcd away)
        with pytest.raises(StoreUnavailable):
            store.watch(["/a/", "/b/"], 1000, lambda *_: None)  # type: ignore[arg-type]
        with pytest.raises(LongReplay):  # back, long after: checked again
            store.check_replay(2, 10 * REPLAY_REVISIONS_MAX)
    finally:
        store.close()
