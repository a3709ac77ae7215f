"""Old HAProxy workers (left by reloads while connections they accepted stay open) are counted
from `show proc` and exported; their pile-up is warned about once, naming `hard-stop-after`."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.daemon import WatchProcess
from tests.support.etcd_server import EtcdMember, free_port
from tests.support.haproxy import HAProxyStack, wait_for
from tests.support.http_backends import HTTPBackend
from tests.support.http_probe import ready, series_value

pytestmark = [pytest.mark.etcd, pytest.mark.haproxy]

GAUGE = 'confsync_haproxy_old_workers{resource="haproxy"}'
WARNING = "old HAProxy workers still run"


@pytest.fixture
def stack(haproxy_binary: str, etcd: EtcdMember) -> Iterator[HAProxyStack]:
    s = HAProxyStack(haproxy_binary, etcd.endpoint, strategy="reload")
    yield s
    s.stop()


def _gauge(port: int) -> float | None:
    return series_value(port, GAUGE)


def test_old_workers_are_a_gauge_and_their_pile_up_one_warning(
        stack: HAProxyStack, backends: dict[str, HTTPBackend], tmp_path: Path) -> None:
    stack.put_basics()
    # Long enough for the test: the template's default (30s) would end them as well.
    stack.put("/haproxy/global", {"admin_socket": str(stack.admin), "maxconn": 200,
                                  "state_file": str(stack.state), "hard_stop_after": "60s"})
    stack.put_instance("web", "a", backends["a"].port)
    stack.sync_ok()
    stack.start()
    metrics = free_port()
    watch = WatchProcess(*stack.cli_args(), "--wait-min", "20ms", "--wait-max", "500ms",
                         "--metrics-address", f"127.0.0.1:{metrics}", log=tmp_path / "w.log")
    held: list[socket.socket] = []
    try:
        wait_for(lambda: ready(metrics)[0] == 200, timeout=15)
        wait_for(lambda: _gauge(metrics) == 0, timeout=5)
        # Each reload (by someone else, as a month of them would be) leaves the worker that
        # holds a connection open; the template's threshold is 20.
        for _ in range(21):
            held.append(socket.create_connection(("127.0.0.1", stack.port), timeout=5))
            wait_for(lambda: "CurrConns: 1" in stack.admin_command("show info"), timeout=5)
            stack.reload_by_signal()
        wait_for(lambda: _gauge(metrics) == 21, timeout=5)
        wait_for(lambda: WARNING in watch.output(), timeout=5)
        assert "hard-stop-after" in watch.output()
        for conn in held:  # the connections end, and their workers with them
            conn.close()
        held.clear()
        wait_for(lambda: _gauge(metrics) == 0, timeout=8)
        assert watch.output().count(WARNING) == 1
        assert "Traceback" not in watch.output()
    finally:
        for conn in held:
            conn.close()
        watch.stop()
