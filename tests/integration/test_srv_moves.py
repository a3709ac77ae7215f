"""`confsync watch` and `confsync register` with etcd found by DNS SRV records that move to
other members while the old ones keep serving (a cluster rebuilt elsewhere, members replaced
at new ports and decommissioned later): both follow the records, not the old connection."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.cli import write_resource
from tests.support.daemon import WatchProcess, read, wait_for
from tests.support.dns_server import SrvServer
from tests.support.etcd_client import client
from tests.support.etcd_server import EtcdMember, free_port
from tests.support.http_probe import ready
from tests.support.register import RegisterProcess, published, write_registration

pytestmark = [pytest.mark.etcd]

DOMAIN = "etcd.confsync.test"
PLAIN = f"_etcd-client._tcp.{DOMAIN}"
POOL = "{% for kv in gets('/services/web/instances/*') %}{{ kv.key.split('/')[-1] }}\n{% endfor %}"


@pytest.fixture
def dns() -> Iterator[SrvServer]:
    with SrvServer({}) as server:
        yield server


@pytest.fixture
def other(etcd_binary: str, tmp_path: Path) -> Iterator[EtcdMember]:
    """A second, separate cluster: etcd rebuilt elsewhere."""
    (tmp_path / "other").mkdir()
    member = EtcdMember(etcd_binary, tmp_path / "other" / "data", token="other")
    member.start()
    yield member
    member.stop()


def test_watch_and_register_follow_records_moved_while_the_old_cluster_serves(
        etcd_private: EtcdMember, other: EtcdMember, dns: SrvServer, tmp_path: Path,
        procs: list[RegisterProcess], watchers: list[WatchProcess]) -> None:
    """The records move to another cluster and the old one keeps serving. Both daemons stayed
    on their open connection to the old cluster for good (a new client follows the records,
    and nothing made one): the pool went on rendering the old cluster (`old` and web-1's key
    there, never `new`), /ready 200, and the registrar's key never reached the new one."""
    prefix = "/p"
    old_client, new_client = client(etcd_private.endpoint), client(other.endpoint)
    old_client.put(prefix + "/services/web/instances/old", "{}")
    new_client.put(prefix + "/services/web/instances/new", "{}")
    dns.resolver.records[PLAIN] = [(10, 10, etcd_private.client_port, "localhost.")]
    env = {"CONFSYNC_ETCD_SRV_DOMAIN": DOMAIN, "CONFSYNC_ETCD_SRV_NAMESERVER": dns.address}
    write_registration(tmp_path / "conf", "web", "".join(f"{k} = {json.dumps(v)}\n" for k, v in {
        "service": "web", "port": 80, "id": "web-1", "address": "10.0.0.1", "ttl": "3s",
        "drain": "0s"}.items()))
    register = RegisterProcess(tmp_path / "conf", None, "--prefix", prefix, "--hostname", "n1",
                               log=tmp_path / "register.log", env=env)
    procs.append(register)
    out = tmp_path / "pool.out"
    write_resource(tmp_path / "cd", "pool", POOL,
                   f'dest = "{out}"\nkeys = ["/services"]\nmin_keys = 0')
    port = free_port()
    watch = WatchProcess("--confdir", str(tmp_path / "cd"), "--prefix", prefix, "--wait-min",
                         "0", "--metrics-address", f"127.0.0.1:{port}", log=tmp_path / "w.log",
                         env=env)
    watchers.append(watch)
    wait_for(lambda: read(out) == "old\nweb-1\n", timeout=20,
             what=f"the old cluster rendered\n{watch.output()[-3000:]}")

    dns.resolver.records[PLAIN] = [(10, 10, other.client_port, "localhost.")]
    wait_for(lambda: read(out).startswith("new\n"), timeout=30,
             what=f"the watch on the cluster the records name\n{watch.output()[-3000:]}")
    key = prefix + "/services/web/instances/web-1"
    wait_for(lambda: published(new_client, key) is not None, timeout=30,
             what=f"registered in the cluster the records name\n{register.output()[-3000:]}")
    wait_for(lambda: read(out) == "new\nweb-1\n", timeout=30,
             what=f"the cluster the records name rendered\n{watch.output()[-3000:]}")
    wait_for(lambda: ready(port)[0] == 200, timeout=10, what="/ready again")
    assert "no longer named by the DNS SRV records" in watch.output()
    # The old cluster is left behind: the key there goes with its lease, renewed by nobody.
    wait_for(lambda: published(old_client, key) is None, timeout=15,
             what="web-1's key left in the old cluster lapsed")
    new_client.put(prefix + "/services/web/instances/later", "{}")
    wait_for(lambda: read(out) == "later\nnew\nweb-1\n", timeout=10, what="followed there")


def _metric(port: int, name: str) -> float | None:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        for line in response.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    return None


def test_records_moved_to_another_member_of_the_same_cluster_resume_exactly(
        cluster: list[EtcdMember], dns: SrvServer, tmp_path: Path,
        watchers: list[WatchProcess]) -> None:
    """Members replaced at new ports, the old ones switched off later: the watch moves to a
    member the records name before that, and resumes there from its revision (the same
    cluster: no store reset, no second snapshot, nothing lost)."""
    a, b, _ = cluster
    prefix = "/q"
    c = client(b.endpoint)
    c.put(prefix + "/services/web/instances/one", "{}")
    dns.resolver.records[PLAIN] = [(10, 10, a.client_port, "localhost.")]
    out = tmp_path / "pool.out"
    write_resource(tmp_path / "cd", "pool", POOL,
                   f'dest = "{out}"\nkeys = ["/services"]\nmin_keys = 0')
    port = free_port()
    watch = WatchProcess("--confdir", str(tmp_path / "cd"), "--prefix", prefix, "--wait-min",
                         "0", "--metrics-address", f"127.0.0.1:{port}", log=tmp_path / "w.log",
                         env={"CONFSYNC_ETCD_SRV_DOMAIN": DOMAIN,
                              "CONFSYNC_ETCD_SRV_NAMESERVER": dns.address})
    watchers.append(watch)
    wait_for(lambda: read(out) == "one\n", timeout=20, what="first render")

    dns.resolver.records[PLAIN] = [(10, 10, b.client_port, "localhost.")]
    watch.wait_log(f"watching {prefix}/services from revision", timeout=30, count=2)
    assert f"localhost:{a.client_port} is no longer named" in watch.output()
    a.stop()  # decommissioned: the watch left it already
    c.put(prefix + "/services/web/instances/two", "{}")
    wait_for(lambda: read(out) == "one\ntwo\n", timeout=10, what="followed on the new member")
    assert "store reset" not in watch.output()
    assert _metric(port, "confsync_snapshots_total") == 1
