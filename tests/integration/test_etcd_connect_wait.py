"""A new client's connect wait (up to 1 s, `CONNECT_SECONDS`) holds no other user of the store.

The snapshot's shared client was made under the store's lock, and the lock is what the
running watch's callback takes for every response (`_saw`), what the position check takes,
and what `close()` takes: a resync whose reconnect waited on endpoints that did not come up
held every watch event, and the main loop's close of an abandoned store, for that whole wait
(measured: 1.0 s, against 1 ms before the wait). Real etcd, two silent endpoints (they accept
and never answer) listed after it, and it again behind a TCP proxy.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import psutil
import pytest

from confsync.errors import StoreUnavailable
from confsync.settings import EtcdSettings
from confsync.stores.base import ChangeBatch
from confsync.stores.etcd import EtcdStore
from tests.support.black_hole import black_holes
from tests.support.daemon import wait_for
from tests.support.etcd_client import client
from tests.support.etcd_server import EtcdMember
from tests.support.tcp_proxy import TcpProxy

pytestmark = [pytest.mark.etcd]

# The old code held the others for the whole connect wait, 1.0 s; now a watch event takes
# milliseconds. Generous for a loaded machine, well short of the wait.
HELD_MAX = 0.5


@contextlib.contextmanager
def _degraded_store(etcd: EtcdMember) -> Iterator[tuple[EtcdStore, list[int]]]:
    """A store of etcd, two silent endpoints, and etcd again (through a proxy: another
    address of a live member); the ports of the last three. Its next client starts at the
    first silent one, as after a call failed on the first endpoint (`endpoint_failed`): its
    connect wait is all of CONNECT_SECONDS (the silent ones first, in turn)."""
    proxy = TcpProxy(etcd.client_port)
    try:
        with black_holes(2) as silent:
            store = EtcdStore(EtcdSettings(endpoints=(etcd.endpoint, *silent, proxy.endpoint),
                                           timeout=3.0))
            try:
                yield store, [*(int(url.rsplit(":", 1)[1]) for url in silent), proxy.port]
            finally:
                store.close()
    finally:
        proxy.close()


def _connections_to(port: int) -> int:
    """This process's TCP connections to `port` (a silent endpoint's: the kernel completes
    the handshake, nothing answers)."""
    return sum(1 for conn in psutil.Process().net_connections(kind="tcp")
               if conn.raddr and conn.raddr.port == port and conn.status == "ESTABLISHED")


def _snapshot_in_background(store: EtcdStore, prefix: str) -> tuple[threading.Thread,
                                                                     list[Any]]:
    outcome: list[Any] = []

    def read() -> None:
        try:
            outcome.append(store.snapshot([prefix]))
        except Exception as exc:
            outcome.append(exc)

    reader = threading.Thread(target=read, daemon=True, name="test-snapshot")
    reader.start()
    return reader, outcome


def test_a_watch_event_is_not_held_while_a_snapshot_waits_for_its_connection(
        etcd: EtcdMember) -> None:
    prefix = f"/lockwait{uuid.uuid4().hex[:10]}/"
    c = client(etcd.endpoint)
    arrived: queue.Queue[tuple[float, ChangeBatch]] = queue.Queue()

    def sink(item: object) -> None:
        if isinstance(item, ChangeBatch):
            arrived.put((time.monotonic(), item))

    def put_and_time(value: str) -> float:
        put = time.monotonic()
        c.put(prefix + "k", value)
        at, batch = arrived.get(timeout=10)
        assert batch.changes[0].value == value.encode(), batch
        return at - put

    with _degraded_store(etcd) as (store, ports):
        start = int(c.get_response(b"\0").header.revision) + 1
        handle = store.watch([prefix], start, sink)
        try:
            before = put_and_time("0")  # (the watch is live, on the first endpoint)
            store.endpoint_failed()
            reader, outcome = _snapshot_in_background(store, prefix)
            wait_for(lambda: _connections_to(ports[0]), 10,
                     what="the snapshot's connect wait begun")
            held = put_and_time("1")
            print(f"put to watch event: {before * 1000:.0f} ms; during the snapshot's "
                  f"connect wait {held * 1000:.0f} ms")
            assert held < HELD_MAX, (
                f"the watch event waited {held:.2f}s for the snapshot's connect wait")
            reader.join(20)
            assert not reader.is_alive()
            assert outcome[0].values == {prefix + "k": b"1"}, outcome  # (read via the proxy)
        finally:
            handle.cancel()
    c.close()


def test_a_store_closed_during_a_connect_wait_closes_at_once_and_keeps_no_client(
        etcd: EtcdMember) -> None:
    """`close()` is the main loop's (a reload abandoned): it waited out the connect wait,
    then joined the reload's follower. The wait ends with the store, and the client made
    meanwhile is closed, never installed in the closed store."""
    with _degraded_store(etcd) as (store, ports):
        store.endpoint_failed()
        reader, outcome = _snapshot_in_background(store, "/lockwait-close/")
        wait_for(lambda: _connections_to(ports[0]), 10,
                 what="the snapshot's connect wait begun")
        asked = time.monotonic()
        store.close()
        took = time.monotonic() - asked
        print(f"close() during the connect wait took {took * 1000:.0f} ms")
        assert took < HELD_MAX, f"close() waited {took:.2f}s for the connect wait"
        reader.join(20)
        ended = time.monotonic() - asked
        print(f"the snapshot ended {ended * 1000:.0f} ms after close()")
        # (The wait ends with the store: the loop joins an abandoned reload's follower.)
        assert ended < HELD_MAX, f"the snapshot went on {ended:.2f}s after close()"
        assert isinstance(outcome[0], StoreUnavailable), outcome
        assert "store closed" in str(outcome[0]), outcome
        assert store._client is None
        # (Its connection to the live endpoint: gRPC finishes a silent one's handshake
        # attempt on a closed channel by itself, at its own 20 s connect deadline.)
        wait_for(lambda: not _connections_to(ports[-1]), 10,
                 what="the client made during the wait closed")
