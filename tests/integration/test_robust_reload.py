"""Issue 13, items 2 and 16: whatever the reload step raises is a reload failure of that
resource (file rolled back, daemon alive), and a command's background child never blocks us."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.cli import confsync, write_resource
from tests.support.daemon import WatchProcess, wait_for
from tests.support.etcd_client import client
from tests.support.etcd_server import EtcdMember
from tests.support.haproxy import HAProxyStack

pytestmark = [pytest.mark.etcd, pytest.mark.haproxy]


@contextlib.contextmanager
def hung_socket(path: Path) -> Iterator[None]:
    """A UNIX socket that takes connections (the kernel queues them) and never answers."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    sock.listen(64)
    try:
        yield
    finally:
        sock.close()
        path.unlink(missing_ok=True)


@pytest.fixture
def stack(haproxy_binary: str, etcd: EtcdMember) -> Iterator[HAProxyStack]:
    """The shipped HAProxy template and resource (check with `haproxy -c`, reload through the
    master CLI), its first file written while no HAProxy runs."""
    s = HAProxyStack(haproxy_binary, etcd.endpoint, strategy="reload")
    try:
        s.put_basics()
        s.put_instance("web", "a", 18001)
        s.sync_ok()
        yield s
    finally:
        s.stop()


def _assert_reload_failure_reported(output: str) -> None:
    assert "Traceback" not in output, output
    assert "resource haproxy: reload failed" in output, output
    assert "previous file restored" in output, output


def test_once_with_a_hung_master_socket_fails_the_resource_and_rolls_back(
        stack: HAProxyStack) -> None:
    before = stack.cfg.read_bytes()
    with hung_socket(stack.master):
        stack.put_instance("web", "b", 18002)
        result = stack.sync()
    assert result.returncode == 1, result.stderr
    _assert_reload_failure_reported(result.stderr)
    assert "no answer (process stopped?)" in result.stderr  # naming the socket
    assert stack.cfg.read_bytes() == before
    assert not list(stack.cfg.parent.glob(".haproxy.cfg.*"))


def test_once_with_an_unusable_master_socket_path_fails_the_resource(
        stack: HAProxyStack) -> None:
    too_long = stack.base / ("d" * 120) / "master.sock"  # connect(): AF_UNIX path too long
    toml = stack.confdir / "conf.d" / "haproxy.toml"
    toml.write_text(toml.read_text().replace(str(stack.master), str(too_long)))
    before = stack.cfg.read_bytes()
    stack.put_instance("web", "b", 18002)
    result = stack.sync()
    assert result.returncode == 1, result.stderr
    _assert_reload_failure_reported(result.stderr)
    assert stack.cfg.read_bytes() == before


def test_watch_survives_a_hung_master_socket(stack: HAProxyStack, tmp_path: Path) -> None:
    before = stack.cfg.read_bytes()
    with hung_socket(stack.master):
        daemon = WatchProcess(*stack.cli_args(), "--wait-min", "20ms", "--log-level", "debug",
                              log=tmp_path / "watch.log")  # (the second failure is DEBUG)
        try:
            daemon.wait_log("watching ", timeout=20)
            stack.put_instance("web", "b", 18002)
            daemon.wait_log("resource haproxy: reload failed", timeout=40)
            wait_for(lambda: stack.cfg.read_bytes() == before, timeout=20,
                     what="the previous file restored")
            assert daemon.proc.poll() is None, daemon.output()[-3000:]
            stack.put_instance("web", "c", 18003)  # the loop still applies changes
            daemon.wait_log("resource haproxy: reload failed", timeout=40, count=2)
            assert daemon.proc.poll() is None, daemon.output()[-3000:]
        finally:
            code = daemon.stop(timeout=30)
    assert code == 0, daemon.output()[-3000:]
    # (DEBUG records carry the tracebacks of the reload step's errors, deliberately.)
    records = re.split(r"\n(?=\d{4}-\d\d-\d\d )", daemon.output())
    assert not [r for r in records if "Traceback" in r and " DEBUG " not in r.partition("\n")[0]]
    wait_for(lambda: stack.cfg.read_bytes() == before, timeout=5)


@pytest.fixture
def background_pids(tmp_path: Path) -> Iterator[Path]:
    pids = tmp_path / "bg.pids"
    yield pids
    for line in pids.read_text().split() if pids.exists() else []:
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(line), signal.SIGKILL)


def test_check_and_reload_that_leave_a_background_child_count_as_success(
        etcd: EtcdMember, tmp_path: Path, background_pids: Path) -> None:
    prefix = f"/t-{uuid.uuid4().hex[:8]}"
    client(etcd.endpoint).put(prefix + "/app/port", "8080")
    dest = tmp_path / "app.conf"
    dest.write_text("port 1\n")
    spawn = f"sleep 60 & echo $! >> {background_pids}; echo spawned"
    write_resource(tmp_path, "app", "port {{ getv('/app/port') | port }}\n",
                   f'dest = "{dest}"\nkeys = ["/app"]\ncheck_timeout = "20s"\n'
                   f'reload_timeout = "20s"\n'
                   f'check_cmd = ["sh", "-c", "test -s \\"$0\\" && {{ {spawn}; }}", "{{{{src}}}}"]\n'
                   f'reload_cmd = ["sh", "-c", "{spawn}; exit 0"]')
    started = time.monotonic()
    result = confsync("once", "--confdir", str(tmp_path), "--endpoints", etcd.endpoint,
                      "--prefix", prefix)
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    assert dest.read_text() == "port 8080\n"
    assert "resource app: wrote" in result.stderr
    assert len(background_pids.read_text().split()) == 2  # check and reload each left one
    assert elapsed < 15, f"once took {elapsed:.1f}s: it waited for the background children"
