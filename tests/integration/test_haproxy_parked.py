"""Servers removed while they hold connections (parked in maintenance) under the runtime
strategy: counted in a gauge, deleted as soon as their connections close (no further pool
change needed), and one held past `hard-stop-after` (a stuck websocket) said once. A restarted
`watch` finishes the servers its predecessor recorded as parked in the same HAProxy worker,
and only those (parked_record.py)."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.support.cli import write_resource
from tests.support.daemon import WatchProcess, read
from tests.support.disk import freeze, loop_ext4, thaw
from tests.support.etcd_server import EtcdMember, free_port
from tests.support.haproxy import HAProxyStack, wait_for
from tests.support.http_backends import HTTPBackend
from tests.support.http_probe import probe, ready, series_value

pytestmark = [pytest.mark.etcd, pytest.mark.haproxy]

GAUGE = 'confsync_haproxy_parked_servers{resource="haproxy"}'
WARNING = "left the pool"


class _Holding(ThreadingHTTPServer):
    """Answers at once, except /ws: held until `release` is set, then answered and its
    connection closed."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _HoldHandler)
        self.release = threading.Event()
        self.held = threading.Event()
        self.holding = 0  # requests held so far
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def handle_error(self, request: object, client_address: object) -> None:
        pass


class _HoldHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Holding

    def do_GET(self) -> None:
        if self.path == "/ws":
            self.server.holding += 1  # (a += by one request thread at a time: the tests
            self.server.held.set()  # send the next once this one is held)
            self.server.release.wait(60)
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def holding() -> Iterator[_Holding]:
    server = _Holding()
    yield server
    server.release.set()
    server.shutdown()
    server.server_close()


@pytest.fixture
def stack(haproxy_binary: str, etcd: EtcdMember) -> Iterator[HAProxyStack]:
    s = HAProxyStack(haproxy_binary, etcd.endpoint, strategy="runtime")
    yield s
    s.stop()


def _gauge(port: int) -> float | None:
    return series_value(port, GAUGE)


def _servers(stack: HAProxyStack) -> set[str]:
    lines = stack.admin_command("show servers state be_web").splitlines()
    return {line.split()[3] for line in lines[1:] if line and not line.startswith("#")}


@contextlib.contextmanager
def _stuck_parked(stack: HAProxyStack, backends: dict[str, HTTPBackend], holding: _Holding,
                  tmp_path: Path, **global_settings: object) -> Iterator[tuple[WatchProcess, int]]:
    """A watch over a pool whose only server, `stuck`, holds a request (a websocket that never
    ends, as far as these tests are concerned) when it leaves the pool for `a`: parked.
    Yields the watch and its metrics port; the watch must stop cleanly after."""
    stack.put_basics(balance="roundrobin")
    stack.put("/haproxy/global", {"admin_socket": str(stack.admin), "maxconn": 200,
                                  "state_file": str(stack.state), **global_settings})
    stack.put_instance("web", "stuck", holding.server_address[1])
    stack.sync_ok()
    stack.start()
    metrics = free_port()
    watch = WatchProcess(*stack.cli_args(), "--wait-min", "20ms", "--wait-max", "500ms",
                         "--metrics-address", f"127.0.0.1:{metrics}", log=tmp_path / "w.log")
    client = None
    try:
        wait_for(lambda: ready(metrics)[0] == 200, timeout=15)
        wait_for(lambda: _gauge(metrics) == 0, timeout=5)
        client = socket.create_connection(("127.0.0.1", stack.port), timeout=5)
        client.sendall(b"GET /ws HTTP/1.1\r\nHost: x\r\n\r\n")
        assert holding.held.wait(10)
        stack.put_instance("web", "a", backends["a"].port)
        stack.delete("/services/web/instances/stuck")
        wait_for(lambda: _servers(stack) == {"a", "stuck"} and _gauge(metrics) == 1,
                 timeout=15)
        yield watch, metrics
    finally:
        if client is not None:
            client.close()
        assert watch.stop() == 0


def test_a_parked_server_is_reported_and_deleted_once_its_connection_closes(
        stack: HAProxyStack, backends: dict[str, HTTPBackend], holding: _Holding,
        tmp_path: Path) -> None:
    parked = _stuck_parked(stack, backends, holding, tmp_path, hard_stop_after="2s")
    with parked as (watch, metrics):
        # Held past hard-stop-after: said once, with the command that ends it.
        watch.wait_log(WARNING, timeout=15)
        assert "shutdown sessions server be_web/stuck" in watch.output()
        # The connection ends; with no further change in etcd the server goes.
        holding.release.set()
        wait_for(lambda: _servers(stack) == {"a"} and _gauge(metrics) == 0, timeout=15)
        assert watch.output().count(WARNING) == 1
        assert stack.status().reloads == 0


def test_a_parked_name_is_forgotten_when_someone_else_reloads_haproxy(
        stack: HAProxyStack, backends: dict[str, HTTPBackend], holding: _Holding,
        tmp_path: Path) -> None:
    """A reload drops the parked servers with the worker that held them: a server of the same
    name in the new worker is someone else's (a runtime `add server` comes in maintenance,
    which `del server` accepts), never deleted by the heartbeat's sweep."""
    with _stuck_parked(stack, backends, holding, tmp_path) as (_watch, metrics):
        # `systemctl reload haproxy` (same master), then someone else's server of that name.
        stack.reload_by_signal()
        stack.admin_command(f"add server be_web/stuck 127.0.0.1:{backends['b'].port}")
        assert _servers(stack) == {"a", "stuck"}
        wait_for(lambda: _gauge(metrics) == 0, timeout=15)
        # A later pass too leaves it alone (in maintenance: not one of ours).
        stack.put_instance("web", "b", backends["b"].port)
        wait_for(lambda: "b" in _servers(stack), timeout=15)
        assert _servers(stack) == {"a", "b", "stuck"}


RECORD = ".haproxy.cfg.confsync-parked"


def _watch_again(stack: HAProxyStack, tmp_path: Path) -> tuple[WatchProcess, int]:
    """A second `watch` on the stack (after the first stopped), ready; with its metrics port."""
    metrics = free_port()
    again = WatchProcess(*stack.cli_args(), "--wait-min", "20ms", "--wait-max", "500ms",
                         "--metrics-address", f"127.0.0.1:{metrics}", log=tmp_path / "w2.log")
    try:
        wait_for(lambda: ready(metrics)[0] == 200, timeout=15)
    except BaseException:
        again.stop()
        raise
    return again, metrics


def _admin_state(stack: HAProxyStack, server: str) -> int:
    for line in stack.admin_command("show servers state be_web").splitlines()[1:]:
        fields = line.split()
        if len(fields) > 6 and fields[3] == server:
            return int(fields[6])
    raise AssertionError(f"be_web/{server} is not in HAProxy")


@pytest.mark.parametrize("changed", [False, True], ids=["quiet", "pool-changed-meanwhile"])
def test_a_restarted_watch_deletes_the_server_its_predecessor_parked(
        stack: HAProxyStack, backends: dict[str, HTTPBackend], holding: _Holding,
        tmp_path: Path, changed: bool) -> None:
    """`confsync watch` restarted (an upgrade, a crash) while HAProxy runs on: the server the
    first run parked, its connection still open, is counted by the second and deleted once the
    connection closes. Forgotten, it stayed in HAProxy until its next reload. Taken over at the
    start's comparison (quiet), or at the first runtime pass (the pool changed meanwhile)."""
    with _stuck_parked(stack, backends, holding, tmp_path) as (watch, _metrics):
        assert watch.stop() == 0
        assert (stack.base / RECORD).exists()
        if changed:
            stack.put_instance("web", "b", backends["b"].port)
        again, metrics = _watch_again(stack, tmp_path)
        try:
            pool = {"a", "b"} if changed else {"a"}
            wait_for(lambda: _servers(stack) == pool | {"stuck"} and _gauge(metrics) == 1,
                     timeout=10)
            holding.release.set()
            wait_for(lambda: _servers(stack) == pool and _gauge(metrics) == 0, timeout=15)
            wait_for(lambda: not (stack.base / RECORD).exists(), timeout=5)
            assert stack.status().reloads == 0
        finally:
            assert again.stop() == 0


def test_an_operators_server_in_maintenance_is_never_taken_for_a_parked_one(
        stack: HAProxyStack, backends: dict[str, HTTPBackend], holding: _Holding,
        tmp_path: Path) -> None:
    """Beside the server confsync parked, an operator's server added at runtime holds a
    connection in maintenance too: HAProxy shows the two alike. The restarted watch deletes
    its own once its connection closes, and never the operator's."""
    with _stuck_parked(stack, backends, holding, tmp_path) as (watch, _metrics):
        port = holding.server_address[1]
        stack.admin_command(f"add server be_web/op 127.0.0.1:{port}")
        stack.admin_command("set server be_web/op state ready")
        stack.admin_command("set server be_web/a state drain")  # (its requests go to `op`)
        with socket.create_connection(("127.0.0.1", stack.port), timeout=5) as client:
            client.sendall(b"GET /ws HTTP/1.1\r\nHost: x\r\n\r\n")
            wait_for(lambda: holding.holding == 2, timeout=10)
            stack.admin_command("set server be_web/op state maint")
            stack.admin_command("set server be_web/a state ready")
            assert watch.stop() == 0
            again, metrics = _watch_again(stack, tmp_path)
            try:
                wait_for(lambda: _gauge(metrics) == 1, timeout=10)
                assert _servers(stack) == {"a", "stuck", "op"}
                holding.release.set()  # (both connections end)
                wait_for(lambda: _servers(stack) == {"a", "op"} and _gauge(metrics) == 0,
                         timeout=15)
                # A later pass leaves it alone too.
                stack.put_instance("web", "b", backends["b"].port)
                wait_for(lambda: "b" in _servers(stack), timeout=15)
                assert _servers(stack) == {"a", "b", "op"}
                assert _admin_state(stack, "op") & 1  # (still in the operator's maintenance)
                assert stack.status().reloads == 0
            finally:
                assert again.stop() == 0


def test_a_record_of_a_worker_a_reload_replaced_is_ignored(
        stack: HAProxyStack, backends: dict[str, HTTPBackend], holding: _Holding,
        tmp_path: Path) -> None:
    """HAProxy reloaded between the two runs (`systemctl reload`: same master, new worker):
    the server recorded is gone with the old worker, and the one of the same name someone
    adds to the new worker at runtime (in maintenance, which `del server` accepts) is not
    confsync's. The record is ignored with one line, and removed."""
    with _stuck_parked(stack, backends, holding, tmp_path) as (watch, _metrics):
        assert watch.stop() == 0
        assert (stack.base / RECORD).exists()
        stack.reload_by_signal()
        stack.admin_command(f"add server be_web/stuck 127.0.0.1:{backends['b'].port}")
        again, metrics = _watch_again(stack, tmp_path)
        try:
            # (the pass removes what it takes for parked: judged by then, at the start)
            stack.put_instance("web", "b", backends["b"].port)
            wait_for(lambda: "b" in _servers(stack), timeout=15)
            assert _servers(stack) == {"a", "b", "stuck"} and _gauge(metrics) == 0
            assert again.output().count(RECORD) == 1
            assert "ignored: HAProxy was reloaded or restarted since" in again.output()
            wait_for(lambda: not (stack.base / RECORD).exists(), timeout=5)
            assert stack.status().reloads == 1  # (ours: none)
        finally:
            assert again.stop() == 0


def test_a_recorded_server_etcd_wants_back_is_served_again(
        stack: HAProxyStack, backends: dict[str, HTTPBackend], holding: _Holding,
        tmp_path: Path) -> None:
    """The instance comes back to etcd while confsync is down: the restarted watch takes the
    server out of maintenance (the pass brings HAProxy to the file), not for deletion."""
    with _stuck_parked(stack, backends, holding, tmp_path) as (watch, _metrics):
        assert watch.stop() == 0
        stack.put_instance("web", "stuck", holding.server_address[1])
        again, metrics = _watch_again(stack, tmp_path)
        try:
            wait_for(lambda: _admin_state(stack, "stuck") & 1 == 0, timeout=10)
            holding.release.set()
            stack.put_instance("web", "b", backends["b"].port)
            wait_for(lambda: "b" in _servers(stack), timeout=15)
            assert _servers(stack) == {"a", "b", "stuck"} and _gauge(metrics) == 0
            assert _admin_state(stack, "stuck") & 1 == 0
            assert stack.status().reloads == 0
        finally:
            assert again.stop() == 0


def test_a_record_the_disk_holds_up_holds_up_nothing_else(
        stack: HAProxyStack, backends: dict[str, HTTPBackend], holding: _Holding,
        tmp_path: Path) -> None:
    """The file (and so the record beside it) on a filesystem frozen (`fsfreeze`: a snapshot)
    when the parked server's connection closes: the heartbeat deletes it, and the record's
    removal waits for the thaw on a thread of its own, while the loop goes on (another
    resource follows etcd, /health 200). Skipped without root."""
    with loop_ext4(tmp_path / "fs") as frozen:
        conf = stack.confdir / "conf.d" / "haproxy.toml"
        conf.write_text(conf.read_text().replace(f'dest = "{stack.cfg}"',
                                                 f'dest = "{frozen / "haproxy.cfg"}"'))
        stack.cfg = frozen / "haproxy.cfg"  # (what HAProxy starts on)
        other = tmp_path / "other.conf"
        write_resource(stack.confdir, "other", "other={{ getv('/o/v') }}\n",
                       f'dest = "{other}"\nkeys = ["/o"]\n')
        stack.put("/o/v", "1")
        with _stuck_parked(stack, backends, holding, tmp_path) as (watch, metrics):
            base = f"http://127.0.0.1:{metrics}"
            wait_for(lambda: (frozen / RECORD).exists(), timeout=5)
            freeze(frozen)
            try:
                holding.release.set()
                wait_for(lambda: _servers(stack) == {"a"} and _gauge(metrics) == 0, timeout=15)
                stack.put("/o/v", "2")
                wait_for(lambda: read(other) == "other=2\n", timeout=10)
                assert probe(base, "/health")[0] == 200
                assert (frozen / RECORD).exists()  # (its removal is blocked: the test holds)
            finally:
                thaw(frozen)
            wait_for(lambda: not (frozen / RECORD).exists(), timeout=10)
            assert watch.output().count("Traceback") == 0
