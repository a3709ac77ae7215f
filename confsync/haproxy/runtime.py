"""Pool changes through the admin socket's runtime API, and server state kept across reloads.

Measured on 2.6: `set server` / `add server` / `del server` take effect for the next request
without a reload. Dynamic servers do not inherit `default-server` (so its options are repeated),
start in maintenance with health checks off, and can only be deleted in maintenance once their
connections are gone. Runtime changes vanish at the next reload unless the config says the same
(we always write the file too) and `show servers state` is saved just before reloading.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from confsync.haproxy.config_model import DYNAMIC_BALANCE, HAProxyConfig, Server
from confsync.haproxy.sockets import query

log = logging.getLogger(__name__)

# Admin-state bits that mean maintenance: forced, inherited, resolution (HAProxy's
# SRV_ADMF_MAINT). Not 0x04, "disabled in the config": a server loaded `disabled` and set
# ready at runtime keeps that bit alone and serves (measured on 2.6: admin state 4, running).
_MAINT_BITS = 0x01 | 0x02 | 0x20
# Admin-state bits that mean drain (forced, inherited).
_DRAIN_BITS = 0x08 | 0x10
# Columns of `show servers state` (version 1), as HAProxy 2.6 prints them.
_BE_NAME, _SRV_NAME, _SRV_ADDR, _ADMIN, _UWEIGHT, _PORT = 1, 3, 4, 6, 7, 18


# What 2.6 answers on success (`set server ... weight/state` and `enable health` say nothing).
_SUCCESS = ("New server registered", "Server deleted", "changed from", "no need to change")


class RuntimeApplyFailed(Exception):
    """A runtime command failed; the caller falls back to a reload."""


@dataclass
class AdminSocket:
    path: Path
    timeout: float = 5.0

    def command(self, command: str) -> str:
        """Run one command; any answer but a known success raises RuntimeApplyFailed."""
        try:
            answer = query(self.path, command, timeout=self.timeout, retry_for=0.2).strip()
        except OSError as exc:
            raise RuntimeApplyFailed(f"admin socket {self.path}: {exc}") from None
        if answer and not any(ok in answer for ok in _SUCCESS):
            raise RuntimeApplyFailed(f"`{command}` -> {answer[:300]}")
        return answer


@dataclass(frozen=True)
class LiveServer:
    """A server as the running HAProxy has it (`show servers state`)."""

    address: str
    port: int
    weight: int
    maint: bool
    drain: bool


def _servers_state(admin: AdminSocket, retry_for: float) -> list[str]:
    """The lines of `show servers state` (the version first); RuntimeApplyFailed when HAProxy
    does not answer or answers something else (an error text, a level too low)."""
    try:
        text = query(admin.path, "show servers state", timeout=admin.timeout,
                     retry_for=retry_for)
    except OSError as exc:
        raise RuntimeApplyFailed(f"admin socket {admin.path}: {exc}") from None
    lines = text.splitlines()
    if not lines or not lines[0].strip().isdigit():
        raise RuntimeApplyFailed(f"unexpected `show servers state` answer: {text[:200]!r}")
    return lines


def live_servers(admin: AdminSocket) -> dict[str, dict[str, LiveServer]]:
    """Every backend's servers as HAProxy runs them now, in one `show servers state`."""
    lines = _servers_state(admin, retry_for=0.2)
    backends: dict[str, dict[str, LiveServer]] = {}
    for line in lines[1:]:
        fields = line.split()
        if line.startswith("#") or len(fields) <= _PORT:
            continue
        try:
            admin_state = int(fields[_ADMIN])
            server = LiveServer(fields[_SRV_ADDR], int(fields[_PORT]), int(fields[_UWEIGHT]),
                                bool(admin_state & _MAINT_BITS), bool(admin_state & _DRAIN_BITS))
        except ValueError:
            continue
        backends.setdefault(fields[_BE_NAME], {})[fields[_SRV_NAME]] = server
    return backends


def _add_command(backend: str, server: Server, default_server: tuple[str, ...]) -> str:
    # Dynamic servers ignore default-server: repeat its options; the server's own come last.
    options = [o for o in default_server if o not in ("disabled", "enabled")]
    return " ".join([f"add server {backend}/{server.name} {server.addr_port}", *options,
                     "weight", str(server.weight), *server.options])


def managed(old: HAProxyConfig, parked: Iterable[str] = ()) -> set[str]:
    """"backend/server" of every server confsync may remove: the `server` lines of the file
    HAProxy runs, and servers it removed earlier that are still parked in maintenance.

    Never a `server-template` slot, a server of another file or one added at runtime by
    someone else: those are not ours to take out.
    """
    return {f"{b.name}/{name}" for b in old.backends.values() for name in b.servers} | set(parked)


def plan_reconcile(new: HAProxyConfig, live: dict[str, dict[str, LiveServer]],
                   removable: set[str]) -> tuple[list[str], list[str]] | None:
    """Commands that bring the running servers to what `new` says, or None if only a reload can.

    Returns (commands, removals): the commands add and update servers; `removals` are servers to
    take out (maintenance, then `del server`), done last so a pool never empties on the way;
    only servers in `removable` (see `managed`) are ever taken out.
    Reconciling against the live state rather than the previous file also heals drift (a
    runtime edit by someone else, a pass interrupted after the file was written).
    """
    commands: list[str] = []
    removals: list[str] = []
    for name, backend in new.backends.items():
        running = live.get(name)
        if running is None:
            return None
        dynamic = backend.balance in DYNAMIC_BALANCE
        for server in backend.servers.values():
            ref = f"{name}/{server.name}"
            now = running.get(server.name)
            if now is None:
                if not dynamic:
                    return None
                commands.append(_add_command(name, server, backend.default_server))
                if "check" in server.options:
                    commands.append(f"enable health {ref}")
                if not server.disabled:
                    commands.append(f"set server {ref} state ready")
                continue
            if server.disabled and not now.maint:
                commands.append(f"set server {ref} state maint")
            if (now.address, now.port) != (server.address, server.port):
                commands.append(f"set server {ref} addr {server.address} port {server.port}")
            if now.weight != server.weight:
                commands.append(f"set server {ref} weight {server.weight}")
            if not server.disabled and (now.maint or now.drain):
                commands.append(f"set server {ref} state ready")
        for server_name in running:
            if server_name not in backend.servers and f"{name}/{server_name}" in removable:
                if not dynamic:
                    return None
                removals.append(f"{name}/{server_name}")
    return commands, removals


def reconcile(admin: AdminSocket, old: HAProxyConfig, new: HAProxyConfig,
              parked: set[str]) -> list[str] | None:
    """Apply `plan_reconcile`; return the commands sent, or None when a reload is needed.

    `old` is the file HAProxy runs. A removed server goes to maintenance at once (no new
    traffic) and is deleted when HAProxy allows it, which it does not while the server has
    connections, idle ones of the reuse pool included: then it stays in maintenance, out of the
    file, recorded in `parked`, and a later pass deletes it (or brings it back if the same
    instance returns). A reload drops it in any case.
    Raises RuntimeApplyFailed when a command fails.
    """
    live = live_servers(admin)
    # A parked server HAProxy no longer has (restarted or reloaded by someone else) is gone:
    # forgotten, or names would pile up over months of churn, and one reused by someone
    # else's runtime `add server` would count as ours to remove.
    parked.intersection_update(f"{name}/{server}" for name, servers in live.items()
                               for server in servers)
    plan = plan_reconcile(new, live, managed(old, parked))
    if plan is None:
        return None
    commands, removals = plan
    parked.difference_update(f"{name}/{server}" for name, backend in new.backends.items()
                             for server in backend.servers)
    sent: list[str] = []
    for command in commands:
        admin.command(command)
        sent.append(command)
    for ref in removals:
        backend, _, name = ref.partition("/")
        if not live[backend][name].maint:
            admin.command(f"set server {ref} state maint")
            sent.append(f"set server {ref} state maint")
        try:
            admin.command(f"del server {ref}")
            sent.append(f"del server {ref}")
            parked.discard(ref)
        except RuntimeApplyFailed as exc:
            if "connection" not in str(exc).lower():
                raise
            parked.add(ref)
            log.debug("%s stays in maintenance until its connections close", ref)
    return sent


def save_server_state(admin: AdminSocket, state_file: Path, old: HAProxyConfig | None,
                      new: HAProxyConfig, parked: Iterable[str] = ()) -> int:
    """Write `show servers state` to `state_file` for the reload into `new`; return lines kept.
    RuntimeApplyFailed when HAProxy does not answer, OSError when the file cannot be written.

    HAProxy 2.6 lets the state file override a server's address, port and admin state from the
    config (measured), so for a server of ours (a `server` line) a line is kept only where the
    new config agrees on address, port, weight and maintenance: what it carries across the
    reload is the health-check state. A server that is no `server` line of either file (a
    `server-template` slot filled at runtime, a server of another file HAProxy loads) keeps
    its whole state: it is not ours to reset.
    """
    ours = managed(old, parked) if old is not None else set(parked)
    # Backends of other files HAProxy loads (`-f ours.cfg -f theirs.cfg`) are in neither of our
    # files. Not known without the previous file: a backend this change removed looks the same.
    known = set(old.backends) | set(new.backends) if old is not None else None
    lines = _servers_state(admin, retry_for=0.5)
    kept = [lines[0]]
    count = 0
    for line in lines[1:]:
        if line.startswith("#"):
            kept.append(line)
            continue
        fields = line.split()
        if len(fields) <= _PORT:
            continue
        backend = new.backends.get(fields[_BE_NAME])
        server = backend.servers.get(fields[_SRV_NAME]) if backend else None
        if server is None:
            if f"{fields[_BE_NAME]}/{fields[_SRV_NAME]}" not in ours and (
                    backend is not None or (known is not None
                                            and fields[_BE_NAME] not in known)):
                kept.append(line)  # not ours (a server-template slot, a server of another
                count += 1  # file): its state stays
            continue
        maint = bool(int(fields[_ADMIN]) & _MAINT_BITS) if fields[_ADMIN].isdigit() else None
        if (fields[_SRV_ADDR], fields[_PORT], fields[_UWEIGHT], maint) != (
                server.address, str(server.port), str(server.weight), server.disabled):
            continue
        kept.append(line)
        count += 1
    tmp = state_file.with_name(f".{state_file.name}.confsync")
    tmp.write_text("\n".join(kept) + "\n")
    os.replace(tmp, state_file)
    return count


def drop_server_state(state_file: Path) -> None:
    """Remove a state file that could be stale: the config then wins for every server."""
    with contextlib.suppress(FileNotFoundError):
        state_file.unlink()
