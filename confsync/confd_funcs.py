"""confd's template functions under confd's names, with confd's (Go's) semantics.

A confd user's habits carry over: `split`, `join`, `map`, `getenv`, `atoi`, `add`, ... behave as
in confd (Go's integer division truncates toward zero, `atoi` refuses what Go's `strconv.Atoi`
refuses, `parseBool` accepts exactly Go's spellings). Functions doing I/O (`getenv`, `lookupIP`,
`lookupSRV`, `fileExists`, `datetime`) return data like any value: their output still goes
through the renderer's line-break check. The key-value functions (`getv`, `gets`, ...) live in
the renderer, bound to each resource's view of the store.
"""

from __future__ import annotations

import base64
import binascii
import datetime as _dt
import hashlib
import importlib
import json
import os
import re
import socket
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

from confsync import resolve
from confsync.template_args import TemplateFunctionError, checked_all, got


class LookupUnavailable(TemplateFunctionError):
    """A DNS lookup failed for now (a resolver timeout, SERVFAIL, no server answering): not an
    answer. confd returns no addresses then, and a template rendered with none drops every
    server it resolves, so the render fails instead: the last file stays, and it is retried."""


class GoMap(dict[str, Any]):
    """A Go map[string]interface{}: a missing key reads as nil, as in Go templates."""

    def __missing__(self, key: str) -> None:
        return None


def _ints(*values: Any) -> list[int]:
    out = []
    for value in values:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TemplateFunctionError(f"expected an integer, found {value!r} (use atoi to "
                                        f"turn a string into one)")
        out.append(value)
    return out


def _int64(value: int) -> int:
    """Go's int on the 64-bit platforms confd runs on wraps around (MaxInt64 + 1 is MinInt64)."""
    return (value + 2**63) % 2**64 - 2**63


def add(a: int, b: int) -> int:
    x, y = _ints(a, b)
    return _int64(x + y)


def sub(a: int, b: int) -> int:
    x, y = _ints(a, b)
    return _int64(x - y)


def mul(a: int, b: int) -> int:
    x, y = _ints(a, b)
    return _int64(x * y)


def div(a: int, b: int) -> int:
    """Go's integer division: truncates toward zero (-7 / 2 == -3)."""
    x, y = _ints(a, b)
    if y == 0:
        raise TemplateFunctionError("integer divide by zero")
    quotient = abs(x) // abs(y)
    return _int64(quotient if (x >= 0) == (y >= 0) else -quotient)


def mod(a: int, b: int) -> int:
    """Go's remainder: takes the sign of the dividend (-7 % 2 == -1)."""
    x, y = _ints(a, b)
    if y == 0:
        raise TemplateFunctionError("integer divide by zero")
    return _int64(x - div(x, y) * y)


# The longest list seq() makes. The list is built in one C call, which no render_timeout
# stops, and its bounds may come from the store (`seq(1, atoi(getv("/n")))`): seq(1, 10**9)
# would take gigabytes and minutes.
MAX_SEQ = 1_000_000


def seq(first: int, last: int) -> list[int]:
    """GNU seq: seq(3, 5) == [3, 4, 5]; empty when first > last (as in confd)."""
    x, y = _ints(first, last)
    if y - x >= MAX_SEQ:
        raise TemplateFunctionError(f"seq({x}, {y}): more than {MAX_SEQ:,} numbers")
    return list(range(x, y + 1))


_ATOI = re.compile(r"[+-]?[0-9]+\Z")
_INT64 = (-(2**63), 2**63 - 1)  # Go's int on the 64-bit platforms confd runs on


def atoi(text: str) -> int:
    if not isinstance(text, str) or not _ATOI.match(text):
        raise TemplateFunctionError(f'strconv.Atoi: parsing {text!r}: invalid syntax')
    # Go refuses what does not fit an int; Python's int() refuses over 4,300 digits with an
    # error about its own settings.
    digits = text.lstrip("+-").lstrip("0")
    value = int(text) if len(digits) <= 19 else None
    if value is None or not _INT64[0] <= value <= _INT64[1]:
        shown = text if len(text) <= 40 else text[:40] + "..."
        raise TemplateFunctionError(f"strconv.Atoi: parsing {shown!r}: value out of range")
    return value


_TRUE = frozenset({"1", "t", "T", "TRUE", "true", "True"})
_FALSE = frozenset({"0", "f", "F", "FALSE", "false", "False"})


def parse_bool(text: str) -> bool:
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise TemplateFunctionError(f"strconv.ParseBool: parsing {text!r}: invalid syntax")


def split(text: str, sep: str) -> list[str]:
    """Go's strings.Split: an empty separator splits into characters."""
    return list(text) if sep == "" else text.split(sep)


def join(items: Iterable[str], sep: str) -> str:
    return sep.join(items)


def replace(text: str, old: str, new: str, count: int) -> str:
    """Go's strings.Replace: a negative count replaces every occurrence."""
    return text.replace(old, new, count if count >= 0 else -1)


def trim_suffix(text: str, suffix: str) -> str:
    return text.removesuffix(suffix)


def trim_prefix(text: str, prefix: str) -> str:
    return text.removeprefix(prefix)


def to_upper(text: str) -> str:
    """Go's strings.ToUpper: one rune to one rune (unicode.ToUpper), so "ß" stays "ß" and "ﬁ"
    "ﬁ" where Python's full case mapping writes "SS" and "FI"."""
    if text.isascii():
        return text.upper()
    return "".join(_simple_upper(ch) for ch in text)


def _simple_upper(ch: str) -> str:
    upper = ch.upper()
    if len(upper) == 1:
        return upper
    title = ch.title()  # "ᾳ": the simple uppercase is the one-rune titlecase "ᾼ"
    return title if len(title) == 1 else ch


def to_lower(text: str) -> str:
    """Go's strings.ToLower: rune by rune, so U+0130 is "i" (not "i" and a combining dot) and a
    word-final capital sigma is U+03C3 (Python's context-sensitive lowering writes U+03C2)."""
    if text.isascii():
        return text.lower()
    return "".join(_simple_lower(ch) for ch in text)


def _simple_lower(ch: str) -> str:
    lower = ch.lower()
    if len(lower) == 1:
        return lower
    return "i" if ch == "\u0130" else ch


def contains(text: str, sub_text: str) -> bool:
    return sub_text in text


def base(path: str) -> str:
    """Go's path.Base: trailing slashes dropped, "" -> ".", "/" -> "/"."""
    if path == "":
        return "."
    stripped = path.rstrip("/")
    if stripped == "":
        return "/"
    return stripped.rpartition("/")[2]


def clean(path: str) -> str:
    """Go's path.Clean (lexical: '.', '..', doubled slashes)."""
    if path == "":
        return "."
    rooted = path.startswith("/")
    parts: list[str] = []
    for part in path.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if parts and parts[-1] != "..":
                parts.pop()
            elif not rooted:
                parts.append("..")
            continue
        parts.append(part)
    out = "/".join(parts)
    return ("/" + out) if rooted else (out or ".")


def dir_(path: str) -> str:
    """Go's path.Dir: everything but the last element, cleaned."""
    return clean(path[:path.rfind("/") + 1])


def getenv(key: str, default: str = "") -> str:
    """The variable's value; the default (else "") when it is unset or empty, as in confd."""
    return os.environ.get(key) or default


def create_map(*pairs: Any) -> dict[str, Any]:
    """confd's `map "k1" v1 "k2" v2`."""
    if len(pairs) % 2:
        raise TemplateFunctionError("invalid map call")
    out = GoMap()
    for position, (key, value) in enumerate(zip(pairs[::2], pairs[1::2], strict=True)):
        if not isinstance(key, str):
            raise TemplateFunctionError(f"argument {2 * position + 1} (a key) must be a string, "
                                        f"got {got(key)}", key)
        out[key] = value
    return out


def not_json(exc: Exception) -> str:
    """Why a value is refused as JSON; a hostile nesting depth is refused like a syntax error
    (Python's parser recurses, so `[[[[...` ends in RecursionError, not ValueError)."""
    if isinstance(exc, RecursionError):
        return "value is not valid JSON: nested too deeply"
    return f"value is not valid JSON: {exc}"


def json_array(text: str) -> list[Any]:
    try:
        parsed = json.loads(text)
    except (TypeError, ValueError, RecursionError) as exc:
        raise TemplateFunctionError(not_json(exc)) from None
    if not isinstance(parsed, list):
        raise TemplateFunctionError(f"expected a JSON array, found {str(text)[:60]!r}")
    return parsed


def base64_encode(text: str) -> str:
    return base64.b64encode(text.encode()).decode("ascii")


def base64_decode(text: str) -> str:
    try:
        # Go's StdEncoding skips line breaks (a PEM-style wrapped value decodes)
        data = text.replace("\r", "").replace("\n", "")
        decoded = base64.b64decode(data.encode(), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise TemplateFunctionError(f"illegal base64 data: {exc}") from None
    try:
        return decoded.decode("utf-8")
    except UnicodeDecodeError:
        # confd writes the raw bytes; a rendered file is text here, and U+FFFD in their place
        # (as before) silently wrote something else
        raise TemplateFunctionError(f"the decoded bytes are not UTF-8 text (byte "
                                    f"{decoded[0:1].hex() if decoded else ''}...); confsync "
                                    "writes text files") from None


def reverse(items: list[Any]) -> list[Any]:
    """In place, returning the same list, as confd does."""
    items.reverse()
    return items


def sort_by_length(items: list[str]) -> list[str]:
    """In place, by length in bytes (Go's len). Stable: Go's sort.Sort is not past 12 items,
    and its order of equal lengths is not reproduced (README, "Coming from confd")."""
    items.sort(key=lambda text: len(text.encode()))
    return items


def sort_kv_by_length(items: list[Any]) -> list[Any]:
    items.sort(key=lambda kv: len(kv.key.encode()))
    return items


def file_exists(path: str) -> bool:
    return os.path.exists(path)


# getaddrinfo's answers that a name has no address (as in confd: []); anything else
# (EAI_AGAIN, EAI_FAIL, a system error) is a lookup that failed for now.
_NO_ADDRESS = frozenset(getattr(socket, name) for name in ("EAI_NONAME", "EAI_NODATA",
                                                          "EAI_ADDRFAMILY", "EAI_SERVICE")
                        if hasattr(socket, name))


# A lookup DNS has not answered by then failed for now. getaddrinfo has no timeout, and a
# render's deadline cannot stop a thread inside it: a name server that never answered held the
# watch loop (every other resource, the heartbeat) for the resolver's own retries, minutes.
LOOKUP_TIMEOUT = 5.0


def lookup_ip(name: str) -> list[str]:
    """Addresses of `name`, sorted as strings; [] when it does not resolve (as in confd).
    LookupUnavailable when the resolver failed or gave no answer within LOOKUP_TIMEOUT
    (confd: []): see that class."""
    try:
        infos = resolve.getaddrinfo(name, None, proto=socket.IPPROTO_TCP,
                                    timeout=LOOKUP_TIMEOUT)
    except UnicodeError:  # not a name any resolver takes
        return []
    except OSError as exc:
        if isinstance(exc, socket.gaierror) and exc.errno in _NO_ADDRESS:
            return []
        raise LookupUnavailable(f"lookupIP({name!r}): DNS lookup failed for now "
                                f"({exc.strerror or exc}); keeping the last file") from None
    return sorted({str(info[4][0]).split("%")[0] for info in infos})


def lookup_ipv4(name: str) -> list[str]:
    return [ip for ip in lookup_ip(name) if "." in ip]


def lookup_ipv6(name: str) -> list[str]:
    return [ip for ip in lookup_ip(name) if ":" in ip]


def _iface_address(name: str, family: socket.AddressFamily) -> str:
    import psutil

    for addr in psutil.net_if_addrs().get(name, []):
        if addr.family == family:
            return str(addr.address).split("%")[0]
    return ""


def lookup_iface_ipv4(name: str) -> str:
    """The first IPv4 address of network interface `name`, "" if none (abtreece/confd)."""
    return _iface_address(name, socket.AF_INET)


def lookup_iface_ipv6(name: str) -> str:
    """The first IPv6 address of network interface `name`, "" if none (abtreece/confd)."""
    return _iface_address(name, socket.AF_INET6)


class SRV(NamedTuple):
    """One SRV record, with Go's field names (`.Target`, `.Port`, `.Priority`, `.Weight`)."""

    Target: str
    Port: int
    Priority: int
    Weight: int


def lookup_srv(service: str, proto: str, name: str) -> list[SRV]:
    """`_service._proto.name` SRV records sorted as confd sorts them; [] when none resolve."""
    try:  # optional: only templates using lookupSRV need dnspython
        resolver = importlib.import_module("dns.resolver")
    except ImportError:
        raise TemplateFunctionError("lookupSRV needs the dnspython package "
                                    "(pip install dnspython)") from None
    query = f"_{service}._{proto}.{name}" if service or proto else name
    timeout = importlib.import_module("dns.exception").Timeout
    try:
        answer = resolver.resolve(query, "SRV")
    except (resolver.NoNameservers, timeout) as exc:  # SERVFAIL everywhere, no answer in time
        raise LookupUnavailable(f"lookupSRV({query!r}): DNS lookup failed for now "
                                f"({type(exc).__name__}); keeping the last file") from None
    except Exception:  # NXDOMAIN, no SRV records, a name no resolver takes: an answer (confd)
        return []
    records = [SRV(str(r.target), r.port, r.priority, r.weight) for r in answer]
    return sorted(records, key=lambda r: f"{r.Target}{r.Port}{r.Priority}{r.Weight}")


def hostname() -> str:
    return socket.gethostname()


_GO_LAYOUT = [
    ("2006", "%Y"), ("01", "%m"), ("02", "%d"), ("15", "%H"), ("03", "%I"), ("04", "%M"),
    ("05", "%S"), ("06", "%y"), ("Jan", "%b"), ("Mon", "%a"), ("January", "%B"),
    ("Monday", "%A"), ("PM", "%p"), ("MST", "%Z"), ("-0700", "%z"), ("Z07:00", "Z07:00"),
    ("-07:00", "-07:00"), (".000000000", ".%N9"), (".000000", ".%f"), (".000", ".%N3"),
    ("_2", "%e"),
]


class GoTime:
    """What confd's `datetime` returns (Go's time.Time), with the methods templates call."""

    def __init__(self, moment: _dt.datetime) -> None:
        self._moment = moment

    def Format(self, layout: str) -> str:
        if not isinstance(layout, str):
            raise TemplateFunctionError(f"datetime().Format: argument 1 (layout) must be a "
                                        f"string, got {got(layout)}", layout)
        tokens = sorted(_GO_LAYOUT, key=lambda t: -len(t[0]))
        out: list[str] = []
        i = 0
        m = self._moment
        while i < len(layout):
            for token, directive in tokens:
                if layout.startswith(token, i):
                    out.append(self._directive(directive, m))
                    i += len(token)
                    break
            else:
                out.append(layout[i])
                i += 1
        return "".join(out)

    @staticmethod
    def _directive(directive: str, m: _dt.datetime) -> str:
        if directive.startswith(".%N"):
            digits = int(directive[3:])
            return "." + f"{m.microsecond:06d}000"[:digits]
        if directive in ("Z07:00", "-07:00"):
            offset = m.strftime("%z")
            if directive == "Z07:00" and offset in ("+0000", ""):
                return "Z"
            return f"{offset[:3]}:{offset[3:]}" if offset else ""
        if directive == "%e":
            return f"{m.day:2d}"
        return m.strftime(directive)

    def Unix(self) -> int:
        return int(self._moment.timestamp())

    def UTC(self) -> GoTime:
        return GoTime(self._moment.astimezone(_dt.UTC))

    def __str__(self) -> str:
        return self.Format("2006-01-02 15:04:05.000000000 -0700 MST")


def datetime() -> GoTime:
    """The current local time; `{{ datetime().Format("2006-01-02") }}` as in Go."""
    return GoTime(_dt.datetime.now().astimezone())


def to_json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def sha256sum(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


# confd's name -> implementation. `json` is the renderer's (it knows which key a value came from).
CONFD_FUNCTIONS: dict[str, Callable[..., Any]] = {
    "base": base,
    "dir": dir_,
    "split": split,
    "join": join,
    "jsonArray": json_array,
    "map": create_map,
    "getenv": getenv,
    "datetime": datetime,
    "toUpper": to_upper,
    "toLower": to_lower,
    "contains": contains,
    "replace": replace,
    "trimSuffix": trim_suffix,
    "lookupIP": lookup_ip,
    "lookupIPV4": lookup_ipv4,
    "lookupIPV6": lookup_ipv6,
    "lookupSRV": lookup_srv,
    "fileExists": file_exists,
    "base64Encode": base64_encode,
    "base64Decode": base64_decode,
    "parseBool": parse_bool,
    "reverse": reverse,
    "sortByLength": sort_by_length,
    "sortKVByLength": sort_kv_by_length,
    "add": add,
    "sub": sub,
    "div": div,
    "mod": mod,
    "mul": mul,
    "seq": seq,
    "atoi": atoi,
    # abtreece/confd additions in common use
    "trimPrefix": trim_prefix,
    "lookupIfaceIPV4": lookup_iface_ipv4,
    "lookupIfaceIPV6": lookup_iface_ipv6,
    "hostname": hostname,
    "toJson": to_json,
    "sha256sum": sha256sum,
}


# Functions that would answer a wrong argument type instead of failing (`fileExists(1)`: file
# descriptor 1 exists; `lookupSRV(1, 2, 3)`: no records): their arguments are checked first.
_CHECKED_FIRST = ("fileExists", "lookupIP", "lookupIPV4", "lookupIPV6", "lookupSRV",
                  "lookupIfaceIPV4", "lookupIfaceIPV6")


def register(env: Any) -> None:
    """Make every confd function a Jinja global, and a filter where no filter has the name
    (`{{ x | split(",") }}` reads well; Jinja's own `join`, `replace`, `reverse` stay Jinja's).
    A failure names the function and the argument at fault (confsync.template_args)."""
    functions = checked_all(CONFD_FUNCTIONS, before=_CHECKED_FIRST)
    env.globals.update(functions)
    for name, function in functions.items():
        if name not in env.filters and name not in ("datetime", "hostname", "map"):
            env.filters[name] = function
