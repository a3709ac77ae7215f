"""A store closed while its snapshot hangs: the read ends there, asking no other endpoint.

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


def test_a_store_closed_mid_read_ends_the_read(etcd: EtcdMember,
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
        wait_for(lambda: holes[0].accepted >= 1, 20, what="the read on its way")
        store.close()
        # (Before, the read went on to the next hole: until gRPC's keepalive gave up on it,
        # 15 s, or the 60 s timeout.)
        reader.join(10)
        assert not reader.is_alive(), "the read went on after the store was closed"
        assert len(outcome) == 1 and isinstance(outcome[0], StoreUnavailable), outcome
        assert "store closed" in str(outcome[0])
    finally:
        for hole in holes:
            hole.close()
