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
from dataclasses import dataclass
from pathlib import Path

from confsync.haproxy.config_model import HAProxyConfig, Server, ServerChange
from confsync.haproxy.sockets import query

log = logging.getLogger(__name__)

# Admin-state bits that mean maintenance (forced, inherited, config, resolution).
_MAINT_BITS = 0x01 | 0x02 | 0x04 | 0x20
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


def _state(server: Server) -> str:
    return "maint" if server.disabled else "ready"


def _add_command(backend: str, server: Server, default_server: tuple[str, ...]) -> str:
    # Dynamic servers ignore default-server: repeat its options; the server's own come last.
    options = [o for o in default_server if o not in ("disabled", "enabled")]
    return " ".join([f"add server {backend}/{server.name} {server.addr_port}", *options,
                     "weight", str(server.weight), *server.options])


def runtime_servers(admin: AdminSocket, backend: str) -> dict[str, list[str]]:
    """The servers HAProxy has in `backend` now: name -> `show servers state` fields."""
    text = query(admin.path, f"show servers state {backend}", timeout=admin.timeout,
                 retry_for=0.2)
    servers = {}
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) > _PORT and not line.startswith("#") and fields[_BE_NAME] == backend:
            servers[fields[_SRV_NAME]] = fields
    return servers


def apply_changes(admin: AdminSocket, old: HAProxyConfig, new: HAProxyConfig,
                  changes: list[ServerChange]) -> list[str]:
    """Apply `changes` in order; return the commands sent. Raises RuntimeApplyFailed.

    A removed server goes to maintenance (no new traffic at once) and is deleted when HAProxy
    allows it, which it does not while the server has connections, idle ones of the reuse pool
    included: then it stays "parked" in maintenance and a later pass deletes it, or revives it
    if the same instance comes back. Parked servers are not in the file, so a reload drops them.
    """
    sent: list[str] = []

    def run(command: str) -> str:
        answer = admin.command(command)
        sent.append(command)
        return answer

    def update(ref: str, before: Server | None, server: Server) -> None:
        if server.disabled and (before is None or not before.disabled):
            run(f"set server {ref} state maint")
        if before is None or (before.address, before.port) != (server.address, server.port):
            run(f"set server {ref} addr {server.address} port {server.port}")
        if before is None or before.weight != server.weight:
            run(f"set server {ref} weight {server.weight}")
        if not server.disabled and (before is None or before.disabled):
            run(f"set server {ref} state ready")

    parked: dict[str, set[str]] = {}
    for backend in {c.backend for c in changes if c.action != "update"}:
        try:
            live = runtime_servers(admin, backend)
        except OSError as exc:
            raise RuntimeApplyFailed(f"admin socket {admin.path}: {exc}") from None
        known = old.backends[backend].servers if backend in old.backends else {}
        parked[backend] = {name for name in live if name not in known}
    for backend, names in parked.items():
        for name in sorted(names - set(new.backends[backend].servers)):
            with contextlib.suppress(RuntimeApplyFailed):  # still busy: next pass
                run(f"del server {backend}/{name}")

    for change in changes:
        be = change.backend
        if change.action == "update":
            assert change.new is not None
            update(f"{be}/{change.new.name}", change.old, change.new)
        elif change.action == "add":
            server = change.new
            assert server is not None
            ref = f"{be}/{server.name}"
            if server.name in parked.get(be, ()):
                update(ref, None, server)  # a parked server comes back: revive it
                continue
            run(_add_command(be, server, new.backends[be].default_server))
            if "check" in server.options:
                run(f"enable health {ref}")
            if not server.disabled:
                run(f"set server {ref} state ready")
        else:
            assert change.old is not None
            ref = f"{be}/{change.old.name}"
            run(f"set server {ref} state maint")
            try:
                run(f"del server {ref}")
            except RuntimeApplyFailed as exc:
                if "connection" not in str(exc).lower():
                    raise
                log.debug("%s parked in maintenance until its connections close", ref)
    return sent


def save_server_state(admin: AdminSocket, state_file: Path, new: HAProxyConfig) -> int:
    """Write `show servers state` to `state_file` for the reload into `new`; return lines kept.

    HAProxy 2.6 lets the state file override a server's address, port and admin state from the
    config (measured), so a line is kept only where the new config agrees on address, port,
    weight and maintenance: what it carries across the reload is the health-check state.
    """
    text = query(admin.path, "show servers state", timeout=admin.timeout, retry_for=0.5)
    lines = text.splitlines()
    if not lines or not lines[0].strip().isdigit():
        raise RuntimeApplyFailed(f"unexpected `show servers state` answer: {text[:200]!r}")
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
