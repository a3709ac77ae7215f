"""/ready tells whether HAProxy serves the file, also when confsync has nothing to apply.

`confsync watch` started on a dest that is already up to date has nothing to reload, and a
HAProxy stopped by someone else between two changes gets no reload either: in both cases the
target is asked (`show proc` on the master CLI, nothing reloaded) whether it runs. And an outage
of HAProxy costs no reload: a master that started after the file was in place read it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from confsync.haproxy.runtime import AdminSocket, live_servers
from tests.support.cli import REPO
from tests.support.daemon import WatchProcess
from tests.support.etcd_server import EtcdMember, free_port
from tests.support.haproxy import HAProxyStack, spread, wait_for
from tests.support.haproxy_race import started_in_the_reload_step
from tests.support.http_backends import HTTPBackend
from tests.support.http_probe import haproxy_not_running, ready

pytestmark = [pytest.mark.etcd, pytest.mark.haproxy]






def _metrics(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as answer:
        return str(answer.read().decode())


UP = 'confsync_reload_target_up{resource="haproxy"}'


def _reloads(port: int) -> float:
    """Reloads confsync made (confirmed, ok)."""
    for line in _metrics(port).splitlines():
        if line.startswith("confsync_reloads_total{") and 'resource="haproxy"' in line \
                and 'outcome="ok"' in line:
            return float(line.rpartition(" ")[2])
    return 0.0


def _watch(stack: HAProxyStack, tmp_path: Path) -> tuple[WatchProcess, int]:
    metrics = free_port()
    process = WatchProcess(*stack.cli_args(), "--wait-min", "20ms", "--wait-max", "500ms",
                           "--metrics-address", f"127.0.0.1:{metrics}",
                           log=tmp_path / "watch.log")
    return process, metrics


@pytest.fixture(params=["reload", "runtime"])
def stack(request: pytest.FixtureRequest, haproxy_binary: str,
          etcd: EtcdMember) -> Iterator[HAProxyStack]:
    s = HAProxyStack(haproxy_binary, etcd.endpoint, strategy=request.param)
    yield s
    s.stop()


def test_a_start_on_a_current_file_asks_whether_haproxy_runs(
        stack: HAProxyStack, backends: dict[str, HTTPBackend], tmp_path: Path) -> None:
    stack.put_basics()
    stack.put_instance("web", "a", backends["a"].port)
    stack.sync_ok()  # the file is current before `watch` starts; HAProxy is not running
    watch, metrics = _watch(stack, tmp_path)
    try:
        watch.wait_log("watching /", timeout=15)
        assert "wrote" not in watch.output()  # nothing to apply, so nothing to reload
        wait_for(lambda: haproxy_not_running(metrics), timeout=5)
        assert f"{UP} 0.0" in _metrics(metrics).splitlines()

        stack.start()  # by someone else, from the file on disk
        started = time.monotonic()
        wait_for(lambda: ready(metrics)[0] == 200, timeout=5, interval=0.01)
        print(f"HAProxy start -> /ready 200: {time.monotonic() - started:.3f} s")
        assert f"{UP} 1.0" in _metrics(metrics).splitlines()
        assert stack.status().reloads == 0 and _reloads(metrics) == 0  # it read the file
        assert spread(stack.port, 4) == {"a": 4}
        assert "Traceback" not in watch.output()
    finally:
        watch.stop()


def test_a_start_with_haproxy_running_is_ready_without_a_reload(
        stack: HAProxyStack, backends: dict[str, HTTPBackend], tmp_path: Path) -> None:
    stack.put_basics()
    stack.put_instance("web", "a", backends["a"].port)
    stack.sync_ok()
    stack.start()
    watch, metrics = _watch(stack, tmp_path)
    try:
        wait_for(lambda: ready(metrics)[0] == 200, timeout=15)
        assert f"{UP} 1.0" in _metrics(metrics).splitlines()
        assert stack.status().reloads == 0 and _reloads(metrics) == 0
    finally:
        watch.stop()


def test_haproxy_stopped_between_changes_is_reported_and_costs_no_reload(
        stack: HAProxyStack, backends: dict[str, HTTPBackend], tmp_path: Path) -> None:
    """Stopped with nothing to apply: /ready 503 within seconds; started again: 200, and no
    reload (the new master read the current file)."""
    stack.put_basics()
    stack.put_instance("web", "a", backends["a"].port)
    watch, metrics = _watch(stack, tmp_path)
    try:
        watch.wait_log("watching /", timeout=15)
        stack.start()
        wait_for(lambda: ready(metrics)[0] == 200, timeout=10)
        reloads = _reloads(metrics)
        stack.halt()
        stopped = time.monotonic()
        wait_for(lambda: haproxy_not_running(metrics), timeout=5, interval=0.01)
        print(f"HAProxy stopped -> /ready 503: {time.monotonic() - stopped:.3f} s")
        assert f"{UP} 0.0" in _metrics(metrics).splitlines()
        stack.start()
        started = time.monotonic()
        wait_for(lambda: ready(metrics)[0] == 200, timeout=5, interval=0.01)
        print(f"HAProxy start -> /ready 200: {time.monotonic() - started:.3f} s")
        assert f"{UP} 1.0" in _metrics(metrics).splitlines()
        assert stack.status().reloads == 0 and _reloads(metrics) == reloads
        assert spread(stack.port, 4) == {"a": 4}
    finally:
        watch.stop()


@pytest.mark.parametrize("stack", ["reload"], indirect=True)
def test_outages_with_changes_cost_no_extra_reload(
        stack: HAProxyStack, backends: dict[str, HTTPBackend], tmp_path: Path) -> None:
    """Reload strategy, 3 outages, the pool changed during each: HAProxy serves each new pool
    once it is back, and confsync reloads nothing for it (it had: one per outage)."""
    stack.put_basics()
    stack.put_instance("web", "a", backends["a"].port)
    watch, metrics = _watch(stack, tmp_path)
    try:
        watch.wait_log("watching /", timeout=15)
        stack.start()
        wait_for(lambda: ready(metrics)[0] == 200, timeout=10)
        unserved = f"resource haproxy: wrote {stack.cfg} (no HAProxy master"
        names = ["b", "c", "a"]
        for i, name in enumerate(names):
            stack.halt()
            writes = watch.output().count(unserved)
            txn = stack.client.transactions
            stack.client.transaction(compare=[], failure=[], success=[
                txn.delete(f"{stack.prefix}/services/web/instances/{names[i - 1]}"),
                txn.put(f"{stack.prefix}/services/web/instances/{name}", json.dumps(
                    {"address": "127.0.0.1", "port": backends[name].port}))])
            watch.wait_log(unserved, count=writes + 1)
            assert haproxy_not_running(metrics)
            stack.start()
            started = time.monotonic()
            wait_for(lambda: ready(metrics)[0] == 200, timeout=5, interval=0.01)
            print(f"outage {i + 1}: HAProxy start -> /ready 200: "
                  f"{time.monotonic() - started:.3f} s")
            assert spread(stack.port, 4) == {name: 4}  # the file changed during the outage
            assert stack.status().reloads == 0, f"outage {i + 1}: reloaded after the start"
        assert _reloads(metrics) == 0
        assert "reloaded HAProxy" not in watch.output()
        # A change with HAProxy up still reloads (confirmed), once.
        stack.put_instance("web", "b", backends["b"].port)
        wait_for(lambda: spread(stack.port, 4) == {"a": 2, "b": 2}, timeout=10)
        # the new worker serves before confsync's confirmation is counted (a loaded CI saw 0)
        wait_for(lambda: _reloads(metrics) == 1, timeout=10)
        assert stack.status().reloads == 1
        assert "Traceback" not in watch.output()
    finally:
        watch.stop()


@pytest.mark.parametrize("stack", ["reload"], indirect=True)
def test_haproxy_started_while_the_reload_step_runs_is_not_reloaded(
        stack: HAProxyStack, backends: dict[str, HTTPBackend], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """HAProxy started (by someone else) after the file was installed, while confsync's reload
    step looks for its master: it read the new file, so the step reloads nothing."""

    from confsync.haproxy.settings import HAProxySettings
    from confsync.targets import ReloadKind

    stack.put_basics()
    stack.put_instance("web", "a", backends["a"].port)
    stack.sync_ok()  # installed while nothing runs
    settings = HAProxySettings(master_socket=stack.master)
    controller, started = started_in_the_reload_step(stack, tmp_path, settings, monkeypatch)
    content = stack.cfg.read_bytes()
    result = controller.reload(None, content)
    assert started and result.kind is ReloadKind.IN_STEP, result
    assert stack.status().reloads == 0
    assert spread(stack.port, 4) == {"a": 4}
    # A master that started before the step (may run an older file) is reloaded as before.
    monkeypatch.undo()
    result = controller.reload(None, content)
    assert result.kind is ReloadKind.CONFIRMED and stack.status().reloads == 1, result


@pytest.mark.parametrize("stack", ["reload"], indirect=True)
def test_a_start_reloads_an_haproxy_that_never_loaded_the_current_file(
        stack: HAProxyStack, backends: dict[str, HTTPBackend], tmp_path: Path) -> None:
    """A confsync killed between installing a file and reloading leaves HAProxy on the older
    one, with the file current: the next `watch` must not take that for in step. HAProxy's
    current worker started (loaded its configuration) before the file was written: reload."""
    stack.put_basics()
    stack.put_instance("web", "a", backends["a"].port)
    stack.sync_ok()
    stack.start()
    time.sleep(1.2)  # the worker's start is then surely older than the next write
    txn = stack.client.transactions
    stack.client.transaction(compare=[], failure=[], success=[
        txn.put(f"{stack.prefix}/services/web/instances/b",
                json.dumps({"address": "127.0.0.1", "port": backends["b"].port})),
        txn.delete(f"{stack.prefix}/services/web/instances/a")])
    # Installed, never loaded, as if confsync died before reloading: the same resource with a
    # master socket nobody serves writes the file.
    elsewhere = tmp_path / "confdir"
    shutil.copytree(stack.confdir, elsewhere)
    toml = elsewhere / "conf.d" / "haproxy.toml"
    toml.write_text(toml.read_text().replace(str(stack.master), str(tmp_path / "none.sock")))
    args = stack.cli_args()
    args[args.index("--confdir") + 1] = str(elsewhere)
    once = subprocess.run([sys.executable, "-m", "confsync", "once", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert once.returncode == 0 and "no HAProxy master" in once.stderr, once.stderr
    assert "server b " in stack.cfg.read_text() and spread(stack.port, 4) == {"a": 4}
    watch, metrics = _watch(stack, tmp_path)
    try:
        wait_for(lambda: spread(stack.port, 4) == {"b": 4}, timeout=15)
        wait_for(lambda: ready(metrics)[0] == 200, timeout=10)
        wait_for(lambda: _reloads(metrics) == 1, timeout=10)
        assert stack.status().reloads == 1
        assert "loaded its configuration" in watch.output()
        assert "Traceback" not in watch.output()
    finally:
        watch.stop()


@pytest.mark.parametrize("stack", ["reload"], indirect=True)
@pytest.mark.parametrize("step", [3600.0, -3600.0], ids=["forward", "backward"])
def test_a_clock_step_changes_neither_whether_haproxy_runs_the_file(
        stack: HAProxyStack, backends: dict[str, HTTPBackend], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, step: float) -> None:
    """Whether HAProxy loaded the file at dest is decided on one clock. The wall clock stepped
    (NTP at boot, a VM resumed) after the file was written: a file HAProxy never read is still
    STALE (it was taken for loaded after a step forward), one it read is still RUNNING (a step
    back made it look stale: one extra reload at every start)."""
    from types import SimpleNamespace

    from confsync.haproxy import control
    from confsync.haproxy.settings import HAProxySettings
    from confsync.plugins import PluginConfig
    from confsync.resources import Resource
    from confsync.targets import Liveness

    stack.put_basics()
    stack.put_instance("web", "a", backends["a"].port)
    stack.sync_ok()
    stack.start()
    settings = HAProxySettings(master_socket=stack.master)
    resource = Resource(name="haproxy", source=tmp_path / "haproxy.toml", src=stack.cfg,
                        dest=stack.cfg, keys=("/x",), prefix="", reload_timeout=10.0,
                        plugin=PluginConfig("haproxy", settings))
    controller = control.HAProxyController(resource, settings)
    stepped = SimpleNamespace(**{**vars(time), "time": lambda: time.time() + step})
    monkeypatch.setattr(control, "time", stepped, raising=False)
    # Written after HAProxy loaded it, by more than the second the old comparison allowed for.
    time.sleep(1.1)
    stack.cfg.write_bytes(stack.cfg.read_bytes())
    found = controller.probe(None, compare=True)
    assert found.liveness is Liveness.STALE and "loaded its configuration" in found.detail, found
    stack.reload_by_signal()  # now it has
    found = controller.probe(None, compare=True)
    assert found.liveness is Liveness.RUNNING, found


@pytest.mark.parametrize("stack", ["runtime"], indirect=True)
def test_a_restart_of_watch_after_runtime_changes_reloads_nothing(
        stack: HAProxyStack, backends: dict[str, HTTPBackend], tmp_path: Path) -> None:
    """Runtime strategy: a file newer than HAProxy's worker is the rule (changed without a
    reload), not a sign that HAProxy never read it."""
    stack.put_basics()
    stack.put_instance("web", "a", backends["a"].port)
    stack.sync_ok()
    stack.start()
    time.sleep(1.2)
    stack.put_instance("web", "b", backends["b"].port)
    assert "runtime API" in stack.sync_ok()
    watch, metrics = _watch(stack, tmp_path)
    try:
        wait_for(lambda: ready(metrics)[0] == 200, timeout=15)
        time.sleep(1.5)  # a heartbeat's probe too
        assert stack.status().reloads == 0 and _reloads(metrics) == 0
        assert spread(stack.port, 4) == {"a": 2, "b": 2}
    finally:
        watch.stop()


# ---- the runtime strategy's first look compares HAProxy's servers with the file


def _pool(stack: HAProxyStack) -> dict[str, tuple[int, bool]]:
    """be_web's servers as HAProxy runs them: name -> (port, in maintenance)."""
    live = live_servers(AdminSocket(stack.admin)).get("be_web", {})
    return {name: (server.port, server.maint) for name, server in live.items()}


def _serve_pool_through_watch(stack: HAProxyStack, backends: dict[str, HTTPBackend],
                              tmp_path: Path) -> None:
    """a, b and x served through `confsync watch`; an operator then disables a by hand.
    Returns with that watch killed by SIGKILL (no cleanup: as the OOM killer does it)."""
    stack.put_basics()
    stack.put_instance("web", "a", backends["a"].port)
    stack.sync_ok()
    stack.start()
    tmp_path.mkdir()
    watch, _ = _watch(stack, tmp_path)
    try:
        watch.wait_log("watching /", timeout=15)
        stack.put_instance("web", "b", backends["b"].port)
        stack.put_instance("web", "x", backends["c"].port)
        wait_for(lambda: set(spread(stack.port, 6)) == {"a", "b", "c"}, timeout=10)
        assert "runtime API" in watch.output()
        assert stack.admin_command("disable server be_web/a").strip() == ""
        wait_for(lambda: set(spread(stack.port, 6)) == {"b", "c"}, timeout=5)
    finally:
        watch.proc.kill()
        watch.proc.wait(timeout=10)
        watch.stop()


def test_a_start_brings_haproxys_servers_in_step_with_a_file_installed_before_a_kill(
        shipped: HAProxyStack, backends: dict[str, HTTPBackend], tmp_path: Path) -> None:
    """Runtime strategy, confsync killed between installing a pool change and sending its
    runtime commands: the file is current, HAProxy runs the old pool. The next `watch` finds
    the difference at its first look and applies it through the runtime API (no reload),
    and an operator's `disable server` on a server the change left alone survives. (A server
    moved meanwhile is a reload: test_haproxy_pools.py.)"""
    stack = shipped
    _serve_pool_through_watch(stack, backends, tmp_path / "first")
    port = {name: backend.port for name, backend in backends.items()}
    assert _pool(stack) == {"a": (port["a"], True), "b": (port["b"], False),
                            "x": (port["c"], False)}
    reloads = stack.status().reloads
    # The kill window: the change is rendered and installed, no runtime command is sent. The
    # same resource without its [haproxy] table (no reload step) writes the file.
    txn = stack.client.transactions
    stack.client.transaction(compare=[], failure=[], success=[
        txn.delete(f"{stack.prefix}/services/web/instances/x"),  # removed
        txn.put(f"{stack.prefix}/services/web/instances/y",  # added
                json.dumps({"address": "127.0.0.1", "port": port["c"]}))])
    elsewhere = tmp_path / "confdir"
    shutil.copytree(stack.confdir, elsewhere)
    toml = elsewhere / "conf.d" / "haproxy.toml"
    toml.write_text(toml.read_text().partition("[haproxy]")[0])
    args = stack.cli_args()
    args[args.index("--confdir") + 1] = str(elsewhere)
    once = subprocess.run([sys.executable, "-m", "confsync", "once", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert once.returncode == 0, once.stderr
    text = stack.cfg.read_text()
    assert "server y " in text and "server x " not in text
    assert set(_pool(stack)) == {"a", "b", "x"} and set(spread(stack.port, 6)) == {"b", "c"}

    (tmp_path / "second").mkdir()
    watch, metrics = _watch(stack, tmp_path / "second")
    try:
        wait_for(lambda: _pool(stack) == {"a": (port["a"], True), "b": (port["b"], False),
                                          "y": (port["c"], False)}, timeout=15)
        # a stays disabled
        wait_for(lambda: spread(stack.port, 6) == {"b": 3, "c": 3}, timeout=10)
        wait_for(lambda: ready(metrics)[0] == 200, timeout=10)
        assert stack.status().reloads == reloads and _reloads(metrics) == 0  # no reload
        output = watch.output()
        assert "HAProxy runs be_web/x, the file does not" in output, output
        assert "runtime API" in output and "Traceback" not in output
    finally:
        watch.stop()


def test_a_plain_restart_of_watch_changes_nothing_in_haproxy(
        shipped: HAProxyStack, backends: dict[str, HTTPBackend], tmp_path: Path) -> None:
    """File and HAProxy in step (an operator's `disable server` aside, which is no
    difference): a restarted `watch` sends nothing, neither a reload nor a runtime command."""
    stack = shipped
    _serve_pool_through_watch(stack, backends, tmp_path / "first")
    before = _pool(stack)
    reloads = stack.status().reloads
    (tmp_path / "second").mkdir()
    watch, metrics = _watch(stack, tmp_path / "second")
    try:
        wait_for(lambda: ready(metrics)[0] == 200, timeout=15)
        time.sleep(1.5)  # a heartbeat's probe too
        assert stack.status().reloads == reloads and _reloads(metrics) == 0
        assert _pool(stack) == before
        output = watch.output()
        assert "runtime API" not in output and "HAProxy runs" not in output, output
        assert "wrote" not in output and "Traceback" not in output
        assert set(spread(stack.port, 6)) == {"b", "c"}
    finally:
        watch.stop()
