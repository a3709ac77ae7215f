"""The periodic position check compares the server's revision with what was seen before it
asked: a revision the watch delivers while the answer is on its way is no restored backup."""

from __future__ import annotations

from typing import Any

import pytest

from confsync.errors import StoreReset
from confsync.settings import EtcdSettings
from confsync.stores.etcd import EtcdStore

CLUSTER = 0xDE4B


def _store(answer: int, meanwhile: int | None) -> EtcdStore:
    """A store at revision 100 whose server answers `answer`; while it answers, the watch
    delivers revision `meanwhile` (None: nothing)."""
    store = EtcdStore(EtcdSettings(endpoints=("http://127.0.0.1:1",)))
    store._adopt(CLUSTER, 100)

    def position(client: Any, key: bytes) -> tuple[int, int, str | None]:
        if meanwhile is not None:
            assert store._saw(CLUSTER, meanwhile) is None  # the watch thread, meanwhile
        return CLUSTER, answer, None

    store._position_and_history = position  # type: ignore[method-assign]
    return store


def test_a_revision_the_watch_delivers_during_the_check_is_no_reset() -> None:
    assert _store(answer=120, meanwhile=121).check_position(None, 0, b"k") == 120  # type: ignore[arg-type]


def test_a_revision_below_one_seen_before_the_check_is_a_reset() -> None:
    with pytest.raises(StoreReset, match="below revision 100"):
        _store(answer=90, meanwhile=None).check_position(None, 0, b"k")  # type: ignore[arg-type]
    with pytest.raises(StoreReset, match="below revision 130"):  # delivered by the follower
        _store(answer=120, meanwhile=None).check_position(None, 131, b"k")  # type: ignore[arg-type]
