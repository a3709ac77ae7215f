"""`confsync watch` through a real etcd gRPC proxy: unchanged behaviour, exact resume after the
proxy restarts, and a fresh snapshot when etcd compacted meanwhile."""

from __future__ import annotations

import shutil
import signal
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.support.cli import write_resource
from tests.support.daemon import WatchProcess, read, wait_for
from tests.support.etcd_client import client
from tests.support.etcd_server import EtcdMember, free_port
from tests.support.grpc_proxy import GrpcProxy
from tests.support.tcp_proxy import TcpProxy

LIST = "{% for kv in gets('/k/*') %}{{ kv.key }}={{ kv.value }}\n{% endfor %}"


@pytest.fixture
def proxy(etcd_binary: str, etcd_private: EtcdMember, tmp_path: Path) -> Iterator[GrpcProxy]:
    p = GrpcProxy(etcd_binary, [etcd_private], tmp_path / "proxy.log").start()
    yield p
    p.stop()


@pytest.fixture
def watch(tmp_path: Path, proxy: GrpcProxy, prefix: str) -> Iterator[tuple[WatchProcess, Path,
                                                                           int]]:
    dest = tmp_path / "list.out"
    write_resource(tmp_path / "cd", "list", LIST, f'dest = "{dest}"\nkeys = ["/k"]\nmin_keys = 0')
    port = free_port()
    w = WatchProcess("--confdir", str(tmp_path / "cd"), "--endpoints", proxy.endpoint,
                     "--prefix", prefix, "--wait-min", "0", "--metrics-address",
                     f"127.0.0.1:{port}", log=tmp_path / "watch.log")
    yield w, dest, port
    w.stop()


def metric(port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        for line in response.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    return float("nan")


def test_watch_through_proxy(etcd_private: EtcdMember, proxy: GrpcProxy, prefix: str,
                             watch: tuple[WatchProcess, Path, int]) -> None:
    w, dest, _ = watch
    c = client(etcd_private.endpoint)  # writes go straight to etcd, reads through the proxy
    c.put(prefix + "/k/a", "1")
    wait_for(lambda: read(dest) == "/k/a=1\n", timeout=15, what=f"first render\n{w.output()}")
    c.put(prefix + "/k/b", "2")
    wait_for(lambda: read(dest) == "/k/a=1\n/k/b=2\n", what="put through the proxy")
    c.delete(prefix + "/k/a")
    wait_for(lambda: read(dest) == "/k/b=2\n", what="delete through the proxy")


def test_resume_after_proxy_restart(etcd_private: EtcdMember, proxy: GrpcProxy, prefix: str,
                                    watch: tuple[WatchProcess, Path, int]) -> None:
    w, dest, port = watch
    c = client(etcd_private.endpoint)
    c.put(prefix + "/k/a", "1")
    wait_for(lambda: read(dest) == "/k/a=1\n", timeout=15, what="first render")
    c.put(prefix + "/k/a", "2")
    wait_for(lambda: read(dest) == "/k/a=2\n", what="second render")
    last = int(c.get_response(prefix + "/k/a").header.revision)
    proxy.kill()
    w.wait_log("degraded", timeout=15)
    for i in range(5):  # while the proxy is down
        c.put(f"{prefix}/k/n{i}", str(i))
    c.delete(prefix + "/k/a")
    proxy.start()
    expected = "".join(f"/k/n{i}={i}\n" for i in range(5))
    wait_for(lambda: read(dest) == expected, timeout=20,
             what=f"resume after the proxy restart\n{w.output()[-3000:]}")
    assert f"from revision {last + 1}" in w.output().split("degraded", 1)[1]
    assert metric(port, "confsync_snapshots_total") == 1  # resumed, not re-read


def test_compaction_while_proxy_down_resyncs(
        etcd_private: EtcdMember, proxy: GrpcProxy, prefix: str,
        watch: tuple[WatchProcess, Path, int]) -> None:
    w, dest, port = watch
    c = client(etcd_private.endpoint)
    c.put(prefix + "/k/a", "1")
    c.put(prefix + "/k/gone", "x")
    wait_for(lambda: read(dest) == "/k/a=1\n/k/gone=x\n", timeout=15, what="first render")
    proxy.kill()
    w.wait_log("degraded", timeout=15)
    c.put(prefix + "/k/a", "2")
    c.delete(prefix + "/k/gone")
    c.put(prefix + "/k/new", "3")
    c.compact(int(c.get_response("/x").header.revision), physical=True)
    proxy.start()
    wait_for(lambda: read(dest) == "/k/a=2\n/k/new=3\n", timeout=20,
             what=f"resync after compaction\n{w.output()[-3000:]}")
    assert "compacted" in w.output()
    assert metric(port, "confsync_snapshots_total") == 2


def test_etcd_restart_behind_the_proxy(etcd_private: EtcdMember, proxy: GrpcProxy, prefix: str,
                                       watch: tuple[WatchProcess, Path, int]) -> None:
    """The proxy stays up while etcd restarts: confsync must not stay silently attached."""
    w, dest, _ = watch
    c = client(etcd_private.endpoint)
    c.put(prefix + "/k/a", "1")
    wait_for(lambda: read(dest) == "/k/a=1\n", timeout=15, what="first render")
    etcd_private.kill()
    etcd_private.start()
    client(etcd_private.endpoint).put(prefix + "/k/a", "after")
    wait_for(lambda: read(dest) == "/k/a=after\n", timeout=30,
             what=f"following after etcd restarted behind the proxy\n{w.output()[-3000:]}")


def test_etcd_recreated_behind_the_proxy(etcd_private: EtcdMember, proxy: GrpcProxy,
                                         prefix: str,
                                         watch: tuple[WatchProcess, Path, int]) -> None:
    """New data dir behind a proxy that stays up: revisions start again; confsync notices."""
    w, dest, _ = watch
    c = client(etcd_private.endpoint)
    for i in range(20):
        c.put(prefix + "/k/a", str(i))
    wait_for(lambda: read(dest) == "/k/a=19\n", timeout=15, what="first render")
    etcd_private.kill()
    shutil.rmtree(etcd_private.data_dir)
    etcd_private.start()
    client(etcd_private.endpoint).put(prefix + "/k/b", "new")
    wait_for(lambda: read(dest) == "/k/b=new\n", timeout=30,
             what=f"following the recreated etcd behind the proxy\n{w.output()[-3000:]}")
    assert "store reset" in w.output()


def test_etcd_recreated_and_written_past_us_behind_the_proxy_while_stopped(
        etcd_private: EtcdMember, proxy: GrpcProxy, prefix: str,
        watch: tuple[WatchProcess, Path, int]) -> None:
    """Recreated (same id) and written past our revision while confsync was stopped: the
    proxy resumes its upstream watch on the new history by itself, and its writes reach
    confsync as live events, so the newest write seen is the new history's own. Checked
    against that one alone, /k/a (gone there) stayed in the file, /ready 200."""
    w, dest, port = watch
    c = client(etcd_private.endpoint)
    for i in range(20):
        c.put(prefix + "/k/a", str(i))
    wait_for(lambda: read(dest) == "/k/a=19\n", timeout=15, what="first render")
    seen = int(c.get_response(prefix + "/k/a").header.revision)
    w.signal(signal.SIGSTOP)
    try:
        etcd_private.kill()
        shutil.rmtree(etcd_private.data_dir)
        etcd_private.start()
        c = client(etcd_private.endpoint)
        while int(c.put(prefix + "/other", "x").header.revision) <= seen:  # (~20 puts)
            pass
        c.put(prefix + "/k/b", "new")
        time.sleep(1.0)  # the proxy's upstream watch brings it
    finally:
        w.signal(signal.SIGCONT)
    wait_for(lambda: read(dest) == "/k/b=new\n", timeout=20,
             what=f"the recreated etcd's state\n{w.output()[-3000:]}")
    assert "holds another history" in w.output()
    assert metric(port, "confsync_store_resets_total") == 1


def test_register_through_the_proxy_keeps_its_lease_and_survives_a_proxy_restart(
        etcd_private: EtcdMember, proxy: GrpcProxy, prefix: str, tmp_path: Path) -> None:
    """A fleet's registrars talk to the proxy too. Every keepalive through it failed ("context
    canceled": the library half-closed the stream before the answer), so each key vanished
    after one TTL and never came back. Now: registered for many TTLs, through a proxy restart,
    and a SIGKILLed registrar's key still goes after its TTL."""
    from tests.support.register import RegisterProcess, published, write_registration

    write_registration(tmp_path / "reg", "web", (
        f'service = "web"\nport = {etcd_private.client_port}\naddress = "127.0.0.1"\n'
        'id = "web-1"\nttl = "2s"\ndrain = "0s"\n'
        '[[check]]\ntype = "tcp"\ninterval = "100ms"\nrise = 1\n'))
    key = f"{prefix}/services/web/instances/web-1"
    c = client(etcd_private.endpoint)
    reg = RegisterProcess(tmp_path / "reg", proxy.endpoint, "--prefix", prefix,
                          log=tmp_path / "register.log")
    try:
        wait_for(lambda: published(c, key) is not None, 15, what="registration via the proxy")
        lease = c.get(key)[1].lease_id
        for _ in range(10):  # 5 s: two and a half TTLs, checked every 0.5 s
            time.sleep(0.5)
            assert published(c, key) is not None, f"key gone\n{reg.output()[-3000:]}"
        assert c.get(key)[1].lease_id == lease, "kept alive: the same lease"
        # (A proxy just started may time out a first read before it reaches etcd: only what
        # follows the lease counts.)
        since_lease = reg.output().partition(", ttl 2s")[2]
        assert "unreachable" not in since_lease and "lapsed" not in since_lease, since_lease

        proxy.stop()
        proxy.start()
        time.sleep(2.5)  # longer than the TTL: the lease lives only if keepalives got through
        wait_for(lambda: published(c, key) is not None, 10,
                 what=f"registered after the proxy restart\n{reg.output()[-3000:]}")
        for _ in range(6):
            time.sleep(0.5)
            assert published(c, key) is not None, f"key gone\n{reg.output()[-3000:]}"

        reg.proc.kill()
        killed = time.monotonic()
        wait_for(lambda: published(c, key) is None, 10, interval=0.05, what="key gone")
        assert time.monotonic() - killed <= 2 + 1 + 0.5, "ttl (2s) + 1s, with polling slack"
    finally:
        reg.stop()


def test_a_txn_over_two_prefixes_replayed_by_the_proxy_itself_is_rendered_whole(
        etcd_binary: str, etcd_private: EtcdMember, tmp_path: Path,
        watchers: list[WatchProcess]) -> None:
    """The link between the proxy and etcd breaks while txns set /a/n and /b/n alike. The
    proxy keeps confsync's watches open and resumes its upstream ones itself, one after the
    other: etcd replays /a's missed revisions, then /b's 100 ms later, to a watch confsync
    took for live. 1-3 of 5-7 renders mixed two revisions ("20 10"). A response of several
    revisions is now known for a replay, and renders wait for the other prefix's part."""
    c = client(etcd_private.endpoint)
    c.put("/a/n", "0")
    c.put("/b/n", "0")
    dest, seen = tmp_path / "out", tmp_path / "seen"
    write_resource(tmp_path / "cd", "ab", "{{ getv('/a/n') }} {{ getv('/b/n') }}\n",
                   f'dest = "{dest}"\nkeys = ["/a", "/b"]\n'
                   f'reload_cmd = ["sh", "-c", "cat {dest} >> {seen}"]')
    link = TcpProxy(etcd_private.client_port, delay=0.025)
    upstream = SimpleNamespace(client_port=link.port)  # (the proxy reaches etcd through it)
    proxy = GrpcProxy(etcd_binary, [upstream], tmp_path / "proxy.log")  # type: ignore[list-item]
    proxy.start()
    try:
        w = WatchProcess("--confdir", str(tmp_path / "cd"), "--endpoints", proxy.endpoint,
                         "--prefix", "", "--wait-min", "0", log=tmp_path / "watch.log")
        watchers.append(w)
        wait_for(lambda: read(dest) == "0 0\n", timeout=15, what="first render")
        w.wait_log("watching /a, /b", timeout=15)
        for outage in range(1, 4):
            link.close()
            time.sleep(0.3)
            for i in range(outage * 10 - 9, outage * 10 + 1):
                c.transaction(compare=[], failure=[], success=[
                    c.transactions.put("/a/n", str(i)), c.transactions.put("/b/n", str(i))])
            link = TcpProxy(etcd_private.client_port, port=link.port, delay=0.025)
            wait_for(lambda o=outage: read(dest) == f"{o * 10} {o * 10}\n", timeout=20,
                     what=f"the proxy's replay {outage}\n{w.output()[-2000:]}")
        assert "degraded" not in w.output()  # (confsync's own watch never broke)
    finally:
        link.close()
        proxy.stop()
    lines = read(seen).splitlines()
    mixed = [line for line in lines if len(set(line.split())) != 1]
    assert not mixed, f"{len(mixed)} of {len(lines)} renders mixed two revisions: {mixed}"
