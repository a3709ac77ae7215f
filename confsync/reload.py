"""The reload step: run `reload_cmd`, or send `reload_signal` to a process found with psutil."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from confsync.commands import run_command, substitute
from confsync.resources import Resource

log = logging.getLogger(__name__)


class ReloadFailed(Exception):
    """The reload failed. `untouched`: nothing was sent to the target (it still runs the
    previous file), so restoring the file needs no second reload."""

    def __init__(self, message: str, untouched: bool = False) -> None:
        super().__init__(message)
        self.untouched = untouched


def find_process(pidfile: Path | None, process: str | None) -> int | None:
    """The target pid: from a pidfile, else the oldest process whose name or argv[0] matches.

    Oldest, because for a master-worker daemon (HAProxy, nginx) the master is the one that
    started first and the one that must get the signal.
    """
    import psutil  # lazy: only signal-reloading resources pay for it

    if pidfile is not None:
        try:
            text = pidfile.read_text().split()
            pid = int(text[0]) if text else 0
        except (OSError, ValueError):
            return None
        return pid if pid > 0 and psutil.pid_exists(pid) else None
    if process is None:
        return None
    candidates = []
    for proc in psutil.process_iter(["name", "cmdline", "create_time", "ppid"]):
        info = proc.info
        argv0 = os.path.basename(info["cmdline"][0]) if info["cmdline"] else ""
        if process in (info["name"], argv0):
            candidates.append((info["create_time"] or 0.0, proc.pid, info["ppid"]))
    pids = {pid for _, pid, _ in candidates}
    roots = [c for c in candidates if c[2] not in pids]  # skip workers of a matching master
    return min(roots or candidates)[1] if candidates else None


def reload_resource(resource: Resource, previous: bytes | None = None,
                    content: bytes | None = None) -> str:
    """Perform the resource's reload action; return a short description of what was done.

    `previous` is the file the target was running and `content` the one just written (None:
    unknown). HAProxy resources (`master_socket` set or `reload_strategy = "runtime"`) use them
    to choose between a runtime API update and a confirmed reload.
    """
    if resource.master_socket is not None or resource.reload_strategy == "runtime":
        from confsync.haproxy.control import HAProxyReloadFailed, apply

        try:
            return apply(resource, previous, content, lambda: _plain_reload(resource))
        except HAProxyReloadFailed as exc:
            raise ReloadFailed(str(exc), untouched=exc.untouched) from None
    return _plain_reload(resource)


def _plain_reload(resource: Resource) -> str:
    if resource.reload_cmd:
        argv = substitute(resource.reload_cmd, resource.dest, resource.dest)
        result = run_command(argv, resource.reload_timeout)
        if not result.ok:
            raise ReloadFailed(result.describe(argv))
        return f"ran `{' '.join(argv)}` in {result.seconds * 1000:.0f} ms"
    if resource.reload_signal is not None:
        pid = find_process(resource.pidfile, resource.process)
        target = resource.pidfile or resource.process
        if pid is None:
            # Nothing to reload: the process will read the new file when it starts.
            log.warning("resource %s: no running process for %s; file updated, no signal sent",
                        resource.name, target)
            return f"no process for {target}"
        try:
            os.kill(pid, resource.reload_signal)
        except ProcessLookupError:
            return f"process {pid} exited before {resource.reload_signal.name}"
        except PermissionError as exc:
            raise ReloadFailed(f"cannot signal pid {pid}: {exc.strerror}") from None
        return f"sent {resource.reload_signal.name} to pid {pid}"
    return "no reload configured"


def reload_key(resource: Resource) -> tuple[object, ...] | None:
    """Resources whose reload is the same action share one reload per batch; None: no reload."""
    if resource.master_socket is not None:
        return ("haproxy-master", resource.master_socket)
    if resource.reload_cmd:
        return ("cmd", tuple(substitute(resource.reload_cmd, resource.dest, resource.dest)))
    if resource.reload_signal is not None:
        return ("signal", resource.reload_signal, resource.pidfile, resource.process)
    return None
