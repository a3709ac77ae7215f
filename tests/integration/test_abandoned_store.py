"""A store closed while its snapshot hangs: the read ends, and asks no other endpoint.

`watch` closes the store of a reload it abandons (refused while the new store's snapshot was
read), then joins that reload's follower. Closing cancelled the read in flight, and the read
went on to the store's next endpoint with a new client (a closed store opened a client that
nobody closed again), so the join waited for another whole timeout per endpoint, and a
warning said "trying the next endpoint". Real gRPC against black holes: two TCP proxies that
accept and never answer.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from confsync.errors import StoreUnavailable
from confsync.settings import EtcdSettings
from confsync.stores.etcd import EtcdStore
from tests.support.daemon import wait_for
from tests.support.etcd_server import EtcdMember
from tests.support.tcp_proxy import TcpProxy

pytestmark = [pytest.mark.etcd]


def test_a_store_closed_mid_read_asks_no_other_endpoint(etcd: EtcdMember,
                                                       tmp_path: Path) -> None:
    holes = [TcpProxy(etcd.client_port), TcpProxy(etcd.client_port)]
    for hole in holes:
        hole.stall()
    try:
        store = EtcdStore(EtcdSettings(endpoints=tuple(hole.endpoint for hole in holes),
                                       timeout=60.0))
        outcome: list[BaseException | object] = []

        def read() -> None:
            try:
                outcome.append(store.snapshot(["/a"]))
            except BaseException as exc:
                outcome.append(exc)

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        wait_for(lambda: holes[0].accepted >= 1, 20, what="the read in flight")
        store.close()
        reader.join(20)  # (60 s per endpoint before: the join gave up first)
        assert not reader.is_alive()
        assert len(outcome) == 1 and isinstance(outcome[0], StoreUnavailable), outcome
        assert "store closed" in str(outcome[0])
        assert holes[1].accepted == 0
    finally:
        for hole in holes:
            hole.close()
