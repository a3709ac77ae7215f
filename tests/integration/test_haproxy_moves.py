"""Servers moved at runtime (`move_server`) with a real HAProxy: what a move leaves behind when
it ends in a reload, and what it sends traffic to. Each test takes seconds."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from confsync.haproxy.runtime import AdminSocket, live_servers
from tests.support.etcd_server import EtcdMember
from tests.support.haproxy import HAProxyStack, http_get, spread
from tests.support.http_backends import HTTPBackend

pytestmark = [pytest.mark.etcd, pytest.mark.haproxy]


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
