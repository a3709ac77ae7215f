"""Registrars, `confsync watch` and a real HAProxy together: a drain loses no request, and the
shipped template retries a backend that crashed mid-request on another server."""

from __future__ import annotations

import socket
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.daemon import WatchProcess
from tests.support.etcd_server import EtcdMember
from tests.support.haproxy import HAProxyStack, http_get, spread, wait_for
from tests.support.http_backends import HTTPBackend
from tests.support.register import RegisterProcess, write_registration

pytestmark = [pytest.mark.etcd, pytest.mark.haproxy]


@pytest.fixture
def stack(haproxy_binary: str, etcd: EtcdMember, backends: dict[str, HTTPBackend],
          tmp_path: Path) -> Iterator[tuple[HAProxyStack, WatchProcess]]:
    s = HAProxyStack(haproxy_binary, etcd.endpoint, strategy="runtime",
                     check_server_changes=False)
    daemon: WatchProcess | None = None
    try:
        s.put_basics()
        s.put_instance("web", "c", backends["c"].port)
        s.sync_ok()
        s.start()
        daemon = WatchProcess(*s.cli_args(), "--wait-min", "10ms", "--wait-max", "500ms",
                              log=tmp_path / "watch.log")
        daemon.wait_log("watching ", timeout=15)
        yield s, daemon
    finally:
        if daemon is not None:
            daemon.stop()
        s.stop()


def _registrar(s: HAProxyStack, tmp_path: Path, name: str, port: int) -> RegisterProcess:
    write_registration(tmp_path / name, "web", f'service = "web"\nid = "{name}"\nport = {port}\n'
                       'ttl = "3s"\ndrain = "1s"\n[[check]]\ntype = "http"\n'
                       'interval = "100ms"\nrise = 1\n')
    return RegisterProcess(tmp_path / name, s.etcd_endpoint, "--prefix", s.prefix,
                           log=tmp_path / f"{name}.log")


def test_registered_instances_serve_and_a_drain_loses_no_request(
        stack: tuple[HAProxyStack, WatchProcess], backends: dict[str, HTTPBackend],
        tmp_path: Path) -> None:
    s, _ = stack
    s.delete("/services/web/instances/c")
    procs = [_registrar(s, tmp_path, n, backends[n].port) for n in ("a", "b")]
    try:
        wait_for(lambda: set(spread(s.port, 6)) == {"a", "b"}, timeout=20)
        reloads = s.status().reloads
        seen: Counter[str] = Counter()
        stop = threading.Event()

        def load() -> None:
            for _ in range(2000):  # bounded: about 10 s at most
                if stop.is_set():
                    return
                status, body = http_get(s.port)
                seen[body if status == 200 else f"failed {status} {body[:40]}"] += 1

        thread = threading.Thread(target=load)
        thread.start()
        procs[0].signal(15)
        assert procs[0].wait() == 0
        served_a = seen["a"]
        wait_for(lambda: seen["b"] > 20, timeout=10)
        stop.set()
        thread.join(15)
        assert not [k for k in seen if k.startswith("failed")], seen
        assert seen["a"] == served_a, "nothing reaches a drained, deregistered instance"
        assert s.status().reloads == reloads, "pool changes went through the runtime API"
    finally:
        for proc in procs:
            proc.stop()


def test_a_backend_that_dies_mid_request_is_retried_on_another_server(
        stack: tuple[HAProxyStack, WatchProcess], backends: dict[str, HTTPBackend]) -> None:
    """`retry-on empty-response`: the crashed server's requests are replayed elsewhere."""
    s, _ = stack
    crasher = socket.socket()
    crasher.bind(("127.0.0.1", 0))
    crasher.listen(64)
    stopping = threading.Event()

    def accept_and_close() -> None:
        while not stopping.is_set():
            try:
                conn, _ = crasher.accept()
            except OSError:
                return
            conn.recv(65536)  # read the request, then die without answering
            conn.close()

    threading.Thread(target=accept_and_close, daemon=True).start()
    try:
        s.put_instance("web", "crash", crasher.getsockname()[1])
        wait_for(lambda: "server crash " in s.cfg.read_text(), timeout=10)
        wait_for(lambda: "crash" in s.admin_command("show servers state be_web"), timeout=10)
        results = Counter(http_get(s.port)[0] for _ in range(40))
        assert results == {200: 40}, results
    finally:
        stopping.set()
        crasher.close()


def test_a_pool_with_no_config_key_empties_to_a_503_and_takes_the_next_instance(
        stack: tuple[HAProxyStack, WatchProcess], backends: dict[str, HTTPBackend],
        tmp_path: Path) -> None:
    """The README's steps put no /services/web/config key. The pool emptying (here: the last
    registrar killed, its key gone with its lease) must give a 503 backend, not a file that
    fails its check while HAProxy keeps serving the dead server."""
    s, watch = stack
    s.delete("/services/web/config")
    s.delete("/services/web/instances/c")
    wait_for(lambda: http_get(s.port)[0] == 503, timeout=10)
    first = _registrar(s, tmp_path, "a", backends["a"].port)
    try:
        wait_for(lambda: spread(s.port, 4) == {"a": 4}, timeout=20)
        first.proc.kill()  # node loss: the key goes when the 3 s lease runs out
        wait_for(lambda: http_get(s.port)[0] == 503, timeout=10)
    finally:
        first.stop()
    second = _registrar(s, tmp_path, "b", backends["b"].port)
    try:
        wait_for(lambda: spread(s.port, 4) == {"b": 4}, timeout=20)
    finally:
        second.stop()
    assert "check failed" not in watch.output()
