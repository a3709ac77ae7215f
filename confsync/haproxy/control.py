"""The HAProxy reload target: how a new config goes live (runtime API, confirmed reload).

- `reload_strategy = "runtime"` and only servers added, removed, moved or changed in weight or
  state inside existing backends: apply them on the admin socket, no reload (the file is written
  all the same), then read back `show servers state` once. A server moves in steps that leave no
  connection to its old address (`move_server`), while other servers serve; the only server
  serving a backend reloads to move (the steps take it out of the pool for 30-80 ms).
- Otherwise, or when a runtime command fails: refuse binds on ports another process holds, save
  the server state for the new config, reload through the master CLI (or SIGUSR2 to the master)
  and wait for `show proc` to confirm it.
- With `check_server_changes = false`, `may_skip_check` proves a file valid from the last file
  that passed `haproxy -c`, at the cost of the lines that changed (`proof_delta.py`).
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import logging
import os
import re
import signal
import socket
import time
from collections.abc import Callable, Hashable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from confsync import resolve
from confsync.command_reload import CommandReloader, process_probe
from confsync.haproxy import proof_delta
from confsync.haproxy.config_model import HAProxyConfig, mentions, parse, runtime_changes
from confsync.haproxy.master_cli import (
    MasterGone,
    MasterStatus,
    ReloadNotConfirmed,
    reload_confirmed,
    show_proc,
)
from confsync.haproxy.parked_record import (
    ParkedRecord,
    read_record,
    record_path,
    save,
    still_parked,
)
from confsync.haproxy.pass_worker import worker_left
from confsync.haproxy.runtime import (
    AdminSocket,
    RuntimeApplyFailed,
    Worker,
    drop_server_state,
    live_servers,
    pool_differences,
    reconcile,
    save_server_state,
    update_saved_state,
    worker_identity,
)
from confsync.haproxy.settings import HAProxySettings, Strategy
from confsync.haproxy.sockets import SocketUnavailable, query
from confsync.logs import Repeats
from confsync.paths import expand_user
from confsync.processes import (
    argv,
    boot_clock,
    find_process,
    search,
    started_at,
    state,
    table,
)
from confsync.targets import (
    Liveness,
    Probe,
    ReloadFailed,
    ReloadKind,
    ReloadResult,
    ReloadTarget,
    Sibling,
    TargetGauge,
)

if TYPE_CHECKING:
    from confsync.resources import Resource

log = logging.getLogger(__name__)

# How long a `show proc` that only asks (the probe, the look before a reload) waits for an
# answer: a master that runs answers in milliseconds; a stopped one (SIGSTOP, a paused VM)
# accepts the connection and never does, and the probe runs on the daemon's loop every second.
ASK_TIMEOUT = 1.0
BIND_LOOKUP = 5.0  # seconds a `bind` host name's lookup may take
_STOPPED = ("T", "t")  # the kernel's states of a stopped (SIGSTOP) or traced process
_GONE = ("Z", "X", None)  # a zombie, a dead one, none
# A state file that cannot be saved is so at every pass: said once every 5 minutes.
_STATE_WARNINGS = Repeats()
# Old workers (left from reloads, serving the connections they hold) past which confsync warns
# once; again only after their number fell to half. Each holds its memory and connections; a
# month of reloads under long-lived connections without `hard-stop-after` piles them up.
OLD_WORKERS_WARN = 20
# A server parked this long (seconds) is warned about, once; HAProxy's `hard-stop-after` instead
# when the file sets it: a reload would have ended its connections by then.
PARKED_WARN_AFTER = 600.0
# At most one such warning this often (seconds): under WebSockets every removed server may be
# one, and a scale-down of 50 would be 50 lines.
PARKED_WARN_EVERY = 300.0
# Master socket -> (old worker pids when last asked, warned): one master's, whichever of the
# resources it serves asked (each has a target of its own; a SIGHUP makes new ones).
_OLD_WORKERS: dict[str, tuple[tuple[int, ...], bool]] = {}


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
    numbers = list(range(int(first), int(last or first) + 1))[:256]
    # One lookup per bind, bounded: getaddrinfo has no timeout, and a bind's host name with a
    # name server that never answers held the watch loop for the resolver's retries per port.
    infos = resolve.getaddrinfo(host, None, family, socket.SOCK_STREAM, timeout=BIND_LOOKUP)
    addresses = dict.fromkeys((info[0], str(info[4][0])) for info in infos)
    return [(fam, address, port) for port in numbers for fam, address in addresses]


# A bind confsync's probe is refused for lack of a privilege HAProxy has (or a seccomp filter).
_NOT_OURS_TO_BIND = (errno.EACCES, errno.EPERM)


def _clashes(listener: str, address: str) -> bool:
    """Whether a socket listening at `listener` keeps a bind of `address` (the same port) from
    binding: the same address, or a wildcard of the same family on either side; across
    families only `::`, taken to be dual-stack (the socket table cannot show v6only). An IPv6
    socket on an IPv4-mapped address is on that IPv4 address. (A wildcard of either family
    clashed with everything: a listener on [::1]:80 refused every reload adding *:80.)"""
    if listener.lower().startswith("::ffff:") and "." in listener:
        listener = listener[len("::ffff:"):]  # (as the kernel's table shows one)
    if listener == address:
        return True
    if (":" in listener) == (":" in address):
        return listener in _WILDCARDS or address in _WILDCARDS
    return "::" in (listener, address)


_WILDCARDS = ("0.0.0.0", "::")


class _SocketTable:
    """The TCP listeners, read at the first question of one held-port check and kept for the
    rest of it: psutil reads the table by mapping every process's descriptors (~30 ms on a
    quiet host, far more on a busy one), and each port of a new bind confsync may not bind
    itself (a range below 1024 under the shipped unit) read it again."""

    def __init__(self) -> None:
        self._rows: list[tuple[str, int, int | None]] | None = None
        self._read = False

    def listeners(self, address: str, port: int) -> list[tuple[str, int | None]] | None:
        """(address, pid) of each TCP socket listening on `port` where a bind of `address`
        would clash (`_clashes`): no privilege needed (the pid is None where confsync may not
        see the holder's descriptors). None when the table cannot be read."""
        if not self._read:
            self._read = True
            import psutil  # lazy: only a reload that meets a taken port asks; `once` should not pay

            with contextlib.suppress(psutil.Error):
                self._rows = [(c.laddr.ip, c.laddr.port, c.pid)
                              for c in psutil.net_connections(kind="tcp")
                              if c.status == psutil.CONN_LISTEN and c.laddr]
        if self._rows is None:
            return None
        return [(ip, pid) for ip, at, pid in self._rows if at == port and _clashes(ip, address)]

    def listening(self, address: str, port: int) -> bool:
        """Whether a TCP socket listens where a bind of `address`:`port` would clash (True when
        the table cannot tell: refused, as before)."""
        found = self.listeners(address, port)
        return found is None or bool(found)


def _process_name(pid: int) -> str:
    import psutil

    try:
        return str(psutil.Process(pid).name())
    except psutil.Error:
        return "?"


def _bound_by(old: HAProxyConfig, port: int) -> set[str]:
    """The addresses the running config's binds take `port` at."""
    found: set[str] = set()
    for token in old.binds:
        with contextlib.suppress(OSError):
            found.update(a for _, a, p in _bind_endpoints(token) if p == port)
    return found


_LISTENER_PORT = re.compile(r"\bl\.st=\S+.*?\blport=(\d+)")


def _haproxy_ports(admin: AdminSocket | None) -> set[int]:
    """The TCP ports HAProxy's worker listens on, from `show fd` on its admin socket; asked
    when the socket table names no process for a port (confsync under the shipped unit may
    not look into HAProxy's file descriptors, so HAProxy's own ports looked like a stranger's)."""
    if admin is None:
        return set()
    try:
        text = query(admin.path, "show fd", timeout=ASK_TIMEOUT, retry_for=0.5)
    except (OSError, ValueError):
        return set()
    return {int(port) for port in _LISTENER_PORT.findall(text)}


def _family(master_pid: int | None) -> set[int]:
    if master_pid is None:
        return set()
    import psutil

    try:
        master = psutil.Process(master_pid)
        return {master_pid, *(p.pid for p in master.children(recursive=True))}
    except psutil.Error:
        return set()


def _master_started(pid: int) -> float | None:
    """When the HAProxy master `pid` started (`boot_clock()` seconds); None when that pid is not
    an HAProxy process here (another PID namespace: `show proc` gives the pid HAProxy sees)."""
    try:
        name = Path(f"/proc/{pid}/comm").read_bytes()  # (any bytes: a process names itself)
    except OSError:
        return None
    return started_at(pid) if name.startswith(b"haproxy") else None


def find_master(master_socket: Path) -> int | None:
    """The pid of the HAProxy master started with `-S <master_socket>`, from the process table:
    for when its CLI does not answer, which it does not while it re-executes for a reload
    (measured on 2.6: refused for the whole load of the new configuration, 0.7 s for one with
    100,000 regular expressions). None when no such process runs. Only `haproxy*` processes'
    arguments are read, bounded in `watch` (processes.search); raises TableNotAnswered."""
    try:
        wanted = str(expand_user(master_socket))
    except ValueError:  # a `~user` not known yet: no master can run on a socket there
        return None
    return search(f"the HAProxy master of {master_socket}", lambda: _master_of(wanted))


def _master_of(wanted: str) -> int | None:
    found = []
    for pid, name, ppid, start in table():
        if not name.startswith("haproxy"):
            continue
        for flag, value in itertools.pairwise(argv(pid)):
            if flag == "-S" and value.split(",")[0] == wanted:
                found.append((start, pid, ppid))
                break
    pids = {pid for _, pid, _ in found}
    masters = [f for f in found if f[2] not in pids]  # the workers share the master's argv
    return min(masters or found)[1] if found else None


def check_binds_free(old: HAProxyConfig | None, new: HAProxyConfig,
                     master_pid: int | None, admin: AdminSocket | None = None) -> None:
    """Raise ReloadFailed if a `bind` of `new` is on a port another process holds.

    `haproxy -c` passes such a config, and the reload then pauses every listener for about 2 s
    and fails (measured on 2.6). Ports held by this HAProxy itself are fine.
    """
    ours: set[int] | None = None
    own_ports: set[int] | None = None
    table = _SocketTable()
    for token in new.binds:
        if old is not None and token in old.binds:
            continue  # the running config binds it already
        try:
            endpoints = _bind_endpoints(token)
        except OSError as exc:
            raise ReloadFailed(f"bind {token}: cannot resolve: {exc}", untouched=True) from None
        for family, address, port in endpoints:
            with socket.socket(family, socket.SOCK_STREAM) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    probe.bind((address, port))
                    continue
                except OSError as exc:
                    if exc.errno in _NOT_OURS_TO_BIND:
                        # HAProxy may bind what confsync may not (a port below 1024 under
                        # the shipped unit, which has no CAP_NET_BIND_SERVICE): the socket
                        # table says whether someone holds it.
                        if not table.listening(address, port):
                            continue
                    elif exc.errno != errno.EADDRINUSE:
                        raise ReloadFailed(f"bind {token}: {exc.strerror}",
                                           untouched=True) from None
            # Each listener the bind clashes with (the address matters: HAProxy's 127.0.0.1:P
            # vouched for a stranger's 127.0.0.2:P, and the reload went ahead and failed).
            holders = table.listeners(address, port) or [(address, None)]  # (unknown: a stranger)
            ours = _family(master_pid) if ours is None else ours
            strangers = [(ip, pid) for ip, pid in holders if pid is None or pid not in ours]
            if any(pid is None for _, pid in strangers):
                # A holder whose pid confsync may not see (HAProxy, under the shipped unit) is
                # HAProxy's own when `show fd` lists the port (it gives no address) and the
                # running config, when known, binds the port at that address.
                own_ports = _haproxy_ports(admin) if own_ports is None else own_ports
                bound = None if old is None else _bound_by(old, port)
                strangers = [(ip, pid) for ip, pid in strangers if pid is not None
                             or port not in own_ports or (bound is not None and ip not in bound)]
            if not strangers:
                continue  # moved from another frontend, or the previous file is unknown
            pid = strangers[0][1]
            name = "unknown process" if pid is None else _process_name(pid)
            raise ReloadFailed(
                f"bind {token}: port {port} is held by {name}"
                f"{f' (pid {pid})' if pid is not None else ''}; refusing to reload into it",
                untouched=True)


def _joined(files: Sequence[bytes | None]) -> str:
    """Several files as the one configuration HAProxy makes of them (read in that order)."""
    return "\n".join((text or b"").decode("utf-8", "replace") for text in files)


class _Models:
    """The models of the last few files parsed or proven, by their bytes (compared, not
    hashed: equal bytes are one memcmp, others usually differ in length)."""

    KEEP = 4

    def __init__(self) -> None:
        self._kept: list[tuple[bytes, HAProxyConfig]] = []

    def get(self, content: bytes) -> HAProxyConfig | None:
        return next((model for kept, model in self._kept if kept == content), None)

    def put(self, content: bytes, model: HAProxyConfig) -> None:
        self._kept = [*((k, m) for k, m in self._kept if k != content)][-(self.KEEP - 1):]
        self._kept.append((content, model))


class CheckedBase(NamedTuple):
    """The last file that passed the check, as proofs read it. Every proof until the next
    check is taken against it, so a controller parses it once (5,000 servers: ~35 ms of CPU,
    half of a full proof, on the loop's thread before the file is written)."""

    content: bytes
    model: HAProxyConfig
    options: frozenset[tuple[str, ...]]  # those of its servers: a changed server must use one

    @classmethod
    def of(cls, checked: bytes, model: HAProxyConfig | None = None) -> CheckedBase:
        """`model`: `checked`'s, when already parsed."""
        if model is None:
            model = parse(checked.decode("utf-8", "replace"))
        return cls(checked, model, frozenset(
            s.options for b in model.backends.values() for s in b.servers.values()))


def server_only_change(checked: bytes | None, content: bytes,
                       base: CheckedBase | None = None) -> bool:
    """True when `content` is valid because `checked` passed `haproxy -c` and they differ only
    in servers the runtime API can apply. `base`: `checked` already parsed.

    Everything else is byte-equal; each added or changed server line re-validates here (IP,
    port, weight range, options some server of `checked` already had); and no removed server is
    still named anywhere in `content` (`use-server`, `track`, a sample fetch ...: HAProxy would
    refuse the file). Saves `haproxy -c` (about 40-80 ms, most of the put -> served latency).
    """
    if checked is None:
        return False
    if base is None or base.content != checked:
        base = CheckedBase.of(checked)
    return _full_proof(base, content)[0]


def _full_proof(base: CheckedBase, content: bytes
                ) -> tuple[bool, HAProxyConfig, list[tuple[str, str]]]:
    """`server_only_change` from the whole of `content`: (proven, its model, the servers of
    the checked file it removes as (backend, name))."""
    text = content.decode("utf-8", "replace")
    new = parse(text)
    changes = runtime_changes(base.model, new)
    if changes is None:
        return False, new, []
    removed = []
    for change in changes:
        server = change.new
        if server is None:
            if change.old is not None and mentions(text, change.old.name):
                return False, new, []
            removed.append((change.backend, change.old.name if change.old else ""))
            continue
        if not (0 < server.port < 65536 and 0 <= server.weight <= 256) or (
                server.options not in base.options):
            return False, new, []
    return True, new, removed


class HAProxyController(ReloadTarget):
    """The reload target of a resource with a `[haproxy]` table."""

    def __init__(self, resource: Resource, settings: HAProxySettings) -> None:
        self.resource = resource
        self.settings = settings
        # reload_cmd / reload_signal without a master socket: unconfirmed, as for any service.
        self.fallback = CommandReloader(resource)
        # Servers this target removed from the file but HAProxy could not delete yet (open
        # connections): parked in maintenance, deleted by a later pass. "backend/server".
        self.parked: set[str] = set()
        # When each parked server was parked (time.monotonic()), and those warned about as
        # held too long: both follow `parked`, never every name ever parked.
        self._parked_since: dict[str, float] = {}
        self._parked_warned: set[str] = set()
        self._parked_warned_at: float | None = None  # time.monotonic() of the last warning
        # The admin socket and `hard-stop-after` of the file last applied (`_sweep_parked`).
        self._parked_admin: AdminSocket | None = None
        self._hard_stop_after: float | None = None
        # The worker the parked servers are in (`show info`'s pid and start time; None: not
        # known). A reload by someone else (`systemctl reload`: same master) drops them with
        # it, and a server of the same name in the new worker is someone else's: a runtime
        # `add server` comes in maintenance, which `del server` accepts.
        self._parked_worker: Worker | None = None
        # The record of the parked servers a successor takes over (parked_record.py): where it
        # is kept, whether the one an earlier run left has been judged (once, when HAProxy's
        # worker first answers), and what was last handed to its writer (once anything was).
        self._record = record_path(resource.dest)
        self._record_judged = False
        self._record_saved: ParkedRecord | None = None
        self._record_handed = False
        # SIGTERM or SIGINT arrived: a move stops waiting for its requests in flight.
        self._stopping = False
        # The master last seen answering: (pid, start time). A master that lives on while its
        # CLI does not answer is reloading, not gone; a new one has no parked servers.
        self._master: tuple[int, float] | None = None
        # The file at dest when the last probe found HAProxy's servers differ from it in
        # nothing a reload is needed for: the reload that follows for these very bytes brings
        # the servers in step through the runtime API instead (`reload`).
        self._drifted: bytes | None = None
        # The last checked file, parsed: the base of the proofs (`may_skip_check`); the files
        # proven from it that later proofs start from; the models of the files last parsed or
        # proven, which the reload step and the drift comparison read (the same bytes, the same
        # model).
        self._checked: CheckedBase | None = None
        self._proven: list[proof_delta.Proven] = []
        self._models = _Models()

    def gauges(self) -> tuple[TargetGauge, ...]:
        found = []
        if self.settings.strategy is Strategy.RUNTIME:
            found.append(TargetGauge("haproxy_parked_servers", "Servers removed from the file "
                                     "that HAProxy keeps in maintenance until their "
                                     "connections close", len(self.parked)))
        seen = _OLD_WORKERS.get(str(self.settings.master_socket))
        if seen is not None:
            found.append(TargetGauge("haproxy_old_workers", "HAProxy workers left from earlier "
                                     "reloads, still serving their connections (`show proc`)",
                                     len(seen[0])))
        return tuple(found)

    def _track_parked(self, admin: AdminSocket | None = None,
                      new: HAProxyConfig | None = None) -> None:
        """Bring the parked servers' times in step with `parked` (after a pass: `admin` and
        `new` are its socket and file)."""
        if admin is not None and new is not None:
            self._parked_admin = AdminSocket(admin.path, ASK_TIMEOUT)
            self._hard_stop_after = new.hard_stop_after
            self._parked_worker = None
            if self.parked:
                with contextlib.suppress(RuntimeApplyFailed):
                    self._parked_worker = worker_identity(self._parked_admin)
        if not self.parked:
            self._parked_worker = None
        now = time.monotonic()
        self._parked_since = {ref: self._parked_since.get(ref, now) for ref in self.parked}
        self._parked_warned &= self.parked
        self._save_record()

    def _save_record(self) -> None:
        """Have the record say what is parked now, in which worker (removed when nothing is,
        or the worker is not known): written off the loop, only when that changed, and not
        before the record an earlier run left was judged (`_adopt_recorded`)."""
        if not self._record_judged:
            return
        admin, worker = self._parked_admin, self._parked_worker
        record = None
        if self.parked and admin is not None and worker is not None and (
                worker.started is not None):
            record = ParkedRecord(str(admin.path), worker, frozenset(self.parked))
        if self._record_handed and record == self._record_saved:
            return
        save(self._record, record)
        self._record_saved, self._record_handed = record, True

    def _adopt_recorded(self, admin: AdminSocket, own: HAProxyConfig) -> None:
        """Once, at the first look or pass that reaches HAProxy's worker: take over the servers
        an earlier run recorded as parked in that very worker that are parked still
        (`still_parked`: in maintenance, no server of `own`, this resource's file): counted,
        deleted by the heartbeat once their connections close, a successor's record again.

        Forgotten by a restart, they stayed in HAProxy until its next reload; taken from
        HAProxy alone (every server in maintenance the file does not name), an operator's
        runtime-added server was deleted too. A record of another worker (HAProxy reloaded or
        restarted since), another socket, or unreadable is ignored, with one log line."""
        if self._record_judged:
            return
        name = self.resource.name
        try:
            worker = worker_identity(admin)
            live = live_servers(admin)
        except RuntimeApplyFailed as exc:
            log.debug("resource %s: cannot look for servers an earlier run parked: %s", name,
                      exc)
            return  # (asked again at the next pass)
        self._record_judged = True
        found = read_record(self._record)
        why = found.ignored_because(str(admin.path), worker) if found is not None else None
        if why is not None:
            log.info("resource %s: %s ignored: %s", name, self._record, why)
        elif found is not None:
            taken = still_parked(found, live, own) - self.parked
            # (written again only when it says something else: a `once` that takes it over
            # and changes nothing leaves it as it is)
            self._record_saved, self._record_handed = found, True
            if taken:
                log.info("resource %s: %d server(s) an earlier run parked are in maintenance "
                         "still, in the same HAProxy worker (pid %d); deleted once their "
                         "connections close: %s", name, len(taken), found.worker.pid,
                         ", ".join(sorted(taken)[:5]) + (" ..." if len(taken) > 5 else ""))
                self.parked |= taken
        self._track_parked(admin, own)

    def _forget_gone_parked(self, admin: AdminSocket) -> None:
        """Forget the parked servers when the worker answering on `admin` is not the one
        they were parked in: they went with it, and their names are nobody's to delete."""
        if not self.parked or self._parked_worker is None:
            return
        try:
            worker = worker_identity(admin)
        except RuntimeApplyFailed:
            return  # (the caller's own commands fail the same way)
        if worker is not None and worker != self._parked_worker:
            log.debug("resource %s: HAProxy was reloaded (worker %d, not %d): its parked "
                      "servers went with the old worker", self.resource.name, worker.pid,
                      self._parked_worker.pid)
            self.parked.clear()
            self._track_parked()

    def _sweep_parked(self) -> None:
        """Every heartbeat (from `probe`): delete the parked servers whose connections have
        closed since, and warn once about each one held longer than a reload would have let
        its connections live.

        Deleted only by the next pass, a parked server stayed in HAProxy for as long as the
        pool did not change again; one whose connection never ends (a stuck websocket) stayed
        until a reload with nothing said but a DEBUG line.
        """
        admin = self._parked_admin
        if admin is None:
            return
        self._forget_gone_parked(admin)
        for ref in sorted(self.parked):
            try:
                admin.command(f"del server {ref}")
            except RuntimeApplyFailed as exc:
                if "connection" in str(exc).lower():
                    continue  # still busy
                # HAProxy does not answer, or the server is not what it was (gone, or set
                # ready by someone): the next pass compares with what HAProxy runs.
                log.debug("resource %s: parked %s not deleted: %s", self.resource.name, ref, exc)
                break
            self.parked.discard(ref)
            log.debug("resource %s: deleted %s, its connections closed", self.resource.name, ref)
        self._track_parked()
        limit = self._hard_stop_after or PARKED_WARN_AFTER
        now = time.monotonic()
        overdue = sorted((since, ref) for ref, since in self._parked_since.items()
                         if now - since >= limit)
        last = self._parked_warned_at
        if not {ref for _, ref in overdue} - self._parked_warned or (
                last is not None and now - last < PARKED_WARN_EVERY):
            return
        self._parked_warned.update(ref for _, ref in overdue)
        self._parked_warned_at = now
        since, ref = overdue[0]
        more = f" (and {len(overdue) - 1} more)" if len(overdue) > 1 else ""
        log.warning("resource %s: %s left the pool %.0fs ago and still has connections%s (kept "
                    "in maintenance until they close; a reload would have ended them after "
                    "%.0fs): `shutdown sessions server %s` on the admin socket ends them",
                    self.resource.name, ref, now - since, more, limit, ref)

    def _count_old(self, status: MasterStatus | None) -> None:
        """Keep the master's old workers for the gauge (None: no master answers); warn once
        when they pile up."""
        where = str(self.settings.master_socket)
        if status is None:
            _OLD_WORKERS.pop(where, None)
            return
        old = status.old_workers
        warned = _OLD_WORKERS.get(where, ((), False))[1]
        if len(old) <= OLD_WORKERS_WARN // 2:
            warned = False
        elif len(old) > OLD_WORKERS_WARN and not warned:
            warned = True
            log.warning("resource %s: %d old HAProxy workers still run (pids %s): connections "
                        "held open across reloads keep each alive with its memory; set or lower "
                        "`hard-stop-after` in HAProxy's global section (the shipped template: "
                        "\"hard_stop_after\" in /haproxy/global) to end them", self.resource.name,
                        len(old), " ".join(map(str, sorted(old)[:5])) + (
                            " ..." if len(old) > 5 else ""))
        _OLD_WORKERS[where] = (old, warned)

    def take_over(self, earlier: ReloadTarget) -> None:
        """Servers `earlier` parked are this resource's to delete still, when both drive the
        same HAProxy (same sockets): a SIGHUP that edited the resource (a timeout, its check)
        left them in maintenance in HAProxy until its next reload."""
        if not isinstance(earlier, HAProxyController) or (
                (earlier.settings.master_socket, earlier.settings.runtime_socket)
                != (self.settings.master_socket, self.settings.runtime_socket)):
            return
        self.parked |= earlier.parked
        self._parked_since = {**earlier._parked_since, **self._parked_since}
        self._parked_admin = self._parked_admin or earlier._parked_admin
        self._hard_stop_after = self._hard_stop_after or earlier._hard_stop_after
        self._parked_worker = self._parked_worker or earlier._parked_worker
        self._record_judged = self._record_judged or earlier._record_judged
        if earlier._record == self._record:
            self._record_saved = earlier._record_saved
            self._record_handed = earlier._record_handed
        elif earlier._record_saved is not None:  # (moved to another dest: recorded there)
            save(earlier._record, None)
        self._stopping = self._stopping or earlier._stopping
        self._master = self._master or earlier._master

    def stop_asked(self) -> None:
        self._stopping = True

    def _stop_asked(self) -> bool:
        return self._stopping

    def key(self) -> Hashable:
        if self.settings.master_socket is not None:
            return ("haproxy-master", self.settings.master_socket)
        return self.fallback.key()

    def _alive_master(self) -> int | None:
        """The master whose CLI just did not answer, if it lives: the one last seen, else
        one found in the process table by its `-S` socket."""
        seen = self._master
        if seen is not None and _master_started(seen[0]) == seen[1]:
            return seen[0]
        self._master = None
        master = self.settings.master_socket
        pid = find_master(master) if master is not None else None
        if pid is not None:
            self._seen(pid)
        return pid

    def _master_stopped(self) -> bool:
        """The master is stopped (SIGSTOP, a debugger): its CLI would not answer. The one last
        seen, else the one found in the process table (`once`: then it is the one seen)."""
        pid = self._alive_master()
        return pid is not None and state(pid) in _STOPPED

    def _runs(self, pid: int) -> bool:
        """False when the master `pid`, seen here, surely no longer runs: no such process, a
        zombie (confsync's own child under `--exec`), or another process with its pid. True
        when that cannot be told (a master in another PID namespace)."""
        seen = self._master
        if seen is None or seen[0] != pid:
            return True
        return _master_started(pid) == seen[1] and state(pid) not in _GONE

    def _seen(self, pid: int) -> float | None:
        started = _master_started(pid)
        if self._master is not None and (pid, started) != self._master and self.parked:
            self.parked.clear()  # another master: it started from the file, without them
            self._track_parked()
        self._master = (pid, started) if started is not None else None
        return started

    def probe(self, since: float | None, quick: bool = False, compare: bool = False) -> Probe:
        """`show proc` on the master CLI (no reload, nothing sent to the workers). A master
        that started after `since` read the file in place then. `compare`: also tell whether a
        master that started before runs the file (STALE if not)."""
        self._drifted = None
        master = self.settings.master_socket
        if master is None:
            return self.fallback.probe(since, quick, compare)
        try:
            status = show_proc(master, retry_for=0.0 if quick else 0.5, timeout=ASK_TIMEOUT)
        except SocketUnavailable as exc:
            pid = None if quick else self._alive_master()
            if pid is None and not quick and exc.errno == errno.ETIMEDOUT:
                raise  # something holds the socket and does not answer: not known to be down
            if pid is not None:
                started = _master_started(pid)
                busy = f"its CLI on {master} does not answer " + (
                    "(the process is stopped)" if state(pid) in _STOPPED else "(reloading?)")
                if since is not None and started is not None and started > since:
                    return Probe(Liveness.STARTED_SINCE, f"HAProxy master pid {pid} started "
                                 f"after the file was in place; {busy}")
                return Probe(Liveness.RUNNING, f"HAProxy master pid {pid} runs; {busy}")
            if not quick and self.resource.reload_signal is not None and (
                    self.resource.pidfile or self.resource.process):
                found = process_probe(find_process(self.resource.pidfile,
                                                   self.resource.process), "HAProxy", since)
                if found.liveness is not Liveness.DOWN:
                    return found
            self._count_old(None)
            return Probe(Liveness.DOWN, f"no HAProxy master on {master}")
        except ReloadNotConfirmed as exc:  # something answers, not as a master would
            return Probe(Liveness.RUNNING, str(exc))
        self._count_old(status)
        started = self._seen(status.pid)
        if since is not None and started is not None and started > since:
            return Probe(Liveness.STARTED_SINCE, f"HAProxy master pid {status.pid} started "
                         "after the file was in place")
        if self.parked:
            self._sweep_parked()
        # With the runtime strategy a file newer than the worker is the rule (changes applied
        # without a reload): there the servers HAProxy runs are compared with the file's.
        stale = None
        if compare and self.settings.strategy is Strategy.RELOAD:
            stale = self._stale(status.worker)
        elif compare:
            stale = self._servers_differ()
        if stale is not None:
            return Probe(Liveness.STALE, stale)
        return Probe(Liveness.RUNNING, f"HAProxy master pid {status.pid} answers on {master}")

    def _stale(self, worker: int | None) -> str | None:
        """Why HAProxy surely runs a configuration older than the file at dest, else None.

        The master binds its CLI socket anew at every start and reload, just after reading the
        configuration: a socket file older than dest's last write means HAProxy never read it
        (a confsync killed between installing a file and reloading, say). Both are stamps of
        one clock, the file system's, set when each happened: a wall-clock step since changes
        neither's order (the worker's start on the boot clock against the file's mtime, turned
        into boot-clock time with today's wall clock, made an extra reload or missed a needed
        one after a step). `worker`: the current one; None (the last reload failed, the old
        workers serve) answers None, as the socket was bound by that failed reload."""
        master = self.settings.master_socket
        if worker is None or master is None:
            return None
        try:
            loaded = expand_user(master).stat().st_mtime_ns
            written = self.resource.dest.stat().st_mtime_ns
        except (OSError, ValueError):  # (ValueError: a `~user` not known yet)
            return None
        if loaded >= written:
            return None
        return (f"HAProxy (worker pid {worker}) loaded its configuration "
                f"{(written - loaded) / 1e9:.1f}s before {self.resource.dest} was written")

    def _servers_differ(self) -> str | None:
        """How the servers HAProxy runs in the backends of the file at dest differ from the
        file's (names, addresses, ports), else None; None too when HAProxy cannot be asked (the
        probe does not fail for that: it answers as before).

        With the runtime strategy a pass killed between installing the file and sending its
        runtime commands leaves HAProxy on the old pool, and the file current: nothing would
        change it until the pool changes again. Weight and admin state are not compared: an
        operator's `disable server` is no difference (nor a reason to undo it). The daemon
        asks this every few seconds too (`Syncer.compare_targets`): drift by hand between
        pool changes is healed as the next change would heal it. A file with server lines
        the model cannot read is not compared."""
        try:
            content = self.resource.dest.read_bytes()
        except OSError:
            return None
        new = self._parsed(content)  # (the model a proof or the last comparison made)
        admin = self._admin(new, timeout=ASK_TIMEOUT)
        if admin is None or new.opaque:
            # (A server line the model cannot read, a host name's, would be a server HAProxy
            # runs that the file lacks: compared every few seconds, deleted by each repair.)
            return None
        self._adopt_recorded(admin, new)
        try:
            plan = pool_differences(admin, new, self.parked)
        except RuntimeApplyFailed as exc:
            log.debug("resource %s: cannot compare HAProxy's servers with the file: %s",
                      self.resource.name, exc)
            return None
        if not plan.differences and plan.reload is None:
            return None
        if plan.reload is None:
            self._drifted = content
        shown = "; ".join(plan.differences[:3]) + (
            f" (and {len(plan.differences) - 3} more)" if len(plan.differences) > 3 else "")
        return f"HAProxy's servers are not the file's: {shown or plan.reload}"

    def _admin(self, new: HAProxyConfig, timeout: float = 5.0) -> AdminSocket | None:
        """The admin socket: `runtime_socket`, else the `stats socket` of the file."""
        path = self.settings.runtime_socket or (
            Path(new.stats_socket) if new.stats_socket else None)
        return AdminSocket(path, timeout) if path is not None else None

    def may_skip_check(self, previous: bytes, content: bytes, checked: bytes) -> bool:
        if self.settings.check_server_changes or self.settings.strategy is not Strategy.RUNTIME:
            return False
        base = self._checked
        if base is None or base.content != checked:
            model = self._models.get(checked)
            base = self._checked = CheckedBase.of(checked, model)
        # From the file being replaced, proven (or checked) here, at the cost of what changed;
        # else (or when that is no simple server change) from the whole file.
        start = next((p for p in self._proven if p.content == previous
                      and p.checked is base.content), None)
        if start is None and previous == checked:
            start = proof_delta.start(base.content, base.model)
        if start is not None:
            proven = proof_delta.prove(start, base.model, base.options, content)
            if proven is not None:
                self._keep_proven(proven)
                return True
        ok, model, removed = _full_proof(base, content)
        self._models.put(content, model)
        if ok:
            proven = proof_delta.after_full_proof(base.content, content, model, removed)
            if proven is not None:
                self._keep_proven(proven)
        return ok

    def _keep_proven(self, proven: proof_delta.Proven) -> None:
        """Keep `proven` as a start of later proofs (the last two: the next proof starts from
        the file installed, which is the newest unless its install failed), and its model for
        the reload step."""
        self._proven = [*(p for p in self._proven[-1:] if p.content != proven.content), proven]
        self._models.put(proven.content, proven.model)

    def _parsed(self, content: bytes) -> HAProxyConfig:
        """`parse(content)`, from the model a proof or an earlier step made of these bytes when
        there is one (5,000 servers: ~30 ms of CPU each)."""
        model = self._models.get(content)
        if model is None:
            model = parse(content.decode("utf-8", "replace"))
            self._models.put(content, model)
        return model

    def reload(self, previous: bytes | None, content: bytes | None,
               siblings: Sequence[Sibling] = ()) -> ReloadResult:
        """Make the file at `dest` (== `content`) live. `previous`: what HAProxy ran (None:
        unknown). `siblings`: the other files of this HAProxy (`-f a.cfg -f b.cfg`) that
        confsync writes; everything below sees all files as one configuration, as HAProxy
        does, so that a runtime pass or the state file saved for a reload covers every
        server (saved for the first file alone, a reload dropped the state of the others')."""
        resource = self.resource
        entered = boot_clock()  # the file is in place: a master started after this read it
        if content is None:
            try:
                content = resource.dest.read_bytes()
            except OSError as exc:
                raise ReloadFailed(f"cannot read {resource.dest}: {exc.strerror}") from None
        if siblings:
            new = parse(_joined([content, *(now for _, now in siblings)]))
            ran = [previous, *(before for before, _ in siblings)]
            old = parse(_joined(ran)) if all(text is not None for text in ran) else None
        else:  # (a file alone: as a proof or the last step read it, when one did)
            new = self._parsed(content)
            old = self._parsed(previous) if previous is not None else None
        admin = self._admin(new)
        runtime = self.settings.strategy is Strategy.RUNTIME
        why = "structural change" if runtime else "reload strategy"
        # What HAProxy runs is unknown, but the probe just now found its servers differ from
        # this very file only where the runtime API can bring them in step (`_servers_differ`):
        # so it does, against HAProxy's own servers, rather than a reload.
        drifted, self._drifted = self._drifted, None
        heal = old is None and drifted is not None and drifted == content
        if runtime and (old is not None or heal) and admin is not None:
            if old is None or runtime_changes(old, new) is not None:
                if not self._record_judged:  # (this resource's own file: a shared HAProxy's
                    # other files are other targets', each judging its own record)
                    self._adopt_recorded(admin, new if not siblings else self._parsed(content))
                self._forget_gone_parked(admin)
                try:
                    worker = worker_identity(admin)
                    sent = reconcile(admin, old, new, self.parked, stop=self._stop_asked)
                except RuntimeApplyFailed as exc:
                    why = f"runtime API failed ({exc})"
                    log.warning("resource %s: %s; reloading instead", resource.name, why)
                else:
                    self._track_parked(admin, new)
                    why = ("servers added or removed where the balance algorithm needs a reload, "
                           "or the only server serving a backend moved")
                    if sent is not None:
                        self._save_state(admin, old, new)
                        # (an outside reload whose worker may not have what the pass did)
                        left = worker_left(admin, worker, self.settings.master_socket,
                                           self._master_stopped, ASK_TIMEOUT)
                        if left is not None:
                            sent, why = None, left
                            log.warning("resource %s: %s; reloading to make the file live",
                                        resource.name, why)
                    if sent:
                        return ReloadResult(ReloadKind.RUNTIME, f"runtime API: {len(sent)} "
                                            f"command(s) on {admin.path}, no reload")
                    if sent is not None:
                        return ReloadResult(ReloadKind.IN_STEP, "servers already as in the "
                                            "file; nothing to reload")
        elif runtime:
            why = "no previous file or admin socket"
        try:
            result = self._reload(old, new, admin, why, entered)
        except ReloadFailed as exc:
            if exc.untouched and why.startswith("runtime API failed"):
                raise ReloadFailed(str(exc)) from None  # some runtime commands went through
            raise
        self.parked.clear()  # a reload drops every server the file does not name
        self._track_parked()
        return result

    def _reload(self, old: HAProxyConfig | None, new: HAProxyConfig,
                admin: AdminSocket | None, why: str, entered: float) -> ReloadResult:
        resource = self.resource
        master = self.settings.master_socket
        master_pid = None
        if master is not None:
            try:
                master_status = show_proc(master, retry_for=0.5, timeout=ASK_TIMEOUT)
                master_pid = master_status.pid
            except SocketUnavailable as exc:
                # Alive but not answering: re-executing for a reload (someone else's), or
                # stopped (below). Ours waits for its CLI (reload_confirmed), rather than find
                # "nothing running", or fail and roll back over a master that was paused.
                master_pid = self._alive_master()
                if master_pid is None and exc.errno == errno.ETIMEDOUT:
                    # A socket that takes connections and never answers, and no master of it
                    # runs: nothing to wait for, and nothing was sent.
                    raise ReloadFailed(str(exc), untouched=True) from None
                if master_pid is not None and state(master_pid) in _STOPPED:
                    # Stopped (SIGSTOP, a debugger): it would take `reload` into its backlog
                    # and act on it whenever it runs again. Like no master: the file stays
                    # (checked), the probe asks every second, and once the master answers the
                    # file is made live by one reload. (A cgroup freezer, `docker pause`,
                    # leaves no such state: that master is waited for by reload_confirmed.)
                    log.warning("resource %s: HAProxy master pid %d is stopped; file updated, "
                                "reloading when it runs again", resource.name, master_pid)
                    return ReloadResult(ReloadKind.NO_TARGET,
                                        f"HAProxy master pid {master_pid} is stopped")
            except ReloadNotConfirmed as exc:
                raise ReloadFailed(str(exc)) from None
            else:
                self._seen(master_pid)
                self._count_old(master_status)
            started = _master_started(master_pid) if master_pid is not None else None
            if started is not None and started > entered:
                # Started (by someone else) while this step ran: it read this very file.
                done = self._started_in_step(admin, old, new, master_pid)
                if done is not None:
                    return done
        check_binds_free(old, new, master_pid, admin)
        self._save_state(admin, old, new)
        if master is None:
            return self.fallback.reload(None, None)
        if master_pid is None:
            log.warning("resource %s: no HAProxy master answers on %s; file updated, HAProxy "
                        "will read it when it starts", resource.name, master)
            return ReloadResult(ReloadKind.NO_TARGET, f"no HAProxy master on {master}")
        trigger, how = self._trigger()
        pid: int = master_pid
        try:
            status, seconds = reload_confirmed(master, trigger, timeout=resource.reload_timeout,
                                               runs=lambda: self._runs(pid))
        except SocketUnavailable as exc:  # no answer before anything was sent
            raise ReloadFailed(str(exc), untouched=True) from None
        except MasterGone as exc:
            # Stopped (`systemctl stop`, a crash) around our reload: like no master at all.
            # The file stays (it was checked), nothing is rolled back, and whatever starts
            # next reads it; the probe reports `not running` until then.
            self._master = None
            self._count_old(None)
            log.warning("resource %s: %s (pid %d); file updated, HAProxy will read it when it "
                        "starts", resource.name, exc, pid)
            return ReloadResult(ReloadKind.NO_TARGET, f"{exc} (pid {pid})")
        except ReloadNotConfirmed as exc:
            raise ReloadFailed(str(exc)) from None
        self._count_old(status)
        return ReloadResult(ReloadKind.CONFIRMED,
                            f"reloaded HAProxy ({why}) by {how}, confirmed in "
                            f"{seconds * 1000:.0f} ms (reload #{status.reloads}, failed "
                            f"{status.failed})")

    def _started_in_step(self, admin: AdminSocket | None, old: HAProxyConfig | None,
                         new: HAProxyConfig, pid: int | None) -> ReloadResult | None:
        """HAProxy (master `pid`) started during this step read the new file, but perhaps
        with the server state saved for the previous one (this step had not brought it to
        the new file yet), which 2.6 lets override a server's address, port and maintenance:
        a server etcd moved was served at its old address until it changed again. Its
        servers are brought in step with the file through the runtime API, as a runtime pass
        from `old` would (an operator's maintenance of a server etcd left alone stays), and
        the state saved for `new`. None when that fails: the caller reloads."""
        done = f"HAProxy master pid {pid} started after the file was in place"
        if not new.state_file:
            return ReloadResult(ReloadKind.IN_STEP, f"{done}; nothing to reload")
        if admin is None:
            return None
        self._forget_gone_parked(admin)
        try:
            sent = reconcile(admin, old, new, self.parked, stop=self._stop_asked)
        except RuntimeApplyFailed as exc:
            log.warning("resource %s: %s; its servers cannot be compared with the file (%s): "
                        "reloading", self.resource.name, done, exc)
            return None
        self._track_parked(admin, new)
        if sent is None:
            return None
        self._save_state(admin, old, new)
        if sent:
            log.warning("resource %s: %s with a server state saved for the previous one; "
                        "brought in step: %s", self.resource.name, done, "; ".join(sent[:5]))
            return ReloadResult(ReloadKind.RUNTIME, f"{done}; runtime API: {len(sent)} "
                                f"command(s) on {admin.path}, no reload")
        return ReloadResult(ReloadKind.IN_STEP, f"{done}; nothing to reload")

    def _save_state(self, admin: AdminSocket | None, old: HAProxyConfig | None,
                    new: HAProxyConfig) -> None:
        """Make the server-state file agree with `new` (and keep what HAProxy knows of health).

        Called before each of our reloads and after each runtime pass: HAProxy loads the file
        at *every* start and reload, also those of others (`systemctl reload` or `restart`, an
        OOM restart), and 2.6 lets it override the config's address, port and maintenance. A
        file saved at our last reload would bring back what runtime changes replaced since.
        """
        if not new.state_file:
            return
        state_file = Path(new.state_file)
        name = self.resource.name
        unwritable = None
        try:
            if admin is None:
                raise RuntimeApplyFailed("no admin socket")
            kept = save_server_state(admin, state_file, old, new, self.parked)
            log.debug("resource %s: saved state of %d server(s) to %s", name, kept, state_file)
            return
        except RuntimeApplyFailed as exc:  # HAProxy does not answer (stopped, say)
            log.debug("resource %s: no server state from HAProxy (%s)", name, exc)
            try:
                # Its next start loads the file saved last: kept but for the servers etcd
                # changed (an operator's maintenance survives a stop, as without confsync).
                updated = update_saved_state(state_file, old, new, self.parked)
                log.debug("resource %s: kept the state of %s server(s) in %s", name, updated,
                          state_file)
                return
            except RuntimeApplyFailed as exc:  # not a state file
                log.debug("resource %s: %s", name, exc)
            except OSError as exc:
                unwritable = exc.strerror or str(exc)
        except OSError as exc:  # a read-only /var/lib/haproxy (ProtectSystem=strict), say
            unwritable = exc.strerror or str(exc)
        # A stale state file would override addresses from the new config: remove it. Neither
        # failing is a failed pass (it was: the runtime changes made were rolled back, and
        # every retry did the same); HAProxy's servers are as the file says all the same.
        try:
            drop_server_state(state_file)
        except OSError as exc:
            # (unlink on a read-only mount fails for a file that is not there too: EROFS)
            if os.path.lexists(state_file):
                self._warn(f"resource {name}: cannot save HAProxy's server state to "
                           f"{state_file} ({unwritable or 'HAProxy did not answer'}) nor "
                           f"remove it ({exc.strerror}): HAProxy's next start or reload loads "
                           "it as it is, and servers changed since take its address, weight "
                           "and maintenance")
                return
        if unwritable is not None:
            self._warn(f"resource {name}: cannot save HAProxy's server state to {state_file} "
                       f"({unwritable}): servers' health is not carried across reloads (make "
                       "its directory writable to confsync: ReadWritePaths=)")

    @staticmethod
    def _warn(message: str) -> None:
        if _STATE_WARNINGS.due(message):
            log.warning("%s", message)

    def _trigger(self) -> tuple[Callable[[], None] | None, str]:
        """How to reload: `reload_signal` to the master if set and found, else the CLI."""
        resource = self.resource
        if resource.reload_signal is None:
            return None, "`reload` on the master CLI"
        pid = find_process(resource.pidfile, resource.process)
        if pid is None:
            return None, "`reload` on the master CLI (no process for the signal)"
        sig: signal.Signals = resource.reload_signal

        def send() -> None:
            os.kill(pid, sig)

        return send, f"{sig.name} to pid {pid}"
