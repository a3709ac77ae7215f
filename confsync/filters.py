"""Filters that turn data into config tokens only when the data is what it claims to be.

A value that is not an address, a port or an identifier fails the render with the reason, so a
hostile value (a newline, a space, `#`, a second directive) never reaches the file.
"""

from __future__ import annotations

import functools
import ipaddress
import re
import time
from collections.abc import Callable
from typing import TypeVar

MAX_IDENTIFIER = 128
_IDENTIFIER = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]*\Z")
_HOSTNAME = re.compile(
    r"(?=.{1,253}\Z)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?\Z"
)
_PATH = re.compile(r"/[A-Za-z0-9._~!&*+,=:@%/?-]*\Z")  # no quotes, $, ;, #, spaces


class InvalidValue(ValueError):
    """A value failed validation; the message says what was expected, `value` what was found."""

    def __init__(self, message: str, value: object = None) -> None:
        super().__init__(message)
        self.value = value
        self.key: str | None = None  # where the value came from, when the renderer knows


_SURROGATE = re.compile("[\ud800-\udfff]")


def _show(value: object) -> str:
    """A short printable form; text holding bytes that are not UTF-8 (kept as surrogates)
    shows them escaped as bytes, like `'k\\xff'`."""
    try:
        if isinstance(value, str) and not value.isprintable() and _SURROGATE.search(value):
            text = repr(value.encode("utf-8", "surrogateescape"))[1:]
        else:
            text = repr(value)
    except Exception:
        text = f"<{type(value).__name__}>"
    return text if len(text) <= 80 else text[:77] + "..."


show_value = _show


def _text(value: object, what: str) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int):
        missing = type(value).__name__.endswith("Undefined")  # a template's missing field
        raise InvalidValue(f"expected {what}, found "
                           f"{'nothing (a missing field)' if missing else _show(value)}", value)
    return str(value)


T = TypeVar("T")

# Remembered answers are dropped every MEMO_AGE seconds (at the first new value after it):
MEMO_AGE = 600.0
MEMO_MAX = 65536
_clock = time.monotonic


def _aging_cache(function: Callable[..., T], typed: bool = False) -> Callable[..., T]:
    """`function` behind an LRU cache that is emptied at the first miss after MEMO_AGE
    seconds, so it holds the values renders ask about now, not every value they ever asked
    about. Instance addresses and ids that come and go over months (new pods, new hosts)
    filled a plain cache of MEMO_MAX answers per validator and stayed (about 80 MB once
    full). A hit costs what it did (the C cache alone); after a clear, one render computes
    its answers again (5,000 servers: about 17 ms more, once per MEMO_AGE at most)."""
    since = _clock()

    def answer(*args: object) -> T:  # the cache calls it on a miss only
        nonlocal since
        now = _clock()
        if now - since >= MEMO_AGE:
            since = now
            cached.cache_clear()
        return function(*args)

    cached = functools.lru_cache(maxsize=MEMO_MAX, typed=typed)(answer)
    return cached


# ASCII digits only: `\d` matches any Unicode digit, and `127.0.0.` + ARABIC-INDIC DIGIT ONE
# passed this fast path as it was, into a file HAProxy refuses (every pool frozen for one
# registration).
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_IPV4 = re.compile(rf"(?:{_OCTET}\.){{3}}{_OCTET}\Z")


def _parse_ip(text: str) -> str | None:
    if _IPV4.match(text):  # already canonical: the fast path for the common case
        return text
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    # Python takes an IPv6 zone (`fe80::1%eth0`, any text but `%` after it: spaces, `;`, `#`)
    # as part of the address; HAProxy 2.6 cannot load one (`could not resolve address`), and
    # the whole file then failed its check, freezing every pool for one registration.
    return None if getattr(ip, "scope_id", None) else str(ip)


_ip = _aging_cache(_parse_ip)


def ipaddr(value: object) -> str:
    """An IPv4 or IPv6 address, normalised (IPv6 compressed, no brackets, no zone)."""
    text = _text(value, "an IP address")
    ip = _ip(text)
    if ip is None:
        zone = " without an IPv6 zone (%...)" if "%" in text else ""
        raise InvalidValue(f"expected an IP address{zone}, found {_show(value)}", value)
    return ip


def port(value: object) -> int:
    """A TCP/UDP port 1-65535."""
    text = _text(value, "a port number 1-65535")
    if not text.isascii() or not text.isdigit() or len(text) > 5 or not 0 < int(text) < 65536:
        raise InvalidValue(f"expected a port number 1-65535, found {_show(value)}", value)
    return int(text)


def hostname(value: object) -> str:
    """A DNS name (letters, digits, hyphens, dots), or an IP address."""
    text = _text(value, "a host name")
    try:
        return ipaddr(text)
    except InvalidValue:
        pass
    if not _HOSTNAME.match(text):
        raise InvalidValue(f"expected a host name or IP address, found {_show(value)}", value)
    return text


def addrport(address: object, port_value: object) -> str:
    """An IP address and a port as one token: '10.0.0.1:80', '[2001:db8::1]:80'."""
    ip = ipaddr(address)
    return f"[{ip}]:{port(port_value)}" if ":" in ip else f"{ip}:{port(port_value)}"


def hostport(value: object) -> str:
    """'10.0.0.1:80', '[2001:db8::1]:443' or 'name:80' -> normalised 'host:port'."""
    text = _text(value, "host:port")
    host, sep, port_text = text.rpartition(":")
    if not sep or not host:
        raise InvalidValue(f"expected host:port, found {_show(value)}", value)
    if host.startswith("[") and host.endswith("]"):
        address = ipaddr(host[1:-1])
        return f"[{address}]:{port(port_text)}"
    if ":" in host and host.isprintable():
        raise InvalidValue(f"expected [IPv6]:port with brackets, found {_show(value)}", value)
    return f"{hostname(host)}:{port(port_text)}"  # hostname names a line break or space


def identifier(value: object) -> str:
    """A name safe as a config token: letters, digits, and _ . : - ; up to 128 characters."""
    text = _text(value, "an identifier")
    if len(text) > MAX_IDENTIFIER or not _IDENTIFIER.match(text):
        raise InvalidValue(
            f"expected an identifier (letters, digits, _ . : -, at most {MAX_IDENTIFIER} "
            f"characters, starting with a letter or digit), found {_show(value)}", value
        )
    return text


def urlpath(value: object) -> str:
    """An absolute URL path with no spaces, quotes or control characters."""
    text = _text(value, "a URL path")
    if len(text) > 1024 or not _PATH.match(text):
        raise InvalidValue(f"expected a URL path such as /healthz, found {_show(value)}", value)
    return text


def integer(value: object, minimum: int | None = None, maximum: int | None = None) -> int:
    """A whole number, optionally bounded: `{{ w | integer(0, 256) }}`."""
    text = _text(value, "a whole number")
    try:
        number = int(text, 10)
    except ValueError:
        raise InvalidValue(f"expected a whole number, found {_show(value)}", value) from None
    if (minimum is not None and number < minimum) or (maximum is not None and number > maximum):
        raise InvalidValue(f"expected a whole number from {minimum} to {maximum}, "
                           f"found {_show(value)}", value)
    return number


def oneof(value: object, *choices: str) -> str:
    """One of a fixed set of words: `{{ s.balance | oneof("roundrobin", "leastconn") }}`."""
    if value not in choices:
        raise InvalidValue(f"expected one of {', '.join(choices)}, found {_show(value)}", value)
    return str(value)


_FILEPATH = re.compile(r"/[A-Za-z0-9._/@+-]*\Z")


def filepath(value: object) -> str:
    """An absolute file path made of safe characters (no spaces, quotes or '..')."""
    text = _text(value, "an absolute file path")
    if len(text) > 1024 or not _FILEPATH.match(text) or "/../" in text + "/":
        raise InvalidValue(f"expected an absolute file path such as /run/haproxy/admin.sock, "
                           f"found {_show(value)}", value)
    return text


def duration(value: object) -> str:
    """An HAProxy/Go-style duration token: digits with an optional unit (us ms s m h d)."""
    text = _text(value, "a duration")
    if not re.fullmatch(r"[0-9]{1,9}(us|ms|s|m|h|d)?", text):
        raise InvalidValue(f"expected a duration such as 30s or 500ms, found {_show(value)}", value)
    return text


def array(value: object) -> list[object]:
    """A JSON array, for `{% for h in cfg.get("hosts", []) | array %}`: a string where a list
    belongs would otherwise be iterated character by character."""
    if not isinstance(value, list | tuple):
        missing = type(value).__name__.endswith("Undefined")
        raise InvalidValue(f"expected a list (a JSON array), found "
                           f"{'nothing (a missing field)' if missing else _show(value)}", value)
    return list(value) if isinstance(value, tuple) else value


def _memo(check: Callable[..., object]) -> Callable[..., object]:
    """Validators are pure: remember good answers (a re-render of 5,000 unchanged servers then
    costs a dict lookup each). Rejections are not cached; unhashable values skip the cache.

    A validator of several arguments keys its answers by type too: its key is a tuple, where
    `(a, True) == (a, 1)` and `(1.0,) == (1,)`, so `addrport(a, true)` would have taken the
    answer for port 1 (a single argument of type int or str is its own key: no clash)."""
    cached = _aging_cache(check, typed=check.__code__.co_argcount > 1)

    @functools.wraps(check)
    def memoized(*args: object) -> object:
        try:
            return cached(*args)
        except InvalidValue:
            raise
        except Exception:  # unhashable: a list, a dict, or a template's Undefined
            return check(*args)

    return memoized


_CHECKS: dict[str, Callable[..., object]] = {
    "addrport": addrport,
    "array": array,
    "filepath": filepath,
    "duration": duration,
    "ipaddr": ipaddr,
    "port": port,
    "hostname": hostname,
    "hostport": hostport,
    "identifier": identifier,
    "urlpath": urlpath,
    "integer": integer,
    "oneof": oneof,
}
VALIDATING_FILTERS = {name: _memo(check) for name, check in _CHECKS.items()}
