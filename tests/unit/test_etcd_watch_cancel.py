"""A watch etcd cancels reaches confsync as an error (the client library drops the cancel)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from confsync.stores.etcd import WatchCanceled, _Watcher


def _response(watch_id: int, created: bool) -> SimpleNamespace:
    return SimpleNamespace(watch_id=watch_id, created=created, canceled=True,
                           compact_revision=0, events=[],
                           cancel_reason="etcdserver: permission denied")


def test_a_refused_create_fails_the_create_and_takes_no_other_watch_s_id() -> None:
    watcher = _Watcher(watchstub=None)
    delivered: list[Any] = []
    watcher._callbacks[0] = delivered.append  # a live watch under id 0
    pending = SimpleNamespace(callback=lambda r: None, id=None, err=None)
    watcher._new_watch = pending
    watcher._handle_response(_response(0, created=True))
    assert isinstance(pending.err, WatchCanceled)
    assert "permission denied" in str(pending.err)
    assert watcher._callbacks[0] == delivered.append and delivered == []


def test_a_live_watch_cancelled_by_etcd_gets_the_error_once() -> None:
    watcher = _Watcher(watchstub=None)
    delivered: list[Any] = []
    watcher._callbacks[7] = delivered.append
    watcher._handle_response(_response(7, created=False))
    watcher._handle_response(_response(7, created=False))  # nothing left to tell
    assert len(delivered) == 1 and isinstance(delivered[0], WatchCanceled)
    assert 7 not in watcher._callbacks
