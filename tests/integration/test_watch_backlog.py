"""What waits for a held watch loop is bounded by the keys, not by time, against a real etcd:
batches of a prefix the loop has not taken merge (revision-exact), past a cap they are dropped
for a snapshot read once the loop is free, and `confsync watch` held by a slow check neither
grows nor renders a state etcd never held."""

from __future__ import annotations

import contextlib
import queue
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from confsync import handoff
from confsync.mirror import Mirror
from confsync.settings import EtcdSettings
from confsync.stores.etcd import EtcdStore
from confsync.watcher import BatchReceived, SnapshotTaken, StoreFollower, StreamState
from tests.support.cli import write_resource
from tests.support.daemon import WatchProcess, read, wait_for
from tests.support.etcd_client import client
from tests.support.etcd_server import EtcdMember, free_port


@contextlib.contextmanager
def _following(endpoint: str, prefixes: list[str],
               out: queue.SimpleQueue[object]) -> Iterator[tuple[StoreFollower, SnapshotTaken]]:
    store = EtcdStore(EtcdSettings(endpoints=(endpoint,), timeout=5.0))
    follower = StoreFollower(store, prefixes, out)
    follower.start()
    try:
        first = out.get(timeout=10)
        assert isinstance(first, SnapshotTaken), first
        assert isinstance(out.get(timeout=10), StreamState)
        yield follower, first
    finally:
        follower.stop()
        follower.join(timeout=10)
        store.close()


def _drain(out: queue.SimpleQueue[object]) -> list[object]:
    events = []
    with contextlib.suppress(queue.Empty):
        while True:
            events.append(out.get_nowait())
    return events


def test_a_held_loop_holds_one_entry_per_prefix_at_the_newest_revision(
        etcd: EtcdMember, prefix: str) -> None:
    """2,000 txns over two prefixes, nobody taking the queue (a loop held by a slow check):
    it used to hold 4,000 batches; now one entry per prefix, and those applied give exactly
    etcd's state at the last revision, deletions included."""
    c = client(etcd.endpoint)
    a, b = prefix + "/a", prefix + "/b"
    c.put(a + "/gone", "x")
    out: queue.SimpleQueue[object] = queue.SimpleQueue()
    with _following(etcd.endpoint, [a, b], out) as (follower, first):
        mirror = Mirror()
        mirror.load(first.snapshot)
        for i in range(2000):
            c.transaction(compare=[], failure=[], success=[
                c.transactions.put(f"{a}/k{i % 20}", str(i)),
                c.transactions.put(f"{b}/k{i % 7}", str(i))])
        c.delete(a + "/gone")
        last = c.get_response(a + "/k0").header.revision  # (the delete's; the txns' is last-1)
        wait_for(lambda: follower.positions() == {a: last, b: last - 1}, 10,
                 what="every revision delivered")
        events = _drain(out)
        batches = [e for e in events if isinstance(e, BatchReceived)]
        assert len(events) == len(batches) == 2, events[:10]
        for event in batches:
            assert event.batch.revision == (last if event.batch.prefix == a else last - 1)
            mirror.apply(event.batch)
        assert dict(mirror.as_dict()) == {k: v.decode() for k, v in _snapshot(c, prefix).items()}
        assert follower._backlog.size == 0
        c.put(a + "/k0", "after")  # the next batch is an entry of its own
        wait_for(lambda: not out.empty(), 5, what="the next batch")
        event = out.get_nowait()
        assert isinstance(event, BatchReceived)
        assert [(ch.key, ch.value) for ch in event.batch.changes] == [(a + "/k0", b"after")]


def _snapshot(c: object, prefix: str) -> dict[str, bytes]:
    return {meta.key.decode(): value for value, meta in c.get_prefix(prefix + "/")}  # type: ignore[attr-defined]


def test_past_the_cap_the_backlog_is_dropped_and_read_again_once_the_loop_is_free(
        etcd: EtcdMember, prefix: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """New names churned (put, then deleted) merge to a deletion each, which still grows with
    time: past the cap everything waiting is dropped, nothing more is queued while the loop
    is held, and once it takes the queue a fresh snapshot (reason "backlog") brings etcd's
    state; the watch then follows from there."""
    monkeypatch.setattr(handoff, "LIMIT", 64 << 10)
    c = client(etcd.endpoint)
    out: queue.SimpleQueue[object] = queue.SimpleQueue()
    with _following(etcd.endpoint, [prefix], out) as (follower, _):
        value = "v" * 1000
        for i in range(300):  # ~360 KiB of changes: past the 64 KiB cap
            c.put(f"{prefix}/u{i}", value)
            if i >= 5:
                c.delete(f"{prefix}/u{i - 5}")
        wait_for(lambda: follower._backlog.dropped, 10, what="the backlog dropped")
        time.sleep(0.3)
        assert follower._backlog.size <= 64 << 10
        assert follower.resync_owed()  # a successor of this follower must read a snapshot
        held = out.qsize()
        assert held <= 2, held  # the dropped entry (and nothing read while the loop is held)
        deadline = time.monotonic() + 10
        events: list[object] = []
        while not any(isinstance(e, StreamState) and e.connected for e in events):
            assert time.monotonic() < deadline, events
            with contextlib.suppress(queue.Empty):
                event = out.get(timeout=0.2)
                events.append(event)
                if isinstance(event, BatchReceived):
                    assert event.batch.revision == 0 and not event.batch.changes  # dropped
        snapshots = [e for e in events if isinstance(e, SnapshotTaken)]
        assert [s.reason for s in snapshots] == ["backlog"], events
        assert snapshots[0].snapshot.values == _snapshot(c, prefix)
        assert not follower.resync_owed()
        c.put(f"{prefix}/after", "1")
        event = out.get(timeout=5)
        assert isinstance(event, BatchReceived)
        assert [(ch.key, ch.value) for ch in event.batch.changes] == [(f"{prefix}/after", b"1")]


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_watch_held_by_a_slow_check_does_not_grow_and_renders_only_whole_revisions(
        etcd: EtcdMember, tmp_path: Path, prefix: str, watchers: list[WatchProcess]) -> None:
    """A check that takes 6 s holds the loop while 1,500 txns of 10 KB values over two
    prefixes come: RSS grew by every event (about 16 MB here); now by nothing of note. Once
    the check is done, the file converges to the last txn, and every file checked held one
    revision (both prefixes equal)."""
    c = client(etcd.endpoint)
    c.put(prefix + "/a/n", "0")
    c.put(prefix + "/b/n", "0")
    dest, seen, hold = tmp_path / "out", tmp_path / "seen", tmp_path / "hold"
    check = tmp_path / "check.sh"
    check.write_text(f'head -c 40 "$1" >> {seen}; echo >> {seen}\n'
                     f'if [ -e {hold} ]; then rm {hold}; sleep 6; fi\n')
    write_resource(tmp_path / "cd", "ab",
                   "{{ getv('/a/n')[:12] }} {{ getv('/b/n')[:12] }}\n",
                   f'dest = "{dest}"\nkeys = ["/a", "/b"]\n'
                   f'check_cmd = ["sh", "{check}", "{{{{src}}}}"]\ncheck_timeout = "20s"')
    w = WatchProcess("--confdir", str(tmp_path / "cd"), "--endpoints", etcd.endpoint,
                     "--prefix", prefix, "--wait-min", "0", log=tmp_path / "watch.log")
    watchers.append(w)
    wait_for(lambda: read(dest) == "0 0\n", 20, what="first render")
    time.sleep(0.5)
    before = _rss_mb(w.proc.pid)
    hold.touch()
    pad = "x" * 10_000
    started = time.monotonic()
    for i in range(1, 1502):
        c.transaction(compare=[], failure=[], success=[
            c.transactions.put(prefix + "/a/n", f"{i:012d}{pad}"),
            c.transactions.put(prefix + "/b/n", f"{i:012d}{pad}")])
        if i == 1:
            wait_for(lambda: not hold.exists(), 5, what="the slow check")
    assert time.monotonic() - started < 6, "the puts outlasted the held loop: test too slow"
    grown = _rss_mb(w.proc.pid) - before
    final = f"{1501:012d} {1501:012d}\n"
    wait_for(lambda: read(dest) == final, 20, what=f"the last txn\n{w.output()[-2000:]}")
    assert grown < 6, f"RSS grew {grown:.1f} MB while the loop was held"
    lines = [line.split() for line in read(seen).splitlines() if line.strip()]
    mixed = [line for line in lines if len(line) != 2 or line[0] != line[1]]
    assert not mixed, f"{len(mixed)} of {len(lines)} checks saw two revisions: {mixed[:5]}"


def test_watch_held_past_the_cap_reads_a_snapshot_counts_it_and_converges(
        etcd: EtcdMember, tmp_path: Path, prefix: str, watchers: list[WatchProcess]) -> None:
    """New 30 KB keys (instances that never come back) while a check holds the loop: past the
    32 MiB cap the backlog is dropped with one WARNING, the metric counts it, and once the
    check is done a snapshot brings every key."""
    c = client(etcd.endpoint)
    c.put(prefix + "/u/seed", "x")
    dest, hold = tmp_path / "out", tmp_path / "hold"
    check = tmp_path / "check.sh"
    check.write_text(f'if [ -e {hold} ]; then rm {hold}; sleep 6; fi\n')
    write_resource(tmp_path / "cd", "u", "{{ getvs('/u/*') | length }}\n",
                   f'dest = "{dest}"\nkeys = ["/u"]\n'
                   f'check_cmd = ["sh", "{check}"]\ncheck_timeout = "20s"')
    port = free_port()
    w = WatchProcess("--confdir", str(tmp_path / "cd"), "--endpoints", etcd.endpoint,
                     "--prefix", prefix, "--wait-min", "0", "--metrics-address",
                     f"127.0.0.1:{port}", log=tmp_path / "watch.log")
    watchers.append(w)
    try:
        wait_for(lambda: read(dest) == "1\n", 20, what="first render")
        hold.touch()
        value = "v" * 30_000
        started = time.monotonic()
        for i in range(1300):  # about 39 MB of new keys
            c.put(f"{prefix}/u/i{i}", value)
            if i == 0:
                wait_for(lambda: not hold.exists(), 5, what="the slow check")
        assert time.monotonic() - started < 5.5, "the puts outlasted the held loop"
        wait_for(lambda: read(dest) == "1301\n", 20, what=f"every key\n{w.output()[-2000:]}")
        assert w.output().count("dropped them") == 1, w.output()[-3000:]
        assert "backlog snapshot at revision" in w.output()
        assert _metric(port, "confsync_watch_backlog_dropped_total") == 1
        c.put(f"{prefix}/u/after", "1")  # and the watch follows on from the snapshot
        wait_for(lambda: read(dest) == "1302\n", 10, what="the next put")
    finally:
        c.delete_prefix(prefix + "/")


def _metric(port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return next(float(line.split()[-1]) for line in text.splitlines()
                if line.startswith(name + " "))
