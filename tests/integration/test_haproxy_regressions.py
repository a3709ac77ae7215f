"""Regressions of the HAProxy plugin, each against a real HAProxy (issue 14).

1. runtime reconcile touches only `server` lines of the file, never `server-template` slots;
2. a check-skip proof never accepts removing a server still named elsewhere (`use-server`,
   `track`), and is anchored on the last file that passed `haproxy -c`;
3. exec mode sends no extra reload signal to a child the HAProxy plugin already reloads;
4. a [haproxy] table with nothing to reload through is a load-time error;
6. a batch of several resources keeps the systemd watchdog fed between its steps.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import etcd_client
from tests.support.cli import confsync
from tests.support.daemon import WatchProcess
from tests.support.etcd_server import EtcdMember, free_port
from tests.support.haproxy import HAProxyStack, http_get, spread, wait_for
from tests.support.http_backends import HTTPBackend

pytestmark = [pytest.mark.etcd, pytest.mark.haproxy]

# A template of the shape operators write by hand: paths baked in, server lines from etcd, plus
# what the shipped template never emits (server-template slots, use-server, track).
CUSTOM = """\
global
    stats socket @ADMIN@ mode 600 level admin
    server-state-file @STATE@
    maxconn {{ getv("/haproxy/maxconn", "2000") | integer(1, 100000) }}
defaults
    mode http
    timeout connect 2s
    timeout client 10s
    timeout server 10s
    load-server-state-from-file global
frontend main
    bind 127.0.0.1:@PORT@
    default_backend be_web
backend be_web
    balance roundrobin
@SLOTS@
{% if exists("/services/web/pin") %}
    use-server {{ getv("/services/web/pin") | identifier }} if { hdr(x-pin) -m found }
{% endif %}
{% for kv in gets("/services/web/instances/*") %}
{% set i = kv.value | fromjson %}
    server {{ kv.key | base | identifier }} {{ i["address"] | addrport(i["port"]) }} weight \
{{ i.get("weight", 100) | integer(0, 256) }}\
{% if "track" in i %} track be_web/{{ i["track"] | identifier }}{% else %} check inter 1s\
{% endif %}

{% endfor %}
"""


def custom_stack(haproxy: str, etcd: EtcdMember, slots: bool = False,
                 **kwargs: object) -> HAProxyStack:
    stack = HAProxyStack(haproxy, etcd.endpoint, template=Path("custom.tmpl"),
                         **kwargs)  # type: ignore[arg-type]
    (stack.confdir / "templates" / "custom.tmpl").write_text(
        CUSTOM.replace("@ADMIN@", str(stack.admin)).replace("@STATE@", str(stack.state))
        .replace("@PORT@", str(stack.port))
        .replace("@SLOTS@", "    server-template slot 1-2 127.0.0.1:1 weight 100 disabled" if slots else ""))
    return stack


@pytest.fixture
def slots_stack(haproxy_binary: str, etcd: EtcdMember) -> Iterator[HAProxyStack]:
    stack = custom_stack(haproxy_binary, etcd, slots=True, strategy="runtime")
    yield stack
    stack.stop()


def test_runtime_update_leaves_server_template_slots_alone(
        slots_stack: HAProxyStack, backends: dict[str, HTTPBackend]) -> None:
    stack = slots_stack
    stack.put_instance("web", "a", backends["a"].port)
    stack.sync_ok()
    stack.start()
    # Someone else (service discovery, an operator) fills a server-template slot at runtime.
    stack.admin_command(f"set server be_web/slot1 addr 127.0.0.1 port {backends['c'].port}")
    stack.admin_command("set server be_web/slot1 state ready")
    wait_for(lambda: spread(stack.port, 6) == {"a": 3, "c": 3}, timeout=5)
    reloads = stack.status().reloads

    stack.put_instance("web", "b", backends["b"].port)  # a server-only change: a new instance
    assert "runtime API" in stack.sync_ok()
    state = stack.admin_command("show servers state be_web")
    assert " slot1 " in state and " slot2 " in state, state  # not deleted
    # slot1 still serving, not in maintenance
    assert spread(stack.port, 6) == {"a": 2, "b": 2, "c": 2}
    assert stack.status().reloads == reloads

    # A structural change reloads; the slot's runtime state is carried across the reload.
    stack.put("/haproxy/maxconn", "3000")
    assert "reloaded HAProxy" in stack.sync_ok()
    assert stack.status().reloads == reloads + 1
    assert spread(stack.port, 6) == {"a": 2, "b": 2, "c": 2}


@pytest.mark.parametrize("reference", ["use-server", "track"])
def test_check_skip_never_proves_removing_a_referenced_server(
        haproxy_binary: str, etcd: EtcdMember, backends: dict[str, HTTPBackend], tmp_path: Path,
        reference: str) -> None:
    stack = custom_stack(haproxy_binary, etcd, strategy="runtime", check_server_changes=False)
    daemon: WatchProcess | None = None
    try:
        stack.put_instance("web", "a", backends["a"].port)
        if reference == "use-server":
            stack.put("/services/web/pin", "a")
            stack.put_instance("web", "b", backends["b"].port)
        else:
            stack.put_instance("web", "b", backends["b"].port, track="a")
        stack.sync_ok()
        stack.start()
        daemon = WatchProcess(*stack.cli_args(), "--wait-min", "20ms", "--wait-max", "500ms",
                              log=tmp_path / "watch.log")
        daemon.wait_log("watching ", timeout=15)
        # One checked change first: the daemon's anchor for later proofs.
        stack.put_instance("web", "c", backends["c"].port)
        wait_for(lambda: "server c " in stack.cfg.read_text(), timeout=10)
        before = stack.status()

        stack.delete("/services/web/instances/a")  # still named by use-server / track
        daemon.wait_log("resource haproxy: check failed", timeout=15)
        assert "server a " in stack.cfg.read_text()  # the last good file stays
        checked = subprocess.run([haproxy_binary, "-c", "-q", "-f", str(stack.cfg)],
                                 capture_output=True, text=True, timeout=30)
        assert checked.returncode == 0, checked.stderr
        after = stack.status()
        assert (after.reloads, after.failed) == (before.reloads, before.failed)
        assert http_get(stack.port)[0] == 200
    finally:
        if daemon is not None:
            daemon.stop()
        stack.stop()


def test_check_skip_never_proves_a_server_name_haproxy_refuses(
        haproxy_binary: str, etcd: EtcdMember, backends: dict[str, HTTPBackend],
        tmp_path: Path) -> None:
    """A template that renders an instance's key name without `identifier` (the shipped one
    filters it): `x;help` is a name `haproxy -c` refuses, but the proof re-validated addresses,
    ports and weights, not names. Proven, the file went live unchecked, `add server
    be_web/x;help ...` ran `help ...` as a command of its own, and HAProxy refused the
    reload. Now the line is checked like any the proof cannot read: the check refuses it,
    and nothing is sent or reloaded."""
    stack = custom_stack(haproxy_binary, etcd, strategy="runtime", check_server_changes=False)
    template = stack.confdir / "templates" / "custom.tmpl"
    template.write_text(template.read_text().replace("kv.key | base | identifier",
                                                     "kv.key | base"))
    daemon: WatchProcess | None = None
    try:
        stack.put_instance("web", "a", backends["a"].port)
        stack.sync_ok()
        stack.start()
        daemon = WatchProcess(*stack.cli_args(), "--wait-min", "20ms", "--wait-max", "500ms",
                              log=tmp_path / "watch.log")
        daemon.wait_log("watching /", timeout=15)
        stack.put("/haproxy/maxconn", "2001")  # one checked change: the proofs' anchor
        daemon.wait_log("reloaded HAProxy", timeout=10)
        before = stack.status()

        stack.put_instance("web", "x;help", backends["b"].port)
        daemon.wait_log("resource haproxy: check failed", timeout=15)
        assert "x;help" not in stack.cfg.read_text()  # the last good file stays
        after = stack.status()
        assert (after.reloads, after.failed) == (before.reloads, before.failed)
        assert spread(stack.port, 2) == {"a": 2}
    finally:
        if daemon is not None:
            daemon.stop()
        stack.stop()


def test_exec_mode_sends_no_signal_on_top_of_the_plugins_reload(
        haproxy_binary: str, etcd: EtcdMember, backends: dict[str, HTTPBackend],
        tmp_path: Path) -> None:
    stack = HAProxyStack(haproxy_binary, etcd.endpoint, strategy="runtime")
    daemon: WatchProcess | None = None
    try:
        stack.put_basics()
        stack.put_instance("web", "a", backends["a"].port)
        # SIGUSR2 reloads a master-worker HAProxy: any extra signal would show as a reload.
        daemon = WatchProcess(
            *stack.cli_args(), "--wait-min", "20ms", "--wait-max", "500ms", "--exec",
            f"{haproxy_binary} -W -db -S {stack.master} -f {stack.cfg} -p {stack.pidfile}",
            log=tmp_path / "watch.log", env={"CONFSYNC_EXEC_RELOAD_SIGNAL": "SIGUSR2"})
        wait_for(lambda: stack.master.exists() and http_get(stack.port)[0] == 200, timeout=15)
        before = stack.status()

        stack.put_instance("web", "b", backends["b"].port)  # pool change: runtime API
        wait_for(lambda: "b" in spread(stack.port, 4), timeout=10)
        daemon.wait_log("runtime API")
        stack.put("/services/api/config", {"path_prefix": "/api"})  # structural: one reload
        daemon.wait_log("reloaded HAProxy", timeout=15)
        time.sleep(0.5)  # room for a stray signal's reload to show
        after = stack.status()
        assert (after.reloads, after.failed) == (before.reloads + 1, before.failed)
        assert "exec: sent" not in daemon.output()
    finally:
        if daemon is not None:
            daemon.stop()
        if stack.pidfile.exists():  # never leave the exec child behind a failed test
            pid = stack.pidfile.read_text().strip()
            if pid.isdigit():
                with contextlib.suppress(OSError):
                    os.killpg(int(pid), signal.SIGKILL)
        stack.stop()


@pytest.mark.parametrize("table", ["haproxy", "template"])  # [template]: the old spelling
def test_runtime_strategy_without_a_reload_action_is_a_load_error(
        haproxy_binary: str, tmp_path: Path, table: str) -> None:
    confdir = tmp_path / "conf"
    (confdir / "conf.d").mkdir(parents=True)
    (confdir / "templates").mkdir()
    (confdir / "templates" / "h.tmpl").write_text("global\n")
    resource = confdir / "conf.d" / "h.toml"
    resource.write_text(
        f'[template]\nsrc = "h.tmpl"\ndest = "{tmp_path / "h.cfg"}"\nkeys = ["/h"]\n'
        f'check_cmd = ["{haproxy_binary}", "-c", "-q", "-f", "{{{{src}}}}"]\n'
        + ('[haproxy]\n' if table == "haproxy" else "") + 'reload_strategy = "runtime"\n')
    data = tmp_path / "data.yaml"
    data.write_text("h: {x: 1}\n")
    result = confsync("once", "--confdir", str(confdir), "--backend", "file", "--file", str(data))
    assert result.returncode == 2
    assert (f"{resource}: {table}.reload_strategy: HAProxy needs a way to reload"
            in result.stderr)
    assert not (tmp_path / "h.cfg").exists()


class WatchdogPings(threading.Thread):
    """A NOTIFY_SOCKET that records when each WATCHDOG=1 arrived."""

    def __init__(self, path: Path) -> None:
        super().__init__(daemon=True)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.times: list[float] = []
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            try:
                message = self.sock.recv(4096).decode()
            except TimeoutError:
                continue
            if "WATCHDOG=1" in message.split("\n"):
                self.times.append(time.monotonic())

    def close(self) -> None:
        self.done.set()
        self.join(timeout=2)
        self.sock.close()


def test_a_batch_of_checked_resources_keeps_the_watchdog_fed(
        haproxy_binary: str, etcd: EtcdMember, tmp_path: Path) -> None:
    count = 10
    confdir = tmp_path / "conf"
    (confdir / "conf.d").mkdir(parents=True)
    (confdir / "templates").mkdir()
    (confdir / "templates" / "h.tmpl").write_text(
        "global\n    maxconn {{ getv('/hb/maxconn') | integer(1, 100000) }}\n"
        "defaults\n    mode http\n    timeout connect 1s\n    timeout client 1s\n"
        f"    timeout server 1s\nlisten l\n    bind 127.0.0.1:{free_port()}\n"
        "    server s 127.0.0.1:9\n")
    for n in range(count):  # each check: real `haproxy -c` after 0.3 s, so 10 take 3 s or more
        (confdir / "conf.d" / f"h{n}.toml").write_text(
            f'[template]\nsrc = "h.tmpl"\ndest = "{tmp_path / f"h{n}.cfg"}"\nkeys = ["/hb"]\n'
            f'check_cmd = ["sh", "-c", "sleep 0.3; exec {haproxy_binary} -c -q -f \\"$1\\"", '
            '"sh", "{{src}}"]\n')
    prefix = f"/wd{free_port()}"
    client = etcd_client.client(etcd.endpoint)
    pings = WatchdogPings(tmp_path / "notify.sock")
    pings.start()
    daemon: WatchProcess | None = None
    try:
        client.put(f"{prefix}/hb/maxconn", "100")
        daemon = WatchProcess(
            "--confdir", str(confdir), "--endpoints", etcd.endpoint, "--prefix", prefix,
            "--wait-min", "20ms", log=tmp_path / "watch.log",
            env={"NOTIFY_SOCKET": str(tmp_path / "notify.sock"), "WATCHDOG_USEC": "2000000"})
        daemon.wait_log("watching ", timeout=60)
        start = time.monotonic()
        client.put(f"{prefix}/hb/maxconn", "200")
        wait_for(lambda: all("maxconn 200" in _text(tmp_path / f"h{n}.cfg")
                             for n in range(count)), timeout=60)
        batch_seconds = time.monotonic() - start
        time.sleep(1.5)  # the loop's own beat after the batch
        end = time.monotonic()
        window = [t for t in pings.times if start - 1.5 <= t <= end]
        gaps = [b - a for a, b in itertools.pairwise(window)]
        assert batch_seconds >= 3.0  # the batch is long enough to starve an unfed watchdog
        # WatchdogSec=2s (WATCHDOG_USEC): systemd would kill confsync after a 2 s silence.
        assert gaps and max(gaps) < 2.0, (gaps, batch_seconds)
    finally:
        if daemon is not None:
            daemon.stop()
        pings.close()
        client.delete_prefix(prefix)
        client.close()


def _text(path: Path) -> str:
    return path.read_text() if path.exists() else ""
