"""HAProxy changed by someone else while confsync keeps its pools: restarted (`systemctl
restart`, an OOM kill and restart), reloaded (`systemctl reload`: SIGUSR2 to the master),
stopped while changes arrive, or started after confsync. The promise in each case: once the
outside event is over, what HAProxy serves is what etcd says, with no manual action.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.etcd_server import EtcdMember
from tests.support.haproxy import HAProxyStack, spread
from tests.support.http_backends import HTTPBackend

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
    # Runtime-only changes: b moves to another address, a goes to maintenance.
    stack.put_instance("web", "b", backends["c"].port)
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
