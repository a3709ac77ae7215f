"""The last write seen, read back at its revision, tells our history from another one."""

from __future__ import annotations

from typing import Any

import pyetcd

from confsync.stores.history_mark import HistoryMark


def _kvs(*writes: tuple[bytes, int, int]) -> Any:
    """(key, mod_revision, version) each, created at revision 2."""
    response = pyetcd.etcdrpc.RangeResponse()
    for key, revision, version in writes:
        kv = response.kvs.add()
        kv.key, kv.mod_revision, kv.create_revision, kv.version = key, revision, 2, version
    return response.kvs


def test_the_newest_write_is_the_mark_and_only_the_same_write_matches_it() -> None:
    kvs = _kvs((b"/a", 5, 1), (b"/b", 9, 3), (b"/c", 2, 1))
    mark = HistoryMark.latest(kvs, None)
    assert mark is not None and (mark.key, mark.mod_revision) == (b"/b", 9)
    assert HistoryMark.latest(_kvs((b"/d", 3, 1)), mark) is mark  # an older one: kept
    same, = _kvs((b"/b", 9, 3))
    assert mark.differs(same) is None
    other_version, = _kvs((b"/b", 9, 1))
    older, = _kvs((b"/b", 4, 2))
    assert mark.differs(other_version) == ("/b at revision 9 is another write (modified at "
                                           "9, version 1)")
    assert mark.differs(older) is not None
    assert mark.differs(None) == "/b, written at revision 9, is not there at it"
