"""A pool of a few thousand servers through the real daemon and HAProxy, the shipped setting
(`check_server_changes = false`): server-only changes are proven from the lines that changed
(`confsync/haproxy/proof_delta.py`), and the runtime pass reads the model the proof made. What
HAProxy runs must be every server of the file, as the file says, after each kind of change."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from confsync.haproxy.config_model import parse
from confsync.haproxy.runtime import AdminSocket, live_servers
from tests.support.daemon import WatchProcess
from tests.support.etcd_server import EtcdMember
from tests.support.haproxy import HAProxyStack, http_get, spread, wait_for
from tests.support.haproxy_watched import watched_haproxy
from tests.support.http_backends import HTTPBackend

pytestmark = [pytest.mark.etcd, pytest.mark.haproxy]

IDLE = 2000  # servers in maintenance (no traffic, no health check) beside the served ones


def _idle(n: int, port: int = 9) -> str:
    return json.dumps({"address": f"127.1.{n // 256}.{n % 256}", "port": port,
                       "state": "maint"})


@pytest.fixture
def large(haproxy_binary: str, etcd: EtcdMember, backends: dict[str, HTTPBackend],
          tmp_path: Path) -> Iterator[tuple[HAProxyStack, WatchProcess]]:
    def fill(stack: HAProxyStack) -> None:
        stack.put_instance("web", "a", backends["a"].port)
        client = stack.client
        for first in range(0, IDLE, 128):  # (etcd's --max-txn-ops)
            client.transaction(compare=[], failure=[], success=[
                client.transactions.put(f"{stack.prefix}/services/web/instances/z{n:05d}",
                                        _idle(n)) for n in range(first, min(first + 128, IDLE))])

    with watched_haproxy(haproxy_binary, etcd.endpoint, tmp_path / "watch.log", fill,
                         start_timeout=30) as both:
        yield both


def _runs_the_file(stack: HAProxyStack) -> bool:
    """Whether HAProxy's servers are the file's: names, addresses, ports, weights, maintenance."""
    model = parse(stack.cfg.read_text())
    live = live_servers(AdminSocket(stack.admin))
    for name, backend in model.backends.items():
        running = live.get(name, {})
        if set(running) != set(backend.servers):
            return False
        for server in backend.servers.values():
            now = running[server.name]
            if (now.address, now.port, now.weight, now.maint) != (
                    server.address, server.port, server.weight, server.disabled):
                return False
    return True


def _served_by(port: int, name: str) -> bool:
    return any(http_get(port)[1] == name for _ in range(6))


def test_a_pool_of_thousands_changes_without_a_check_or_a_reload(
        large: tuple[HAProxyStack, WatchProcess], backends: dict[str, HTTPBackend]) -> None:
    stack, daemon = large
    reloads = stack.status().reloads
    assert _runs_the_file(stack)
    # A server joins (checked: the daemon's first file, the base of the proofs after it).
    stack.put_instance("web", "b", backends["b"].port)
    wait_for(lambda: _served_by(stack.port, "b"), timeout=20)
    # One leaves; idle ones change address, weight, leave and join, in the middle and at the end.
    stack.delete("/services/web/instances/a")
    stack.put("/services/web/instances/z01000", _idle(1000, port=10))
    stack.put("/services/web/instances/z00500", json.dumps(
        {"address": "127.1.9.9", "port": 9, "weight": 7, "state": "maint"}))
    stack.delete("/services/web/instances/z01500")
    stack.put("/services/web/instances/z09999", _idle(9999))
    stack.put("/services/web/instances/z01234x", _idle(1234))
    wait_for(lambda: "z01234x" in stack.cfg.read_text() and _runs_the_file(stack), timeout=20)
    wait_for(lambda: spread(stack.port, 4) == {"b": 4}, timeout=20)
    # A served server drains and another takes over.
    stack.put_instance("web", "b", backends["b"].port, state="drain")
    stack.put_instance("web", "c", backends["c"].port)
    wait_for(lambda: spread(stack.port, 4) == {"c": 4}, timeout=20)
    wait_for(lambda: _runs_the_file(stack), timeout=20)
    assert stack.status().reloads == reloads
    assert "runtime API" in daemon.output()
