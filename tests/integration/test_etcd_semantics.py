"""etcd's event semantics as `confsync watch` sees them over months, against a real etcd:
transactions, lease expiry, big values and prefixes, prefix boundaries, idle prefixes beside
busy ones, hot keys."""

from __future__ import annotations

import contextlib
import queue
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from confsync import watcher
from confsync.settings import EtcdSettings
from confsync.stores import Change
from confsync.stores import etcd as etcd_store
from confsync.stores.etcd import EtcdStore
from confsync.watcher import BatchReceived, SnapshotTaken, StoreFollower, StreamState
from tests.support.cli import write_resource
from tests.support.daemon import WatchProcess, read, wait_for
from tests.support.etcd_client import client
from tests.support.etcd_server import EtcdMember, start_single
from tests.support.tcp_proxy import TcpProxy


def _assert_none_mixed(seen: Path) -> None:
    """Every render the reload command recorded shows one revision ("n n")."""
    lines = read(seen).splitlines()
    mixed = [line for line in lines if len(set(line.split())) != 1]
    assert not mixed, f"{len(mixed)} of {len(lines)} renders mixed two revisions: {mixed[:5]}"


def _watch(watchers: list[WatchProcess], tmp_path: Path, endpoint: str, prefix: str,
           *extra: str) -> WatchProcess:
    w = WatchProcess("--confdir", str(tmp_path / "cd"), "--endpoints", endpoint,
                     "--prefix", prefix, *extra, log=tmp_path / "watch.log")
    watchers.append(w)
    return w


def test_a_txn_over_two_prefixes_of_one_resource_is_rendered_whole(
        etcd: EtcdMember, tmp_path: Path, prefix: str, watchers: list[WatchProcess]) -> None:
    """Each txn sets /a/n and /b/n to the same value and moves /a/m/<i> on, in one revision:
    every file written (recorded by its reload) has them equal and one /a/m key; a
    half-applied txn never existed in etcd."""
    c = client(etcd.endpoint)
    c.put(prefix + "/a/n", "0")
    c.put(prefix + "/b/n", "0")
    c.put(prefix + "/a/m/0", "")
    dest = tmp_path / "out"
    seen = tmp_path / "seen"
    write_resource(tmp_path / "cd", "ab",
                   "{{ getv('/a/n') }} {{ getv('/b/n') }} "
                   "{{ gets('/a/m/*') | map(attribute='key') | map('base') | join(' ') }}\n",
                   f'dest = "{dest}"\nkeys = ["/a", "/b"]\n'
                   f'reload_cmd = ["sh", "-c", "cat {dest} >> {seen}"]')
    _watch(watchers, tmp_path, etcd.endpoint, prefix, "--wait-min", "0")
    wait_for(lambda: read(dest) == "0 0 0\n", what="first render")
    for i in range(1, 201):
        c.transaction(compare=[], failure=[], success=[
            c.transactions.put(prefix + "/a/n", str(i)),
            c.transactions.put(prefix + "/b/n", str(i)),
            c.transactions.delete(f"{prefix}/a/m/{i - 1}"),
            c.transactions.put(f"{prefix}/a/m/{i}", "")])
    wait_for(lambda: read(dest) == "200 200 200\n", timeout=15, what="the last txn")
    _assert_none_mixed(seen)


def test_a_change_of_two_prefixes_resource_is_rendered_during_the_settle_wait(
        etcd: EtcdMember, tmp_path: Path, prefix: str, watchers: list[WatchProcess]) -> None:
    """The wait for the rest of a revision (`_settle`) and the render overlap: the apply takes
    the render made during the wait (the mirror unchanged since) and renders nothing again."""
    c = client(etcd.endpoint)
    c.put(prefix + "/a/n", "0")
    c.put(prefix + "/b/n", "0")
    dest = tmp_path / "out"
    write_resource(tmp_path / "cd", "ab", "{{ getv('/a/n') }} {{ getv('/b/n') }}\n",
                   f'dest = "{dest}"\nkeys = ["/a", "/b"]\n')
    w = _watch(watchers, tmp_path, etcd.endpoint, prefix, "--wait-min", "0",
               "--log-level", "debug")
    wait_for(lambda: read(dest) == "0 0\n", what="first render")
    taken = "ab: rendered while the revision settled, from the same data"
    deadline = time.monotonic() + 30
    i = 0
    # (The first changes after the start may wait for the watch's replay instead: renders
    # then wait in `_replay_hold`, not in the settle wait.)
    while taken not in w.output() and time.monotonic() < deadline:
        i += 1
        c.put(prefix + "/b/n", str(i))
        wait_for(lambda: read(dest) == f"0 {i}\n", what=f"change {i}")  # noqa: B023
    assert taken in w.output(), w.output()[-3000:]


def test_txns_over_two_prefixes_right_after_the_start_are_rendered_whole(
        etcd: EtcdMember, tmp_path: Path, prefix: str, watchers: list[WatchProcess]) -> None:
    """The start's watches are created from the snapshot's revision, /b's a round trip after
    /a's (25 ms each way here): txns made meanwhile reached /b as etcd's replay for lagging
    watches, after /a had them live, and the loop rendered /a's new value beside /b's old
    one (5-7 of 7-16 renders). Renders now wait for a new watch session as for a resume."""
    c = client(etcd.endpoint)
    c.put(prefix + "/a/n", "0")
    c.put(prefix + "/b/n", "0")
    dest = tmp_path / "out"
    seen = tmp_path / "seen"
    write_resource(tmp_path / "cd", "ab", "{{ getv('/a/n') }} {{ getv('/b/n') }}\n",
                   f'dest = "{dest}"\nkeys = ["/a", "/b"]\n'
                   f'reload_cmd = ["sh", "-c", "cat {dest} >> {seen}"]')
    proxy = TcpProxy(etcd.client_port, delay=0.025)
    try:
        w = _watch(watchers, tmp_path, proxy.endpoint, prefix, "--wait-min", "0")
        wait_for(lambda: read(dest) == "0 0\n", timeout=15, interval=0.002, what="first render")
        for i in range(1, 101):
            c.transaction(compare=[], failure=[], success=[
                c.transactions.put(prefix + "/a/n", str(i)),
                c.transactions.put(prefix + "/b/n", str(i))])
            time.sleep(0.003)
        wait_for(lambda: read(dest) == "100 100\n", timeout=20, what=w.output()[-2000:])
    finally:
        proxy.close()
    _assert_none_mixed(seen)


def test_a_compaction_between_the_ranges_of_a_snapshot_reads_again_at_one_revision(
        etcd_private: EtcdMember) -> None:
    """The first range fixes the snapshot's revision; etcd compacts past it before the second
    (a busy cluster, a big first prefix). The read starts over at a newer revision: no failed
    endpoint, no lost stream (it was `read failed: OUT_OF_RANGE ... compacted`)."""
    c = client(etcd_private.endpoint)
    c.put("/a/x", "1")
    c.put("/b/y", "old")
    store = EtcdStore(EtcdSettings(endpoints=(etcd_private.endpoint,), timeout=5.0))
    try:
        shared = store._shared_client()
        read_range = shared.get_range_response
        calls: list[bytes] = []

        def range_then_compact(key: bytes, *args: Any, **kwargs: Any) -> Any:
            response = read_range(key, *args, **kwargs)
            if not calls:  # between the first range and the second
                c.put("/b/y", "new")
                c.compact(c.get_response("/b/y").header.revision, physical=True)
            calls.append(key)
            return response

        shared.get_range_response = range_then_compact
        snapshot = store.snapshot(["/a", "/b"])
        assert snapshot.values == {"/a/x": b"1", "/b/y": b"new"}
        assert snapshot.revision == c.get_response("/b/y").header.revision
        assert store._rotation == 0  # the member was never taken for a failed one
        assert calls == [b"/a", b"/a", b"/b"]  # /b failed once, then both again
    finally:
        store.close()


def test_keys_of_an_expired_lease_arrive_as_deletes_and_the_pool_shrinks(
        etcd: EtcdMember, tmp_path: Path, prefix: str, watchers: list[WatchProcess]) -> None:
    """A registrar that dies stops its keepalives: etcd deletes its keys when the lease runs
    out, in one revision, as delete events (no put or watch of ours is involved)."""
    c = client(etcd.endpoint)
    lease = c.lease(2)
    for name in ("a", "b", "c"):
        c.put(f"{prefix}/pool/{name}", f"10.0.0.{ord(name)}", lease=lease)
    c.put(prefix + "/pool/static", "10.0.0.1")
    dest = tmp_path / "out"
    write_resource(tmp_path / "cd", "pool",
                   "{% for kv in gets('/pool/*') %}{{ kv.key | base }}\n{% endfor %}",
                   f'dest = "{dest}"\nkeys = ["/pool"]')
    w = _watch(watchers, tmp_path, etcd.endpoint, prefix, "--wait-min", "0")
    wait_for(lambda: read(dest) == "a\nb\nc\nstatic\n", what="first render")
    wait_for(lambda: read(dest) == "static\n", timeout=15,
             what=f"the lease's keys gone from the file\n{w.output()[-2000:]}")
    assert w.proc.poll() is None


def test_one_key_changed_10000_times_ends_at_its_last_value(
        etcd: EtcdMember, tmp_path: Path, prefix: str, watchers: list[WatchProcess]) -> None:
    """10,000 puts of one key from four writers: the file ends equal to the value of etcd's
    last revision, after a handful of renders (coalesced, not one per put)."""
    c = client(etcd.endpoint)
    key = prefix + "/hot/n"
    c.put(key, "start")
    dest = tmp_path / "out"
    renders = tmp_path / "renders"
    write_resource(tmp_path / "cd", "hot", "{{ getv('/hot/n') }}\n",
                   f'dest = "{dest}"\nkeys = ["/hot"]\n'
                   f'reload_cmd = ["sh", "-c", "echo r >> {renders}"]')
    w = _watch(watchers, tmp_path, etcd.endpoint, prefix, "--wait-min", "20ms",
               "--wait-max", "500ms")
    wait_for(lambda: read(dest) == "start\n", what="first render")

    def writer(n: int) -> None:
        mine = client(etcd.endpoint)
        for i in range(2500):
            mine.put(key, f"{n}-{i}")

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    value, _ = c.get(key)
    assert value is not None and value.decode().endswith("-2499")
    wait_for(lambda: read(dest) == value.decode() + "\n", timeout=15,
             what=f"the last value\n{w.output()[-2000:]}")
    assert read(renders).count("r") < 200  # coalesced: each a render of all queued puts
    assert w.proc.poll() is None


def test_a_sibling_that_starts_alike_does_not_disarm_the_empty_pool_guard(
        etcd: EtcdMember, tmp_path: Path, prefix: str, watchers: list[WatchProcess]) -> None:
    """keys = ["/pool"] beside /pool-canary/x: every /pool key deleted at once (a wipe, a
    blip) keeps the last good file. /pool-canary/x was counted as one of the pool's keys, so
    the guard let an empty pool through."""
    c = client(etcd.endpoint)
    c.put(prefix + "/pool/a", "1")
    c.put(prefix + "/pool/b", "2")
    c.put(prefix + "/pool-canary/x", "3")
    dest = tmp_path / "out"
    write_resource(tmp_path / "cd", "pool",
                   "{% for kv in gets('/pool/*') %}{{ kv.key }}\n{% endfor %}",
                   f'dest = "{dest}"\nkeys = ["/pool"]')
    w = _watch(watchers, tmp_path, etcd.endpoint, prefix, "--wait-min", "0")
    wait_for(lambda: read(dest) == "/pool/a\n/pool/b\n", what="first render")
    c.delete_prefix(prefix + "/pool/")
    w.wait_log("vanished", timeout=10)
    assert read(dest) == "/pool/a\n/pool/b\n"


@pytest.fixture
def etcd_big(etcd_binary: str, tmp_path: Path) -> Iterator[EtcdMember]:
    """A server of the test's own that takes requests up to 4 MiB (etcd's default: 1.5 MiB)."""
    member = start_single(etcd_binary, tmp_path / "etcd",
                          extra_args=["--max-request-bytes", str(4 << 20)])
    yield member
    member.stop()


def test_a_value_of_1_5_mib_is_written_whole_and_followed(
        etcd_big: EtcdMember, tmp_path: Path, watchers: list[WatchProcess]) -> None:
    c = client(etcd_big.endpoint)
    size = 3 << 19  # 1.5 MiB
    c.put("/big/v", "a" * size)
    dest = tmp_path / "out"
    write_resource(tmp_path / "cd", "big", "{{ getv('/big/v') }}\n",
                   f'dest = "{dest}"\nkeys = ["/big"]')
    w = _watch(watchers, tmp_path, etcd_big.endpoint, "", "--wait-min", "0")
    wait_for(lambda: read(dest) == "a" * size + "\n", timeout=15, what="first render")
    c.put("/big/v", "b" * size)
    wait_for(lambda: read(dest) == "b" * size + "\n", timeout=15,
             what=f"the new value\n{w.output()[-2000:]}")
    assert w.proc.poll() is None


def test_100000_keys_are_read_and_deleted_in_one_revision_rendered_once(
        etcd_big: EtcdMember, tmp_path: Path, watchers: list[WatchProcess]) -> None:
    """100,000 keys in the first snapshot; then one DeleteRange removes them all in one
    revision: one watch response of 100,000 events, one render of the empty set."""
    c = client(etcd_big.endpoint, timeout=30)
    for start in range(0, 100_000, 128):  # etcd's --max-txn-ops
        c.transaction(compare=[], failure=[], success=[
            c.transactions.put(f"/many/k{i:06d}", "x" * 20)
            for i in range(start, min(start + 128, 100_000))])
    dest = tmp_path / "out"
    renders = tmp_path / "renders"
    write_resource(tmp_path / "cd", "many", "{{ gets('/many/*') | length }}\n",
                   f'dest = "{dest}"\nkeys = ["/many"]\nmin_keys = 0\n'
                   f'reload_cmd = ["sh", "-c", "cat {dest} >> {renders}"]')
    w = _watch(watchers, tmp_path, etcd_big.endpoint, "", "--wait-min", "0")
    wait_for(lambda: read(dest) == "100000\n", timeout=20, what="first render")
    c.delete_prefix("/many/")
    wait_for(lambda: read(renders) == "100000\n0\n", timeout=20,
             what=f"the delete, in one render\n{w.output()[-2000:]}")
    assert w.proc.poll() is None


def _events_until(out: queue.SimpleQueue[object], done: Callable[[list[object]], bool],
                  timeout: float) -> list[object]:
    events: list[object] = []
    deadline = time.monotonic() + timeout
    while not done(events):
        left = deadline - time.monotonic()
        assert left > 0, f"timed out; events so far: {events}"
        with contextlib.suppress(queue.Empty):
            events.append(out.get(timeout=min(left, 0.2)))
    return events


def _has_change(events: list[object], key: str, value: bytes) -> bool:
    return any(isinstance(e, BatchReceived) and Change(key, value) in e.batch.changes
               for e in events)


def test_an_idle_prefix_beside_a_busy_compacted_one_misses_nothing_and_rereads_once(
        etcd_private: EtcdMember, monkeypatch: pytest.MonkeyPatch) -> None:
    """/idle gets no event while /busy is written and compacted past /idle's last revision.
    A live watch is not touched by compaction; a stream broken then resumes from /idle's old
    revision, which is compacted: one fresh snapshot (it holds what /idle got meanwhile), then
    the watch follows both prefixes again, without another snapshot."""
    monkeypatch.setattr(watcher, "RESNAPSHOT_JITTER", 0.0)
    c = client(etcd_private.endpoint)
    c.put("/idle/k", "1")
    c.put("/busy/n", "0")
    proxy = TcpProxy(etcd_private.client_port)
    store = EtcdStore(EtcdSettings(endpoints=(proxy.endpoint,), timeout=2.0))
    out: queue.SimpleQueue[object] = queue.SimpleQueue()
    follower = StoreFollower(store, ["/busy", "/idle"], out)
    follower.start()
    try:
        _events_until(out, lambda ev: any(isinstance(e, StreamState) and e.connected
                                          for e in ev), 10)
        for i in range(1, 101):
            c.put("/busy/n", str(i))
        c.compact(c.get_response("/busy/n").header.revision, physical=True)
        events = _events_until(out, lambda ev: _has_change(ev, "/busy/n", b"100"), 10)
        assert not any(isinstance(e, SnapshotTaken) for e in events)  # live: untouched

        proxy.close()  # the stream breaks; meanwhile both prefixes change, and etcd compacts
        c.put("/idle/k", "2")
        for i in range(101, 201):
            c.put("/busy/n", str(i))
        c.compact(c.get_response("/busy/n").header.revision, physical=True)
        proxy = TcpProxy(etcd_private.client_port, port=proxy.port)
        # (etcd accepts the watch, then cancels it as compacted: connected, lost, snapshot)
        events = _events_until(out, lambda ev: any(
            isinstance(e, SnapshotTaken) for e in ev) and isinstance(ev[-1], StreamState)
            and ev[-1].connected, 20)
        snapshots = [e for e in events if isinstance(e, SnapshotTaken)]
        assert [s.reason for s in snapshots] == ["compacted"], events
        assert snapshots[0].snapshot.values == {"/idle/k": b"2", "/busy/n": b"200"}

        c.put("/idle/k", "3")
        c.put("/busy/n", "201")
        events = _events_until(out, lambda ev: _has_change(ev, "/idle/k", b"3")
                               and _has_change(ev, "/busy/n", b"201"), 10)
        assert not any(isinstance(e, SnapshotTaken) for e in events)
    finally:
        follower.stop()
        follower.join(timeout=10)
        store.close()
        proxy.close()


def test_a_replay_larger_than_a_grpc_message_catches_up_by_snapshot(
        etcd_big: EtcdMember, monkeypatch: pytest.MonkeyPatch) -> None:
    """etcd replays a resumed watch's missed revisions in one response (up to 1,000 of them),
    which can pass the client's message limit (512 MiB; 4 MiB here) where no single value
    does. The stream then failed at every resume from the same revision, for good: the files
    never followed again. Now that replay is skipped for a fresh snapshot."""
    monkeypatch.setattr(watcher, "RESNAPSHOT_JITTER", 0.0)
    monkeypatch.setattr(etcd_store, "GRPC_OPTIONS", [
        (name, 4 << 20 if name == "grpc.max_receive_message_length" else value)
        for name, value in etcd_store.GRPC_OPTIONS])
    c = client(etcd_big.endpoint)
    c.put("/big/v", "0")
    proxy = TcpProxy(etcd_big.client_port)
    store = EtcdStore(EtcdSettings(endpoints=(proxy.endpoint,), timeout=2.0))
    out: queue.SimpleQueue[object] = queue.SimpleQueue()
    follower = StoreFollower(store, ["/big"], out)
    follower.start()
    try:
        _events_until(out, lambda ev: any(isinstance(e, StreamState) and e.connected
                                          for e in ev), 10)
        proxy.close()
        for letter in "abcd":  # 4 x 1.5 MiB missed: 6 MiB to replay
            c.put("/big/v", letter * (3 << 19))
        proxy = TcpProxy(etcd_big.client_port, port=proxy.port)
        events = _events_until(out, lambda ev: any(
            isinstance(e, SnapshotTaken) for e in ev) and isinstance(ev[-1], StreamState)
            and ev[-1].connected, 20)
        snapshot = next(e for e in events if isinstance(e, SnapshotTaken)).snapshot
        assert snapshot.values == {"/big/v": b"d" * (3 << 19)}
        c.put("/big/v", "e")
        _events_until(out, lambda ev: _has_change(ev, "/big/v", b"e"), 10)
    finally:
        follower.stop()
        follower.join(timeout=10)
        store.close()
        proxy.close()


def test_a_snapshot_bigger_than_a_grpc_message_is_read_in_pages_at_one_revision(
        etcd_big: EtcdMember, monkeypatch: pytest.MonkeyPatch) -> None:
    """Four 1.5 MiB values under one prefix, a client limit of 4 MiB (512 MiB in production):
    one range for the prefix failed at every try, so `watch` never started. It is read in
    pages, and a write between two pages is not in the snapshot (all pages at one revision)."""
    monkeypatch.setattr(etcd_store, "GRPC_OPTIONS", [
        (name, 4 << 20 if name == "grpc.max_receive_message_length" else value)
        for name, value in etcd_store.GRPC_OPTIONS])
    c = client(etcd_big.endpoint)
    big = {f"/big/{letter}": letter.encode() * (3 << 19) for letter in "abcd"}
    for key, value in big.items():
        c.put(key, value)
    revision = c.get_response("/big/a").header.revision
    store = EtcdStore(EtcdSettings(endpoints=(etcd_big.endpoint,), timeout=5.0))
    try:
        shared = store._shared_client()
        read_range = shared.get_range_response
        pages: list[int] = []

        def range_then_write(*args: Any, **kwargs: Any) -> Any:
            response = read_range(*args, **kwargs)
            if not pages:  # between the first page and the next
                c.put("/big/d", "changed")
                c.put("/big/e", "new")
            pages.append(len(response.kvs))
            return response

        shared.get_range_response = range_then_write
        snapshot = store.snapshot(["/big"])
        assert snapshot.revision == revision
        assert snapshot.values == big
        assert len(pages) > 1 and sum(pages) == 4, pages
    finally:
        store.close()


def _two_prefixes_at_zero(etcd: EtcdMember, tmp_path: Path,
                          record: bool = True) -> tuple[Any, Path, Path]:
    """/a/n and /b/n at 0, and a resource rendering both whose reload (unless not `record`)
    appends each file it installs to `seen`: (a client, dest, seen)."""
    c = client(etcd.endpoint)
    c.put("/a/n", "0")
    c.put("/b/n", "0")
    dest = tmp_path / "out"
    seen = tmp_path / "seen"
    reload = f'reload_cmd = ["sh", "-c", "cat {dest} >> {seen}"]' if record else ""
    write_resource(tmp_path / "cd", "ab", "{{ getv('/a/n') }} {{ getv('/b/n') }}\n",
                   f'dest = "{dest}"\nkeys = ["/a", "/b"]\n' + reload)
    return c, dest, seen


def _watch_first_render(watchers: list[WatchProcess], tmp_path: Path, proxy: TcpProxy,
                        dest: Path) -> WatchProcess:
    """A watch of the two prefixes through `proxy`, once it has rendered "0 0"."""
    w = _watch(watchers, tmp_path, proxy.endpoint, "", "--wait-min", "0")
    wait_for(lambda: read(dest) == "0 0\n", timeout=15, what="first render")
    return w


def _cut(w: WatchProcess, proxy: TcpProxy, outage: int = 1) -> None:
    """Close `proxy` once the watch of /a and /b is up for the `outage`th time, and wait until
    the watch knows it is down."""
    w.wait_log("watching /a, /b", count=outage, timeout=15)
    proxy.close()
    w.wait_log("degraded", count=outage, timeout=15)


def test_the_replays_of_two_prefixes_after_a_reconnect_are_rendered_together(
        etcd_private: EtcdMember, tmp_path: Path, watchers: list[WatchProcess]) -> None:
    """While the stream is down, txns set /a/n and /b/n alike. On the resume etcd replays each
    prefix's missed revisions from its loop for lagging watches (every 100 ms), and the watch
    of /b is only created a round trip after /a's (25 ms each way here): /a's replay could be
    rendered alone, beside /b's old value."""
    c, dest, seen = _two_prefixes_at_zero(etcd_private, tmp_path)
    proxy = TcpProxy(etcd_private.client_port, delay=0.025)
    try:
        w = _watch_first_render(watchers, tmp_path, proxy, dest)
        for outage in range(1, 4):
            _cut(w, proxy, outage)
            for i in range(outage * 10 - 9, outage * 10 + 1):
                c.transaction(compare=[], failure=[], success=[
                    c.transactions.put("/a/n", str(i)), c.transactions.put("/b/n", str(i))])
            proxy = TcpProxy(etcd_private.client_port, port=proxy.port, delay=0.025)
            wait_for(lambda o=outage: read(dest) == f"{o * 10} {o * 10}\n", timeout=20,
                     what=f"the replay after outage {outage}\n{w.output()[-2000:]}")
    finally:
        proxy.close()
    _assert_none_mixed(seen)


def test_after_a_reconnect_under_steady_writes_the_file_catches_up_at_once(
        etcd_private: EtcdMember, tmp_path: Path, watchers: list[WatchProcess]) -> None:
    """The replay hold after a resume waited for 0.3 s without a batch: under steady writes
    (a pool's churn, here a put every 50 ms) that quiet never came, and every reconnect (a
    member restarted by an upgrade) left the file 3 s (CATCH_UP_MAX) behind etcd. Only the
    replay (batches up to the revision the server had as the watch came back) counts now."""
    c, dest, _ = _two_prefixes_at_zero(etcd_private, tmp_path, record=False)
    written = [0]
    stop = threading.Event()

    def writer() -> None:
        for i in range(1, 600):  # (bounded: 30 s at most)
            if stop.wait(0.05):
                return
            c.put("/a/n", str(i))
            written[0] = i

    proxy = TcpProxy(etcd_private.client_port)
    thread = threading.Thread(target=writer, daemon=True)
    try:
        w = _watch_first_render(watchers, tmp_path, proxy, dest)
        w.wait_log("watching /a, /b", timeout=15)
        thread.start()
        proxy.close()
        w.wait_log("degraded", timeout=15)
        time.sleep(0.3)
        proxy = TcpProxy(etcd_private.client_port, port=proxy.port)
        w.wait_log("watching /a, /b", count=2, timeout=15)
        back, target = time.monotonic(), written[0] + 5  # (a value put after the resume)

        def caught_up() -> bool:
            text = read(dest).split()
            return bool(text) and int(text[0]) >= target

        wait_for(caught_up, timeout=10, interval=0.01, what="the file to catch up")
        took = time.monotonic() - back
    finally:
        stop.set()
        thread.join(timeout=5)
        proxy.close()
    assert took < 1.5, f"{took:.2f}s behind etcd after the watch was back"


def test_a_long_replay_of_two_prefixes_is_never_rendered_in_parts(
        etcd_private: EtcdMember, tmp_path: Path, watchers: list[WatchProcess]) -> None:
    """While the stream is down, 8,000 revisions change /a, and every 100th is a txn that sets
    /a/n and /b/n alike. etcd replays /a's in parts of 1,000 revisions, one per 100 ms, and
    /b's 80 at once: the replay hold waited for 0.3 s without a part, and an etcd that paused
    longer than that during the replay (here SIGSTOP) let every later part of /a be rendered
    beside /b's newest value (5-7 of 7-9 files like "68 80"). Such a resume now reads both at
    one revision."""
    c, dest, seen = _two_prefixes_at_zero(etcd_private, tmp_path)

    def writer(part: int) -> None:
        own = client(etcd_private.endpoint)
        for i in range(part * 2000, part * 2000 + 2000):
            if i % 100 == 0:
                own.transaction(compare=[], failure=[], success=[
                    own.transactions.put("/a/n", str(i // 100 + 1)),
                    own.transactions.put("/b/n", str(i // 100 + 1))])
            own.put(f"/a/other/{i % 40}", str(i))

    proxy = TcpProxy(etcd_private.client_port)
    try:
        w = _watch_first_render(watchers, tmp_path, proxy, dest)
        _cut(w, proxy)
        threads = [threading.Thread(target=writer, args=(part,)) for part in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        last = c.get("/a/n")[0].decode()  # (the four writers' last txn: any of theirs)
        proxy = TcpProxy(etcd_private.client_port, port=proxy.port)
        w.wait_log("watching /a, /b", count=2, timeout=20)
        assert etcd_private.proc is not None
        time.sleep(0.1)  # (the replay's first parts are on their way)
        etcd_private.proc.send_signal(signal.SIGSTOP)
        try:
            time.sleep(0.45)
        finally:
            etcd_private.proc.send_signal(signal.SIGCONT)
        wait_for(lambda: read(dest) == f"{last} {last}\n", timeout=20,
                 what=f"the file to catch up\n{w.output()[-2000:]}")
    finally:
        proxy.close()
    _assert_none_mixed(seen)


def test_a_short_replay_of_two_prefixes_behind_a_stalled_link_is_rendered_whole(
        etcd_private: EtcdMember, tmp_path: Path, watchers: list[WatchProcess]) -> None:
    """While the stream is down, 400 revisions change /a (under the 500 that read a snapshot
    instead), and every 10th is a txn that sets /a/n and /b/n alike. Over a 25 ms link that
    stalls for 0.45 s as the watch comes back, /a's replay came 0.3 s after the last batch
    and /b's later: the quiet-based hold rendered "40 0", a state etcd never held."""
    c, dest, seen = _two_prefixes_at_zero(etcd_private, tmp_path)
    proxy = TcpProxy(etcd_private.client_port, delay=0.025)
    try:
        w = _watch_first_render(watchers, tmp_path, proxy, dest)
        for outage in range(1, 4):
            _cut(w, proxy, outage)
            for i in range(400):
                if i % 10 == 0:
                    n = str(outage * 40 + i // 10 - 39)
                    c.transaction(compare=[], failure=[], success=[
                        c.transactions.put("/a/n", n), c.transactions.put("/b/n", n)])
                else:
                    c.put(f"/a/other/{i % 40}", str(i))
            proxy = TcpProxy(etcd_private.client_port, port=proxy.port, delay=0.025)
            w.wait_log("watching /a, /b", count=outage + 1, timeout=15)
            proxy.stall()
            time.sleep(0.45)
            proxy.flow()
            wait_for(lambda o=outage: read(dest) == f"{o * 40} {o * 40}\n", timeout=20,
                     what=f"the replay after outage {outage}\n{w.output()[-2000:]}")
    finally:
        proxy.close()
    _assert_none_mixed(seen)
    assert "did not arrive" not in w.output()  # (the replay itself, not a fallback read)


def test_a_resume_knows_which_prefixes_changed_deletions_included(etcd: EtcdMember) -> None:
    """Renders after a resume wait for the replay of every prefix that changed while the
    watch was away, and only those (a quiet one sends nothing). A range sees no deleted key,
    and etcd counts keys before a min_mod_revision filter: a prefix whose only change was a
    deletion, or one with nothing written, must still be told apart."""
    c = client(etcd.endpoint)
    base = f"/changed{time.time_ns()}"
    prefixes = [f"{base}/{name}/" for name in ("quiet", "deleted", "put", "swapped")]
    for prefix in prefixes:
        c.put(prefix + "k", "0")
    c.put(f"{base}/deleted/gone", "0")
    c.put(f"{base}/swapped/old", "0")
    start = int(c.get_response(prefixes[0] + "k").header.revision) + 1
    c.delete(f"{base}/deleted/gone")
    c.put(f"{base}/put/k", "1")
    c.delete(f"{base}/swapped/old")
    c.put(f"{base}/swapped/new", "0")
    until = int(c.put(f"{base}/outside", "0").header.revision)
    c.put(f"{base}/quiet/k", "later")  # (after `until`: not part of the replay)
    store = EtcdStore(EtcdSettings(endpoints=(etcd.endpoint,)))
    try:
        changed = store.changed_prefixes(store.new_client(), dict.fromkeys(prefixes, start),
                                         until)
    finally:
        store.close()
    assert changed == set(prefixes[1:])


def test_a_prefix_quiet_since_the_snapshot_does_not_make_a_resume_replay_everything(
        etcd_private: EtcdMember, tmp_path: Path, watchers: list[WatchProcess]) -> None:
    """/q has not changed since the start; /a has had 800 revisions, all delivered. Every watch
    resumed from the lowest point, /q's: etcd would send /a's 800 again, and that count (over
    the 500 that a replay in parts needs) made the resume a full re-read, 0-4 s of jitter late
    (the etcd upgrade bench: files 2-3 s behind after each restart). Each prefix now resumes
    from its own point: /a replays the one revision it missed, at once."""
    c = client(etcd_private.endpoint)
    c.put("/q/n", "quiet")
    c.put("/a/n", "0")
    dest = tmp_path / "out"
    write_resource(tmp_path / "cd", "aq", "{{ getv('/a/n') }} {{ getv('/q/n') }}\n",
                   f'dest = "{dest}"\nkeys = ["/a", "/q"]')
    proxy = TcpProxy(etcd_private.client_port)
    try:
        w = _watch(watchers, tmp_path, proxy.endpoint, "", "--wait-min", "0")
        wait_for(lambda: read(dest) == "0 quiet\n", timeout=15, what="first render")
        for i in range(1, 801):
            c.put("/a/n", str(i))
        wait_for(lambda: read(dest) == "800 quiet\n", timeout=20, what="the 800 puts")
        proxy.close()
        w.wait_log("degraded", timeout=15)
        c.put("/a/n", "801")
        proxy = TcpProxy(etcd_private.client_port, port=proxy.port)
        w.wait_log("watching /a, /q", count=2, timeout=20)
        wait_for(lambda: read(dest) == "801 quiet\n", timeout=10, what="the missed put")
        assert "revisions missed" not in w.output() and "long replay" not in w.output(), \
            w.output()[-2000:]
    finally:
        proxy.close()


def test_a_resume_says_a_replay_is_coming_before_its_first_part(etcd: EtcdMember) -> None:
    """The replay hold before the watch is back was timed from the snapshot (3 s): a watch
    creation slower than that (a gRPC proxy reconnecting upstream as confsync resumed) let
    the first prefix's replay render alone, "10 0". The follower now says a replay is
    coming (ReplayBegan) before any part of it, and that it has arrived after the last."""
    c = client(etcd.endpoint)
    base = f"/begin{time.time_ns()}"
    a, b = f"{base}/a/", f"{base}/b/"
    last = int(c.put(a + "n", "0").header.revision)
    c.transaction(compare=[], failure=[], success=[c.transactions.put(a + "n", "1"),
                                                   c.transactions.put(b + "n", "1")])
    store = EtcdStore(EtcdSettings(endpoints=(etcd.endpoint,), timeout=5.0))
    out: queue.SimpleQueue[object] = queue.SimpleQueue()
    follower = StoreFollower(store, [a, b], out, resume={a: last, b: last})
    follower.start()
    try:
        events = _events_until(out, lambda ev: any(isinstance(e, watcher.ReplayArrived)
                                                   for e in ev), 10)
    finally:
        follower.stop()
        follower.join(timeout=10)
        store.close()
    kinds = [type(e).__name__ for e in events if not isinstance(e, StreamState)]
    assert kinds == ["ReplayBegan", "BatchReceived", "BatchReceived", "ReplayArrived"], events
