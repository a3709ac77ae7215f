"""etcd's event semantics as `confsync watch` sees them over months, against a real etcd:
transactions, lease expiry, big values and prefixes, prefix boundaries, idle prefixes beside
busy ones, hot keys."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from confsync.settings import EtcdSettings
from confsync.stores.etcd import EtcdStore

from tests.support.cli import write_resource
from tests.support.daemon import WatchProcess, read, wait_for
from tests.support.etcd_client import client
from tests.support.etcd_server import EtcdMember


def _watch(watchers: list[WatchProcess], tmp_path: Path, endpoint: str, prefix: str,
           *extra: str) -> WatchProcess:
    w = WatchProcess("--confdir", str(tmp_path / "cd"), "--endpoints", endpoint,
                     "--prefix", prefix, *extra, log=tmp_path / "watch.log")
    watchers.append(w)
    return w


def test_a_txn_over_two_prefixes_of_one_resource_is_rendered_whole(
        etcd: EtcdMember, tmp_path: Path, prefix: str, watchers: list[WatchProcess]) -> None:
    """Each txn sets /a/n and /b/n to the same value in one revision: every file written
    (recorded by its reload) has them equal; a half-applied txn never existed in etcd."""
    c = client(etcd.endpoint)
    c.put(prefix + "/a/n", "0")
    c.put(prefix + "/b/n", "0")
    dest = tmp_path / "out"
    seen = tmp_path / "seen"
    write_resource(tmp_path / "cd", "ab", "{{ getv('/a/n') }} {{ getv('/b/n') }}\n",
                   f'dest = "{dest}"\nkeys = ["/a", "/b"]\n'
                   f'reload_cmd = ["sh", "-c", "cat {dest} >> {seen}"]')
    _watch(watchers, tmp_path, etcd.endpoint, prefix, "--wait-min", "0")
    wait_for(lambda: read(dest) == "0 0\n", what="first render")
    for i in range(1, 201):
        c.transaction(compare=[], success=[c.transactions.put(prefix + "/a/n", str(i)),
                                           c.transactions.put(prefix + "/b/n", str(i))],
                      failure=[])
    wait_for(lambda: read(dest) == "200 200\n", timeout=15, what="the last txn")
    lines = read(seen).splitlines()
    mixed = [line for line in lines if len(set(line.split())) != 1]
    assert not mixed, f"{len(mixed)} of {len(lines)} renders mixed two revisions: {mixed[:5]}"


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
