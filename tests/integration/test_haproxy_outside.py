"""HAProxy changed by someone else while confsync keeps its pools: restarted (`systemctl
restart`, an OOM kill and restart), reloaded (`systemctl reload`: SIGUSR2 to the master),
stopped while changes arrive, or started after confsync. The promise in each case: once the
outside event is over, what HAProxy serves is what etcd says, with no manual action.
"""

from __future__ import annotations

import json
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.daemon import WatchProcess
from tests.support.etcd_server import EtcdMember, free_port
from tests.support.haproxy import HAProxyStack, spread, wait_for
from tests.support.http_backends import HTTPBackend
from tests.support.http_probe import haproxy_not_running, ready

pytestmark = [pytest.mark.etcd, pytest.mark.haproxy]


@pytest.fixture
def stack(haproxy_binary: str, etcd: EtcdMember) -> Iterator[HAProxyStack]:
    s = HAProxyStack(haproxy_binary, etcd.endpoint, strategy="runtime")
    yield s
    s.stop()


@pytest.mark.parametrize("outside", ["reload", "restart"])
def test_runtime_changes_survive_a_reload_or_restart_by_someone_else(
        stack: HAProxyStack, backends: dict[str, HTTPBackend], outside: str) -> None:
    stack.put_basics()
    stack.put_instance("web", "a", backends["a"].port)
    stack.put_instance("web", "b", backends["b"].port)
    stack.sync_ok()
    stack.start()
    stack.put("/services/web/config", {"check_path": "/healthz", "check_interval": "1s"})
    assert "reloaded HAProxy" in stack.sync_ok()  # our reload saves the server-state file
    # b moves to another address, then a goes to maintenance (both runtime: a serves while b
    # moves; the state file is saved after each pass).
    stack.put_instance("web", "b", backends["c"].port)
    assert "runtime API" in stack.sync_ok()
    wait_for(lambda: "c" in spread(stack.port, 2), timeout=10)  # (once its check passes there)
    stack.put_instance("web", "a", backends["a"].port, state="maint")
    assert "runtime API" in stack.sync_ok()
    reloads = stack.status().reloads

    if outside == "reload":
        stack.reload_by_signal()
        assert stack.status().reloads == reloads + 1
    else:
        stack.restart()
    # HAProxy read the file and the server-state file: it must not bring back b's old address
    # (2.6 lets a state file override the config's address).
    state = stack.admin_command("show servers state be_web")
    assert f" {backends['c'].port} " in state and f" {backends['b'].port} " not in state, state
    assert spread(stack.port, 6) == {"c": 6}






def test_servers_of_another_file_keep_their_saved_state(
        stack: HAProxyStack, backends: dict[str, HTTPBackend]) -> None:
    """HAProxy loads a second file confsync does not write (`-f haproxy.cfg -f other.cfg`).
    Saving the server state for our file dropped every line of the other file's backends,
    so after any reload its servers lost what HAProxy knew of them: one known DOWN was sent
    traffic again until its checks failed anew (a slot filled at runtime came back empty)."""
    other = stack.base / "other.cfg"
    other.write_text(f"backend be_other\n    balance roundrobin\n"
                     f"    server x 127.0.0.1:{free_port()} check inter 100ms\n")
    stack.others = (other,)
    stack.put_basics()
    stack.put_instance("web", "a", backends["a"].port)
    stack.sync_ok()
    stack.start()
    down = "be_other 1 x 127.0.0.1 0 "  # srv_op_state 0: stopped (its checks fail)
    wait_for(lambda: down in stack.admin_command("show servers state be_other"), timeout=5)

    stack.put_instance("web", "b", backends["b"].port)
    assert "runtime API" in stack.sync_ok()  # saves the state file
    assert down in stack.state.read_text()
    stack.reload_by_signal()
    assert down in stack.admin_command("show servers state be_other")
    assert spread(stack.port, 4) == {"a": 2, "b": 2}


def _metric(port: int, line: str) -> bool:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as answer:
        return line in answer.read().decode().splitlines()


@pytest.fixture
def daemon(stack: HAProxyStack, tmp_path: Path) -> Iterator[tuple[WatchProcess, int]]:
    """`confsync watch` on the stack with /ready and /metrics; HAProxy is the test's business."""
    stack.put_basics()
    metrics = free_port()
    process = WatchProcess(*stack.cli_args(), "--wait-min", "20ms", "--wait-max", "500ms",
                           "--metrics-address", f"127.0.0.1:{metrics}",
                           log=tmp_path / "watch.log")
    try:
        yield process, metrics
    finally:
        process.stop()


def _checks(haproxy: str, path: Path) -> bool:
    return subprocess.run([haproxy, "-c", "-q", "-f", str(path)], capture_output=True,
                          timeout=30).returncode == 0


@pytest.mark.parametrize("when", ["stopped", "not-yet-started"])
def test_changes_while_haproxy_is_down_are_reported_and_served_once_it_is_back(
        stack: HAProxyStack, daemon: tuple[WatchProcess, int],
        backends: dict[str, HTTPBackend], haproxy_binary: str, when: str) -> None:
    watch, metrics = daemon
    stack.put_instance("web", "a", backends["a"].port)
    watch.wait_log("watching /", timeout=15)
    wait_for(lambda: stack.cfg.exists() and "server a " in stack.cfg.read_text(), timeout=10)
    if when == "stopped":  # running, then stopped by someone else
        stack.start()
        wait_for(lambda: ready(metrics)[0] == 200, timeout=10)
        stack.halt()
    # else: boot order, confsync first and HAProxy a few seconds later

    unserved = f"resource haproxy: wrote {stack.cfg} (no HAProxy master"
    writes = watch.output().count(unserved)
    txn = stack.client.transactions
    stack.client.transaction(compare=[], failure=[], success=[  # one revision, one write
        txn.put(f"{stack.prefix}/services/web/instances/b",
                json.dumps({"address": "127.0.0.1", "port": backends["b"].port})),
        txn.delete(f"{stack.prefix}/services/web/instances/a")])
    watch.wait_log(unserved, count=writes + 1)
    # The file is current (kept, not rolled back, valid) and confsync says nothing serves it.
    text = stack.cfg.read_text()
    assert "server b " in text and "server a " not in text
    assert _checks(haproxy_binary, stack.cfg)
    assert ready(metrics)[0] == 503 and haproxy_not_running(metrics)
    assert _metric(metrics, 'confsync_reload_target_up{resource="haproxy"} 0.0')

    stack.start()  # by someone else, from the file on disk
    assert spread(stack.port, 4) == {"b": 4}
    # confsync asks again (retry backoff) and finds it: ready again, no manual action.
    wait_for(lambda: ready(metrics)[0] == 200, timeout=10)
    assert _metric(metrics, 'confsync_reload_target_up{resource="haproxy"} 1.0')
    # And pool changes reach it through the runtime API as usual.
    stack.put_instance("web", "c", backends["c"].port)
    wait_for(lambda: spread(stack.port, 4) == {"b": 2, "c": 2}, timeout=10)
    assert "Traceback" not in watch.output()


def test_outside_reload_while_a_removed_server_is_parked(
        stack: HAProxyStack, daemon: tuple[WatchProcess, int],
        backends: dict[str, HTTPBackend]) -> None:
    watch, metrics = daemon
    stack.put_instance("web", "a", backends["a"].port)
    stack.put_instance("web", "b", backends["b"].port)
    watch.wait_log("watching /", timeout=15)
    wait_for(lambda: stack.cfg.exists() and "server b " in stack.cfg.read_text(), timeout=10)
    stack.start()
    wait_for(lambda: ready(metrics)[0] == 200, timeout=10)
    assert spread(stack.port, 6) == {"a": 3, "b": 3}  # leaves idle connections to b
    stack.delete("/services/web/instances/b")
    wait_for(lambda: spread(stack.port, 4) == {"a": 4}, timeout=10)
    # b stays parked in maintenance while HAProxy holds connections to it, and is deleted at
    # once when it holds none: which one depends on HAProxy's connection reuse, not on us.
    # Either way b takes no traffic, and the outside reload below must converge.
    parked = [line.split() for line in stack.admin_command("show servers state be_web")
              .splitlines() if " b " in line]
    assert not parked or int(parked[0][6]) & 1, parked  # parked: in maintenance

    stack.reload_by_signal()  # `systemctl reload haproxy` while b is parked
    reloads = stack.status().reloads
    assert spread(stack.port, 4) == {"a": 4}
    stack.put_instance("web", "b", backends["c"].port)  # the same id comes back elsewhere
    wait_for(lambda: spread(stack.port, 4) == {"a": 2, "c": 2}, timeout=10)
    stack.delete("/services/web/instances/a")
    wait_for(lambda: spread(stack.port, 4) == {"c": 4}, timeout=10)
    assert stack.status().reloads == reloads  # all through the runtime API
    assert ready(metrics)[0] == 200
    assert "Traceback" not in watch.output()


def test_a_package_upgrade_that_replaces_the_config_and_restarts_haproxy_is_undone(
        stack: HAProxyStack, daemon: tuple[WatchProcess, int],
        backends: dict[str, HTTPBackend]) -> None:
    """`apt-get upgrade haproxy` taking the maintainer's haproxy.cfg (or a config-management
    run writing its own) and restarting HAProxy: nothing in etcd changes, yet within about a
    heartbeat HAProxy serves etcd's pool again."""
    watch, metrics = daemon
    stack.put_instance("web", "a", backends["a"].port)
    watch.wait_log("watching /", timeout=15)
    wait_for(lambda: stack.cfg.exists() and "server a " in stack.cfg.read_text(), timeout=10)
    stack.start()
    wait_for(lambda: ready(metrics)[0] == 200, timeout=10)
    assert spread(stack.port, 4) == {"a": 4}

    packaged = stack.cfg.with_name("haproxy.cfg.dpkg-new")
    packaged.write_text(
        "global\n"
        f"    stats socket {stack.admin} mode 600 level admin\n"
        "defaults\n    mode http\n    timeout connect 1s\n    timeout client 5s\n"
        "    timeout server 5s\n"
        f"frontend main\n    bind 127.0.0.1:{stack.port}\n    default_backend be_pkg\n"
        f"backend be_pkg\n    server b 127.0.0.1:{backends['b'].port}\n")
    packaged.replace(stack.cfg)
    stack.restart()  # the package's postinst
    wait_for(lambda: "server a " in stack.cfg.read_text(), timeout=5)
    wait_for(lambda: spread(stack.port, 4) == {"a": 4}, timeout=10)
    watch.wait_log("edited outside confsync", timeout=5)
    wait_for(lambda: ready(metrics)[0] == 200, timeout=10)
    assert "Traceback" not in watch.output()
