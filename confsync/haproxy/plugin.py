"""The HAProxy reload plugin: the `[haproxy]` table of a resource file and its target.

    [haproxy]
    master_socket = "/run/haproxy-master.sock"   # confirmed reloads through the master CLI
    reload_strategy = "runtime"                  # pool changes through the runtime API
    check_server_changes = false                 # proven server-only changes skip check_cmd
    runtime_socket = "/run/haproxy/admin.sock"   # default: the file's `stats socket`

Found by confsync/targets.py through the table name; the core never imports this package.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import TYPE_CHECKING, Any

from confsync.haproxy.control import HAProxyController
from confsync.haproxy.settings import HAProxySettings, parse_settings

if TYPE_CHECKING:
    from confsync.resources import Resource


class HAProxyPlugin:
    def parse(self, source: str, table: Mapping[str, Any], template: Mapping[str, Any],
              where: str) -> Hashable:
        return parse_settings(source, table, template, where)

    def target(self, resource: Resource) -> HAProxyController:
        settings = resource.plugin.settings if resource.plugin is not None else None
        if not isinstance(settings, HAProxySettings):
            raise TypeError(f"resource {resource.name} has no [haproxy] settings")
        return HAProxyController(resource, settings)


PLUGIN = HAProxyPlugin()
