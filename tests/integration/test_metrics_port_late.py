"""A `--metrics-address` that cannot be bound at start, but will be: the port still held by
the instance being replaced (a registrar's hand-over, a DaemonSet's surge), an address not up
yet at boot.

It was exit 2 ("cannot listen on ..."), which the shipped units never restart
(RestartPreventExitStatus=2): the node stayed unmanaged (or out of its pool) for good. A port
in use is now waited for (IN_USE_WAIT) and then taken; held for longer it is another daemon
given the same address (exit 2, loudly: its /health would answer for this one). An address not
up yet is bound once it is, the daemon running meanwhile. Real etcd, real processes.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.cli import write_resource
from tests.support.daemon import WatchProcess, read, wait_for
from tests.support.etcd_client import client
from tests.support.etcd_server import EtcdMember
from tests.support.http_probe import probe
from tests.support.register import RegisterProcess, published, write_registration


@pytest.fixture
def held() -> Iterator[socket.socket]:
    """A listening socket on a free loopback port: the previous instance's /metrics."""
    sock = socket.create_server(("127.0.0.1", 0))
    yield sock
    sock.close()


def _served_by_us(port: int) -> bool:
    status, body = probe(f"http://127.0.0.1:{port}", "/health", timeout=1.0)
    return status == 200 and bool(body.get("ok"))


def test_watch_waits_for_a_port_the_previous_instance_still_holds(
        etcd: EtcdMember, tmp_path: Path, prefix: str, held: socket.socket,
        watchers: list[WatchProcess]) -> None:
    client(etcd.endpoint).put(prefix + "/k/v", "1")
    dest = tmp_path / "app.conf"
    write_resource(tmp_path / "cd", "app", "v={{ getv('/k/v') }}\n",
                   f'dest = "{dest}"\nkeys = ["/k"]\n')
    port = held.getsockname()[1]
    watch = WatchProcess("--confdir", str(tmp_path / "cd"), "--endpoints", etcd.endpoint,
                         "--prefix", prefix, "--metrics-address", f"127.0.0.1:{port}",
                         log=tmp_path / "w.log")
    watchers.append(watch)
    watch.wait_log(f"metrics: 127.0.0.1:{port} is in use; waiting up to")
    time.sleep(0.5)
    assert watch.proc.poll() is None, watch.output()[-2000:]
    held.close()  # the previous instance is gone
    wait_for(lambda: read(dest) == "v=1\n", what="rendered")
    wait_for(lambda: _served_by_us(port), timeout=8, what="/health served once bound")
    assert watch.stop() == 0, watch.output()[-2000:]


def test_registrar_taking_over_waits_for_the_port_then_registers_and_serves(
        etcd: EtcdMember, tmp_path: Path, prefix: str, held: socket.socket,
        procs: list[RegisterProcess]) -> None:
    service = socket.create_server(("127.0.0.1", 0))
    try:
        write_registration(tmp_path / "cd", "web", (
            f'service = "web"\nid = "web-1"\nport = {service.getsockname()[1]}\n'
            'address = "127.0.0.1"\nttl = "5s"\ndrain = "100ms"\n'
            '[[check]]\ntype = "tcp"\ninterval = "200ms"\nrise = 1\n'))
        port = held.getsockname()[1]
        reg = RegisterProcess(tmp_path / "cd", etcd.endpoint, "--prefix", prefix,
                              "--hostname", "node-a", "--metrics-address", f"127.0.0.1:{port}",
                              log=tmp_path / "r.log")
        procs.append(reg)
        wait_for(lambda: f"127.0.0.1:{port} is in use; waiting up to" in reg.output(),
                 what="the wait said")
        held.close()
        etcd_client = client(etcd.endpoint)
        key = prefix + "/services/web/instances/web-1"
        wait_for(lambda: published(etcd_client, key) is not None, timeout=10,
                 what=f"registered; log:\n{reg.output()[-2000:]}")
        wait_for(lambda: _served_by_us(port), timeout=8, what="/health served once bound")
        assert reg.stop() == 0, reg.output()[-2000:]
    finally:
        service.close()


def test_a_port_held_past_the_wait_is_exit_2_naming_the_likely_cause(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Another daemon given the same address (watch and register both read confsync.toml's
    metrics_address) would answer /health and /ready for this one: loud, not a quiet retry."""
    from confsync.errors import ConfigError
    from confsync.ops import http
    from confsync.ops.metrics import Metrics

    monkeypatch.setattr(http, "IN_USE_WAIT", 0.3)
    holder = socket.create_server(("127.0.0.1", 0))
    try:
        with pytest.raises(ConfigError, match=r"still in use after 0s: another process keeps "
                           r"it .*give each its own"):
            http.MetricsServer.listen(Metrics(), f"127.0.0.1:{holder.getsockname()[1]}")
    finally:
        holder.close()


def test_an_address_not_up_yet_is_said_again(monkeypatch: pytest.MonkeyPatch,
                                             caplog: pytest.LogCaptureFixture) -> None:
    """An address on no interface yet (192.0.2.1, documentation space: EADDRNOTAVAIL) is tried
    again in the background while the daemon runs, and said again, not only once at start."""
    from confsync.ops import http
    from confsync.ops.metrics import Metrics

    monkeypatch.setattr(http, "BIND_RETRY", (0.02, 0.05))
    monkeypatch.setattr(http, "BIND_SAY_AGAIN", 0.2, raising=False)
    server = None
    try:
        with caplog.at_level(logging.ERROR, logger="confsync"):
            server = http.MetricsServer.listen(Metrics(), "192.0.2.1:9")
            time.sleep(1.0)
        said = [r for r in caplog.records if "cannot listen on" in r.getMessage()]
        assert len(said) >= 3, [r.getMessage() for r in said]
    finally:
        if server is not None:
            server.close()
