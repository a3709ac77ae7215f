"""An HAProxy stopped (`systemctl stop`: SIGTERM to its group; an OOM kill of the master) while
confsync's confirmed reload waits for it: just before the reload is sent, or after it was sent
and before it was confirmed.

A stopped HAProxy is not running: the new file stays (it was checked), nothing is rolled back,
`/ready` and `reload_target_up` say so at once, and the next start of HAProxy loads the file
with no reload of confsync's. Before, the step waited out `reload_timeout` (10 s of a held
loop) for an answer that could not come, counted a failed reload, rolled the good file back,
and retried about 90 s later.
"""

from __future__ import annotations

import os
import signal
import socket
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from confsync.haproxy import control, master_cli
from confsync.haproxy.master_cli import load_status, show_proc
from confsync.haproxy.settings import HAProxySettings, Strategy
from confsync.haproxy.sockets import SocketUnavailable
from confsync.plugins import PluginConfig
from confsync.processes import state
from confsync.resources import Resource
from confsync.targets import ReloadKind
from tests.support.cli import write_resource
from tests.support.daemon import WatchProcess
from tests.support.etcd_server import EtcdMember, free_port
from tests.support.haproxy import HAProxyStack, wait_for
from tests.support.http_probe import haproxy_not_running, ready

pytestmark = [pytest.mark.etcd, pytest.mark.haproxy]

# Host patterns the config loads: a reload takes a few hundred ms, while the master CLI
# refuses connections (the window in which the daemon test stops HAProxy).
PATTERNS = 50_000


def _text(stack: HAProxyStack, generation: str, patterns: Path | None = None) -> str:
    deny = f"    http-request deny if {{ hdr(host) -m reg -f {patterns} }}\n" if patterns else ""
    return ("global\n"
            f"    stats socket {stack.admin} level admin\n"
            "    hard-stop-after 2s\n"
            "defaults\n    mode http\n    timeout client 5s\n    timeout server 5s\n"
            "    timeout connect 1s\n"
            "frontend main\n"
            f"    bind 127.0.0.1:{stack.port}\n"
            f"{deny}"
            f"    http-request return status 200 content-type text/plain string {generation}\n")


def _served(stack: HAProxyStack) -> str | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{stack.port}/", timeout=2) as answer:
            return str(answer.read().decode())
    except OSError:
        return None


@pytest.fixture
def stack(haproxy_binary: str, etcd: EtcdMember) -> Iterator[HAProxyStack]:
    s = HAProxyStack(haproxy_binary, etcd.endpoint, strategy="reload")
    yield s
    s.stop()


def _stop(stack: HAProxyStack, how: str, exited: bool = False) -> None:
    """Stop HAProxy as `systemctl stop` does (SIGTERM to its group), or kill its master
    (SIGKILL, an OOM kill); its workers follow it. `exited`: wait until the master has (a
    SIGTERM-ed master may still answer, and reload, for a few ms). Not reaped: a master that
    is this process's child stays a zombie until `halt`, as HAProxy under `confsync watch
    --exec`."""
    assert stack.proc is not None
    pid = stack.proc.pid
    if how == "sigterm":
        os.killpg(pid, signal.SIGTERM)
    else:
        os.kill(pid, signal.SIGKILL)
    if exited:
        wait_for(lambda: state(pid) in ("Z", None), timeout=5, interval=0.005)


@pytest.mark.parametrize("how", ["sigterm", "sigkill"])
@pytest.mark.parametrize("when", ["sent", "before"])
def test_a_master_stopped_around_its_reload_is_not_running_at_once(
        stack: HAProxyStack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        how: str, when: str) -> None:
    """The reload step itself, on a real master stopped right after `reload` was sent on its
    CLI ("sent"), or right after the step read its counters ("before")."""
    stack.cfg.write_text(_text(stack, "one"))
    stack.start()
    settings = HAProxySettings(master_socket=stack.master, strategy=Strategy.RELOAD)
    resource = Resource(name="haproxy", source=tmp_path / "haproxy.toml", src=stack.cfg,
                        dest=stack.cfg, keys=("/x",), prefix="", reload_timeout=10.0,
                        plugin=PluginConfig("haproxy", settings))
    controller = control.HAProxyController(resource, settings)
    previous = stack.cfg.read_bytes()
    stack.cfg.write_text(_text(stack, "two"))
    answered = ""  # HAProxy's answer to `reload`
    if when == "sent":
        real_query = master_cli.query

        def query_then_stop(path: Path, command: str, **kwargs: Any) -> str:
            nonlocal answered
            answer = real_query(path, command, **kwargs)
            if command == "reload":
                answered = answer
                _stop(stack, how)
            return answer

        monkeypatch.setattr(master_cli, "query", query_then_stop)
    else:
        real_show_proc = control.show_proc

        def show_proc_then_stop(*args: Any, **kwargs: Any) -> master_cli.MasterStatus:
            status = real_show_proc(*args, **kwargs)
            _stop(stack, how, exited=True)
            return status

        monkeypatch.setattr(control, "show_proc", show_proc_then_stop)
    began = time.monotonic()
    result = controller.reload(previous, stack.cfg.read_bytes())  # raises on a failed reload
    took = time.monotonic() - began
    monkeypatch.undo()
    print(f"{how} {when}: {result} in {took:.2f} s")
    if answered.startswith("Success=1"):
        # 2.7+ answer `reload` only once the new worker serves: the stop came after a reload
        # that was done, which is confirmed when the master still answered the next look
        # (a SIGTERM-ed one does for a few ms). 2.6 answers nothing: never confirmed.
        assert result.kind in (ReloadKind.CONFIRMED, ReloadKind.NO_TARGET), result
    else:
        assert result.kind is ReloadKind.NO_TARGET, result
    assert took < 2.0
    stack.halt()
    assert controller.probe(None).liveness.value == "down"
    stack.start()  # the next start reads the file confsync installed
    assert _served(stack) == "two"
    assert stack.status().reloads == 0


def _loading(master: Path, reloads: int) -> bool:
    """A reload past `reloads` is loading the new file: 2.6's master CLI refuses connections
    while the master loads it; 3.1+ counts it at once, and its worker loads it after, while
    `_loadstatus` does not answer (the CLI refuses for a few ms only, which polling missed)."""
    if _reloading(master):
        return True
    try:
        if show_proc(master, retry_for=0.0, timeout=0.5).reloads <= reloads:
            return False
        load_status(master, retry_for=0.0, timeout=0.05)
    except SocketUnavailable:
        return True  # refused (re-executing), or no answer within 50 ms: loading
    return False


def _reloading(master: Path) -> bool:
    """The master CLI refuses connections: it re-executes for a reload."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(0.5)
        try:
            probe.connect(str(master))
        except (ConnectionRefusedError, FileNotFoundError):
            return True
        except OSError:
            return False
    return False


def _metrics(port: int) -> list[str]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as answer:
        return str(answer.read().decode()).splitlines()


def test_haproxy_stopped_during_confsyncs_reload_keeps_the_file_and_holds_nothing(
        haproxy_binary: str, etcd: EtcdMember, tmp_path: Path) -> None:
    """`confsync watch`, a structural change, and HAProxy stopped (`systemctl stop`) while
    the master loads it: the other resources go on at once, `/ready` says not running, the
    file is kept, and HAProxy's next start serves it without a reload."""
    template = tmp_path / "slow.cfg.tmpl"
    stack = HAProxyStack(haproxy_binary, etcd.endpoint, strategy="reload", template=template)
    patterns = tmp_path / "hosts.lst"
    patterns.write_text("".join(f"^host{i}[a-z]+\\.example\\.(com|org)$\n"
                                for i in range(PATTERNS)))
    template.write_text(_text(stack, '{{ getv("/haproxy/generation") | identifier }}',
                              patterns))
    side = tmp_path / "side.txt"
    write_resource(stack.confdir, "side", '{{ getv("/side/x") }}',
                   f'dest = "{side}"\nkeys = ["/side"]\n')
    stack.put("/haproxy/generation", "g0")
    stack.put("/side/x", "0")
    metrics = free_port()
    watch = WatchProcess(*stack.cli_args(), "--wait-min", "20ms", "--wait-max", "500ms",
                         "--metrics-address", f"127.0.0.1:{metrics}",
                         log=tmp_path / "watch.log")
    try:
        watch.wait_log("watching /", timeout=15)
        stack.start()
        wait_for(lambda: ready(metrics)[0] == 200, timeout=10)
        reloads = stack.status().reloads
        stack.put("/haproxy/generation", "g1")
        wait_for(lambda: "g1" in stack.cfg.read_text(), timeout=10)
        wait_for(lambda: _loading(stack.master, reloads), timeout=5, interval=0.002)
        stack.halt()  # (SIGTERM to its group) while the master loads the new file
        stopped = time.monotonic()
        stack.put("/side/x", "1")
        wait_for(lambda: side.read_text().strip() == "1", timeout=3)
        print(f"HAProxy stopped -> another resource written: {time.monotonic() - stopped:.2f} s")
        wait_for(lambda: haproxy_not_running(metrics), timeout=3)
        print(f"HAProxy stopped -> /ready not running: {time.monotonic() - stopped:.2f} s")
        lines = _metrics(metrics)
        assert 'confsync_reload_target_up{resource="haproxy"} 0.0' in lines
        assert not any(line.startswith("confsync_apply_failures_total{")
                       and 'step="reload"' in line for line in lines), lines
        assert "g1" in stack.cfg.read_text()  # kept: not rolled back

        stack.start()  # the next start reads it
        wait_for(lambda: ready(metrics)[0] == 200, timeout=5)
        assert _served(stack) == "g1"
        out = watch.output()
        for bad in ("previous file restored", "rollback", "Traceback"):
            assert bad not in out, out
        assert stack.status().reloads == 0, out  # nothing owed, nothing retried
    finally:
        watch.stop()
        stack.stop()
