"""A registration that names no address follows this host's address: real addresses changed with
`ip addr` in private network namespaces, a real etcd, the real `confsync register`.

Two namespaces joined by a veth pair: "etcd" (10.77.0.1, etcd) and "node" (10.77.0.2, the
service and its registrar). The node's address then changes as a DHCP client changes it: the
new address is added, the old one removed. The registrar's own etcd connection came from the
old address and dies with it, as on a real host.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.cli import REPO
from tests.support.daemon import wait_for
from tests.support.etcd_server import find_etcd
from tests.support.netns import NetNS, netns_work
from tests.support.register import RegisterProcess, write_registration

pytestmark = [pytest.mark.etcd,
              pytest.mark.skipif(not netns_work(), reason="cannot create and configure network "
                                 "namespaces here (unshare --net and ip need root)")]

ETCD_ADDRESS, OLD, NEW = "10.77.0.1", "10.77.0.2", "10.77.0.3"
CLIENT_PORT, PEER_PORT, SERVICE_PORT = 2379, 2380, 8080  # inside the namespaces: never taken
PREFIX = "/addr"
WEB = f"{PREFIX}/services/web/instances/web-1"
API = f"{PREFIX}/services/api/instances/api-1"


class KeyReads:
    """What `tests.support.keywatch`, running inside the etcd namespace, read so far."""

    def __init__(self, etcd_ns: NetNS, key: str, log: Path) -> None:
        self._out = log.open("w+")
        self.proc = subprocess.Popen(
            [*etcd_ns.enter, sys.executable, "-m", "tests.support.keywatch",
             f"http://127.0.0.1:{CLIENT_PORT}", key], stdout=self._out,
            stderr=subprocess.STDOUT, cwd=REPO)
        self._log = log

    def lines(self) -> list[dict[str, Any]]:
        out = []
        for line in self._log.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue  # the line being written, or a traceback
        return out

    def last(self) -> dict[str, Any]:
        lines = self.lines()
        return lines[-1] if lines else {}

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=10)
        self._out.close()


@dataclass
class Node:
    """etcd in its namespace, the service in the node's, and readers of both keys."""

    etcd_ns: NetNS
    ns: NetNS
    tmp_path: Path
    web: KeyReads
    api: KeyReads

    def register(self) -> RegisterProcess:
        conf = self.tmp_path / "conf"
        # web: no address (detected), the default http check (derived from it).
        write_registration(conf, "web", f'service = "web"\nport = {SERVICE_PORT}\n'
                           'id = "web-1"\nttl = "6s"\ndrain = "0s"\n[[check]]\ntype = "http"\n'
                           'interval = "500ms"\nrise = 1\n')
        # api: an address written in the file never changes.
        write_registration(conf, "api", 'service = "api"\nport = 9090\nid = "api-1"\n'
                           'address = "192.0.2.10"\ndrain = "0s"\n[[check]]\ntype = "exec"\n'
                           'command = "true"\ninterval = "200ms"\nrise = 1\n')
        return RegisterProcess(conf, f"http://{ETCD_ADDRESS}:{CLIENT_PORT}", "--prefix", PREFIX,
                               "--hostname", "node-a", log=self.tmp_path / "register.log",
                               env={"CONFSYNC_ETCD_TIMEOUT": "1s"}, wrapper=self.ns.enter)


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    binary = find_etcd()
    assert binary is not None
    etcd_ns, ns = NetNS(), NetNS()
    started: list[subprocess.Popen[bytes]] = []
    readers: list[KeyReads] = []
    try:
        etcd_ns.run(["ip", "link", "add", "ve", "type", "veth", "peer", "name", "vn", "netns",
                     str(ns.pid)],
                    ["ip", "addr", "add", f"{ETCD_ADDRESS}/24", "dev", "ve"],
                    ["ip", "link", "set", "ve", "up"], ["ip", "link", "set", "lo", "up"])
        # promote_secondaries: removing the old address keeps the new one (same subnet).
        ns.run(["sysctl", "-qw", "net.ipv4.conf.vn.promote_secondaries=1"],
               ["ip", "addr", "add", f"{OLD}/24", "dev", "vn"],
               ["ip", "link", "set", "vn", "up"], ["ip", "link", "set", "lo", "up"])
        urls = f"http://{ETCD_ADDRESS}:{CLIENT_PORT},http://127.0.0.1:{CLIENT_PORT}"
        peer = f"http://127.0.0.1:{PEER_PORT}"
        with (tmp_path / "etcd.log").open("wb") as log:
            started.append(subprocess.Popen(
                [*etcd_ns.enter, binary, "--data-dir", str(tmp_path / "etcd"),
                 "--listen-client-urls", urls, "--advertise-client-urls", urls,
                 "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                 "--initial-cluster", f"default={peer}", "--log-level", "error"],
                stdout=log, stderr=log, stdin=subprocess.DEVNULL))
        started.append(subprocess.Popen(  # the service, on every address of the node
            [*ns.enter, sys.executable, "-m", "http.server", "--bind", "0.0.0.0",
             "--directory", str(tmp_path), str(SERVICE_PORT)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        readers += [KeyReads(etcd_ns, WEB, tmp_path / "web.jsonl"),
                    KeyReads(etcd_ns, API, tmp_path / "api.jsonl")]
        yield Node(etcd_ns, ns, tmp_path, *readers)
    finally:
        for reader in readers:
            reader.stop()
        for proc in started:
            proc.kill()
            proc.wait(timeout=10)
        ns.close()
        etcd_ns.close()


def _address(reads: KeyReads) -> str | None:
    return (reads.last().get("value") or {}).get("address")


def _registered(node: Node, registrar: RegisterProcess) -> dict[str, Any]:
    wait_for(lambda: (node.web.last().get("value") or {}).get("state") == "ready"
             and _address(node.api) is not None, timeout=20,
             what=f"web and api registered; log:\n{registrar.output()[-3000:]}")
    first = node.web.last()
    assert first["value"]["address"] == OLD
    assert _address(node.api) == "192.0.2.10"
    return first


def _first_read(reads: KeyReads, address: str) -> float:
    return float(next(line["t"] for line in reads.lines()
                      if (line.get("value") or {}).get("address") == address))


def test_a_detected_address_follows_the_host_and_the_key_never_goes(node: Node) -> None:
    registrar = node.register()
    try:
        first = _registered(node, registrar)
        time.sleep(0.5)

        node.ns.run(["ip", "addr", "add", f"{NEW}/24", "dev", "vn"],
                    ["ip", "addr", "del", f"{OLD}/24", "dev", "vn"])
        changed = time.monotonic()
        wait_for(lambda: _address(node.web) == NEW, timeout=10, interval=0.05,
                 what=f"the new address in etcd; log:\n{registrar.output()[-3000:]}")
        seconds = _first_read(node.web, NEW) - changed
        print(f"address changed -> new value in etcd: {seconds:.2f}s")
        assert seconds < 5

        # The key never went: every read from the first registration on found it, created once
        # (a lapsed lease and a new registration would have a new create revision).
        time.sleep(2.0)  # the derived check keeps passing on the new address (fall = 3)
        reads = [line for line in node.web.lines() if line["t"] >= first["t"]]
        assert all("error" not in r for r in reads)
        gaps = [r for r in reads if r["value"] is None]
        assert gaps == [], f"the key was absent {len(gaps)} times"
        assert {r["create"] for r in reads} == {first["create"]}
        last = node.web.last()["value"]
        assert (last["address"], last["state"], last["host"]) == (NEW, "ready", "node-a")
        assert _address(node.api) == "192.0.2.10"

        out = registrar.output()
        assert f"address changed from {OLD} to {NEW}; publishing {NEW} for {WEB}" in out
        assert API not in out.split("address changed", 1)[1].splitlines()[0]
        assert f"web check 0 now probes http://{NEW}:{SERVICE_PORT}/" in out
        assert "loopback" not in out
    finally:
        registrar.stop()


def test_an_address_gone_for_a_while_keeps_the_last_one_then_follows_the_new_one(
        node: Node) -> None:
    """A NIC detached, then re-attached with another address: meanwhile nothing routes to etcd,
    the detection fails (said once) and the check derived from the address takes the instance
    out; with the new address it comes back, published with it."""
    registrar = node.register()
    try:
        _registered(node, registrar)
        node.ns.run(["ip", "addr", "del", f"{OLD}/24", "dev", "vn"])
        wait_for(lambda: "cannot tell this host's address now" in registrar.output(),
                 timeout=10, what=f"the failed detection; log:\n{registrar.output()[-3000:]}")
        time.sleep(3.5)  # retried meanwhile (1 s, 2 s)
        out = registrar.output()
        assert out.count("cannot tell this host's address now") == 1, "said once"
        assert "address changed" not in out

        node.ns.run(["ip", "addr", "add", f"{NEW}/24", "dev", "vn"])
        back = time.monotonic()
        wait_for(lambda: _address(node.web) == NEW and
                 node.web.last()["value"]["state"] == "ready", timeout=10, interval=0.05,
                 what=f"registered with the new address; log:\n{registrar.output()[-3000:]}")
        seconds = _first_read(node.web, NEW) - back
        print(f"address back -> new value in etcd: {seconds:.2f}s")
        out = registrar.output()
        assert "this host's address can be told again" in out
        assert f"address changed from {OLD} to {NEW}" in out
        assert _address(node.api) == "192.0.2.10"
    finally:
        registrar.stop()


def test_no_route_to_etcd_at_start_waits_for_the_network(node: Node) -> None:
    """At boot the registrar may start before the network is up (network-online.target is
    often reached early). No route to etcd while telling the address to publish was exit 2,
    "set `address`", which the unit does not restart: the node never joined its pool. Now it
    says so once, asks again, and registers with the address the network comes up with."""
    node.ns.run(["ip", "addr", "del", f"{OLD}/24", "dev", "vn"], ["ip", "link", "set", "vn", "down"])
    registrar = node.register()
    try:
        wait_for(lambda: "cannot tell the local address used to reach etcd yet" in
                 registrar.output() or registrar.proc.poll() is not None, 10,
                 what="the first detection")
        time.sleep(1.5)  # a retry or two, still without a route
        assert registrar.proc.poll() is None, registrar.output()[-3000:]
        node.ns.run(["ip", "addr", "add", f"{OLD}/24", "dev", "vn"],
                    ["ip", "link", "set", "vn", "up"])
        _registered(node, registrar)
        assert registrar.output().count("cannot tell the local address") == 1  # said once
    finally:
        registrar.stop()


def test_a_route_with_no_local_address_is_not_an_address_to_publish() -> None:
    """A route through an interface with no address of this host (still unnumbered) gives a
    UDP socket the source 0.0.0.0: that was published as the instance's address. It is a
    failure of the moment now (the last address is kept; at start, asked again)."""
    code = ("import subprocess\n"
            "for c in (['ip','link','set','lo','up'],['ip','route','add','10.255.0.0/16','dev','lo']):\n"
            "    subprocess.run(c, check=True)\n"
            "from confsync.register.address import LookupFailing, source_address\n"
            "try:\n"
            "    print('published', source_address(['http://10.255.0.1:2379']))\n"
            "except LookupFailing as exc:\n"
            "    print('failing', exc)\n")
    done = subprocess.run(["unshare", "--net", sys.executable, "-c", code], capture_output=True,
                          text=True, timeout=30, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("failing no route to etcd: http://10.255.0.1:2379: no local "
                                  "address on the route yet"), done.stdout


def test_a_stop_while_waiting_for_a_route_at_start_ends_the_registrar(tmp_path: Path) -> None:
    """SIGTERM is held through start-up (held_signals: its handler comes later), on the word
    that start-up never waits long. The wait for a route to etcd (or for DNS) has no end: a
    `systemctl stop` or a shutdown at boot then waited for the unit's SIGKILL. It ends the
    registrar now, status 0, nothing registered."""
    conf = tmp_path / "conf"
    write_registration(conf, "web", 'service = "web"\nport = 8080\nid = "web-1"\n')
    # A network namespace of its own with no route anywhere: ENETUNREACH, as at boot.
    registrar = RegisterProcess(conf, "http://10.77.0.1:2379", log=tmp_path / "register.log",
                                wrapper=["unshare", "--net"])
    try:
        wait_for(lambda: "cannot tell the local address used to reach etcd yet" in
                 registrar.output() or registrar.proc.poll() is not None, 10,
                 what="the wait for a route")
        registrar.signal(signal.SIGTERM)
        stopped = time.monotonic()
        wait_for(lambda: registrar.proc.poll() is not None, 5,
                 what="the registrar ending on SIGTERM")
        assert time.monotonic() - stopped < 2.0
        assert registrar.proc.returncode == 0, registrar.output()[-2000:]
    finally:
        registrar.stop()
