"""The reload step: which target a resource reloads through.

`target_for(resource)` returns the resource's plugin target (`[haproxy]` ...) when it has a
plugin table, else a `CommandReloader` (confsync/command_reload.py) for `reload_cmd` /
`reload_signal`, else None.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from confsync.plugins import plugin
from confsync.targets import ReloadFailed, ReloadTarget

if TYPE_CHECKING:
    from confsync.command_reload import CommandReloader
    from confsync.resources import Resource

__all__ = ["CommandReloader", "ReloadFailed", "has_reload_action", "target_for"]


def has_reload_action(resource: Resource) -> bool:
    """True when the resource reloads something itself (exec mode must then leave it alone)."""
    return resource.plugin is not None or bool(resource.reload_cmd) or (
        resource.reload_signal is not None)


def target_for(resource: Resource) -> ReloadTarget | None:
    """The resource's reload target; None when it has no reload action."""
    if resource.plugin is not None:
        return plugin(resource.plugin.table).target(resource)
    if resource.reload_cmd or resource.reload_signal is not None:
        # Imported for a resource that reloads: a `once` with none never loads the command
        # runner and `subprocess` (the daemon preloads it: LAZY_MODULES).
        from confsync.command_reload import CommandReloader

        return CommandReloader(resource)
    return None


def __getattr__(name: str) -> Any:
    """`confsync.reload.CommandReloader`, imported when asked for (see `target_for`)."""
    if name == "CommandReloader":
        from confsync.command_reload import CommandReloader

        return CommandReloader
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
