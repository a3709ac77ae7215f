"""Pool changes through the admin socket's runtime API, and server state kept across reloads.

Measured on 2.6: `set server` / `add server` / `del server` take effect for the next request
without a reload; but after a bare `set server addr` new requests went on reusing the server's
connections to its old address, so a server moves in steps that leave it none (`move_server`).
Dynamic servers do not inherit `default-server` (so its options are repeated), start in maintenance
with health checks off, and can only be deleted in maintenance once their connections are
gone. Runtime changes vanish at the next reload unless the config says the same
(we always write the file too) and `show servers state` is saved just before reloading.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import stat
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from confsync.haproxy.config_model import (
    DYNAMIC_BALANCE,
    Backend,
    HAProxyConfig,
    Server,
    canonical_address,
)
from confsync.haproxy.sockets import query

log = logging.getLogger(__name__)

# Admin-state bits that mean maintenance: forced, inherited, resolution (HAProxy's
# SRV_ADMF_MAINT). Not 0x04, "disabled in the config": a server loaded `disabled` and set
# ready at runtime keeps that bit alone and serves (measured on 2.6: admin state 4, running).
_MAINT_BITS = 0x01 | 0x02 | 0x20
# Admin-state bits that mean drain (forced, inherited).
_DRAIN_BITS = 0x08 | 0x10
# The admin-state bit of a server `disabled` in the configuration HAProxy loaded (CMAINT).
_CONFIG_MAINT = 0x04
# Columns of `show servers state` (version 1), as HAProxy 2.6 prints them.
_BE_NAME, _SRV_NAME, _SRV_ADDR, _ADMIN, _UWEIGHT, _IWEIGHT, _PORT = 1, 3, 4, 6, 7, 8, 18
_OP_STATE, _CHECK_STATE = 5, 13
# Operational states that take traffic: starting (slowstart), running (not stopped by its
# health check, not stopping).
_SERVING = (1, 2)
# The bit of srv_check_state that means the health check is on (CHK_ST_ENABLED; 2.6 and 3.2
# print 6 for a check that runs, 14 paused in maintenance, 2 after `disable health`).
_CHECK_ENABLED = 0x04


# What 2.6 answers on success (`set server ... weight/state` and `enable health` say nothing).
_SUCCESS = ("New server registered", "Server deleted", "changed from", "no need to change")
# The commands HAProxy answers with nothing when they succeed. Any other command answered with
# nothing failed: a worker that closes the connection unread (stopping for a reload) says
# nothing too. What these did is read back (`_verify`).
_SILENT = re.compile(r"set server \S+ (state|weight|health) |(enable|disable) health ")
# How long a moving server's requests in flight to its old address may take to end (seconds);
# past it the move is a reload (the old worker finishes them).
MOVE_WAIT = 2.0
# How long the moves of one pass may wait in all (seconds), their two waits each: the daemon's
# loop waits with them (other resources' renders, the heartbeat). Waited one move after the
# other, each within MOVE_WAIT twice, a pass could hold it up to 4 s a server (40 s for 10).
MOVES_WAIT = 2 * MOVE_WAIT


class RuntimeApplyFailed(Exception):
    """A runtime command failed; the caller falls back to a reload."""


@dataclass
class AdminSocket:
    path: Path
    timeout: float = 5.0

    def command(self, command: str) -> str:
        """Run one command; any answer but a known success raises RuntimeApplyFailed.
        Never one holding a `;`: HAProxy would run what follows it as a command of its own."""
        if ";" in command:
            raise RuntimeApplyFailed(f"refusing to send `{command[:300]}`: `;` would start "
                                     "another command")
        try:
            answer = query(self.path, command, timeout=self.timeout, retry_for=0.2).strip()
        except OSError as exc:
            raise RuntimeApplyFailed(f"admin socket {self.path}: {exc}") from None
        if not answer and not _SILENT.match(command):
            # (not "connection" in the text: `del server` takes that for one still busy)
            raise RuntimeApplyFailed(f"`{command}` -> no answer (closed unread: a worker "
                                     "stopping?)")
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
    up: bool = True  # its operational state takes traffic (not DOWN by its health check)
    checked: bool = False  # its health check is on

    @property
    def addr_port(self) -> str:
        return f"[{self.address}]:{self.port}" if ":" in self.address else \
            f"{self.address}:{self.port}"


def _servers_state(admin: AdminSocket, retry_for: float, also: str = "") -> list[str]:
    """The lines of `show servers state` (the version first), followed by the answer to `also`
    when given (sent in the same connection); RuntimeApplyFailed when HAProxy does not answer
    or answers something else (an error text, a level too low)."""
    command = f"show servers state; {also}" if also else "show servers state"
    try:
        text = query(admin.path, command, timeout=admin.timeout, retry_for=retry_for)
    except OSError as exc:
        raise RuntimeApplyFailed(f"admin socket {admin.path}: {exc}") from None
    lines = text.splitlines()
    if not lines or not lines[0].strip().isdigit():
        raise RuntimeApplyFailed(f"unexpected `show servers state` answer: {text[:200]!r}")
    return lines


def _address(fields: list[str]) -> str:
    """The server address of a `show servers state` line, spelt as the file's are
    (`canonical_address`; as HAProxy prints it when it is no IP)."""
    return canonical_address(fields[_SRV_ADDR]) or fields[_SRV_ADDR]


class Worker(NamedTuple):
    """An HAProxy worker process as its `show info` names it: servers parked in one are gone
    with it (a reload forks a new one, a restart starts another). Its pid alone may come back
    after a restart (a container's, every time): the start time tells them apart."""

    pid: int
    started: int | None  # `Start_time_sec` (wall clock, 2.6 and later); None: not said


def worker_identity(admin: AdminSocket) -> Worker | None:
    """The worker answering on the admin socket (`show info`); None when it does not say its
    pid. RuntimeApplyFailed when it does not answer."""
    try:
        text = query(admin.path, "show info", timeout=admin.timeout, retry_for=0.2)
    except OSError as exc:
        raise RuntimeApplyFailed(f"admin socket {admin.path}: {exc}") from None
    fields = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key in ("Pid", "Start_time_sec") and value.strip().isdigit():
            fields[key] = int(value.strip())
    if "Pid" not in fields:
        return None
    return Worker(fields["Pid"], fields.get("Start_time_sec"))


def live_servers(admin: AdminSocket) -> dict[str, dict[str, LiveServer]]:
    """Every backend's servers as HAProxy runs them now, in one `show servers state`, and
    every backend it runs: one without servers (a pool before its first instance, or after
    its last left) is only in `show backend`, and taken for a missing one it made the first
    instance of a pool a reload instead of an `add server`."""
    lines = _servers_state(admin, retry_for=0.2, also="show backend")
    backends: dict[str, dict[str, LiveServer]] = {}
    names = False  # in the answer to `show backend`: one backend name a line
    for line in lines[1:]:
        fields = line.split()
        if line.startswith("# name"):
            names = True
        elif names and len(fields) == 1:
            backends.setdefault(fields[0], {})
        if names:
            continue
        if line.startswith("#") or len(fields) <= _PORT:
            continue
        try:
            admin_state = int(fields[_ADMIN])
            server = LiveServer(_address(fields), int(fields[_PORT]), int(fields[_UWEIGHT]),
                                bool(admin_state & _MAINT_BITS), bool(admin_state & _DRAIN_BITS),
                                int(fields[_OP_STATE]) in _SERVING,
                                bool(int(fields[_CHECK_STATE]) & _CHECK_ENABLED))
        except ValueError:
            continue
        backends.setdefault(fields[_BE_NAME], {})[fields[_SRV_NAME]] = server
    return backends


# `default-server` options of name resolution, each with its argument: `add server` refuses
# them (2.6.12: "'init-addr' option is not accepted for dynamic server"), and a server line
# confsync parses has an IP address (a `defaults` section's `init-addr last,libc,none`).
_RESOLUTION = frozenset({"init-addr", "resolvers", "resolve-prefer", "resolve-opts",
                         "resolve-net"})


def _add_command(backend: str, server: Server, default_server: tuple[str, ...]) -> str:
    # Dynamic servers ignore default-server: repeat its options; the server's own come last.
    options: list[str] = []
    skip = False
    for option in default_server:
        if skip:
            skip = False
        elif option in _RESOLUTION:
            skip = True
        elif option not in ("disabled", "enabled"):
            options.append(option)
    return " ".join([f"add server {backend}/{server.name} {server.addr_port}", *options,
                     "weight", str(server.weight), *server.options])


def managed(old: HAProxyConfig, parked: Iterable[str] = ()) -> set[str]:
    """"backend/server" of every server confsync may remove: the `server` lines of the file
    HAProxy runs, and servers it removed earlier that are still parked in maintenance.

    Never a `server-template` slot, a server of another file or one added at runtime by
    someone else: those are not ours to take out.
    """
    return {f"{b.name}/{name}" for b in old.backends.values() for name in b.servers} | set(parked)


def running_ours(new: HAProxyConfig, live: dict[str, dict[str, LiveServer]],
                 parked: Iterable[str] = ()) -> set[str]:
    """What `managed` is when the file HAProxy runs is unknown (a pass killed after installing
    `new`, before its runtime commands): every server HAProxy runs in a backend of `new`.

    Except `server-template` slots of `new`, servers `parked`, and any other server in
    maintenance: it serves nothing, and it is one parked by a confsync that is gone as likely
    as someone else's. A server someone else added at runtime and left serving counts (it
    cannot be told from one of ours the killed pass was to remove; a reload drops it anyway).
    """
    return {f"{name}/{server}" for name, backend in new.backends.items()
            for server, now in live.get(name, {}).items()
            if not (backend.is_slot(server) or now.maint)} - set(parked)


@dataclass(frozen=True)
class Move:
    """A server to serve at another address (`move_server`), then in admin state `state`."""

    ref: str  # "backend/server"
    address: str
    port: int
    state: str  # "ready", "drain" or "maint"
    checked: bool = False  # health-checked: it serves at its new address once its check passes


@dataclass
class Plan:
    """What brings HAProxy's servers to a file (see `plan_reconcile`)."""

    commands: list[str] = field(default_factory=list)  # adds and updates, in order
    moves: list[Move] = field(default_factory=list)  # done after the commands
    removals: list[str] = field(default_factory=list)  # "backend/server", done last
    # How HAProxy's servers differ from the file in names, addresses and ports, for people.
    differences: list[str] = field(default_factory=list)
    reload: str | None = None  # why only a reload can do it (the first reason found)

    def needs_reload(self, why: str) -> None:
        self.reload = self.reload or why


def plan_reconcile(new: HAProxyConfig, live: dict[str, dict[str, LiveServer]],
                   removable: set[str], admin_state: bool = True,
                   old: HAProxyConfig | None = None) -> Plan:
    """Commands that bring the running servers to what `new` says, or why only a reload can.

    The commands add and update servers; `removals` are servers to take out (maintenance, then
    `del server`), done last so a pool never empties on the way; only servers in `removable`
    (see `managed`) are ever taken out. `admin_state` false leaves the weight and state of a
    server HAProxy runs as they are (an operator's `disable server`): only names, addresses
    and ports are brought in step. `old` (the file HAProxy runs) narrows the admin state to
    the servers etcd changed (added, or another line in `new`): that of a server whose line is
    the same in both is HAProxy's, an operator's `disable server` for work on that box, which
    no pool change elsewhere may undo.
    Reconciling against the live state rather than the previous file also heals drift (a
    runtime edit by someone else, a pass interrupted after the file was written).
    """
    plan = Plan()
    for name, backend in new.backends.items():
        running = live.get(name)
        if running is None:
            plan.differences.append(f"backend {name} is not in HAProxy")
            plan.needs_reload(f"backend {name} is not in HAProxy")
            continue
        dynamic = backend.balance in DYNAMIC_BALANCE
        before = old.backends.get(name) if old is not None else None
        # Servers that serve (live: not DOWN by their health check, as one moved a moment
        # ago is until its check passes) and stay where they are, serving (the file's weight
        # too: the commands run before the moves): while one moves, they serve.
        staying = {n for n, s in running.items() if not (s.maint or s.drain) and s.weight > 0
                   and s.up and (n in backend.servers and not backend.servers[n].disabled
                                 and backend.servers[n].weight > 0
                                 and (s.address, s.port) == (backend.servers[n].address,
                                                             backend.servers[n].port))}
        for server in backend.servers.values():
            same = before is not None and before.servers.get(server.name) == server
            _plan_server(plan, backend, server, running.get(server.name), admin_state,
                         admin_state and not same, bool(staying - {server.name}))
        for server_name in running:
            ref = f"{name}/{server_name}"
            if server_name not in backend.servers and ref in removable:
                plan.differences.append(f"HAProxy runs {ref}, the file does not")
                if not dynamic:
                    plan.needs_reload(f"{ref} removed, balance {backend.balance}")
                plan.removals.append(ref)
    return plan


def health_checked(backend: Backend, server: Server) -> bool:
    """Whether the file has HAProxy health-check `server`: `check` on its line or in the
    `default-server` options HAProxy gives it (its `defaults` section's and its backend's
    above it: `Backend.defaults_for`, which a dynamic server repeats: `_add_command`), the
    last of `check` and `no-check` winning."""
    wanted = False
    for token in (*backend.defaults_for(server.name), *server.options):
        if token in ("check", "no-check"):
            wanted = token == "check"
    return wanted


def _plan_server(plan: Plan, backend: Backend, server: Server, now: LiveServer | None,
                 weight: bool, admin_state: bool, others_serve: bool) -> None:
    ref = f"{backend.name}/{server.name}"
    commands = plan.commands
    checked = health_checked(backend, server)
    if now is None:
        plan.differences.append(f"{ref} is not in HAProxy")
        if backend.balance not in DYNAMIC_BALANCE:
            plan.needs_reload(f"{ref} added, balance {backend.balance}")
        commands.append(_add_command(backend.name, server, backend.defaults_for(server.name)))
        if checked:
            commands.append(f"enable health {ref}")
        if not server.disabled:
            commands.append(f"set server {ref} state ready")
        return
    if (now.address, now.port) != (server.address, server.port):
        plan.differences.append(f"HAProxy runs {ref} at {now.addr_port}, the file has "
                                f"{server.addr_port}")
        if not others_serve and not (now.maint or now.drain) and now.weight > 0 and now.up:
            # A move takes the server out of the pool for its steps: with no other server
            # serving, that is a 503 for each request meanwhile (measured). A reload starts a
            # worker with no connections to the old address.
            plan.needs_reload(f"{ref} moved from {now.addr_port} to {server.addr_port} with "
                              "no other server to serve meanwhile")
        if admin_state:
            state = "maint" if server.disabled else "ready"
        else:  # (as HAProxy has it: an operator's)
            state = "maint" if now.maint else "drain" if now.drain else "ready"
        _plan_health(commands, ref, now, checked, admin_state)
        plan.moves.append(Move(ref, server.address, server.port, state,
                               checked if admin_state else now.checked))
        if weight and now.weight != server.weight:
            commands.append(f"set server {ref} weight {server.weight}")
        return
    _plan_health(commands, ref, now, checked, admin_state)
    if admin_state and server.disabled and not now.maint:
        commands.append(f"set server {ref} state maint")
    if weight and now.weight != server.weight:
        commands.append(f"set server {ref} weight {server.weight}")
    if admin_state and not server.disabled and (now.maint or now.drain):
        commands.append(f"set server {ref} state ready")


def _plan_health(commands: list[str], ref: str, now: LiveServer, checked: bool,
                 admin_state: bool) -> None:
    """The health check of a server etcd changed (`admin_state`) is the file's: a dynamic
    server starts with it off, and a lost `enable health` (answered with nothing when it
    works) left an instance serving unchecked, which the read-back must see. That of a server
    etcd left alone is HAProxy's, as its admin state is (an operator's `disable health`)."""
    if admin_state and checked != now.checked:
        commands.append(f"{'enable' if checked else 'disable'} health {ref}")


def server_conns(admin: AdminSocket, backend: str, server: str) -> tuple[int, int]:
    """(connections in use, idle connections) HAProxy holds to `backend/server` (`show servers
    conn`); RuntimeApplyFailed when it does not say."""
    try:
        text = query(admin.path, f"show servers conn {backend}", timeout=admin.timeout,
                     retry_for=0.2)
    except OSError as exc:
        raise RuntimeApplyFailed(f"admin socket {admin.path}: {exc}") from None
    lines = text.splitlines()
    header = lines[0].lstrip("#").split() if lines and lines[0].startswith("#") else []
    if "used_cur" in header and "idle_cur" in header:
        used, idle = header.index("used_cur"), header.index("idle_cur")
        for line in lines[1:]:
            fields = line.split()
            if len(fields) > max(used, idle) and fields[0] == f"{backend}/{server}":
                with contextlib.suppress(ValueError):
                    return int(fields[used]), int(fields[idle])
    raise RuntimeApplyFailed(f"`show servers conn {backend}` says nothing of {server}: "
                             f"{text[:200]!r}")


def move_server(admin: AdminSocket, move: Move, wait: float = MOVE_WAIT,
                until: float | None = None,
                stop: Callable[[], bool] = lambda: False) -> list[str]:
    """Serve `move.ref` at its new address with no connection left to the old one; return the
    commands sent. RuntimeApplyFailed when that cannot be made sure of (the caller reloads).

    A bare `set server addr` left HAProxy 2.6 reusing the server's idle connections to the old
    address (and 3.2 the requests in flight there). Entering maintenance closes the idle ones,
    but a request in flight gives its connection back to the idle list when it ends, also in
    maintenance (measured on 2.6.12). So: drain (no new request comes), the new address, wait
    until no request is in flight, maintenance (closes every idle connection: none can be in
    use), then the state the file says. Measured under steady traffic: 0 requests answered by
    the old address in 20 moves on 2.6.12 and on 3.2.0, 0 failed, 30-80 ms a move.
    `until`: a time.monotonic() no wait goes past (the pass's budget for its moves). `stop`:
    true once confsync is asked to stop: the waits end there, as at their deadline (the
    caller's reload finishes the requests in the old worker), rather than hold the stop.
    """
    ref = move.ref
    backend, _, name = ref.partition("/")
    address = f"[{move.address}]" if ":" in move.address else move.address
    sent = [f"set server {ref} state drain",
            f"set server {ref} addr {move.address} port {move.port}"]
    for command in sent:
        admin.command(command)
    started = time.monotonic()
    deadline = min(started + wait, until if until is not None else float("inf"))
    while (conns := server_conns(admin, backend, name))[0]:
        if stop():
            raise RuntimeApplyFailed(f"{ref}: {conns[0]} request(s) in flight to its old "
                                     "address when confsync was asked to stop (moving to "
                                     f"{address}:{move.port})")
        if time.monotonic() >= deadline:
            raise RuntimeApplyFailed(f"{ref}: {conns[0]} request(s) still in flight to its old "
                                     f"address after {time.monotonic() - started:.1f}s (moving "
                                     f"to {address}:{move.port})")
        time.sleep(0.005)
    admin.command(f"set server {ref} state maint")
    sent.append(f"set server {ref} state maint")
    started = time.monotonic()
    deadline = min(started + wait, until if until is not None else float("inf"))
    while server_conns(admin, backend, name) != (0, 0):  # (closed by a task of each thread)
        if stop():
            raise RuntimeApplyFailed(f"{ref}: connections to its old address left in "
                                     "maintenance when confsync was asked to stop")
        if time.monotonic() >= deadline:
            raise RuntimeApplyFailed(f"{ref}: connections to its old address left after "
                                     f"{time.monotonic() - started:.1f}s in maintenance")
        time.sleep(0.005)
    if move.state == "maint":
        return sent
    if move.checked:
        # Leaving maintenance, HAProxy (2.6.12, 3.2.0) marks a checked server UP at once, as
        # if its last check had passed: at the new address nothing was checked yet (a dead
        # one took requests until its first check failed). Leave maintenance for drain (no
        # new request), mark it DOWN: it serves once `rise` checks pass at the new address.
        steps = [f"set server {ref} state drain", f"set server {ref} health down"]
        if move.state == "ready":
            steps.append(f"set server {ref} state ready")
    else:
        steps = [f"set server {ref} state {move.state}"]
    for command in steps:
        admin.command(command)
        sent.append(command)
    return sent


def pool_differences(admin: AdminSocket, new: HAProxyConfig,
                     parked: Iterable[str] = ()) -> Plan:
    """How the servers HAProxy runs differ from `new` in names, addresses and ports (not in
    weight or admin state: an operator's `disable server` is none), `running_ours` standing
    for the file it runs; with what would bring them in step. Asks nothing but `show servers
    state`; RuntimeApplyFailed when HAProxy does not answer it."""
    live = live_servers(admin)
    return plan_reconcile(new, live, running_ours(new, live, parked), admin_state=False)


def reconcile(admin: AdminSocket, old: HAProxyConfig | None, new: HAProxyConfig,
              parked: set[str], stop: Callable[[], bool] = lambda: False) -> list[str] | None:
    """Apply `plan_reconcile`; return the commands sent, or None when a reload is needed.

    `old` is the file HAProxy runs. None: unknown, and `pool_differences` found HAProxy's
    servers differ from `new` (a pass killed after installing it): what it tells is brought in
    step, HAProxy's own servers standing for `old` (`running_ours`), weights and admin states
    left as they are. A removed server goes to maintenance at once (no new traffic) and is
    deleted when HAProxy allows it, which it does not while the server has connections, idle
    ones of the reuse pool included: then it stays in maintenance, out of the file, recorded
    in `parked`, and a later pass deletes it (or brings it back if the same instance returns).
    A reload drops it in any case. `stop`: see `move_server`.
    Raises RuntimeApplyFailed when a command fails.
    """
    live = live_servers(admin)
    # A parked server HAProxy no longer has (restarted or reloaded by someone else) is gone:
    # forgotten, or names would pile up over months of churn, and one reused by someone
    # else's runtime `add server` would count as ours to remove.
    parked.intersection_update(f"{name}/{server}" for name, servers in live.items()
                               for server in servers)
    if old is None:
        plan = plan_reconcile(new, live, running_ours(new, live, parked), admin_state=False)
    else:
        _say_drift(admin, old, live)
        plan = plan_reconcile(new, live, managed(old, parked), old=old)
    if plan.reload is not None:
        return None
    parked.difference_update(f"{name}/{server}" for name, backend in new.backends.items()
                             for server in backend.servers)
    sent: list[str] = []
    for command in plan.commands:
        admin.command(command)
        sent.append(command)
    until = time.monotonic() + MOVES_WAIT
    for move in plan.moves:
        sent.extend(move_server(admin, move, until=until, stop=stop))
    for ref in plan.removals:
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
    if sent:
        _verify(admin, old, new, parked)
    return sent


def _say_drift(admin: AdminSocket, old: HAProxyConfig,
               live: dict[str, dict[str, LiveServer]]) -> None:
    """Warn when HAProxy's servers are not those of `old`, the file it runs, in names,
    addresses or ports (a runtime edit by someone else: `set server ... addr`, `del server`):
    the pass brings them back to the file, which it did without a word. Weight and admin
    state are not drift (an operator's `disable server` stays), nor servers that are no
    `server` line of `old` (parked ones, someone else's)."""
    drift = plan_reconcile(old, live, managed(old), admin_state=False).differences
    if drift:
        log.warning("HAProxy on %s had servers other than the file it runs (changed at runtime "
                    "by someone else?): %s%s; brought in step with the file", admin.path,
                    "; ".join(drift[:3]), f" (and {len(drift) - 3} more)" if len(drift) > 3
                    else "")


def _verify(admin: AdminSocket, old: HAProxyConfig | None, new: HAProxyConfig,
            parked: set[str]) -> None:
    """Read back what the commands just sent did, in one `show servers state`: RuntimeApplyFailed
    (the caller reloads) when HAProxy's servers are not yet the file's.

    Several commands succeed with no answer, and a worker that closes the connection without
    reading it (one stopping during someone else's reload) answers nothing too: a lost
    `state ready` left a new instance in maintenance, a lost `state maint` served one etcd had
    taken out, and the probe (names, addresses and ports only) never noticed."""
    live = live_servers(admin)
    if old is None:
        plan = plan_reconcile(new, live, running_ours(new, live, parked), admin_state=False)
    else:
        plan = plan_reconcile(new, live, managed(old, parked), old=old)
    left = plan.commands + [f"move {m.ref}" for m in plan.moves] + [
        f"del server {ref}" for ref in plan.removals if ref not in parked]
    if plan.reload is not None or left:
        raise RuntimeApplyFailed("HAProxy's servers are not the file's after the runtime "
                                 f"commands: {'; '.join(left[:3]) or plan.reload}")


def save_server_state(admin: AdminSocket, state_file: Path, old: HAProxyConfig | None,
                      new: HAProxyConfig, parked: Iterable[str] = ()) -> int:
    """Write `show servers state` to `state_file` for the reload into `new`; return lines kept.
    RuntimeApplyFailed when HAProxy does not answer, OSError when the file cannot be written.

    HAProxy 2.6 lets the state file override a server's address, port and admin state from the
    config (measured), so for a server of ours (a `server` line) a line is kept only where the
    new config agrees on address, port, weight and maintenance: what it carries across the
    reload is the health-check state. Except a server whose admin state is HAProxy's
    (`_admin_kept`: an operator's `disable server`): kept too, with the file's weight
    (`_as_configured`). A server that is no `server` line of ours (a `server-template` slot
    filled at runtime, a server of another file HAProxy loads) keeps its whole state: it is
    not ours to reset. (A line of a backend or server the reload drops is ignored by HAProxy.)
    """
    content, count = _kept(_servers_state(admin, retry_for=0.5), old, new, parked)
    replace_file(state_file, content)
    return count


def update_saved_state(state_file: Path, old: HAProxyConfig | None, new: HAProxyConfig,
                       parked: Iterable[str] = ()) -> int | None:
    """With no HAProxy to ask (stopped for an upgrade, a reboot): bring the state file its
    next start loads to `new` as `save_server_state` would, from the lines saved last; return
    lines kept, None when there is no file. RuntimeApplyFailed when it is no state file,
    OSError when it cannot be read or written.

    Removing it (as before) made that start forget what a plain stop and start keeps: an
    operator's maintenance, servers known DOWN. Only the lines of servers etcd changed or
    removed go, so those start as the config says.
    """
    try:
        raw = state_file.read_bytes()
    except FileNotFoundError:
        return None
    lines = raw.decode("utf-8", "replace").splitlines()
    if not lines or not lines[0].strip().isdigit():
        raise RuntimeApplyFailed(f"{state_file} is no `show servers state` output")
    content, count = _kept(lines, old, new, parked)
    if content != raw:  # (nothing written when nothing changes: a read-only dir)
        replace_file(state_file, content)
    return count


def _kept(lines: list[str], old: HAProxyConfig | None, new: HAProxyConfig,
          parked: Iterable[str]) -> tuple[bytes, int]:
    """The `show servers state` `lines` that agree with `new` (`save_server_state`), as the
    file's content; with how many server lines that is."""
    ours = managed(old, parked) if old is not None else set(parked)
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
            if f"{fields[_BE_NAME]}/{fields[_SRV_NAME]}" not in ours:
                kept.append(line)  # not ours (a server-template slot, a server of another
                count += 1  # file): its state stays
            continue
        if (_address(fields), fields[_PORT]) != (server.address, str(server.port)):
            continue
        admin_state = int(fields[_ADMIN]) if fields[_ADMIN].isdigit() else None
        maint = bool(admin_state & _MAINT_BITS) if admin_state is not None else None
        # (a file never says drain: a drain is HAProxy's, an operator's or a move's step)
        drain = bool(admin_state & _DRAIN_BITS) if admin_state is not None else None
        before = old.backends.get(fields[_BE_NAME]) if old is not None else None
        # (the health check too: a lost `enable health` saved here outlived the reload meant
        # to repair it, HAProxy loading the check's state from the file)
        checked = bool(int(fields[_CHECK_STATE]) & _CHECK_ENABLED) if fields[
            _CHECK_STATE].isdigit() else None
        if (fields[_UWEIGHT], maint, drain, checked) == (
                str(server.weight), server.disabled, False,
                backend is not None and health_checked(backend, server)):
            kept.append(line)
        elif admin_state is not None and _admin_kept(
                admin_state, server, None if old is None else
                before is not None and before.servers.get(server.name) == server):
            kept.append(_as_configured(fields, server))
        else:
            continue
        count += 1
    return ("\n".join(kept) + "\n").encode(), count


def _admin_kept(admin_state: int, server: Server, unchanged: bool | None) -> bool:
    """Whether HAProxy's admin state of `server` (at the file's address and port) is carried
    across the reload rather than the file's. `unchanged`: whether its line is the same in
    the file HAProxy ran (None: unknown).

    Known unchanged: etcd left it alone, the admin state is HAProxy's (an operator's). Unknown
    (a repair at a start, a reload owed with no copy of what ran): a maintenance or drain set
    at runtime on a server the file has ready, as the start's comparison keeps it; not a
    maintenance HAProxy loaded from a `disabled` in the config (etcd has lifted it since), and
    never a readiness where the file says `disabled` (a server etcd put in maintenance is
    never served on a guess).
    """
    if unchanged is not None:
        return unchanged
    if server.disabled:
        return bool(admin_state & _MAINT_BITS)  # only the weight differs
    return bool(admin_state & _DRAIN_BITS) or (
        bool(admin_state & _MAINT_BITS) and not admin_state & _CONFIG_MAINT)


def _as_configured(fields: list[str], server: Server) -> str:
    """A state line with the admin state HAProxy runs and `server`'s weight, which HAProxy
    applies over `server`'s line.

    HAProxy takes a saved admin state only where the config's `disabled` is what it was when
    the state was saved (as loaded at its last reload, which runtime passes have moved on from
    since): a server loaded `disabled` and set ready since would count as a config change and
    lose an operator's maintenance. Said to be `server`'s own, it is restored.
    """
    admin = int(fields[_ADMIN]) & ~_CONFIG_MAINT | (_CONFIG_MAINT if server.disabled else 0)
    weight = str(server.weight)
    return " ".join([*fields[:_ADMIN], str(admin), weight, weight, *fields[_IWEIGHT + 1:]])


def replace_file(path: Path, content: bytes, new_mode: int = 0o644) -> None:
    """Put `content` at `path` through a temporary file beside it, with the mode the file had
    (`new_mode` for a new one), never the umask's: under `umask 000` the file HAProxy loads
    server addresses from was left world-writable (0666), under `umask 077` unreadable to an
    HAProxy of another user."""
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        mode = new_mode
    tmp = path.with_name(f".{path.name}.confsync")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()  # a leftover of a killed run, with its own mode
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        try:
            os.fchmod(fd, mode)
            view = memoryview(content)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def drop_server_state(state_file: Path) -> None:
    """Remove a state file that could be stale: the config then wins for every server."""
    with contextlib.suppress(FileNotFoundError):
        state_file.unlink()
