"""The reload step: which target a resource reloads through, and the plain one.

`target_for(resource)` returns the resource's plugin target (`[haproxy]` ...) when it has a
plugin table, else a `CommandReloader` for `reload_cmd` / `reload_signal`, else None.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Hashable
from typing import TYPE_CHECKING

from confsync.commands import run_command, substitute
from confsync.processes import find_process
from confsync.targets import (
    NO_RELOAD,
    ReloadFailed,
    ReloadKind,
    ReloadResult,
    ReloadTarget,
    plugin,
)

if TYPE_CHECKING:
    from confsync.resources import Resource

log = logging.getLogger(__name__)

__all__ = ["CommandReloader", "ReloadFailed", "has_reload_action", "target_for"]


class CommandReloader(ReloadTarget):
    """`reload_cmd`, or `reload_signal` to the process in `pidfile` / named `process`."""

    def __init__(self, resource: Resource) -> None:
        self.resource = resource

    def key(self) -> Hashable:
        r = self.resource
        if r.reload_cmd:
            return ("cmd", tuple(substitute(r.reload_cmd, r.dest, r.dest)))
        if r.reload_signal is not None:
            return ("signal", r.reload_signal, r.pidfile, r.process)
        return ("none", r.name)

    def reload(self, previous: bytes | None = None,
               content: bytes | None = None) -> ReloadResult:
        resource = self.resource
        if resource.reload_cmd:
            argv = substitute(resource.reload_cmd, resource.dest, resource.dest)
            result = run_command(argv, resource.reload_timeout)
            if not result.ok:
                raise ReloadFailed(result.describe(argv))
            return ReloadResult(ReloadKind.COMMAND,
                                f"ran `{' '.join(argv)}` in {result.seconds * 1000:.0f} ms")
        if resource.reload_signal is not None:
            pid = find_process(resource.pidfile, resource.process)
            target = resource.pidfile or resource.process
            if pid is None:
                # Nothing to reload: the process will read the new file when it starts.
                log.warning("resource %s: no running process for %s; file updated, no signal "
                            "sent", resource.name, target)
                return ReloadResult(ReloadKind.NO_TARGET, f"no process for {target}")
            try:
                os.kill(pid, resource.reload_signal)
            except ProcessLookupError:
                return ReloadResult(ReloadKind.NO_TARGET,
                                    f"process {pid} exited before {resource.reload_signal.name}")
            except PermissionError as exc:
                raise ReloadFailed(f"cannot signal pid {pid}: {exc.strerror}") from None
            return ReloadResult(ReloadKind.SIGNAL,
                                f"sent {resource.reload_signal.name} to pid {pid}")
        return NO_RELOAD


def has_reload_action(resource: Resource) -> bool:
    """True when the resource reloads something itself (exec mode must then leave it alone)."""
    return resource.plugin is not None or bool(resource.reload_cmd) or (
        resource.reload_signal is not None)


def target_for(resource: Resource) -> ReloadTarget | None:
    """The resource's reload target; None when it has no reload action."""
    if resource.plugin is not None:
        return plugin(resource.plugin.table).target(resource)
    if resource.reload_cmd or resource.reload_signal is not None:
        return CommandReloader(resource)
    return None
