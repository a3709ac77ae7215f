"""A runtime command HAProxy took in and never did is noticed: real etcd, HAProxy and confsync.

HAProxy answers `set server ... state|weight` with nothing, and a worker that closes the
connection unread (stopping in a reload, the socket taken over) answers nothing too. Between
confsync and the admin socket sits a relay that loses one such command: it reads it to the
end and closes without a word, as that worker does.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from confsync.haproxy.runtime import AdminSocket, live_servers
from confsync.haproxy.sockets import query
from tests.support.etcd_server import EtcdMember
from tests.support.haproxy import HAProxyStack, spread
from tests.support.http_backends import HTTPBackend
from tests.support.unix_cli import UnixCLI

pytestmark = [pytest.mark.etcd, pytest.mark.haproxy]


class LosingRelay(UnixCLI):
    """A UNIX socket at `path` that passes each command on to `target` and its answer back,
    but the first command starting with `lose`: read, dropped, the connection closed."""

    def __init__(self, path: Path, target: Path, lose: str) -> None:
        self.target, self.lose = target, lose
        self.lost: list[str] = []
        super().__init__(path, self._relay)

    def _relay(self, command: str) -> str | None:
        if command.startswith(self.lose) and not self.lost:
            self.lost.append(command)
            return None
        return query(self.target, command, retry_for=1.0)


@pytest.fixture
def stack(haproxy_binary: str, etcd: EtcdMember) -> Iterator[HAProxyStack]:
    s = HAProxyStack(haproxy_binary, etcd.endpoint, strategy="runtime")
    yield s
    s.stop()


def _serving_a_and_b_through(stack: HAProxyStack, backends: dict[str, HTTPBackend],
                             lost: str) -> LosingRelay:
    """HAProxy serving instances a and b, confsync's runtime socket a relay that drops the
    first command starting with `lost` (read, never passed on, no answer)."""
    relay_path = stack.base / "relay.sock"
    toml = stack.confdir / "conf.d" / "haproxy.toml"
    toml.write_text(toml.read_text() + f'runtime_socket = "{relay_path}"\n')  # ([haproxy])
    stack.put_basics()
    for name in ("a", "b"):
        stack.put_instance("web", name, backends[name].port)
    stack.sync_ok()
    stack.start()
    return LosingRelay(relay_path, stack.admin, lost)


def test_a_state_ready_the_worker_dropped_ends_in_a_reload_that_serves_the_instance(
        stack: HAProxyStack, backends: dict[str, HTTPBackend]) -> None:
    """Taken for done, the lost `state ready` left the new instance in maintenance: the file
    said it served, HAProxy did not, and the probe (names, addresses, ports) saw nothing."""
    relay = _serving_a_and_b_through(stack, backends, "set server be_web/c state ready")
    try:
        reloads = stack.status().reloads
        stack.put_instance("web", "c", backends["c"].port)
        out = stack.sync_ok()
        assert relay.lost == ["set server be_web/c state ready"]
        assert "not the file's after the runtime commands" in out, out
        assert "reloaded HAProxy" in out, out
        assert stack.status().reloads == reloads + 1
        assert spread(stack.port, 9) == {"a": 3, "b": 3, "c": 3}
    finally:
        relay.close()


def test_a_move_cut_off_after_its_drain_ends_in_a_reload_that_serves_the_file(
        stack: HAProxyStack, backends: dict[str, HTTPBackend]) -> None:
    """The admin socket fails a move midway (its `set server addr` read and dropped, the
    server drained): the reload that follows serves the server at its new address, ready."""
    relay = _serving_a_and_b_through(stack, backends, "set server be_web/a addr")
    try:
        reloads = stack.status().reloads
        stack.put_instance("web", "a", backends["c"].port)
        out = stack.sync_ok()
        assert relay.lost and "reloaded HAProxy" in out, out
        assert stack.status().reloads == reloads + 1
        assert spread(stack.port, 6) == {"b": 3, "c": 3}
        a = live_servers(AdminSocket(stack.admin))["be_web"]["a"]
        assert (a.port, a.maint, a.drain) == (backends["c"].port, False, False)
    finally:
        relay.close()


def test_an_enable_health_the_worker_dropped_ends_in_a_reload_that_checks_the_instance(
        stack: HAProxyStack, backends: dict[str, HTTPBackend]) -> None:
    """A dynamic server starts with its health check off; the `enable health` after its `add
    server` answers nothing when it works. Lost, the instance served unchecked (a dead one
    would take requests) and the read-back, which compared no health-check state, said done."""
    relay = _serving_a_and_b_through(stack, backends, "enable health be_web/c")
    try:
        reloads = stack.status().reloads
        stack.put_instance("web", "c", backends["c"].port)
        out = stack.sync_ok()
        assert relay.lost == ["enable health be_web/c"]
        assert "not the file's after the runtime commands" in out, out
        assert stack.status().reloads == reloads + 1
        assert live_servers(AdminSocket(stack.admin))["be_web"]["c"].checked
    finally:
        relay.close()
