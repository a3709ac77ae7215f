"""The same pools driven by the daemon: `confsync watch` follows etcd, HAProxy follows confsync.

No explicit sync step here: a put or delete in etcd is all a test does, then it waits (bounded)
for the traffic to show the change.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from confsync.haproxy.runtime import AdminSocket, live_servers
from confsync.mirror import Mirror
from confsync.renderer import Renderer
from confsync.resources import load_resources
from confsync.stores import Snapshot
from tests.support.daemon import WatchProcess
from tests.support.etcd_server import EtcdMember
from tests.support.haproxy import HAProxyStack, http_get, spread, wait_for
from tests.support.haproxy_watched import watched_haproxy
from tests.support.http_backends import HTTPBackend

pytestmark = [pytest.mark.etcd, pytest.mark.haproxy]


@pytest.fixture
def watched(haproxy_binary: str, etcd: EtcdMember, backends: dict[str, HTTPBackend],
            tmp_path: Path) -> Iterator[tuple[HAProxyStack, WatchProcess]]:
    # The shipped setting: proven server-only changes skip `haproxy -c`.
    with watched_haproxy(haproxy_binary, etcd.endpoint, tmp_path / "watch.log",
                         lambda stack: stack.put_instance("web", "a", backends["a"].port)) as both:
        yield both


def _served_by(port: int, name: str) -> bool:
    return any(http_get(port)[1] == name for _ in range(6))


def test_watch_applies_pool_changes_without_reload(
        watched: tuple[HAProxyStack, WatchProcess], backends: dict[str, HTTPBackend]) -> None:
    stack, daemon = watched
    reloads = stack.status().reloads
    stack.put_instance("web", "b", backends["b"].port)
    wait_for(lambda: _served_by(stack.port, "b"), timeout=10)
    stack.delete("/services/web/instances/a")
    wait_for(lambda: spread(stack.port, 4) == {"b": 4}, timeout=10)
    stack.put_instance("web", "b", backends["b"].port, state="drain")
    stack.put_instance("web", "c", backends["c"].port)
    wait_for(lambda: spread(stack.port, 4) == {"c": 4}, timeout=10)
    assert stack.status().reloads == reloads
    assert "runtime API" in daemon.output()


def test_watch_reports_hostile_value_and_traffic_goes_on(
        watched: tuple[HAProxyStack, WatchProcess], backends: dict[str, HTTPBackend]) -> None:
    stack, daemon = watched
    before = stack.cfg.read_bytes()
    stack.put("/services/web/instances/b", {"address": "127.0.0.1\n    server x 1.2.3.4:1",
                                            "port": backends["b"].port})
    daemon.wait_log(f"key {stack.prefix}/services/web/instances/b: expected an IP address")
    assert stack.cfg.read_bytes() == before
    assert spread(stack.port, 4) == {"a": 4}
    stack.put_instance("web", "c", backends["c"].port)  # b stays bad: the pool still updates
    wait_for(lambda: _served_by(stack.port, "c"), timeout=10)
    assert "server b " not in stack.cfg.read_text()
    stack.put_instance("web", "b", backends["b"].port)  # fixed: applied as usual
    wait_for(lambda: _served_by(stack.port, "b"), timeout=10)


def _rendered_afresh(stack: HAProxyStack) -> str:
    """What a Renderer of its own (no output kept from an earlier render) makes of etcd now."""
    mirror = Mirror()
    mirror.load(Snapshot(1, {m.key.decode(): v for v, m in stack.client.get_prefix(stack.prefix)}))
    [resource] = load_resources(stack.confdir, stack.prefix).resources
    return Renderer(stack.confdir / "templates").render(resource, mirror)


def test_server_lines_kept_from_earlier_renders_are_what_a_render_afresh_writes(
        watched: tuple[HAProxyStack, WatchProcess], backends: dict[str, HTTPBackend],
        haproxy_binary: str) -> None:
    """The shipped template keeps each server's line while its key and value stay (`memo`):
    through values seen before, a refused one, a delete and a return, the daemon's file is
    what a render from scratch writes, HAProxy accepts it and serves its pool."""
    stack, daemon = watched
    b = {"address": "127.0.0.1", "port": backends["b"].port}
    steps: list[tuple[str, dict[str, object] | None]] = [
        ("b", b), ("b", {**b, "state": "drain"}), ("b", b), ("c", {**b, "port": backends["c"].port}),
        ("b", {**b, "address": "127.0.0.1\n    server x 1.2.3.4:1"}), ("a", None),
        ("b", {**b, "weight": 7}), ("a", {**b, "port": backends["a"].port}), ("b", b)]
    for name, value in steps:
        if value is None:
            stack.delete(f"/services/web/instances/{name}")
        else:
            stack.put(f"/services/web/instances/{name}", value)
        wait_for(lambda: stack.cfg.read_text() == _rendered_afresh(stack), timeout=10)
    assert "server x" not in stack.cfg.read_text()
    assert "key " + stack.prefix + "/services/web/instances/b: expected an IP address" \
        in daemon.output()
    check = subprocess.run([haproxy_binary, "-c", "-q", "-f", str(stack.cfg)],
                           capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stderr
    wait_for(lambda: spread(stack.port, 6) == {"a": 2, "b": 2, "c": 2}, timeout=10)


def test_watch_leaves_out_an_address_with_an_ipv6_zone_and_the_pools_go_on(
        watched: tuple[HAProxyStack, WatchProcess], backends: dict[str, HTTPBackend]) -> None:
    """`fe80::1%lo` passed the address filter (Python keeps the zone). HAProxy cannot load it:
    with `haproxy -c` every later file failed its check, so one registration froze every
    pool; with the check proven unneeded (the shipped setting) the file went live, the
    runtime API took the server at another address, and HAProxy refused the reload."""
    stack, daemon = watched
    stack.put("/services/web/config", {"check_path": "/healthz", "check_interval": "1s"})
    daemon.wait_log("reloaded HAProxy", timeout=10)  # a checked file: the proofs' base
    before = stack.status()

    stack.put("/services/web/instances/b", {"address": "fe80::1%lo", "port": 8080})
    stack.put_instance("web", "c", backends["c"].port)  # b stays bad: the pool still updates
    wait_for(lambda: any(http_get(stack.port)[1] == "c" for _ in range(4)), timeout=10)
    daemon.wait_log(f"key {stack.prefix}/services/web/instances/b: expected an IP address "
                    "without an IPv6 zone")
    assert "%" not in stack.cfg.read_text()
    after = stack.status()
    assert (after.reloads, after.failed) == (before.reloads, before.failed)
    assert set(live_servers(AdminSocket(stack.admin))["be_web"]) == {"a", "c"}


def test_watch_reloads_once_for_a_structural_change(
        watched: tuple[HAProxyStack, WatchProcess], backends: dict[str, HTTPBackend]) -> None:
    stack, daemon = watched
    before = stack.status()
    put = stack.client.transactions.put
    stack.client.transaction(compare=[], failure=[], success=[  # one revision, one batch
        put(f"{stack.prefix}/services/api/config", json.dumps({"path_prefix": "/api"})),
        put(f"{stack.prefix}/services/api/instances/c",
            json.dumps({"address": "127.0.0.1", "port": backends["c"].port}))])
    wait_for(lambda: http_get(stack.port, "/api/x") == (200, "c"), timeout=10)
    daemon.wait_log("reloaded HAProxy")
    after = stack.status()
    assert (after.reloads, after.failed) == (before.reloads + 1, before.failed)


def test_watch_starting_on_an_empty_pool_leaves_haproxy_alone(
        haproxy_binary: str, etcd: EtcdMember, tmp_path: Path) -> None:
    """A start compares HAProxy's servers with the file: a backend without servers (no
    instance registered yet) is missing from `show servers state`, and was taken for one
    HAProxy lacks: a WARNING that HAProxy's servers are not the file's and a reload at every
    start of `confsync watch` while a pool was empty."""
    stack = HAProxyStack(haproxy_binary, etcd.endpoint, strategy="runtime")
    daemon: WatchProcess | None = None
    try:
        stack.put_basics()  # the default service's backend, no instance
        stack.sync_ok()
        stack.start()
        reloads = stack.status().reloads
        daemon = WatchProcess(*stack.cli_args(), log=tmp_path / "watch.log")
        daemon.wait_log(f"watching {stack.prefix}", timeout=15)  # after the first pass
        assert "is up to date" in daemon.output()
        assert "not the file's" not in daemon.output()
        assert stack.status().reloads == reloads
    finally:
        if daemon is not None:
            daemon.stop()
        stack.stop()
