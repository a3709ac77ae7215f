"""The check-skip proof of a change, at the cost of the lines that changed.

`control.server_only_change` proves a file valid from the last one that passed `haproxy -c`
by parsing all of it (5,000 servers: ~34 ms of CPU a change, on the loop's thread, and the
reload step parsed both files again). Here a file is proven from the previous one, already
proven (or the checked one itself): the bytes both share before and after the change are found
by C comparisons, only the lines between are parsed, in the section the previous file's model
puts them, and the new file's model is the previous one with those servers replaced. The
verdict is the full proof's: a changed server line must be one the full proof would accept
against the checked file, and no server the checked file had and this one lacks may be named
anywhere. Whatever is not that simple case (a line other than a server line of a backend, a
`default-server` below the change, line breaks other than `\\n`, ...) answers None, and the
caller runs the full proof: this one never says False, so it can only skip work, not change an
answer (`tests/unit/test_proof_delta.py` holds the two to the same answers and models).
"""

from __future__ import annotations

import bisect
import re
from dataclasses import replace
from typing import NamedTuple

from confsync.haproxy.config_model import (
    DYNAMIC_BALANCE,
    SECTION_KEYWORDS,
    Backend,
    HAProxyConfig,
    Server,
    _parse_server,
)

# Bytes that `str.splitlines` breaks a line at besides `\n` (\r, \v, \f, \x1c-\x1e, and U+0085,
# U+2028, U+2029 in UTF-8): a file holding one is proven the full way, whose lines they are.
_OTHER_BREAKS = (b"\r", b"\x0b", b"\x0c", b"\x1c", b"\x1d", b"\x1e", b"\xc2\x85",
                 b"\xe2\x80\xa8", b"\xe2\x80\xa9")
_HEADERS = tuple(b"\n" + keyword.encode() for keyword in SECTION_KEYWORDS)
# A maximal run of server-name characters: `config_model.mentions` finds a name (made of these
# alone) exactly where it is one.
_RUN = re.compile(rb"[A-Za-z0-9_.:-]+")


class Proven(NamedTuple):
    """A file proven valid from `checked` (or `checked` itself), as the next proof starts from."""

    checked: bytes  # the file that passed the check
    content: bytes
    model: HAProxyConfig  # == parse(content)
    # The servers of `checked` that `content` lacks: name -> their backends. None of these
    # names occurs in `content` (else it was not proven).
    gone: dict[str, frozenset[str]]
    # Each section header of `content`: (offset of its line, keyword, name as `parse` reads it).
    headers: tuple[tuple[int, str, str], ...]


def plain(content: bytes) -> bool:
    """Whether every line of `content` ends at a `\\n` alone (what this module can split)."""
    return not any(brk in content for brk in _OTHER_BREAKS)


def start(checked: bytes, model: HAProxyConfig) -> Proven | None:
    """The proof's start at a file that just passed the check; None when it cannot be one."""
    if not _readable(checked, model):
        return None
    return Proven(checked, checked, model, {}, _headers(checked))


def after_full_proof(checked: bytes, content: bytes, model: HAProxyConfig,
                     removed: list[tuple[str, str]]) -> Proven | None:
    """The proof's start at `content`, which the full proof just proved from `checked`
    (`removed`: its deleted servers, (backend, name))."""
    if not _readable(content, model):
        return None
    gone: dict[str, set[str]] = {}
    for backend, name in removed:
        gone.setdefault(name, set()).add(backend)
    return Proven(checked, content, model, {k: frozenset(v) for k, v in gone.items()},
                  _headers(content))


def _readable(content: bytes, model: HAProxyConfig) -> bool:
    """Whether proofs may start from `content`: lines split at `\n` alone, no server line the
    model could not read, and no backend name twice (the model keeps the last such section's
    servers, which the nearest header above a change would not tell)."""
    headers = sum(1 for line in model.skeleton if line.split()[0] == "backend")
    return not model.opaque and headers == len(model.backends) and plain(content)


def _headers(content: bytes) -> tuple[tuple[int, str, str], ...]:
    """Each section header of `content` (split at `\\n` alone): (offset, keyword, name)."""
    text = b"\n" + content
    found = []
    for needle in _HEADERS:
        at = text.find(needle)
        while at >= 0:
            stop = text.find(b"\n", at + 1)
            tokens = text[at + 1:stop if stop >= 0 else len(text)].decode(
                "utf-8", "replace").strip().split()
            if tokens and tokens[0] in SECTION_KEYWORDS:  # (not `backends ...`)
                found.append((at, tokens[0],
                              tokens[1] if len(tokens) > 1 and tokens[1] != "from" else ""))
            at = text.find(needle, at + 1)
    return tuple(sorted(found))


def _servers(chunk: bytes) -> list[Server] | None:
    """The server lines of `chunk` (whole lines of one backend), in order; None when a line is
    anything else but a blank or a comment."""
    found = []
    for raw in chunk.decode("utf-8", "replace").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        tokens = line.split()
        if tokens[0] != "server":  # (never a section header: not one of their keywords)
            return None
        server = _parse_server(tokens)
        if server is None:
            return None
        found.append(server)
    return found


def _span(old: bytes, new: bytes) -> tuple[int, int, int]:
    """(start, old end, new end): the whole lines in which `old` and `new` differ."""
    limit = min(len(old), len(new))
    # Common prefix, by halving over slices compared in C.
    low, high = 0, limit
    while low < high:
        mid = (low + high + 1) // 2
        if old[low:mid] == new[low:mid]:
            low = mid
        else:
            high = mid - 1
    prefix = low
    low, high = 0, limit - prefix
    while low < high:
        mid = (low + high + 1) // 2
        if old[len(old) - mid:len(old) - low] == new[len(new) - mid:len(new) - low]:
            low = mid
        else:
            high = mid - 1
    suffix = low
    first = old.rfind(b"\n", 0, prefix) + 1
    old_end, new_end = len(old) - suffix, len(new) - suffix
    if not (_line_start(old, old_end) and _line_start(new, new_end)):
        # The common tail starts inside a line of either: it starts after its first `\n`.
        newline = old.find(b"\n", old_end)
        grow = (len(old) if newline < 0 else newline + 1) - old_end
        old_end, new_end = old_end + grow, new_end + grow
    return first, old_end, new_end


def _line_start(content: bytes, at: int) -> bool:
    return at == 0 or content[at - 1] == 10


_NAME_BYTES = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.:-")


def _mentioned(content: bytes, name: str) -> bool:
    """`config_model.mentions` on the bytes, by `bytes.find` (the regex's lookbehind made it a
    scan in Python's regex engine: ~4 ms over 5,000 servers). The same answer: `name` is of
    name characters alone, and every other character (or undecodable byte) is none."""
    needle = name.encode()
    at = content.find(needle)
    while at >= 0:
        end = at + len(needle)
        if (at == 0 or content[at - 1] not in _NAME_BYTES) and (
                end == len(content) or content[end] not in _NAME_BYTES):
            return True
        at = content.find(needle, at + 1)
    return False


def prove(previous: Proven, checked_model: HAProxyConfig,
          options: frozenset[tuple[str, ...]], content: bytes) -> Proven | None:
    """`content` proven from `previous` (a file proven from the same checked file, whose
    model is `checked_model`, its servers' options `options`), or None: not proven this way
    (the full proof decides)."""
    old = previous.content
    if content == old:
        return previous
    first, old_end, new_end = _span(old, content)
    old_chunk, new_chunk = old[first:old_end], content[first:new_end]
    if not plain(new_chunk):
        return None
    headers = previous.headers
    above = bisect.bisect_left(headers, first, key=lambda header: header[0])
    if not above or headers[above - 1][1] != "backend":
        return None
    backend_name = headers[above - 1][2]
    below = headers[above][0] if above < len(headers) else len(old)
    if old.find(b"default-server", old_end, below) >= 0:
        return None  # (a server below a `default-server` line gets other options)
    removed_lines, added = _servers(old_chunk), _servers(new_chunk)
    if removed_lines is None or added is None:
        return None
    before = previous.model.backends.get(backend_name)
    base = checked_model.backends.get(backend_name)
    if before is None or base is None:
        return None
    for server in removed_lines:
        if before.servers.get(server.name) != server:
            return None
    names = [server.name for server in added]
    taken = set(names)
    if len(taken) != len(names):
        return None  # (a duplicate name is an opaque line)
    out = {server.name for server in removed_lines}
    if any(name in before.servers and name not in out for name in taken):
        return None
    # The verdict of each added or changed line against the checked file.
    dynamic = before.balance in DYNAMIC_BALANCE
    for server in added:
        was = base.servers.get(server.name)
        if was == server:
            continue
        if was is None:
            if not dynamic or server.options not in options:
                return None
        elif was.options != server.options:
            return None
        if not (0 < server.port < 65536 and 0 <= server.weight <= 256):
            return None
    # Servers of the checked file this one lacks: those the previous one lacked (named nowhere
    # in it, so named here only in the new lines), and those the change removed.
    gone = dict(previous.gone)
    for name in taken:
        backends = gone.get(name)
        if backends is not None:
            left = backends - {backend_name}
            if left:
                gone[name] = left
            else:
                del gone[name]
    runs = {run.decode() for run in _RUN.findall(new_chunk)}
    if any(run in gone for run in runs):
        return None
    for name in out - taken:
        if name in base.servers:
            if not dynamic or _mentioned(content, name):
                return None
            gone[name] = gone.get(name, frozenset()) | {backend_name}
    # (no header among the changed lines: each is a server line, a blank or a comment)
    moved = len(content) - len(old)
    return Proven(previous.checked, content,
                  _patched(previous.model, before, removed_lines, added, old, first), gone,
                  headers[:above] + tuple((at + moved, keyword, name)
                                          for at, keyword, name in headers[above:]))


def _patched(model: HAProxyConfig, before: Backend, removed: list[Server], added: list[Server],
             old: bytes, first: int) -> HAProxyConfig:
    """`model` with `removed` (consecutive servers of `before`) replaced by `added`, where the
    changed lines begin at offset `first` of `old`, the file `model` is of."""
    names = [server.name for server in added]
    if [server.name for server in removed] == names:  # (the same servers, changed in place)
        servers = dict(before.servers)
        servers.update((server.name, server) for server in added)
    elif not added:
        servers = dict(before.servers)
        for server in removed:
            del servers[server.name]
    else:
        order = list(before.servers)
        index = (order.index(removed[0].name) if removed
                 else _servers_above(before, old, first))
        servers = {name: before.servers[name] for name in order[:index]}
        servers.update((server.name, server) for server in added)
        servers.update((name, before.servers[name]) for name in order[index + len(removed):])
    defaults = dict(before.server_defaults)
    for server in removed:
        del defaults[server.name]
    for server in added:
        defaults[server.name] = before.default_server
    backends = dict(model.backends)
    backends[before.name] = replace(before, servers=servers, server_defaults=defaults)
    return replace(model, backends=backends)


def _servers_above(backend: Backend, old: bytes, first: int) -> int:
    """How many servers of `backend` come before offset `first` of `old` (a line start inside
    the backend): found from the nearest server line above, read backwards line by line."""
    end = first
    while end > 0:
        begin = old.rfind(b"\n", 0, end - 1) + 1
        raw = old[begin:end].decode("utf-8", "replace")
        line = raw.strip()
        end = begin
        if not line or line.startswith("#"):
            continue
        tokens = line.split()
        if not raw[:1].isspace() and tokens[0] in SECTION_KEYWORDS:
            return 0  # the backend's header: no server above
        if tokens[0] == "server":
            server = _parse_server(tokens)
            if server is not None and backend.servers.get(server.name) == server:
                return list(backend.servers).index(server.name) + 1
    return 0
