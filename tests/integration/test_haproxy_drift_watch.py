"""HAProxy's servers changed by hand under a running `confsync watch`, with etcd quiet.

Drift in HAProxy's live servers (a `del server`, a `set server ... addr`, a server added by
hand in a backend of the file) was brought back to etcd's state only by the next pool change,
days later for a stable pool, while /ready said 200. The daemon now compares them with the file
every few seconds (`TARGET_COMPARE_SECONDS`) and heals them through the runtime API, with one
WARNING an episode and `confsync_reload_target_drifts_total`. Weight and admin state set by
hand are no drift: an operator's `disable server` stays.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from confsync.haproxy.runtime import AdminSocket, live_servers
from tests.support.daemon import WatchProcess
from tests.support.etcd_server import EtcdMember, free_port
from tests.support.haproxy import HAProxyStack, http_get, spread, wait_for
from tests.support.haproxy_watched import watched_haproxy
from tests.support.http_backends import HTTPBackend
from tests.support.http_probe import ready, series_value

pytestmark = [pytest.mark.etcd, pytest.mark.haproxy]

# (The same difference again soon after is said at INFO.)
WARNED = "WARNING resource haproxy: HAProxy's servers are not the file's: "
DRIFTS = 'confsync_reload_target_drifts_total{resource="haproxy"}'
# Bound on a repair: a comparison every 5 s, the debounce, a health check to pass; generous
# for a loaded CI host (it asks whether it happens, not how fast).
HEALED_WITHIN = 45.0


@pytest.fixture
def watched(haproxy_binary: str, etcd: EtcdMember, backends: dict[str, HTTPBackend],
            tmp_path: Path) -> Iterator[tuple[HAProxyStack, WatchProcess, int]]:
    def fill(stack: HAProxyStack) -> None:
        for name in ("a", "b", "c"):
            stack.put_instance("web", name, backends[name].port)

    metrics = free_port()
    with watched_haproxy(haproxy_binary, etcd.endpoint, tmp_path / "watch.log", fill,
                         ("--metrics-address", f"127.0.0.1:{metrics}")) as (stack, daemon):
        wait_for(lambda: ready(metrics)[0] == 200, timeout=15)
        wait_for(lambda: set(spread(stack.port, 9)) == {"a", "b", "c"}, timeout=15)
        yield stack, daemon, metrics


def _servers(stack: HAProxyStack) -> dict[str, tuple[str, int, bool]]:
    """be_web's servers as HAProxy runs them: name -> (address, port, in maintenance)."""
    return {name: (s.address, s.port, s.maint)
            for name, s in live_servers(AdminSocket(stack.admin))["be_web"].items()}


def _serves_all(stack: HAProxyStack) -> bool:
    return set(spread(stack.port, 9)) == {"a", "b", "c"}


def test_a_server_deleted_by_hand_is_restored_without_an_etcd_change(
        watched: tuple[HAProxyStack, WatchProcess, int],
        backends: dict[str, HTTPBackend]) -> None:
    stack, daemon, metrics = watched
    reloads = stack.status().reloads
    stack.admin_command("set server be_web/b state maint")
    assert "Server deleted" in stack.admin_command("del server be_web/b")
    deleted = time.monotonic()
    wait_for(lambda: "b" in _servers(stack), timeout=HEALED_WITHIN)
    print(f"del server by hand -> back in HAProxy: {time.monotonic() - deleted:.2f} s")
    wait_for(lambda: _serves_all(stack), timeout=HEALED_WITHIN)
    assert _servers(stack)["b"] == ("127.0.0.1", backends["b"].port, False)
    daemon.wait_log(WARNED)
    said = daemon.output()
    assert "be_web/b is not in HAProxy" in said
    assert series_value(metrics, DRIFTS) == 1.0
    assert stack.status().reloads == reloads  # through the runtime API
    assert ready(metrics)[0] == 200

    # Another difference is a WARNING of its own; the same one again soon after (a script
    # undoing the repair) is healed and counted, and said at INFO: no WARNING a repair.
    stack.admin_command("set server be_web/c state maint")
    assert "Server deleted" in stack.admin_command("del server be_web/c")
    wait_for(lambda: _serves_all(stack), timeout=HEALED_WITHIN)
    daemon.wait_log(WARNED, count=2)
    stack.admin_command("set server be_web/b state maint")
    assert "Server deleted" in stack.admin_command("del server be_web/b")
    wait_for(lambda: series_value(metrics, DRIFTS) == 3.0, timeout=HEALED_WITHIN)
    wait_for(lambda: _serves_all(stack), timeout=HEALED_WITHIN)
    said = daemon.output()
    assert said.count(WARNED) == 2 and f"{WARNED}be_web/c is not in HAProxy (changed by " \
        "hand?); bringing it in step with the file" in said
    assert stack.status().reloads == reloads
    assert ready(metrics)[0] == 200
    assert "Traceback" not in said


def test_a_server_moved_by_hand_is_moved_back(
        watched: tuple[HAProxyStack, WatchProcess, int],
        backends: dict[str, HTTPBackend]) -> None:
    stack, daemon, metrics = watched
    reloads = stack.status().reloads
    stack.admin_command(f"set server be_web/b addr 127.0.0.1 port {backends['c'].port}")
    assert _servers(stack)["b"][1] == backends["c"].port
    wait_for(lambda: _servers(stack)["b"] == ("127.0.0.1", backends["b"].port, False),
             timeout=HEALED_WITHIN)
    wait_for(lambda: _serves_all(stack), timeout=HEALED_WITHIN)
    daemon.wait_log(WARNED)
    assert f"HAProxy runs be_web/b at 127.0.0.1:{backends['c'].port}" in daemon.output()
    assert stack.status().reloads == reloads
    assert ready(metrics)[0] == 200


def test_a_server_added_by_hand_in_a_backend_of_the_file_is_taken_out(
        watched: tuple[HAProxyStack, WatchProcess, int],
        backends: dict[str, HTTPBackend]) -> None:
    stack, daemon, _ = watched
    reloads = stack.status().reloads
    assert "New server registered" in stack.admin_command(
        f"add server be_web/x 127.0.0.1:{backends['a'].port}")
    stack.admin_command("set server be_web/x state ready")
    assert "x" in _servers(stack)
    wait_for(lambda: "x" not in _servers(stack), timeout=HEALED_WITHIN)
    daemon.wait_log(WARNED)
    assert "HAProxy runs be_web/x, the file does not" in daemon.output()
    assert stack.status().reloads == reloads
    assert _serves_all(stack)


def test_an_operators_disable_server_stays(
        watched: tuple[HAProxyStack, WatchProcess, int],
        backends: dict[str, HTTPBackend]) -> None:
    """Maintenance (and weight) set by hand is the operator's, as at a pool change: not
    drift, never undone by the comparison, no WARNING. A drift found after it (c deleted)
    shows a comparison ran meanwhile."""
    stack, daemon, metrics = watched
    stack.admin_command("disable server be_web/b")
    stack.admin_command("set server be_web/a weight 5")
    stack.admin_command("set server be_web/c state maint")
    assert "Server deleted" in stack.admin_command("del server be_web/c")
    wait_for(lambda: "c" in _servers(stack), timeout=HEALED_WITHIN)
    wait_for(lambda: set(spread(stack.port, 9)) == {"a", "c"}, timeout=HEALED_WITHIN)
    daemon.wait_log(WARNED)
    said = daemon.output()
    assert said.count(WARNED) == 1 and "be_web/c is not in HAProxy" in said
    assert "be_web/b" not in said
    assert _servers(stack)["b"][2]  # still in maintenance
    assert live_servers(AdminSocket(stack.admin))["be_web"]["a"].weight == 5
    assert series_value(metrics, DRIFTS) == 1.0
    assert ready(metrics)[0] == 200
    assert http_get(stack.port)[0] == 200


def test_the_only_server_moved_by_hand_is_moved_back_by_a_confirmed_reload(
        watched: tuple[HAProxyStack, WatchProcess, int],
        backends: dict[str, HTTPBackend]) -> None:
    """Where the runtime API cannot heal (the only server serving its pool: a move's steps
    take it out of the pool, a 503 a request), a confirmed reload does, as at a pool change."""
    stack, daemon, metrics = watched
    stack.delete("/services/web/instances/b")
    stack.delete("/services/web/instances/c")
    wait_for(lambda: set(_servers(stack)) == {"a"}, timeout=15)
    reloads = stack.status().reloads
    stack.admin_command(f"set server be_web/a addr 127.0.0.1 port {backends['b'].port}")
    assert spread(stack.port, 3) == {"b": 3}
    wait_for(lambda: stack.status().reloads > reloads, timeout=HEALED_WITHIN)
    wait_for(lambda: spread(stack.port, 3) == {"a": 3}, timeout=HEALED_WITHIN)
    assert _servers(stack)["a"] == ("127.0.0.1", backends["a"].port, False)
    daemon.wait_log(WARNED)
    assert "reloaded HAProxy" in daemon.output()
    assert stack.status().reloads == reloads + 1
    assert ready(metrics)[0] == 200
