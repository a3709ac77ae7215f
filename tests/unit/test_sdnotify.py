"""sd_notify against a real AF_UNIX datagram socket (path and abstract), as systemd listens."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from confsync.errors import ResourceError
from confsync.ops.sdnotify import Notifier, SystemdNotify, watchdog_interval
from confsync.outcome import FAILED, UPDATED, Outcome
from confsync.resources import Resource


def resource(name: str) -> Resource:
    return Resource(name=name, source=Path(f"/x/{name}.toml"), src=Path("/x/t"),
                    dest=Path(f"/x/{name}.conf"), keys=("/a",), prefix="")


class Listener:
    def __init__(self, sock: socket.socket, address: str) -> None:
        self.sock = sock
        self.address = address

    def messages(self, timeout: float = 0.5) -> list[dict[str, str]]:
        """Every datagram waiting now (after a short wait for the first)."""
        out = []
        self.sock.settimeout(timeout)
        while True:
            try:
                data = self.sock.recv(4096)
            except (TimeoutError, BlockingIOError):
                return out
            out.append(dict(line.split("=", 1) for line in data.decode().split("\n")))
            self.sock.settimeout(0.05)


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[Listener]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = str(tmp_path / "notify.sock")
    sock.bind(path)
    yield Listener(sock, path)
    sock.close()


def test_abstract_socket_address() -> None:
    name = f"confsync-test-{os.getpid()}-{time.monotonic_ns()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(b"\0" + name.encode())
    try:
        env = {"NOTIFY_SOCKET": "@" + name}
        notifier = Notifier.from_environ(env)
        assert notifier is not None
        assert env == {}, "NOTIFY_SOCKET must be unset so children do not inherit it"
        assert notifier.send("READY=1", "STATUS=hi")
        sock.settimeout(1)
        assert sock.recv(100) == b"READY=1\nSTATUS=hi"
    finally:
        sock.close()


def test_no_socket_means_no_notifier_and_send_failures_are_quiet(tmp_path: Path) -> None:
    assert Notifier.from_environ({}) is None
    assert SystemdNotify.from_environ({"WATCHDOG_USEC": "1000000"}) is None
    gone = Notifier(str(tmp_path / "nobody-listens"))
    assert gone.send("READY=1") is False


def test_watchdog_interval_is_half_and_respects_pid() -> None:
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 15.0
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, pid=2) is None
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "2"}, pid=2) == 15.0
    assert watchdog_interval({}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "junk"}) is None


def test_lifecycle_messages(listener: Listener) -> None:
    env = {"NOTIFY_SOCKET": listener.address, "WATCHDOG_USEC": "2000000",
           "WATCHDOG_PID": str(os.getpid())}
    obs = SystemdNotify.from_environ(env)
    assert obs is not None and obs.watchdog_seconds == 1.0
    assert "WATCHDOG_USEC" not in env
    a, b = resource("a"), resource("b")
    obs.started([a, b])
    obs.snapshot_loaded(41, 10)
    assert listener.messages()[-1]["STATUS"] == "starting; revision 41"

    obs.ready(42)
    msg = listener.messages()
    assert msg[-1]["READY"] == "1" and msg[-1]["STATUS"] == "watching; revision 42"

    obs.watch_lost("connection refused")
    assert listener.messages()[-1]["STATUS"].startswith("degraded: watch lost (connection refused)")
    obs.watch_connected(43)
    assert listener.messages()[-1]["STATUS"] == "watching; revision 42"

    err = ResourceError("b", "check", "exit 1")
    obs.batch_applied(50, ["/a/x"], [Outcome(a, UPDATED), Outcome(b, FAILED, err)])
    assert listener.messages()[-1]["STATUS"] == "watching; revision 50; 1 failing: b"
    obs.batch_applied(51, ["/a/x"], [Outcome(b, UPDATED)])
    assert listener.messages()[-1]["STATUS"] == "watching; revision 51"
    obs.batch_applied(51, [], [Outcome(b, UPDATED)])
    assert listener.messages(timeout=0.1) == [], "an unchanged status is not re-sent"

    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    obs.reloading_config()
    reloading = listener.messages()[-1]
    assert reloading["RELOADING"] == "1"
    assert before <= int(reloading["MONOTONIC_USEC"]) <= before + 5_000_000
    obs.config_reloaded(True, "2 resources")
    assert listener.messages()[-1]["READY"] == "1"
    obs.reloading_config()
    obs.config_reloaded(False, "conf.d/x.toml: unknown key")
    last = listener.messages()[-1]
    assert last["READY"] == "1" and "refused" in last["STATUS"]

    obs.stopping()
    assert listener.messages()[-1]["STOPPING"] == "1"


def test_watchdog_is_rate_limited(listener: Listener) -> None:
    now = [100.0]
    obs = SystemdNotify(Notifier(listener.address), watchdog_seconds=1.0, clock=lambda: now[0])
    for step in range(40):  # 4 s of heartbeats every 0.1 s
        now[0] = 100.0 + step * 0.1
        obs.heartbeat()
    pings = [m for m in listener.messages() if m.get("WATCHDOG") == "1"]
    assert len(pings) == 4


def test_no_watchdog_when_not_asked(listener: Listener) -> None:
    obs = SystemdNotify(Notifier(listener.address), watchdog_seconds=None)
    obs.heartbeat()
    assert listener.messages(timeout=0.1) == []


def test_a_reload_before_the_first_render_sends_no_ready(listener: Listener) -> None:
    """READY=1 ends a Type=notify unit's start (units ordered after it start then): a SIGHUP
    or conf.d edit while the first snapshot was still awaited (etcd down at boot) answered its
    reload with READY=1, so the service started before confsync had written its file."""
    obs = SystemdNotify.from_environ({"NOTIFY_SOCKET": listener.address})
    assert obs is not None
    obs.started([resource("a")])
    for ok in (True, False):
        obs.reloading_config()
        obs.config_reloaded(ok, "conf.d/x.toml: unknown key")
    early = listener.messages(timeout=0.2)
    assert all("READY" not in m and "RELOADING" not in m for m in early), early
    obs.ready(42)
    assert listener.messages()[-1]["READY"] == "1"
    obs.reloading_config()
    assert listener.messages()[-1]["RELOADING"] == "1"
    obs.config_reloaded(True, "1 resources")
    assert listener.messages()[-1]["READY"] == "1"


def test_a_full_socket_never_blocks_and_state_messages_are_sent_once_it_reads(
        listener: Listener) -> None:
    """A reader that stopped reading (PID 1 busy) fills the socket's short queue: a send
    returns at once; a refused READY=1 or RELOADING=1 is owed and goes first, in order, once
    the socket takes datagrams again; a refused WATCHDOG=1 or STATUS= is dropped."""
    notifier = Notifier(listener.address)
    sent = 0
    started = time.monotonic()
    while notifier.send("STATUS=filling"):
        sent += 1
        assert sent < 100_000, "the socket never filled"
    assert time.monotonic() - started < 5
    assert not notifier.send("RELOADING=1", "STATUS=reloading")
    assert not notifier.send("WATCHDOG=1")
    assert not notifier.send("READY=1", "STATUS=watching")
    assert not notifier.flush()
    assert len(listener.messages()) == sent  # the reader is back
    assert notifier.send("WATCHDOG=1")
    assert listener.messages() == [{"RELOADING": "1", "STATUS": "reloading"},
                                   {"READY": "1", "STATUS": "watching"}, {"WATCHDOG": "1"}]


def test_status_says_when_the_exec_child_is_down(listener: Listener) -> None:
    """Exec mode: `systemctl status` said "watching" while the child (HAProxy) was dead and
    being restarted, or given up on; /ready said so, STATUS did not."""
    from confsync.ops.supervisor import ExecPolicy, Supervisor

    supervisor = Supervisor(ExecPolicy(argv=("sleep", "30"), restart_delay=60.0))
    obs = SystemdNotify(Notifier(listener.address), watchdog_seconds=None)
    obs.track_exec(supervisor)
    try:
        supervisor.start()
        obs.ready(7)
        assert listener.messages()[-1]["STATUS"] == "watching; revision 7"
        assert supervisor.proc is not None
        supervisor.proc.kill()
        supervisor.proc.wait()
        supervisor.poll()
        obs.heartbeat()
        assert listener.messages()[-1]["STATUS"] == \
            "watching; revision 7; exec child not running (restarting)"
        supervisor.gave_up = "5 deaths within 60s"
        obs.heartbeat()
        assert listener.messages()[-1]["STATUS"].endswith("exec child given up: 5 deaths "
                                                          "within 60s")
    finally:
        supervisor.stop(timeout=5)
