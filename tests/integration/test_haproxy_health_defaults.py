"""The health check a `defaults` section's `default-server` gives: real etcd, HAProxy, confsync.

HAProxy gives each server the `default-server` options of the `defaults` section before its
backend (a new `defaults` section starts afresh), then those of its backend's `default-server`
lines above it, in order. The runtime pass compares the health check of the servers etcd
changed with the file's: read from the backend's last `default-server` line alone, a weight
change etcd made sent `disable health` to a server the file checks.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from confsync.haproxy.runtime import AdminSocket, LiveServer, live_servers
from tests.support.etcd_server import EtcdMember
from tests.support.haproxy import HAProxyStack
from tests.support.http_backends import HTTPBackend

pytestmark = [pytest.mark.etcd, pytest.mark.haproxy]

CHECKED_BY_DEFAULTS = """\
global
    stats socket @ADMIN@ mode 600 level admin
defaults
    mode http
    timeout connect 2s
    timeout client 10s
    timeout server 10s
    default-server check inter 1s init-addr last,libc,none
frontend main
    bind {{ getv("/haproxy/bind") }}
    default_backend be_web
backend be_web
    balance roundrobin
{% for name in ls("/haproxy/servers") %}
    server {{ name | identifier }} 127.0.0.1:{{ getv("/haproxy/servers/" ~ name) | port }} \
weight {{ getv("/haproxy/weights/" ~ name, "10") | integer(0, 256) }}
{% endfor %}
"""


def _servers(stack: HAProxyStack) -> dict[str, LiveServer]:
    return live_servers(AdminSocket(stack.admin))["be_web"]


def test_a_server_checked_by_the_defaults_section_stays_checked_when_etcd_changes_it(
        haproxy_binary: str, etcd: EtcdMember, backends: dict[str, HTTPBackend],
        tmp_path: Path) -> None:
    template = tmp_path / "checked-by-defaults.tmpl"
    stack = HAProxyStack(haproxy_binary, etcd.endpoint, strategy="runtime", template=template)
    template.write_text(CHECKED_BY_DEFAULTS.replace("@ADMIN@", str(stack.admin)))
    try:
        stack.put("/haproxy/bind", f"127.0.0.1:{stack.port}")
        for name in ("a", "b"):
            stack.put(f"/haproxy/servers/{name}", str(backends[name].port))
        stack.sync_ok()
        stack.start()
        assert {n: s.checked for n, s in _servers(stack).items()} == {"a": True, "b": True}
        reloads = stack.status().reloads
        # A weight etcd changed, and a server etcd added: runtime commands, no reload
        stack.put("/haproxy/weights/a", "20")
        stack.put("/haproxy/servers/c", str(backends["c"].port))
        stack.sync_ok()
        servers = _servers(stack)
        assert stack.status().reloads == reloads
        assert servers["a"].weight == 20
        # The file checks all three, as HAProxy would after a reload
        assert {n: s.checked for n, s in servers.items()} == {"a": True, "b": True, "c": True}
    finally:
        stack.stop()
