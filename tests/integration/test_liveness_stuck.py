"""Threads alive but stuck: a call that can block for good must not freeze what the daemons
converge, nor leave /health and /ready saying what is no longer true (real `confsync watch` and
`confsync register` against a real etcd)."""

from __future__ import annotations

import contextlib
import socket
import time
from pathlib import Path

import pytest

from tests.support.etcd_server import EtcdMember
from tests.support.http_backends import HTTPBackend
from tests.support.register import RegisterProcess, write_registration

pytestmark = [pytest.mark.etcd]


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
