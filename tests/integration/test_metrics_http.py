"""A real HTTP scrape of /metrics, /health and /ready on a loopback port."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from confsync.ops.http import MetricsServer
from confsync.ops.metrics import Metrics, start_metrics
from confsync.outcome import UPDATED, Outcome
from confsync.resources import Resource
from confsync.targets import ReloadKind, ReloadResult


class Clock:
    now = 50.0

    def __call__(self) -> float:
        return self.now


def get(url: str, accept: str = "") -> tuple[int, str, str]:
    request = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read().decode()


@pytest.fixture
def served() -> Iterator[tuple[Metrics, MetricsServer, Clock, str]]:
    clock = Clock()
    metrics = Metrics(clock=clock)
    server = MetricsServer(metrics, "127.0.0.1:0", health_max_age=5.0).start()
    yield metrics, server, clock, f"http://127.0.0.1:{server.port}"
    server.close()


def test_scrape_health_ready(served: tuple[Metrics, MetricsServer, Clock, str]) -> None:
    metrics, _, clock, base = served
    web = Resource(name="web", source=Path("/x/web.toml"), src=Path("/x/t"),
                   dest=Path("/x/web.cfg"), keys=("/a",), prefix="", reload_cmd=("true",))
    metrics.started([web])
    status, _, body = get(base + "/ready")
    assert status == 503 and "first render not finished" in json.loads(body)["reasons"]

    metrics.watch_connected(1)
    metrics.batch_applied(9, ["/a/x"], [Outcome(web, UPDATED, seconds=0.2,
                                                    reload=ReloadResult(ReloadKind.COMMAND))])
    metrics.ready(9)
    metrics.heartbeat()

    status, ctype, body = get(base + "/metrics")
    assert status == 200 and ctype.startswith("text/plain")
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(body) for s in family.samples}
    assert samples[("confsync_applies_total",
                    (("outcome", "updated"), ("resource", "web")))] == 1
    assert samples[("confsync_reloads_total", (("outcome", "ok"), ("resource", "web")))] == 1
    assert samples[("confsync_apply_duration_seconds_bucket",
                    (("le", "0.25"), ("resource", "web")))] == 1
    assert samples[("confsync_applied_revision", ())] == 9
    assert ("confsync_resource_last_success_timestamp_seconds", (("resource", "web"),)) in samples

    status, ctype, _ = get(base + "/metrics", accept="application/openmetrics-text")
    assert status == 200 and ctype.startswith("application/openmetrics-text")

    status, ctype, body = get(base + "/ready")
    assert (status, ctype) == (200, "application/json") and json.loads(body)["revision"] == 9
    assert get(base + "/health")[0] == 200

    metrics.watch_lost("etcd down")
    assert get(base + "/ready")[0] == 503
    clock.now += 6  # no heartbeat for longer than health_max_age: the loop is stuck
    status, _, body = get(base + "/health")
    assert status == 503 and json.loads(body)["ok"] is False
    assert get(base + "/nope")[0] == 404


def test_start_metrics_binds_loopback_and_closes() -> None:
    _, server = start_metrics("127.0.0.1:0")
    try:
        assert server._server.server_address[0] == "127.0.0.1"
        assert get(f"http://127.0.0.1:{server.port}/health")[0] == 200
    finally:
        server.close()
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"http://127.0.0.1:{server.port}/health", timeout=2)


def test_ipv6_loopback() -> None:
    try:
        server = MetricsServer(Metrics(), "[::1]:0").start()
    except OSError:
        pytest.skip("no IPv6 loopback here")
    try:
        assert get(f"http://[::1]:{server.port}/metrics")[0] == 200
    finally:
        server.close()


def test_observers_compose_as_the_daemon_will_wire_them(tmp_path: Path) -> None:
    """Fan-out to sd_notify, metrics, the audit log and an exec child, in the recommended order
    (child first so READY=1 follows its start), on real sockets and a real process."""
    import socket
    import sys

    from confsync.ops.events import Observers
    from confsync.ops.sdnotify import SystemdNotify
    from confsync.ops.supervisor import ExecPolicy, Supervisor

    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify"))
    notify.settimeout(2)
    env = {"NOTIFY_SOCKET": str(tmp_path / "notify"), "WATCHDOG_USEC": "1000000"}
    sd = SystemdNotify.from_environ(env)
    assert sd is not None
    marker = tmp_path / "child-started"
    child = Supervisor(ExecPolicy(argv=(sys.executable, "-c",
                                        f"import pathlib, time; pathlib.Path({str(marker)!r})"
                                        ".touch(); time.sleep(30)")))
    metrics, server = start_metrics("127.0.0.1:0")
    web = Resource(name="web", source=Path("/x/web.toml"), src=Path("/x/t"),
                   dest=Path("/x/web.cfg"), keys=("/a",), prefix="")
    fan = Observers([child, sd, metrics])
    try:
        fan.started([web])
        fan.snapshot_loaded(5, 1)
        fan.batch_applied(5, ["/a/x"], [Outcome(web, UPDATED)])
        fan.ready(5)
        fan.watch_connected(6)
        fan.heartbeat()
        assert child.running
        received = [notify.recv(1000).decode() for _ in range(4)]
        assert received[0] == "STATUS=starting; revision 0"
        assert received[2].startswith("READY=1\nSTATUS=watching; revision 5")
        assert received[3] == "WATCHDOG=1"
        deadline = time.monotonic() + 5
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert marker.exists(), "the child ran"
        assert get(f"http://127.0.0.1:{server.port}/ready")[0] == 200
        fan.stopping()
        assert notify.recv(1000).decode().startswith("STOPPING=1")
        assert child.stop(timeout=5) == 128 + 15
    finally:
        server.close()
        notify.close()
        child.stop(timeout=1)


def test_a_silent_connection_is_closed_not_kept_forever(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Connections that send nothing must not pile up threads and descriptors for months."""
    import socket

    from confsync.ops import http as http_module

    default = http_module._QuietHandler.timeout
    assert default is not None and 0 < default <= 60, "connections get a read timeout"
    monkeypatch.setattr(http_module._QuietHandler, "timeout", 0.3)  # the same, faster
    server = MetricsServer(Metrics(), "127.0.0.1:0").start()
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as silent:
            started = time.monotonic()
            assert silent.recv(1) == b"", "the server closes it"
            assert time.monotonic() - started < 3
        status, _, _ = get(f"http://127.0.0.1:{server.port}/health")
        assert status == 200
    finally:
        server.close()


def test_a_trickling_request_is_cut_off_and_leaves_no_traceback(
        monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]) -> None:
    """The timeout is for the whole request, not for each read: a client that sends a byte
    now and then (a slowloris, a broken proxy) must not hold a thread for the daemon's life,
    and a client cut off must not print a traceback on stderr (around the log format)."""
    import socket
    import threading

    from confsync.ops import http as http_module

    monkeypatch.setattr(http_module._QuietHandler, "timeout", 1.0)
    server = MetricsServer(Metrics(), "127.0.0.1:0").start()
    before = threading.active_count()
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as slow:
            started = time.monotonic()
            closed = False
            while time.monotonic() - started < 4 and not closed:
                try:
                    slow.sendall(b"G")  # a byte every 0.3 s: each read well within 1 s
                except OSError:
                    closed = True
                    break
                time.sleep(0.3)
                slow.setblocking(False)
                try:
                    closed = slow.recv(1) == b""
                except BlockingIOError:
                    pass
                except OSError:
                    closed = True
                slow.setblocking(True)
            assert closed, "a request still arriving after its deadline is cut off"
            assert time.monotonic() - started < 3
        deadline = time.monotonic() + 3
        while threading.active_count() > before and time.monotonic() < deadline:
            time.sleep(0.05)
        assert threading.active_count() <= before, "its thread is gone"
        assert get(f"http://127.0.0.1:{server.port}/health")[0] == 200
    finally:
        server.close()
    assert "Traceback" not in capfd.readouterr().err
