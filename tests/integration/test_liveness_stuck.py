"""Threads alive but stuck: a call that can block for good must not freeze what the daemons
converge, nor leave /health and /ready saying what is no longer true (real `confsync watch` and
`confsync register` against a real etcd)."""

from __future__ import annotations

import contextlib
import functools
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.cli import write_resource
from tests.support.daemon import WatchProcess, read, reads, wait_for
from tests.support.etcd_client import client
from tests.support.etcd_server import EtcdMember, free_port
from tests.support.http_backends import HTTPBackend
from tests.support.http_probe import probe
from tests.support.register import RegisterProcess, published, write_registration
from tests.support.tcp_proxy import TcpProxy

pytestmark = [pytest.mark.etcd]


@pytest.fixture
def unread_notify_socket(tmp_path: Path) -> Iterator[Path]:
    """A NOTIFY_SOCKET whose reader has stopped reading (PID 1 busy in a long daemon-reload, a
    container runtime's notify proxy that hangs), its queue full already (it holds
    net.unix.max_dgram_qlen datagrams: 10 by default in the kernel, 512 where systemd sets it)."""
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as reader, \
            socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as other:
        reader.bind(str(path))
        for _ in range(100_000):
            try:
                other.sendto(b"STATUS=another sender", socket.MSG_DONTWAIT, str(path))
            except BlockingIOError:
                break
        else:
            pytest.fail("the notify socket never filled")
        yield path


def test_a_notify_socket_nobody_reads_never_stops_the_watch(
        etcd: EtcdMember, prefix: str, tmp_path: Path, unread_notify_socket: Path) -> None:
    """sd_notify is best effort. Before, each datagram was a blocking sendto: with the
    socket's queue full, the loop blocked in it (here at its first STATUS=, before the first
    render) for as long as nobody read: no change reached the files, and /health went 503 (a
    liveness probe restarted confsync, which blocked again)."""
    c = client(etcd.endpoint)
    c.put(prefix + "/k/v", "0")
    dest = tmp_path / "out.conf"
    write_resource(tmp_path / "cd", "app", "v={{ getv('/k/v') }}\n",
                   f'dest = "{dest}"\nkeys = ["/k"]\n')
    port = free_port()
    w = WatchProcess("--confdir", str(tmp_path / "cd"), "--endpoints", etcd.endpoint,
                     "--prefix", prefix, "--wait-min", "0", "--metrics-address",
                     f"127.0.0.1:{port}", log=tmp_path / "watch.log",
                     env={"NOTIFY_SOCKET": str(unread_notify_socket),
                          "WATCHDOG_USEC": "200000"})
    try:
        wait_for(lambda: read(dest) == "v=0\n", 30, what="first render")
        for value in range(1, 4):
            c.put(prefix + "/k/v", str(value))
            wait_for(functools.partial(reads, dest, f"v={value}\n"), 20,
                     what=f"v={value} rendered\n{w.output()[-2000:]}")
        assert probe(f"http://127.0.0.1:{port}", "/health")[0] == 200
        assert probe(f"http://127.0.0.1:{port}", "/ready")[0] == 200
    finally:
        w.stop()


def _web_registration(tmp_path: Path, port: int) -> None:
    write_registration(tmp_path / "conf", "web",
                       f'service = "web"\nport = {port}\nid = "web-1"\nttl = "3s"\n'
                       'address = "127.0.0.1"\ndrain = "0s"\n[[check]]\ntype = "tcp"\n'
                       'interval = "200ms"\ntimeout = "200ms"\nrise = 1\nfall = 1\n')


def test_register_pings_systemds_watchdog(etcd: EtcdMember, prefix: str,
                                          tmp_path: Path) -> None:
    """WATCHDOG_USEC was read after Notifier.from_environ() had unset it: `register` never sent
    WATCHDOG=1, and systemd killed it every WatchdogSec (30 s in the shipped unit)."""
    path = tmp_path / "notify.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(path))
    listener.settimeout(0.2)
    backend = HTTPBackend("web").start()
    _web_registration(tmp_path, backend.port)
    proc = RegisterProcess(tmp_path / "conf", etcd.endpoint, "--prefix", prefix,
                           log=tmp_path / "register.log",
                           env={"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "1000000"})
    messages: list[str] = []
    try:
        deadline = time.monotonic() + 20
        while messages.count("WATCHDOG=1") < 3 and time.monotonic() < deadline:
            with contextlib.suppress(TimeoutError):
                messages.extend(listener.recv(4096).decode().split("\n"))
        assert "READY=1" in messages
        assert messages.count("WATCHDOG=1") >= 3, f"{messages}\n{proc.output()[-2000:]}"
    finally:
        proc.stop()
        backend.stop()
        listener.close()


def test_a_notify_socket_nobody_reads_never_stops_the_registrar(
        etcd: EtcdMember, prefix: str, tmp_path: Path, unread_notify_socket: Path) -> None:
    """The same for `confsync register`: its loop blocked in the sendto (here at READY=1,
    before it registered anything; later, a service that went down stayed registered "ready",
    its lease renewed by the etcd thread meanwhile)."""
    backend = HTTPBackend("web").start()
    _web_registration(tmp_path, backend.port)
    port = free_port()
    proc = RegisterProcess(tmp_path / "conf", etcd.endpoint, "--prefix", prefix,
                           "--metrics-address", f"127.0.0.1:{port}",
                           log=tmp_path / "register.log",
                           env={"NOTIFY_SOCKET": str(unread_notify_socket),
                                "WATCHDOG_USEC": "200000"})
    key = f"{prefix}/services/web/instances/web-1"
    c = client(etcd.endpoint)
    backend_up = True
    try:
        wait_for(lambda: (published(c, key) or {}).get("state") == "ready", 30,
                 what=f"registered\n{proc.output()[-2000:]}")
        backend.stop()
        backend_up = False
        wait_for(lambda: published(c, key) is None, 20,
                 what=f"the key gone with the service\n{proc.output()[-2000:]}")
        assert probe(f"http://127.0.0.1:{port}", "/health")[0] == 200
    finally:
        proc.stop()
        if backend_up:
            backend.stop()


# ---- half-open connections to etcd (found bounded: guards, they passed before)


@pytest.fixture
def proxy(etcd: EtcdMember) -> Iterator[TcpProxy]:
    p = TcpProxy(etcd.client_port)
    yield p
    p.close()


def test_a_watch_whose_connection_goes_silent_reconnects_and_converges(
        etcd: EtcdMember, proxy: TcpProxy, prefix: str, tmp_path: Path) -> None:
    """The connection to etcd stops carrying anything, without a FIN or a RST (a NAT entry
    lost, a route gone), while etcd serves new connections: the gRPC keepalive (10 s + 5 s)
    and the position check's deadline end the stream, and the watch resumes on a new one."""
    c = client(etcd.endpoint)
    c.put(prefix + "/k/v", "1")
    dest = tmp_path / "out.conf"
    write_resource(tmp_path / "cd", "app", "v={{ getv('/k/v') }}\n",
                   f'dest = "{dest}"\nkeys = ["/k"]\n')
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    w = WatchProcess("--confdir", str(tmp_path / "cd"), "--endpoints", proxy.endpoint,
                     "--prefix", prefix, "--wait-min", "0", "--metrics-address",
                     f"127.0.0.1:{port}", log=tmp_path / "watch.log")
    try:
        wait_for(lambda: probe(base, "/ready")[0] == 200, 30, what="ready")
        proxy.stall(new_connections=False)
        c.put(prefix + "/k/v", "2")
        wait_for(lambda: read(dest) == "v=2\n", 45, interval=0.5,
                 what=f"v=2 over a new connection\n{w.output()[-2000:]}")
        wait_for(lambda: probe(base, "/ready")[0] == 200, 10, what="ready again")
        assert probe(base, "/health")[0] == 200
    finally:
        w.stop()


def test_a_registrar_whose_connection_goes_silent_reconnects_and_converges(
        etcd: EtcdMember, proxy: TcpProxy, prefix: str, tmp_path: Path) -> None:
    """The same for `register`: every call has a deadline (ttl/3 at most), the next client
    moves on, and a registration whose service went down meanwhile is deleted."""
    backend = HTTPBackend("web").start()
    _web_registration(tmp_path, backend.port)
    port = free_port()
    proc = RegisterProcess(tmp_path / "conf", proxy.endpoint, "--prefix", prefix,
                           "--metrics-address", f"127.0.0.1:{port}",
                           log=tmp_path / "register.log")
    key = f"{prefix}/services/web/instances/web-1"
    c = client(etcd.endpoint)
    backend_up = True
    try:
        wait_for(lambda: (published(c, key) or {}).get("state") == "ready", 30,
                 what=f"registered\n{proc.output()[-2000:]}")
        proxy.stall(new_connections=False)
        backend.stop()
        backend_up = False
        wait_for(lambda: published(c, key) is None, 30, interval=0.2,
                 what=f"the key gone with the service\n{proc.output()[-2000:]}")
        assert probe(f"http://127.0.0.1:{port}", "/health")[0] == 200
    finally:
        proc.stop()
        if backend_up:
            backend.stop()


def test_a_stderr_nobody_reads_never_stops_the_watch(
        etcd: EtcdMember, prefix: str, tmp_path: Path) -> None:
    """journald restarting or wedged, or a container log driver behind a full disk: stderr's
    pipe fills (64 KiB) and a write to it blocks. Every thread that logged blocked with it
    before: here the loop, at its few hundredth render, and the file stopped following etcd."""
    import os
    import subprocess
    import sys

    from tests.support.cli import REPO

    dest = tmp_path / "out"
    write_resource(tmp_path / "cd", "r", "{{ getv('/k/v') }}\n",
                   f'dest = "{dest}"\nkeys = ["/k"]')
    c = client(etcd.endpoint)
    c.put(prefix + "/k/v", "first")
    reader, writer = os.pipe()  # the reader is never read: a stalled journald
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONFSYNC_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "confsync", "watch", "--confdir", str(tmp_path / "cd"),
         "--endpoints", etcd.endpoint, "--prefix", prefix, "--wait-min", "0",
         "--log-level", "debug"], stdout=writer, stderr=writer, env=env, cwd=REPO)
    os.close(writer)
    try:
        wait_for(lambda: read(dest) == "first\n", 20, what="first render")
        # Several lines per change: far more than the pipe holds.
        for i in range(1500):
            c.put(prefix + "/k/v", f"value-{i:04d}-" + "x" * 40)
        c.put(prefix + "/k/v", "last")
        wait_for(lambda: read(dest) == "last\n" or proc.poll() is not None, 60,
                 what=f"the last value rendered (dest: {read(dest)[:60]!r})")
        assert proc.poll() is None
    finally:
        proc.terminate()
        # Reading lets a blocked process run to its exit; what it wrote is not checked.
        os.set_blocking(reader, False)
        deadline = time.monotonic() + 20
        while proc.poll() is None and time.monotonic() < deadline:
            with contextlib.suppress(BlockingIOError):
                os.read(reader, 1 << 16)
            time.sleep(0.01)
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        os.close(reader)
