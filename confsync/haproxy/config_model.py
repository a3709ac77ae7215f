"""A small parser for rendered HAProxy configs: enough to tell a pool change from a structural one.

It understands the shape our templates produce (sections, `bind`, `server`, `default-server`,
`balance`, `stats socket`, `server-state-file`), not HAProxy's whole grammar: anything it does not
model is compared verbatim, so an unknown difference is always treated as structural (a reload).
"""

from __future__ import annotations

import functools
import ipaddress
import re
from dataclasses import dataclass, field

SECTION_KEYWORDS = frozenset({"global", "defaults", "frontend", "backend", "listen", "peers",
                              "resolvers", "userlist", "mailers", "program", "http-errors",
                              "ring", "cache"})
# Algorithms with which HAProxy 2.6 accepts `add server` / `del server` at runtime.
DYNAMIC_BALANCE = frozenset({"roundrobin", "leastconn", "first", "random"})


@dataclass(frozen=True)
class Server:
    """One `server` line: the fields the runtime API can change, and the rest verbatim."""

    name: str
    address: str  # IP (IPv6 without brackets)
    port: int
    weight: int = 1
    disabled: bool = False
    options: tuple[str, ...] = ()  # every other token, in order

    @property
    def addr_port(self) -> str:
        return f"[{self.address}]:{self.port}" if ":" in self.address else \
            f"{self.address}:{self.port}"


@dataclass
class Backend:
    name: str
    balance: str = "roundrobin"
    # The `default-server` options in force at the backend's end: its `defaults` section's,
    # then each of its own lines' (they add up, later options winning).
    default_server: tuple[str, ...] = ()
    servers: dict[str, Server] = field(default_factory=dict)
    # Those in force at each `server` line: HAProxy applies a `default-server` line only to
    # the servers after it.
    server_defaults: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # `server-template <prefix> <num | first-last>` lines: (prefix, first, last). The slots
    # (prefix1, prefix2, ...) are filled at runtime by someone else, never ours to change.
    templates: list[tuple[str, int, int]] = field(default_factory=list)

    def is_slot(self, name: str) -> bool:
        """True when `name` is a server the backend's `server-template` lines create."""
        for prefix, first, last in self.templates:
            number = name[len(prefix):]
            if name.startswith(prefix) and number.isdigit() and first <= int(number) <= last:
                return True
        return False

    def defaults_for(self, server: str) -> tuple[str, ...]:
        """The `default-server` options HAProxy gave `server` from the file (those at the end
        of the backend for a server it does not have)."""
        return self.server_defaults.get(server, self.default_server)


@dataclass
class HAProxyConfig:
    """What a rendered config means to the reloader."""

    # Every non-blank, non-comment line except `server` lines of backends, in order: two
    # configs with equal skeletons differ only in their servers.
    skeleton: list[str] = field(default_factory=list)
    backends: dict[str, Backend] = field(default_factory=dict)
    binds: list[str] = field(default_factory=list)
    stats_socket: str | None = None
    state_file: str | None = None
    hard_stop_after: float | None = None  # seconds, from the global section
    # Server lines the model could not read (a hostname, an unknown option shape): structural.
    opaque: list[str] = field(default_factory=list)


def _number(text: str) -> bool:
    """ASCII digits: `str.isdigit` takes `8\u0660` for 80, which HAProxy refuses."""
    return text.isascii() and text.isdigit()


def split_addr_port(token: str) -> tuple[str, int] | None:
    """'10.0.0.1:80' / '[2001:db8::1]:80' -> (address, port); None for anything else.

    Host names are not modelled: `set server ... addr` takes an IP, and names resolve at start.
    """
    host, sep, port = token.rpartition(":")
    if not sep or not _number(port):
        return None
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    address = canonical_address(host)
    return None if address is None else (address, int(port))


# Remembered: a pool's addresses come again at every pass and every comparison the daemon
# makes between changes (every 5 s: 10,000 parses for a 5,000-server pool, file and HAProxy).
@functools.lru_cache(maxsize=1 << 16)
def canonical_address(text: str) -> str | None:
    """An IP address in the one spelling the file and HAProxy's answers are compared in (the
    file's, Python's): HAProxy prints `::ffff:127.0.0.1` for the file's `::ffff:7f00:1`, and
    compared as text the same address was a move, then a reload, at every pass. None for
    anything else, an IPv6 zone (`fe80::1%eth0`) too: HAProxy cannot load one. Kept by text:
    a runtime pass reads every server's address in `show servers state` three times (5,000
    servers: ~15 ms of `ipaddress` each time), and they rarely change."""
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    return None if getattr(ip, "scope_id", None) else str(ip)


# A server name HAProxy accepts (its `invalid_char`): any other is refused by `haproxy -c`, and
# a `;` in one splits a runtime command in two.
_SERVER_NAME = re.compile(r"[A-Za-z0-9_.:-]+\Z")


def _parse_server(tokens: list[str]) -> Server | None:
    if len(tokens) < 3 or not _SERVER_NAME.match(tokens[1]):
        return None
    where = split_addr_port(tokens[2])
    if where is None:
        return None
    weight, disabled, options = 1, False, []
    rest = iter(tokens[3:])
    for token in rest:
        if token == "weight":
            value = next(rest, "")
            if not _number(value):
                return None
            weight = int(value)
        elif token == "disabled":
            disabled = True
        else:
            options.append(token)
    return Server(tokens[1], where[0], where[1], weight, disabled, tuple(options))


_TIME_UNITS = {"us": 1e-6, "ms": 1e-3, "": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0,
               "d": 86400.0}


def haproxy_seconds(token: str) -> float | None:
    """An HAProxy time (`500`, `30s`, `5m`, `1h`...: milliseconds without a unit) in seconds;
    None for anything else."""
    digits = token.rstrip("usmhd")
    unit = token[len(digits):]
    if not digits.isdigit() or unit not in _TIME_UNITS:
        return None
    return int(digits) * _TIME_UNITS[unit]


def _template_range(token: str) -> tuple[int, int] | None:
    """`server-template`'s `<num>` (1 to num) or `<first>-<last>`; None for anything else."""
    first, sep, last = token.partition("-")
    if not sep:
        first, last = "1", token
    if not (first.isdigit() and last.isdigit()):
        return None
    return int(first), int(last)


def parse(text: str) -> HAProxyConfig:
    config = HAProxyConfig()
    section: tuple[str, str] = ("", "")
    # `default-server` options of the `defaults` sections: the last one (what a proxy without
    # `from` takes), and the named ones (`from <name>`). A `defaults` section starts afresh.
    last_defaults: list[str] = []
    named_defaults: dict[str, list[str]] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        tokens = line.split()
        if not raw[:1].isspace() and tokens[0] in SECTION_KEYWORDS:
            section = (tokens[0], tokens[1] if len(tokens) > 1 and tokens[1] != "from" else "")
            parent = tokens[tokens.index("from") + 1] if "from" in tokens[:-1] else None
            inherited = named_defaults.get(parent, []) if parent is not None else last_defaults
            if section[0] == "defaults":
                last_defaults = list(named_defaults.get(parent, [])) if parent else []
                if section[1]:
                    named_defaults[section[1]] = last_defaults
            elif section[0] == "backend":
                config.backends[section[1]] = Backend(section[1],
                                                      default_server=tuple(inherited))
            config.skeleton.append(line)
            continue
        kind, name = section
        if kind == "backend":
            backend = config.backends[name]
            if tokens[0] == "server":
                server = _parse_server(tokens)
                if server is None or server.name in backend.servers:
                    config.opaque.append(line)
                    config.skeleton.append(line)
                else:
                    backend.servers[server.name] = server
                    backend.server_defaults[server.name] = backend.default_server
                continue
            if tokens[0] == "balance" and len(tokens) > 1:
                backend.balance = tokens[1]
            elif tokens[0] == "default-server":
                backend.default_server += tuple(tokens[1:])
            elif tokens[0] == "server-template" and len(tokens) > 2:
                numbers = _template_range(tokens[2])
                if numbers is not None:
                    backend.templates.append((tokens[1], *numbers))
        elif kind == "defaults" and tokens[0] == "default-server":
            last_defaults.extend(tokens[1:])
        elif kind in ("frontend", "listen") and tokens[0] == "bind" and len(tokens) > 1:
            config.binds.append(tokens[1])
        elif kind == "global":
            if tokens[:2] == ["stats", "socket"] and len(tokens) > 2:
                config.stats_socket = tokens[2]
            elif tokens[0] == "server-state-file" and len(tokens) > 1:
                config.state_file = tokens[1]
            elif tokens[0] == "hard-stop-after" and len(tokens) > 1:
                config.hard_stop_after = haproxy_seconds(tokens[1])
        config.skeleton.append(line)
    return config


@dataclass(frozen=True)
class ServerChange:
    """One runtime operation on one server of one backend."""

    action: str  # "add" | "delete" | "update"
    backend: str
    old: Server | None
    new: Server | None


def runtime_changes(old: HAProxyConfig, new: HAProxyConfig) -> list[ServerChange] | None:
    """The server changes that turn `old` into `new`, or None when a reload is needed.

    A reload is needed when anything but servers differs, when a server's other options
    change, or when a server is added to or removed from a backend whose balance algorithm
    does not allow `add server` / `del server`.
    """
    if old.skeleton != new.skeleton or old.opaque or new.opaque:
        return None
    changes: list[ServerChange] = []
    for name, backend in new.backends.items():
        before = old.backends[name]
        if before is backend:
            continue  # (one model made from the other: `proof_delta` shares what it kept)
        dynamic = backend.balance in DYNAMIC_BALANCE
        for server in backend.servers.values():
            previous = before.servers.get(server.name)
            if previous is server:
                continue
            if previous is None:
                if not dynamic:
                    return None
                changes.append(ServerChange("add", name, None, server))
            elif previous != server:
                if previous.options != server.options:
                    return None
                changes.append(ServerChange("update", name, previous, server))
        for server in before.servers.values():
            if server.name not in backend.servers:
                if not dynamic:
                    return None
                changes.append(ServerChange("delete", name, server, None))
    return changes


# Characters that can be part of a server name (HAProxy's identifier set): a name found with
# none of them on either side is a reference (`use-server a`, `track be/a`, `srv_conn(be/a)`).
_NAME_CHARS = "A-Za-z0-9_.:-"


def mentions(text: str, name: str) -> bool:
    """True when `name` occurs in `text` as a whole token (not as part of a longer name).

    Deliberately broad: a weight or an option that happens to equal a server's name counts too,
    which only costs a check that could have been skipped.
    """
    pattern = rf"(?<![{_NAME_CHARS}]){re.escape(name)}(?![{_NAME_CHARS}])"
    return re.search(pattern, text) is not None
