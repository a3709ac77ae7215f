"""The edges of a resumed watch's replay against a real etcd: a watch that dies as its replay
ends, and a prefix quiet for long beside a busy one."""

from __future__ import annotations

import contextlib
import queue
import time

from confsync.settings import EtcdSettings
from confsync.stores import ReplayComplete
from confsync.stores.etcd import EtcdStore
from confsync.watcher import ReplayArrived, StoreFollower, StreamState
from tests.support.etcd_client import client
from tests.support.etcd_server import EtcdMember
from tests.support.tcp_proxy import TcpProxy


class _Out(queue.SimpleQueue):  # type: ignore[type-arg]
    """The follower's queue, which says when a lost stream was posted."""

    def __init__(self) -> None:
        self.lost = False

    def put(self, item: object, block: bool = True, timeout: float | None = None) -> None:
        if isinstance(item, StreamState) and not item.connected:
            self.lost = True
        super().put(item, block, timeout)


def _wait_lost(out: _Out, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not out.lost and time.monotonic() < deadline:
        time.sleep(0.01)


def test_a_dying_watch_s_replay_arrived_never_lands_after_its_lost_stream(
        etcd: EtcdMember) -> None:
    """The stream is cut as the watch hands its "replay arrived" over, and the position check
    reports the lost stream meanwhile. The check's report passed the watch's "dead?" test
    first and reached the loop first: a ReplayArrived of the dead session came after its
    lost stream, and the next session's renders took it for their own replay (no wait: half
    of a txn rendered). What a watch reports now reaches the follower in the order decided."""
    c = client(etcd.endpoint)
    base = f"/dying{time.time_ns()}"
    a, b = f"{base}/a/", f"{base}/b/"
    last = int(c.put(a + "n", "0").header.revision)
    c.transaction(compare=[], failure=[], success=[c.transactions.put(a + "n", "1"),
                                                   c.transactions.put(b + "n", "1")])
    proxy = TcpProxy(etcd.client_port)
    out = _Out()

    class CutAtReplayArrived(StoreFollower):
        cut = False

        def _sink(self, item: object) -> None:
            if isinstance(item, ReplayComplete) and not self.cut:
                self.cut = True
                proxy.close()  # the stream dies as its replay's end is handed over
                _wait_lost(out, 1.5)  # (the lost stream's notice, unless something holds it)
            super()._sink(item)  # type: ignore[arg-type]

    # (silence_limit 0.5 s: the position check runs every 0.25 s.)
    store = EtcdStore(EtcdSettings(endpoints=(proxy.endpoint,), timeout=1.0,
                                   silence_limit=0.5))
    follower = CutAtReplayArrived(store, [a, b], out, resume={a: last, b: last})
    follower.start()
    events: list[object] = []
    try:
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline and not (
                out.lost and any(isinstance(e, ReplayArrived) for e in events)):
            with contextlib.suppress(queue.Empty):
                events.append(out.get(timeout=0.1))
        with contextlib.suppress(queue.Empty):  # (anything still on its way)
            while True:
                events.append(out.get(timeout=0.3))
    finally:
        follower.stop()
        follower.join(timeout=10)
        store.close()
        proxy.close()
    assert follower.cut, events
    lost = next(i for i, e in enumerate(events)
                if isinstance(e, StreamState) and not e.connected)
    late = [e for e in events[lost:] if isinstance(e, ReplayArrived)]
    assert not late, f"a ReplayArrived after the lost stream: {events}"
