"""A pool change applied while HAProxy is stopped (a package upgrade, a host reboot) keeps the
server-state file its next start loads, but for the servers etcd changed.

A pass with no HAProxy to ask removed the file: the start that followed forgot an operator's
`disable server` and every server known DOWN, which a plain stop and start (no change) keeps.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from confsync.haproxy.runtime import AdminSocket, live_servers
from tests.support.daemon import WatchProcess
from tests.support.etcd_server import EtcdMember, free_port
from tests.support.haproxy import HAProxyStack, spread, wait_for
from tests.support.http_backends import HTTPBackend
from tests.support.http_probe import haproxy_not_running, ready

pytestmark = [pytest.mark.etcd, pytest.mark.haproxy]

DEAD = " dead 127.0.0.1 0 "  # srv_name srv_addr srv_op_state=STOPPED (known DOWN)


@pytest.fixture(params=["runtime", "reload"])
def stack(request: pytest.FixtureRequest, haproxy_binary: str,
          etcd: EtcdMember) -> Iterator[HAProxyStack]:
    s = HAProxyStack(haproxy_binary, etcd.endpoint, strategy=request.param)
    yield s
    s.stop()


def _watch(stack: HAProxyStack, tmp_path: Path, name: str) -> tuple[WatchProcess, int]:
    metrics = free_port()
    return WatchProcess(*stack.cli_args(), "--wait-min", "20ms", "--wait-max", "500ms",
                        "--metrics-address", f"127.0.0.1:{metrics}",
                        log=tmp_path / f"{name}.log"), metrics


def _maint(stack: HAProxyStack) -> dict[str, bool]:
    return {name: server.maint
            for name, server in live_servers(AdminSocket(stack.admin))["be_web"].items()}


def test_a_pass_while_haproxy_is_stopped_keeps_the_state_its_start_loads(
        stack: HAProxyStack, backends: dict[str, HTTPBackend], tmp_path: Path) -> None:
    stack.put_basics(check_interval="500ms")
    for name in ("a", "b"):
        stack.put_instance("web", name, backends[name].port)
    stack.put_instance("web", "dead", free_port())
    watch, metrics = _watch(stack, tmp_path, "watch")
    try:
        watch.wait_log("watching /", timeout=15)
        stack.start()
        wait_for(lambda: ready(metrics)[0] == 200, timeout=10)
        wait_for(lambda: DEAD in stack.admin_command("show servers state be_web"), timeout=5)
        for name in ("a", "b"):  # an operator's work on two boxes
            assert stack.admin_command(f"disable server be_web/{name}").strip() == ""
        passes = watch.output().count(f"wrote {stack.cfg}")
        stack.put_instance("web", "c", backends["c"].port)  # its pass saves the state
        watch.wait_log(f"wrote {stack.cfg}", count=passes + 1)  # (a reload confirmed)
        assert "c" in _maint(stack)
        wait_for(lambda: " a 127.0.0.1 " in stack.state.read_text(), timeout=5)

        stack.halt()  # an upgrade of the package; meanwhile etcd changes b and removes c
        unserved = f"wrote {stack.cfg} (no HAProxy master"
        writes = watch.output().count(unserved)
        txn = stack.client.transactions
        stack.client.transaction(compare=[], failure=[], success=[
            txn.delete(f"{stack.prefix}/services/web/instances/c"),
            txn.put(f"{stack.prefix}/services/web/instances/b", json.dumps(
                {"address": "127.0.0.1", "port": backends["b"].port, "weight": 50}))])
        watch.wait_log(unserved, count=writes + 1)
        assert "server c " not in stack.cfg.read_text()

        stack.start()
        maint = _maint(stack)
        assert DEAD in stack.admin_command("show servers state be_web")  # still known DOWN
        assert maint == {"a": True, "b": False, "dead": False}  # b: etcd's change
        assert spread(stack.port, 4) == {"b": 4}
        wait_for(lambda: ready(metrics)[0] == 200, timeout=5)
        assert "Traceback" not in watch.output()
    finally:
        watch.stop()

    # A start of `watch` with HAProxy down and nothing to apply touches nothing.
    stack.halt()
    saved = stack.state.read_bytes()
    watch, metrics = _watch(stack, tmp_path, "again")
    try:
        watch.wait_log("watching /", timeout=15)
        wait_for(lambda: haproxy_not_running(metrics), timeout=5)
        assert stack.state.read_bytes() == saved
    finally:
        watch.stop()
    stack.start()
    assert _maint(stack) == {"a": True, "b": False, "dead": False}
