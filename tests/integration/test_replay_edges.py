"""The edges of a resumed watch's replay against a real etcd: a watch that dies as its replay
ends, and a prefix quiet for long beside a busy one."""

from __future__ import annotations

import contextlib
import queue
import time
from pathlib import Path

from confsync.settings import EtcdSettings
from confsync.stores import ReplayComplete
from confsync.stores.etcd import EtcdStore
from confsync.watcher import BatchReceived, ReplayArrived, StoreFollower, StreamState
from tests.support.cli import write_resource
from tests.support.daemon import WatchProcess, read, wait_for
from tests.support.etcd_client import client
from tests.support.etcd_server import EtcdMember, start_single
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
    lost stream, and the next session took it for its own (`/ready` 200 before its replay
    was in; landing later still, half of a txn rendered). What a watch reports now reaches
    the follower in the order it was decided, and nothing after its cancel."""
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


def test_a_resume_of_more_prefixes_than_one_txn_takes_comes_back(etcd_binary: str,
                                                                 tmp_path: Path) -> None:
    """A resume asks which prefixes changed in one txn, three ranges a prefix: past etcd's
    --max-txn-ops (128 by default: from 43 prefixes on; 40 here: from 14) etcd refused it ("too many
    operations in txn request"), and every resume failed the same way, for good: `/ready`
    503 and files stale until a restart. The ranges now go as separate calls."""
    member = start_single(etcd_binary, tmp_path / "etcd", extra_args=["--max-txn-ops", "40"])
    try:
        c = client(member.endpoint)
        prefixes = [f"/many/p{i:02d}/" for i in range(50)]
        for prefix in prefixes:
            c.put(prefix + "k", "0")
        last = int(c.put("/many/p00/k", "0").header.revision)
        c.transaction(compare=[], failure=[], success=[c.transactions.put(prefixes[7] + "k", "1"),
                                                       c.transactions.put(prefixes[42] + "k", "1")])
        store = EtcdStore(EtcdSettings(endpoints=(member.endpoint,), timeout=5.0))
        out: queue.SimpleQueue[object] = queue.SimpleQueue()
        follower = StoreFollower(store, prefixes, out, resume=dict.fromkeys(prefixes, last))
        follower.start()
        events: list[object] = []
        try:
            deadline = time.monotonic() + 8
            while time.monotonic() < deadline and not any(
                    isinstance(e, (ReplayArrived, StreamState)) for e in events):
                with contextlib.suppress(queue.Empty):
                    events.append(out.get(timeout=0.1))
            with contextlib.suppress(queue.Empty):
                # Both, in either order: the replay's batches may come before the follower
                # has said the stream is up (the loop takes either order).
                while not (any(isinstance(e, ReplayArrived) for e in events)
                           and any(isinstance(e, StreamState) for e in events)):
                    events.append(out.get(timeout=2))
        finally:
            follower.stop()
            follower.join(timeout=10)
            store.close()
    finally:
        member.stop()
    states = [e for e in events if isinstance(e, StreamState)]
    assert states and all(s.connected for s in states), events
    batches = {e.batch.prefix for e in events if isinstance(e, BatchReceived)}
    assert batches == {prefixes[7], prefixes[42]}, events
    assert any(isinstance(e, ReplayArrived) for e in events), events


def test_a_txn_reaching_a_prefix_quiet_for_long_is_replayed_not_read_again(
        etcd: EtcdMember, tmp_path: Path, prefix: str, watchers: list[WatchProcess]) -> None:
    """/q has not changed since the start; /a has had 600 revisions since, all delivered.
    While the stream is down one txn sets both. /q resumed from its last event, 600
    revisions back, and that distance (over the 500 that a replay in parts needs) made the
    resume read every prefix at one revision: 0-4 s of jitter late (after 2,000 writes to
    /a: the file right 1.6-2.9 s after the link came back, 0.5-1.1 s now, as after any short
    replay), though /q missed one revision. Etcd's history now shows where /q still held what
    the mirror holds (600 revisions on), and its watch starts there."""
    c = client(etcd.endpoint)
    c.put(prefix + "/q/n", "0")
    c.put(prefix + "/a/n", "0")
    dest = tmp_path / "out"
    seen = tmp_path / "seen"
    write_resource(tmp_path / "cd", "aq", "{{ getv('/a/n') }} {{ getv('/q/n') }}\n",
                   f'dest = "{dest}"\nkeys = ["/a", "/q"]\n'
                   f'reload_cmd = ["sh", "-c", "cat {dest} >> {seen}"]')
    proxy = TcpProxy(etcd.client_port)
    try:
        w = WatchProcess("--confdir", str(tmp_path / "cd"), "--endpoints", proxy.endpoint,
                         "--prefix", prefix, "--wait-min", "0", log=tmp_path / "watch.log")
        watchers.append(w)
        wait_for(lambda: read(dest) == "0 0\n", timeout=15, what="first render")
        for i in range(1, 601):
            c.put(prefix + "/a/n", str(i))
        wait_for(lambda: read(dest) == "600 0\n", timeout=20, what="the 600 puts")
        proxy.close()
        w.wait_log("degraded", timeout=15)
        c.transaction(compare=[], failure=[], success=[c.transactions.put(prefix + "/a/n", "x"),
                                                       c.transactions.put(prefix + "/q/n", "x")])
        proxy = TcpProxy(etcd.client_port, port=proxy.port)
        wait_for(lambda: read(dest) == "x x\n", timeout=10, what=w.output()[-2000:])
    finally:
        proxy.close()
    assert "revisions missed" not in w.output(), w.output()[-2000:]
    mixed = [line for line in read(seen).splitlines() if line.split()[0] == "x" and
             line != "x x"]
    assert not mixed, mixed


def test_each_prefix_replays_from_where_etcd_shows_it_last_held_the_mirror_s_state(
        etcd: EtcdMember) -> None:
    """Resumed at one revision, 600 revisions later: a prefix that did not change starts
    after `until` (nothing to replay); one that changed only in the last 500 starts 500
    back, and so does one that made and deleted a key early and changed late (500 back it
    held what the mirror holds: the key's two events leave nothing to render); one that
    changed earlier starts at its own point."""
    c = client(etcd.endpoint)
    base = f"/starts{time.time_ns()}"
    quiet, late, early, undone = (f"{base}/{name}/" for name in
                                  ("quiet", "late", "early", "undone"))
    for prefix in (quiet, late, early, undone):
        c.put(prefix + "k", "0")
    start = int(c.put(f"{base}/other", "0").header.revision) + 1
    c.put(early + "k", "1")
    c.put(undone + "gone", "1")
    c.delete(undone + "gone")
    for i in range(600):
        c.put(f"{base}/other", str(i))
    c.put(late + "k", "1")
    c.put(undone + "k", "1")
    until = int(c.put(f"{base}/other", "last").header.revision)
    store = EtcdStore(EtcdSettings(endpoints=(etcd.endpoint,)))
    try:
        starts = store.replay_starts(store.new_client(),
                                     dict.fromkeys((quiet, late, early, undone), start), until)
    finally:
        store.close()
    assert starts == {quiet: until + 1, late: until - 499, early: start,
                      undone: until - 499}
