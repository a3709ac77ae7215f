"""Reload plugins by the resource-file table they own (`[haproxy]`), found by name.

Apart from targets.py (the reload interface), so that loading conf.d needs neither that
interface nor a plugin: `once` reads resources before it asks etcd, and every module imported
before that request is on its critical path.
"""

from __future__ import annotations

import importlib
from collections.abc import Hashable
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from confsync.targets import TargetPlugin


# A NamedTuple, not a dataclass: one `exec` to create, where a frozen dataclass's six (one
# per generated method, Python 3.11) were ~0.3 ms of every one-shot run (issue 11).
class PluginConfig(NamedTuple):
    """A plugin's parsed table, carried on the Resource (settings must be hashable)."""

    table: str
    settings: Hashable


# table name -> (module holding `PLUGIN`, keys once spelt in [template], still accepted)
_PLUGINS: dict[str, tuple[str, tuple[str, ...]]] = {
    "haproxy": ("confsync.haproxy.plugin",
                ("master_socket", "reload_strategy", "check_server_changes", "runtime_socket")),
}


def plugin_tables() -> tuple[str, ...]:
    return tuple(_PLUGINS)


def plugin_modules() -> tuple[str, ...]:
    """The modules `plugin()` imports by name (the long-running commands import them at start)."""
    return tuple(module for module, _ in _PLUGINS.values())


def legacy_keys() -> dict[str, str]:
    """`[template]` key -> the plugin table it belongs to now."""
    return {key: table for table, (_, keys) in _PLUGINS.items() for key in keys}


def plugin(table: str) -> TargetPlugin:
    module = importlib.import_module(_PLUGINS[table][0])
    found: TargetPlugin = module.PLUGIN
    return found
