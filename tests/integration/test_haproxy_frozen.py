"""An HAProxy master stopped (SIGSTOP: a paused VM, a debugger, a stuck host) under
`confsync watch`, then resumed.

A stopped master refuses nothing: its master CLI accepts connections into the listen backlog
and never answers, while its workers go on serving (and the admin socket, which a worker
serves, answers). confsync must neither hang, nor take the silence for a failed reload (and
roll a good file back, then reload HAProxy into the old one), nor log a warning per second.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.daemon import WatchProcess
from tests.support.etcd_server import EtcdMember, free_port
from tests.support.haproxy import HAProxyStack, spread, wait_for
from tests.support.http_backends import HTTPBackend
from tests.support.http_probe import ready

pytestmark = [pytest.mark.etcd, pytest.mark.haproxy]


@pytest.fixture
def stack(request: pytest.FixtureRequest, haproxy_binary: str,
          etcd: EtcdMember) -> Iterator[HAProxyStack]:
    s = HAProxyStack(haproxy_binary, etcd.endpoint, strategy=request.param)
    yield s
    if s.proc is not None:
        os.kill(s.proc.pid, signal.SIGCONT)  # never leave a stopped master behind
    s.stop()


def _running(stack: HAProxyStack, tmp_path: Path,
             backends: dict[str, HTTPBackend]) -> tuple[WatchProcess, int]:
    metrics = free_port()
    stack.put_basics()
    stack.put_instance("web", "a", backends["a"].port)
    watch = WatchProcess(*stack.cli_args(), "--wait-min", "20ms", "--wait-max", "500ms",
                         "--metrics-address", f"127.0.0.1:{metrics}",
                         log=tmp_path / "watch.log")
    watch.wait_log("watching /", timeout=15)
    stack.start()
    wait_for(lambda: ready(metrics)[0] == 200, timeout=10)
    return watch, metrics


@pytest.mark.parametrize("stack", ["reload"], indirect=True)
def test_a_change_for_a_stopped_master_goes_live_by_one_reload_when_it_runs(
        stack: HAProxyStack, backends: dict[str, HTTPBackend], tmp_path: Path) -> None:
    """A change while the master is stopped for 6.5 s (longer than a socket's 5 s wait): the
    checked file stays, `/ready` says the master is stopped (its workers serve the old pool),
    the loop is not held, and one reload makes it live once the master runs. Before, the first
    `show proc` timed out, the reload counted as failed, the good file was rolled back and
    HAProxy reloaded into the old one when it resumed: two reloads and an error."""
    watch, metrics = _running(stack, tmp_path, backends)
    try:
        assert stack.proc is not None
        before = stack.status().reloads
        os.kill(stack.proc.pid, signal.SIGSTOP)
        try:
            stack.put_instance("web", "b", backends["b"].port)
            wait_for(lambda: str(backends["b"].port) in stack.cfg.read_text(), timeout=5)
            wait_for(lambda: any("is stopped" in str(r) for r in
                                 ready(metrics)[1].get("reasons", [])), timeout=5)
            time.sleep(6.5)  # past a socket's 5 s wait
            assert str(backends["b"].port) in stack.cfg.read_text()  # kept, not rolled back
            assert ready(metrics)[0] == 503
        finally:
            os.kill(stack.proc.pid, signal.SIGCONT)
        resumed = time.monotonic()
        wait_for(lambda: "b" in spread(stack.port, 4), timeout=15, interval=0.05)
        print(f"SIGCONT -> new pool served: {time.monotonic() - resumed:.2f} s")
        assert time.monotonic() - resumed < 3.0
        wait_for(lambda: ready(metrics)[0] == 200, timeout=5)
        out = watch.output()
        assert "previous file restored" not in out and "rollback" not in out, out
        assert stack.status().reloads == before + 1, out
        assert "Traceback" not in out
    finally:
        watch.stop()


@pytest.mark.parametrize("stack", ["runtime"], indirect=True)
def test_a_stopped_master_is_asked_briefly_and_runtime_changes_go_on(
        stack: HAProxyStack, backends: dict[str, HTTPBackend], tmp_path: Path) -> None:
    """The probe (a `show proc` every second on the loop) gives a stopped master a second,
    not five, and a master that lives but does not answer is running, not an error: no
    warning per probe, and pool changes (the workers' admin socket) are applied meanwhile.
    Before, each probe blocked the loop for 5 s and logged `cannot ask its reload target
    whether it runs: TimeoutError: timed out`."""
    watch, metrics = _running(stack, tmp_path, backends)
    try:
        assert stack.proc is not None
        before = stack.status().reloads
        os.kill(stack.proc.pid, signal.SIGSTOP)
        try:
            time.sleep(1.5)  # a probe or two meet the stopped master
            stack.put_instance("web", "b", backends["b"].port)
            put = time.monotonic()
            wait_for(lambda: "b" in spread(stack.port, 4), timeout=10, interval=0.05)
            print(f"put -> served with the master stopped: {time.monotonic() - put:.2f} s")
            assert time.monotonic() - put < 2.5
            time.sleep(max(0.0, 6.0 - (time.monotonic() - put)))  # past a 5 s socket wait
            assert ready(metrics)[0] == 200  # the workers serve the file
        finally:
            os.kill(stack.proc.pid, signal.SIGCONT)
        out = watch.output()
        assert "cannot ask its reload target" not in out, out
        assert "rollback" not in out and "Traceback" not in out, out
        assert stack.status().reloads == before  # the pool changed at runtime
    finally:
        watch.stop()
