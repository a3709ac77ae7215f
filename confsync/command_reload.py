"""The plain reload target: `reload_cmd`, or `reload_signal` to a process.

A leaf beside confsync/processes.py: confsync/reload.py (which picks a resource's target) and
plugins that fall back to a command or signal (confsync/haproxy/control.py) both use it, and
neither imports the other.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Hashable, Sequence
from typing import TYPE_CHECKING

from confsync.commands import run_command
from confsync.placeholders import substitute
from confsync.processes import find_process, started_at
from confsync.targets import (
    NO_RELOAD,
    UNKNOWN_PROBE,
    Liveness,
    Probe,
    ReloadFailed,
    ReloadKind,
    ReloadResult,
    ReloadTarget,
    Sibling,
)

if TYPE_CHECKING:
    from confsync.resources import Resource

log = logging.getLogger(__name__)


def process_probe(pid: int | None, what: str, since: float | None) -> Probe:
    """A probe's answer from the process that would be reloaded (None: none runs)."""
    if pid is None:
        return Probe(Liveness.DOWN, f"no process for {what}")
    started = started_at(pid)
    if since is not None and started is not None and started > since:
        return Probe(Liveness.STARTED_SINCE, f"pid {pid} ({what}) started after the file was "
                     "in place")
    return Probe(Liveness.RUNNING, f"pid {pid} ({what}) runs")


class CommandReloader(ReloadTarget):
    """`reload_cmd`, or `reload_signal` to the process in `pidfile` / named `process`."""

    def __init__(self, resource: Resource) -> None:
        self.resource = resource
        # The process a probe found last, (pid, start time): looked at again before the
        # process table is (a `process` name is found by a scan of every process).
        self._last: tuple[int, float] | None = None

    def key(self) -> Hashable:
        r = self.resource
        if r.reload_cmd:
            return ("cmd", tuple(substitute(r.reload_cmd, r.dest, r.dest)))
        if r.reload_signal is not None:
            return ("signal", r.reload_signal, r.pidfile, r.process)
        return ("none", r.name)

    def probe(self, since: float | None, quick: bool = False, compare: bool = False) -> Probe:
        """A signal target is looked up as for a reload; a reload command cannot be asked.
        Nothing tells which file a process read (`compare` asks in vain): never STALE.

        The process found last is checked first (one /proc read); a `process` name is not
        searched for in a `quick` probe (a scan of every process, each second while it is
        down, is not cheap): the apply's own probe, on the retry backoff, finds it."""
        resource = self.resource
        if resource.reload_cmd or resource.reload_signal is None:
            return UNKNOWN_PROBE
        target = str(resource.pidfile or resource.process)
        last = self._last
        if last is not None and resource.pidfile is None and started_at(last[0]) == last[1]:
            pid: int | None = last[0]
        elif quick and resource.pidfile is None:
            return UNKNOWN_PROBE
        else:
            pid = find_process(resource.pidfile, resource.process)
        started = started_at(pid) if pid is not None else None
        self._last = (pid, started) if pid is not None and started is not None else None
        return process_probe(pid, target, since)

    def reload(self, previous: bytes | None = None, content: bytes | None = None,
               siblings: Sequence[Sibling] = ()) -> ReloadResult:
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
