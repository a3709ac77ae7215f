"""Decide how a new HAProxy config goes live: runtime API, confirmed reload, or nothing.

- `reload_strategy = "runtime"` and only servers changed inside existing backends: apply them
  on the admin socket, no reload (the file is written all the same).
- Otherwise, or when a runtime command fails: refuse binds on ports another process holds, save
  the server state for the new config, reload through the master CLI (or SIGUSR2 to the master)
  and wait for `show proc` to confirm it.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import socket
from collections.abc import Callable
from pathlib import Path

import psutil

from confsync.haproxy.config_model import HAProxyConfig, parse, runtime_changes
from confsync.haproxy.master_cli import ReloadNotConfirmed, reload_confirmed, show_proc
from confsync.haproxy.runtime import (
    AdminSocket,
    RuntimeApplyFailed,
    drop_server_state,
    reconcile,
    save_server_state,
)
from confsync.haproxy.sockets import SocketUnavailable
from confsync.resources import Resource

log = logging.getLogger(__name__)


class HAProxyReloadFailed(Exception):
    """The new config could not go live; the caller restores the previous file.

    `untouched`: refused before anything was sent to HAProxy (a bind check).
    """

    def __init__(self, message: str, untouched: bool = False) -> None:
        super().__init__(message)
        self.untouched = untouched


def _bind_endpoints(token: str) -> list[tuple[int, str, int]]:
    """(family, address, port) for each port of a TCP `bind` token; [] for UNIX/abns/fd binds."""
    family = socket.AF_UNSPEC
    for prefix, fam in (("ipv4@", socket.AF_INET), ("ipv6@", socket.AF_INET6)):
        if token.startswith(prefix):
            token, family = token[len(prefix):], fam
    if "@" in token or token.startswith("/"):
        return []
    host, sep, ports = token.rpartition(":")
    if not sep:
        return []
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if host in ("", "*"):
        host = "::" if family == socket.AF_INET6 else "0.0.0.0"
    first, _, last = ports.partition("-")
    if not first.isdigit() or (last and not last.isdigit()):
        return []
    numbers = range(int(first), int(last or first) + 1)
    out: list[tuple[int, str, int]] = []
    for port in list(numbers)[:256]:
        for info in socket.getaddrinfo(host, port, family, socket.SOCK_STREAM):
            out.append((info[0], str(info[4][0]), port))
    return out


def _port_holder(port: int) -> tuple[int | None, str]:
    """Pid and name of the process listening on TCP `port`, as far as psutil can tell."""
    try:
        for conn in psutil.net_connections(kind="tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port:
                if conn.pid is None:
                    return None, "unknown process"
                try:
                    return conn.pid, psutil.Process(conn.pid).name()
                except psutil.Error:
                    return conn.pid, "?"
    except psutil.Error:
        pass
    return None, "unknown process"


def _family(master_pid: int | None) -> set[int]:
    if master_pid is None:
        return set()
    try:
        master = psutil.Process(master_pid)
        return {master_pid, *(p.pid for p in master.children(recursive=True))}
    except psutil.Error:
        return set()


def check_binds_free(old: HAProxyConfig | None, new: HAProxyConfig,
                     master_pid: int | None) -> None:
    """Raise HAProxyReloadFailed if a `bind` of `new` is on a port another process holds.

    `haproxy -c` passes such a config, and the reload then pauses every listener for about 2 s
    and fails (measured on 2.6). Ports held by this HAProxy itself are fine.
    """
    ours: set[int] | None = None
    for token in new.binds:
        if old is not None and token in old.binds:
            continue  # the running config binds it already
        try:
            endpoints = _bind_endpoints(token)
        except OSError as exc:
            raise HAProxyReloadFailed(f"bind {token}: cannot resolve: {exc}",
                                      untouched=True) from None
        for family, address, port in endpoints:
            with socket.socket(family, socket.SOCK_STREAM) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    probe.bind((address, port))
                    continue
                except OSError as exc:
                    if exc.errno != errno.EADDRINUSE:
                        raise HAProxyReloadFailed(f"bind {token}: {exc.strerror}",
                                                  untouched=True) from None
            pid, name = _port_holder(port)
            ours = _family(master_pid) if ours is None else ours
            if pid is not None and pid in ours:
                continue  # moved from another frontend, or the previous file is unknown
            raise HAProxyReloadFailed(
                f"bind {token}: port {port} is held by {name}"
                f"{f' (pid {pid})' if pid is not None else ''}; refusing to reload into it",
                untouched=True)


def server_only_change(previous: bytes | None, content: bytes) -> bool:
    """True when `content` differs from `previous` only in servers the runtime API can apply.

    Meant for the applier: such a file needs no `haproxy -c` (about 40-80 ms, most of the
    put -> served latency) when `previous` passed it, because everything else is byte-equal and
    each server line is re-validated here (IP, port, weight range, same options as before).
    """
    if previous is None:
        return False
    old = parse(previous.decode("utf-8", "replace"))
    new = parse(content.decode("utf-8", "replace"))
    changes = runtime_changes(old, new)
    if not changes:
        return changes is not None
    known_options = {s.options for b in old.backends.values() for s in b.servers.values()}
    for change in changes:
        server = change.new
        if server is None:
            continue
        if not (0 < server.port < 65536 and 0 <= server.weight <= 256) or (
                server.options not in known_options):
            return False
    return True


def _signal_trigger(resource: Resource) -> tuple[Callable[[], None] | None, str]:
    """How to trigger the reload: `reload_signal` to the master if set and found, else the CLI."""
    from confsync.reload import find_process

    if resource.reload_signal is None:
        return None, "`reload` on the master CLI"
    pid = find_process(resource.pidfile, resource.process)
    if pid is None:
        return None, "`reload` on the master CLI (no process for the signal)"
    sig: signal.Signals = resource.reload_signal

    def send() -> None:
        os.kill(pid, sig)

    return send, f"{sig.name} to pid {pid}"


def apply(resource: Resource, previous: bytes | None, content: bytes | None,
          fallback: Callable[[], str]) -> str:
    """Make the file at `resource.dest` (== `content`) live; return what was done.

    `previous` is the file HAProxy was running (None: unknown). `fallback` is the generic
    reload (command or unconfirmed signal) used when no master socket is configured.
    """
    if content is None:
        try:
            content = resource.dest.read_bytes()
        except OSError as exc:
            raise HAProxyReloadFailed(f"cannot read {resource.dest}: {exc.strerror}") from None
    new = parse(content.decode("utf-8", "replace"))
    old = parse(previous.decode("utf-8", "replace")) if previous is not None else None
    admin_path = resource.runtime_socket or (Path(new.stats_socket) if new.stats_socket else None)
    admin = AdminSocket(admin_path) if admin_path is not None else None
    why = "structural change" if resource.reload_strategy == "runtime" else "reload strategy"
    if resource.reload_strategy == "runtime" and old is not None and admin is not None:
        if runtime_changes(old, new) is not None:
            try:
                sent = reconcile(admin, new)
            except RuntimeApplyFailed as exc:
                why = f"runtime API failed ({exc})"
                log.warning("resource %s: %s; reloading instead", resource.name, why)
            else:
                if sent is not None:
                    return (f"runtime API: {len(sent)} command(s) on {admin.path}, no reload"
                            if sent else "servers already as in the file; nothing to reload")
                why = "servers added or removed where the balance algorithm needs a reload"
    elif resource.reload_strategy == "runtime":
        why = "no previous file or admin socket"
    try:
        return _reload(resource, old, new, admin, fallback, why)
    except HAProxyReloadFailed as exc:
        if exc.untouched and why.startswith("runtime API failed"):
            raise HAProxyReloadFailed(str(exc)) from None  # some runtime commands went through
        raise


def _reload(resource: Resource, old: HAProxyConfig | None, new: HAProxyConfig,
            admin: AdminSocket | None, fallback: Callable[[], str], why: str) -> str:
    master = resource.master_socket
    master_pid = None
    if master is not None:
        try:
            master_pid = show_proc(master, retry_for=0.5).pid
        except SocketUnavailable:
            master_pid = None
        except ReloadNotConfirmed as exc:
            raise HAProxyReloadFailed(str(exc)) from None
    check_binds_free(old, new, master_pid)
    if new.state_file:
        state_file = Path(new.state_file)
        try:
            if admin is None:
                raise RuntimeApplyFailed("no admin socket")
            kept = save_server_state(admin, state_file, new)
            log.debug("resource %s: saved state of %d server(s) to %s", resource.name, kept,
                      state_file)
        except (OSError, RuntimeApplyFailed) as exc:
            # A stale state file would override addresses from the new config: remove it.
            log.debug("resource %s: no server state saved (%s)", resource.name, exc)
            drop_server_state(state_file)
    if master is None:
        return fallback()
    if master_pid is None:
        log.warning("resource %s: no HAProxy master answers on %s; file updated, HAProxy will "
                    "read it when it starts", resource.name, master)
        return f"no HAProxy master on {master}"
    trigger, how = _signal_trigger(resource)
    try:
        status, seconds = reload_confirmed(master, trigger, timeout=resource.reload_timeout)
    except (ReloadNotConfirmed, SocketUnavailable) as exc:
        raise HAProxyReloadFailed(str(exc)) from None
    return (f"reloaded HAProxy ({why}) by {how}, confirmed in {seconds * 1000:.0f} ms "
            f"(reload #{status.reloads}, failed {status.failed})")
