"""Servers moved at runtime (`move_server`) with a real HAProxy: what a move leaves behind when
it ends in a reload, and what it sends traffic to. Each test takes seconds."""

from __future__ import annotations

import signal
import threading
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from confsync.haproxy.runtime import AdminSocket, live_servers
from tests.integration.test_haproxy_pools import _running, steady_traffic
from tests.support.daemon import WatchProcess
from tests.support.etcd_server import EtcdMember, free_port
from tests.support.haproxy import HAProxyStack, http_get, spread, wait_for
from tests.support.http_backends import HTTPBackend
from tests.support.http_probe import ready

pytestmark = [pytest.mark.etcd, pytest.mark.haproxy]


def _op_state(stack: HAProxyStack, server: str) -> int:
    """The srv_op_state of be_web/`server` (0: DOWN, 2: UP)."""
    for line in stack.admin_command("show servers state be_web").splitlines():
        fields = line.split()
        if len(fields) > 5 and fields[3] == server:
            return int(fields[5])
    raise AssertionError(f"no server {server}")


@pytest.fixture
def stack(haproxy_binary: str, etcd: EtcdMember) -> Iterator[HAProxyStack]:
    s = HAProxyStack(haproxy_binary, etcd.endpoint, strategy="runtime")
    yield s
    s.stop()


class _Held(ThreadingHTTPServer):
    """Answers `/held` only once `release` is set (`entered` is set when one arrives)."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _HeldHandler)
        self.entered = threading.Event()
        self.release = threading.Event()

    def handle_error(self, request: object, client_address: object) -> None:
        pass


class _HeldHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Held

    def do_GET(self) -> None:
        if self.path == "/held":
            self.server.entered.set()
            self.server.release.wait(30)
        self.send_response(200)
        self.send_header("Content-Length", "4")
        self.end_headers()
        self.wfile.write(b"held")

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def held() -> Iterator[_Held]:
    server = _Held()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    yield server
    server.release.set()
    server.shutdown()
    server.server_close()


def test_a_move_its_requests_in_flight_outlast_ends_in_a_reload_that_serves_it(
        stack: HAProxyStack, backends: dict[str, HTTPBackend], held: _Held) -> None:
    """A request to the old address lasting past MOVE_WAIT makes the move a reload, which
    must finish that request and serve the server at its new address. The drain the move
    began with went into the state file and came back in the new worker, taken ever after
    for an operator's: the instance never served again (2.6.12: admin state 8)."""
    stack.put_basics()
    stack.put_instance("web", "a", held.server_address[1])
    stack.put_instance("web", "b", backends["b"].port)
    stack.sync_ok()
    stack.start()
    answers: list[tuple[int, str]] = []
    clients = [threading.Thread(target=lambda: answers.append(http_get(stack.port, "/held", timeout=30)))
               for _ in range(2)]  # (round robin: one of them reaches a)
    for client in clients:
        client.start()
    assert held.entered.wait(10)
    reloads = stack.status().reloads
    stack.put_instance("web", "a", backends["c"].port)
    assert "still in flight" in stack.sync_ok()
    held.release.set()
    for client in clients:
        client.join(10)
    assert sorted(answers) == [(200, "b"), (200, "held")]
    assert stack.status().reloads == reloads + 1
    assert not live_servers(AdminSocket(stack.admin))["be_web"]["a"].drain
    assert spread(stack.port, 10) == {"b": 5, "c": 5}


def test_a_checked_server_moved_serves_once_its_check_passes_at_the_new_address(
        stack: HAProxyStack, backends: dict[str, HTTPBackend]) -> None:
    """Leaving maintenance (the move's last step), HAProxy marks a checked server UP at once:
    the new address took requests before any check of it (a dead one until its first check
    failed). It now serves there once `rise` checks pass (inter 2s, rise 2: not within the
    first requests after the pass)."""
    _running(stack, backends, "a", "b")
    reloads = stack.status().reloads
    stack.put_instance("web", "a", backends["c"].port)
    assert "runtime API" in stack.sync_ok()
    assert _op_state(stack, "a") == 0  # DOWN (2.6.12, 3.2.0 had 2: UP)
    assert spread(stack.port, 6) == {"b": 6}
    wait_for(lambda: "c" in spread(stack.port, 2), timeout=15)
    assert spread(stack.port, 6) == {"b": 3, "c": 3}
    assert stack.status().reloads == reloads


def test_a_move_while_the_other_server_is_down_by_its_check_is_a_reload(
        stack: HAProxyStack, backends: dict[str, HTTPBackend]) -> None:
    """The other server of the pool is DOWN by its health check: it serves nothing while a
    moves, so the move is a reload, and no request fails."""
    _running(stack, backends, "a", "b", check_interval="100ms")
    stack.put_instance("web", "b", free_port())  # nothing listens: DOWN after 3 checks
    stack.sync_ok()
    wait_for(lambda: _op_state(stack, "b") == 0, timeout=10)
    reloads = stack.status().reloads
    statuses: list[int] = []
    with steady_traffic(stack.port, statuses=statuses):
        stack.put_instance("web", "a", backends["c"].port)
        assert "reloaded HAProxy" in stack.sync_ok()
        assert spread(stack.port, 6) == {"c": 6}
    assert stack.status().reloads == reloads + 1
    assert statuses and set(statuses) == {200}, Counter(statuses)


def test_a_pool_rolled_two_at_a_time_then_all_at_once_fails_no_request(
        stack: HAProxyStack, backends: dict[str, HTTPBackend]) -> None:
    """A StatefulSet rolled: two of three servers move in one pass (runtime: the third serves
    meanwhile), then all three (a reload: none would serve during the steps)."""
    _running(stack, backends, "a", "b", "c", check_interval="100ms")
    reloads = stack.status().reloads
    statuses: list[int] = []
    with HTTPBackend("d") as d, HTTPBackend("e") as e, HTTPBackend("f") as f, \
            steady_traffic(stack.port, statuses=statuses):
        stack.put_instance("web", "a", d.port)
        stack.put_instance("web", "b", e.port)
        assert "runtime API" in stack.sync_ok()
        wait_for(lambda: {"c", "d", "e"} == set(spread(stack.port, 6)), timeout=10)
        assert stack.status().reloads == reloads
        for name, backend in zip("abc", (backends["a"], backends["b"], f), strict=True):
            stack.put_instance("web", name, backend.port)
        assert "reloaded HAProxy" in stack.sync_ok()
        # (health-checked every 100 ms: under load a check of the new worker can time out and
        # keep a server out for a few checks; 1 run in 4 with two busy loops on 2 cores)
        wait_for(lambda: set(spread(stack.port, 6)) == {"a", "b", "f"}, timeout=10)
    assert stack.status().reloads == reloads + 1
    assert statuses and set(statuses) == {200}, Counter(statuses)


def test_a_stop_during_a_move_waits_for_no_request_in_flight(
        stack: HAProxyStack, backends: dict[str, HTTPBackend], held: _Held,
        tmp_path: Path) -> None:
    """SIGTERM to `confsync watch` while a move waits for a request in flight to the old
    address: the stop waited out MOVE_WAIT (2 s, 4 s with the idle connections' wait) before
    the reload the move ends in. The move now ends at once in that reload, and confsync exits
    with HAProxy serving the file, the request finished by the old worker."""
    stack.put_basics()
    stack.put_instance("web", "a", held.server_address[1])
    stack.put_instance("web", "b", backends["b"].port)
    stack.sync_ok()
    stack.start()
    metrics = free_port()
    watch = WatchProcess(*stack.cli_args(), "--wait-min", "0ms", "--metrics-address",
                         f"127.0.0.1:{metrics}", log=tmp_path / "w.log")
    answers: list[tuple[int, str]] = []
    clients = [threading.Thread(target=lambda: answers.append(http_get(stack.port, "/held",
                                                                       timeout=30)))
               for _ in range(2)]  # (round robin: one of them reaches a)
    try:
        wait_for(lambda: ready(metrics)[0] == 200, timeout=15)
        for client in clients:
            client.start()
        assert held.entered.wait(10)
        reloads = stack.status().reloads
        stack.put_instance("web", "a", backends["c"].port)
        wait_for(lambda: live_servers(AdminSocket(stack.admin))["be_web"]["a"].drain,
                 timeout=10)  # (the move's first step: it waits for the request now)
        watch.signal(signal.SIGTERM)
        assert watch.proc.wait(15) == 0
        assert "in flight to its old address when confsync was asked to stop" in \
            watch.output(), watch.output()
        assert stack.status().reloads == reloads + 1
        assert spread(stack.port, 6) == {"b": 3, "c": 3}
    finally:
        held.release.set()
        for client in clients:
            if client.ident is not None:  # (started)
                client.join(10)
        watch.stop()
    assert sorted(answers) == [(200, "b"), (200, "held")]
