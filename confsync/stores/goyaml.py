"""Data files' plain scalars read as confd reads them: Go's gopkg.in/yaml.v2 (v2.4.0, vendored by
confd 0.17) resolves them with YAML 1.1's booleans but Go's number syntax, and confd's file
backend then writes ints, bools and float64s as text and skips every other type.

PyYAML's resolver differs on exactly the values a config holds: `y`/`n` are booleans to
yaml.v2, `08` and `0o17` numbers, `1:20` and timestamps text, integers past int64 a uint64
(confd drops the key) or a float64. Only the resolution is replaced: quoting, explicit tags,
anchors, merges and nulls stay PyYAML's, which agree with yaml.v2 there.
"""

from __future__ import annotations

import functools
import json
import re
from typing import Any

# yaml.v2's resolveMap: matched whole, before any number syntax.
_WORDS: dict[str, Any] = {
    **dict.fromkeys(("y", "Y", "yes", "Yes", "YES", "true", "True", "TRUE",
                     "on", "On", "ON"), True),
    **dict.fromkeys(("n", "N", "no", "No", "NO", "false", "False", "FALSE",
                     "off", "Off", "OFF"), False),
    **dict.fromkeys((".nan", ".NaN", ".NAN"), float("nan")),
    **dict.fromkeys((".inf", ".Inf", ".INF", "+.inf", "+.Inf", "+.INF"), float("inf")),
    **dict.fromkeys(("-.inf", "-.Inf", "-.INF"), float("-inf")),
}
# yaml.v2's resolveTable: the first characters that make a plain scalar worth resolving.
_HINTED = frozenset("+-0123456789yYnNtTfFoO~.")
_YAML_STYLE_FLOAT = re.compile(r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?")
# What ParseFloat takes after a ".": an underscore only between digits (Go's underscoreOK)
_DOT_FLOAT = re.compile(r"\.[0-9](_?[0-9])*([eE][-+]?[0-9](_?[0-9])*)?")
_INT64 = 1 << 63


class Dropped:
    """A uint64 (2**63 to 2**64-1): confd's file backend has no case for it and leaves the key
    out, as it does a null."""

    def __repr__(self) -> str:
        return "Dropped"


DROPPED = Dropped()


def parse_uint(text: str, base: int, bit_size: int = 64) -> int | None:
    """strconv.ParseUint(text, base, bit_size) of text without underscores; base 0 takes
    Go's 0x/0o/0b/0 prefixes."""
    if not text:
        return None
    if base == 0:
        base = 10
        if text[0] == "0":
            prefix = text[1:2].lower()
            if len(text) >= 3 and prefix in ("b", "o", "x"):
                base, text = {"b": 2, "o": 8, "x": 16}[prefix], text[2:]
            else:
                base, text = 8, text[1:]
    if not all(c.isascii() and c.isalnum() and int(c, 36) < base for c in text):
        return None
    if len(text.lstrip("0")) > bit_size:  # out of range in any base (and no int() of 5,000
        return None                       # digits, which Python refuses)
    value = int(text, base) if text else 0  # "0" is base 8 with no digits left: zero
    return value if value < 1 << bit_size else None


def _parse_int(text: str, base: int) -> int | None:
    """strconv.ParseInt(text, base, 64)."""
    negative = text[:1] == "-"
    magnitude = parse_uint(text[1:] if text[:1] in "+-" else text, base)
    if magnitude is None or magnitude > _INT64 or (magnitude == _INT64 and not negative):
        return None
    return -magnitude if negative else magnitude


def _parse_float(text: str) -> float | None:
    """strconv.ParseFloat(text, 64) of a decimal already matched: overflow is an error."""
    value = float(text)
    return None if value in (float("inf"), float("-inf")) else value


def resolve_plain(text: str) -> Any:
    """yaml.v2's resolve() of an untagged plain scalar as the value confd's file backend sees:
    bool, int, float, DROPPED, or the text itself. Nulls are PyYAML's (they agree)."""
    if not text or text[0] not in _HINTED:
        return text
    if text in _WORDS:
        return _WORDS[text]
    if text[0] == ".":
        return _parse_float(text.replace("_", "")) if _DOT_FLOAT.fullmatch(text) else text
    if text[0] not in "+-0123456789":
        return text
    # (a timestamp would be tried here; yaml.v2 hands one to interface{} as its text)
    plain = text.replace("_", "")
    number = _parse_int(plain, 0)
    if number is not None:
        return number
    if text[0] not in "+-" and parse_uint(plain, 0) is not None:
        return DROPPED
    if _YAML_STYLE_FLOAT.fullmatch(plain):
        real = _parse_float(plain)
        if real is not None:
            return real
    if plain.startswith("0b") or plain.startswith("-0b"):
        digits = plain[2:] if plain[0] == "0" else "-" + plain[3:]
        number = _parse_int(digits, 2)
        if number is not None:
            return number
        if plain[0] == "0" and parse_uint(digits, 2) is not None:
            return DROPPED
    return text


class PlainScalar(str):
    """An untagged plain scalar's text, resolved the Go way where it is a value
    (resolve_plain); as a mapping key it stays its text (confd panics on a key that is not a
    string, so any spelling of one is ours to choose, and the text is the least surprising)."""


_RESOLVED_BY_GO = {"tag:yaml.org,2002:bool", "tag:yaml.org,2002:int",
                   "tag:yaml.org,2002:float", "tag:yaml.org,2002:timestamp",
                   "tag:yaml.org,2002:value"}
_PLAIN_TAG = "tag:confsync,2026:go-plain"


def _construct_plain(loader: Any, node: Any) -> PlainScalar:
    return PlainScalar(loader.construct_scalar(node))


@functools.cache
def _loader() -> Any:
    import yaml  # lazy: only the file backend pays for it

    class Loader(yaml.SafeLoader):
        pass

    Loader.yaml_implicit_resolvers = {
        first: [(tag, regexp) for tag, regexp in resolvers if tag not in _RESOLVED_BY_GO]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
    # after the null and merge resolvers, which stay PyYAML's
    Loader.add_implicit_resolver(_PLAIN_TAG, re.compile(r"(?s:.+)"), sorted(_HINTED))
    Loader.add_constructor(_PLAIN_TAG, _construct_plain)
    return Loader


def load(raw: bytes) -> Any:
    """Parse YAML with PyYAML's safe loader, plain scalars left as PlainScalar. Of several
    documents only the first is read, as yaml.v2's Unmarshal does (the rest are not parsed)."""
    import yaml

    return next(iter(yaml.load_all(raw, Loader=_loader())), None)  # a SafeLoader


def load_json(raw: bytes) -> Any:
    """A JSON data file as confd reads it, with yaml.v2 (JSON is YAML): its numbers, and
    NaN/Infinity, are plain scalars to resolve; `1e400` stays text, a uint64 drops its key."""
    return json.loads(raw, parse_int=resolve_plain, parse_float=resolve_plain,
                      parse_constant=resolve_plain)
