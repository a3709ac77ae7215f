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
import time
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


def apply_changes(admin: AdminSocket, new: HAProxyConfig, changes: list[ServerChange],
                  delete_wait: float = 2.0) -> list[str]:
    """Apply `changes` in order; return the commands sent. Raises RuntimeApplyFailed."""
    sent: list[str] = []

    def run(command: str) -> str:
        answer = admin.command(command)
        sent.append(command)
        return answer

    for change in changes:
        be = change.backend
        if change.action == "update":
            old, server = change.old, change.new
            assert old is not None and server is not None
            ref = f"{be}/{server.name}"
            if server.disabled and not old.disabled:
                run(f"set server {ref} state maint")
            if (old.address, old.port) != (server.address, server.port):
                run(f"set server {ref} addr {server.address} port {server.port}")
            if old.weight != server.weight:
                run(f"set server {ref} weight {server.weight}")
            if old.disabled and not server.disabled:
                run(f"set server {ref} state ready")
        elif change.action == "add":
            server = change.new
            assert server is not None
            ref = f"{be}/{server.name}"
            run(_add_command(be, server, new.backends[be].default_server))
            if "check" in server.options:
                run(f"enable health {ref}")
            if not server.disabled:
                run(f"set server {ref} state ready")
        else:
            assert change.old is not None
            ref = f"{be}/{change.old.name}"
            run(f"set server {ref} state maint")
            _delete(admin, ref, delete_wait)
            sent.append(f"del server {ref}")
    return sent


def _delete(admin: AdminSocket, ref: str, wait: float) -> None:
    """`del server` once its connections are gone (in maintenance it gets no new ones).

    Sessions are never shut down here: if they outlive `wait`, the caller reloads instead, and
    the old worker finishes them.
    """
    deadline = time.monotonic() + wait
    while True:
        try:
            admin.command(f"del server {ref}")
            return
        except RuntimeApplyFailed as exc:
            if "connection" not in str(exc).lower() or time.monotonic() >= deadline:
                raise
        time.sleep(0.02)


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
