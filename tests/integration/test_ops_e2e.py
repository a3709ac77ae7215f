"""End to end: the real daemon on a real etcd, wired with `Ops` exactly as `confsync watch` will
be: sd_notify to a real datagram socket, /metrics and /ready over HTTP, an exec-mode child that
logs the signals it gets, and confsync's exit status taken from the child.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import etcd_client
from tests.support.etcd_server import EtcdMember, free_port

pytestmark = pytest.mark.etcd
REPO = Path(__file__).resolve().parents[2]

# What cli.py's `watch` branch does once wired (see confsync/ops.py).
DRIVER = textwrap.dedent("""
    import sys
    from confsync.daemon import run_daemon
    from confsync.logs import setup_logging
    from confsync.ops.wiring import Ops
    from confsync.settings import load_settings
    settings = load_settings({})
    setup_logging(settings.log_level, settings.log_format)
    with Ops.from_settings(settings) as ops:
        sys.exit(ops.exit_code(run_daemon(settings, {}, ops.observers)))
""")

CHILD = textwrap.dedent("""
    import os, signal, sys, time
    log = open(sys.argv[1], "a", buffering=1)
    log.write(f"pid {os.getpid()}\\n")
    if len(sys.argv) > 2:
        log.write("crash\\n"); sys.exit(int(sys.argv[2]))
    def on(sig, frame):
        log.write(f"signal {signal.Signals(sig).name}\\n")
        if sig == signal.SIGTERM:
            sys.exit(7)
    for s in (signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM):
        signal.signal(s, on)
    log.write("ready\\n")
    while True:
        time.sleep(0.05)
""")


def kill_children(child_log: Path) -> None:
    """The child has its own process group: if a test kills confsync, kill the child too."""
    for line in text(child_log).splitlines():
        if line.startswith("pid "):
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(line.split()[1]), signal.SIGKILL)


def wait_for(predicate: object, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def text(path: Path) -> str:
    return path.read_text() if path.exists() else ""


def http(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=3) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


class Notify:
    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.seen: list[str] = []

    def wait(self, field: str, timeout: float = 10.0) -> str:
        """The next message (after those already matched) containing `field`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                message = self.sock.recv(4096).decode()
            except TimeoutError:
                break
            self.seen.append(message)
            if field in message.split("\n"):
                return message
        raise AssertionError(f"no {field} in {self.seen}")


@pytest.fixture
def setup(etcd: EtcdMember, tmp_path: Path) -> Iterator[tuple[dict[str, str], Path, str]]:
    prefix = f"/ops-{uuid.uuid4().hex[:8]}"
    etcd_client.client(etcd.endpoint).put(prefix + "/port", "8080")
    confdir = tmp_path / "conf"
    (confdir / "conf.d").mkdir(parents=True)
    (confdir / "templates").mkdir()
    (confdir / "templates" / "svc.tmpl").write_text("port {{ getv('/port') }}\n")
    (confdir / "conf.d" / "svc.toml").write_text(
        f'[template]\nsrc = "svc.tmpl"\ndest = "{tmp_path / "svc.conf"}"\nkeys = ["/port"]\n')
    (tmp_path / "child.py").write_text(CHILD)
    (tmp_path / "driver.py").write_text(DRIVER)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CONFSYNC_", "NOTIFY_"))}
    env.update({
        "PYTHONPATH": str(REPO), "CONFSYNC_CONFDIR": str(confdir),
        "CONFSYNC_ETCD_ENDPOINTS": etcd.endpoint, "CONFSYNC_PREFIX": prefix,
        "CONFSYNC_WATCH_WAIT_MIN": "20ms", "CONFSYNC_WATCH_WAIT_MAX": "200ms",
        "CONFSYNC_METRICS_ADDRESS": f"127.0.0.1:{free_port()}",
        "CONFSYNC_EXEC_COMMAND": f"{sys.executable} {tmp_path / 'child.py'} "
                                 f"{tmp_path / 'child.log'}",
        "NOTIFY_SOCKET": str(tmp_path / "notify.sock"), "WATCHDOG_USEC": "1000000",
    })
    yield env, tmp_path, prefix


def start(env: dict[str, str], tmp_path: Path) -> subprocess.Popen[bytes]:
    log = (tmp_path / "confsync.log").open("ab")
    return subprocess.Popen([sys.executable, str(tmp_path / "driver.py")], env=env,
                            stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)


def test_watch_with_notify_metrics_and_exec_child(
        etcd: EtcdMember, setup: tuple[dict[str, str], Path, str]) -> None:
    env, tmp, prefix = setup
    notify = Notify(tmp / "notify.sock")
    base = f"http://{env['CONFSYNC_METRICS_ADDRESS']}"
    child_log = tmp / "child.log"
    proc = start(env, tmp)
    try:
        ready = notify.wait("READY=1")
        assert "STATUS=watching; revision" in ready
        assert text(tmp / "svc.conf") == "port 8080\n"
        wait_for(lambda: "ready" in text(child_log), "the child to start")
        assert "NOTIFY_SOCKET" not in text(child_log)
        notify.wait("WATCHDOG=1", timeout=3)
        wait_for(lambda: http(base + "/ready")[0] == 200, "/ready")
        assert http(base + "/health")[0] == 200

        etcd_client.client(etcd.endpoint).put(prefix + "/port", "9090")
        wait_for(lambda: "signal SIGHUP" in text(child_log), "the child's reload signal")
        assert text(tmp / "svc.conf") == "port 9090\n"
        _, body = http(base + "/metrics")
        assert 'confsync_applies_total{outcome="updated",resource="svc"} 2.0' in body
        assert "confsync_watch_connected 1.0" in body

        proc.send_signal(signal.SIGUSR1)
        wait_for(lambda: "signal SIGUSR1" in text(child_log), "SIGUSR1 forwarded")

        proc.send_signal(signal.SIGHUP)
        reloading = notify.wait("RELOADING=1")
        assert any(f.startswith("MONOTONIC_USEC=") for f in reloading.split("\n"))
        notify.wait("READY=1")

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 7, "confsync exits with the child's status"
        notify.wait("STOPPING=1", timeout=2)
        assert text(child_log).splitlines()[-1] == "signal SIGTERM"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
            kill_children(child_log)
        notify.sock.close()
    log = text(tmp / "confsync.log")
    assert "Traceback" not in log, log


def test_crash_looping_child_stops_confsync(setup: tuple[dict[str, str], Path, str]) -> None:
    env, tmp, _ = setup
    env = {**env, "CONFSYNC_EXEC_COMMAND": f"{env['CONFSYNC_EXEC_COMMAND']} 4",
           "CONFSYNC_EXEC_RESTART_DELAY": "50ms", "CONFSYNC_EXEC_CRASH_LIMIT": "3"}
    del env["NOTIFY_SOCKET"]
    start_time = time.monotonic()
    proc = start(env, tmp)
    try:
        assert proc.wait(timeout=30) == 4, text(tmp / "confsync.log")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
            kill_children(tmp / "child.log")
    assert text(tmp / "child.log").count("crash") == 3
    assert "crash loop" in text(tmp / "confsync.log")
    assert time.monotonic() - start_time < 15
