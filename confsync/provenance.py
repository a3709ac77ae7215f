"""Values that remember the etcd key they came from, for naming the key of a refused value.

Used only when a render has already failed: the renderer renders once more with these tagged
values, so the happy path pays nothing. A value keeps its tag through dict fields, list items,
`fromjson` and the common str methods and slices; anything computed from several values (`~`,
arithmetic) loses it, and then the error says "last key read" instead of guessing.
"""

from __future__ import annotations

from typing import Any

from confsync.logs import escape_controls

SOURCE = "source_key"


SHOWN_KEY_MAX = 200  # characters of a key in a message; a longer one keeps its ends


def plain_key(key: str) -> bool:
    """UTF-8 and printable: shown as it is (if not too long)."""
    try:
        key.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return key.isprintable()


def show_key(key: str) -> str:
    """A key as an operator reads it: a key that is not UTF-8 shows its bytes escaped, and
    one with a line break or another control character shows it escaped (an etcd key may hold
    any bytes; in a message it must not start a line of its own). A key of up to etcd's
    1.5 MiB request was repeated whole in every message about it (a log line per render):
    past SHOWN_KEY_MAX it keeps its two ends and says how long it is."""
    if plain_key(key):
        shown = key
    else:
        try:
            key.encode("utf-8")
            shown = escape_controls(key)
        except UnicodeEncodeError:
            shown = repr(key.encode("utf-8", "surrogateescape"))[1:]
    if len(shown) <= SHOWN_KEY_MAX:
        return shown
    end = (SHOWN_KEY_MAX - 30) // 2
    return f"{shown[:end]}...({len(key)} characters)...{shown[-end:]}"


class KeyedStr(str):
    """A str that knows its key (str subclasses cannot use slots)."""

    source_key: str


class KeyedInt(int):
    source_key: str

    def __str__(self) -> str:  # `| string` keeps the key
        return tag(int.__str__(self), self.source_key)  # type: ignore[no-any-return]


class KeyedFloat(float):
    source_key: str

    def __str__(self) -> str:
        return tag(float.__repr__(self), self.source_key)  # type: ignore[no-any-return]


# JSON true/false/null cannot be tagged (bool is final, None a singleton): remember which key the
# last one read from a tagged document came from, so a refused `true` can still be named.
_last_untagged: list[Any] = [None, None]


class KeyedDict(dict[Any, Any]):
    """A JSON object whose fields are tagged; a refused missing field names this key too."""

    source_key: str

    def __getitem__(self, name: Any) -> Any:
        value = dict.__getitem__(self, name)
        if value is None or value is True or value is False:
            _last_untagged[:] = [value, self.source_key]
        return value

    def get(self, name: Any, default: Any = None) -> Any:
        if name in self:
            return self[name]
        return default


class KeyedList(list[Any]):
    source_key: str


def _retagging(name: str) -> Any:
    method = getattr(str, name)

    def retag(self: KeyedStr, *args: Any, **kwargs: Any) -> Any:
        return _retag(method(self, *args, **kwargs), self.source_key)

    retag.__name__ = name
    return retag


def _retag(result: Any, key: str) -> Any:
    if type(result) is str:
        return tag(result, key)
    if isinstance(result, list | tuple):
        return type(result)(tag(part, key) if type(part) is str else part for part in result)
    return result


for _name in ("__getitem__", "strip", "lstrip", "rstrip", "lower", "upper", "casefold", "title",
              "capitalize", "swapcase", "replace", "split", "rsplit", "splitlines", "partition",
              "rpartition", "removeprefix", "removesuffix", "zfill", "center", "ljust", "rjust",
              "expandtabs"):
    setattr(KeyedStr, _name, _retagging(_name))


# Error messages (Jinja's "'dict object' has no attribute ...") read as for plain values.
for _keyed, _plain in ((KeyedStr, str), (KeyedInt, int), (KeyedFloat, float), (KeyedDict, dict),
                       (KeyedList, list)):
    _keyed.__module__, _keyed.__name__ = "builtins", _plain.__name__


def tag(value: Any, key: str) -> Any:
    """`value` (text, or parsed JSON, recursively) with every taggable part marked with `key`."""
    kind = type(value)
    tagged: Any
    if kind is str:
        tagged = KeyedStr(value)
    elif kind is int:
        tagged = KeyedInt(value)
    elif kind is float:
        tagged = KeyedFloat(value)
    elif kind is dict:
        tagged = KeyedDict((tag(k, key), tag(v, key)) for k, v in value.items())
    elif kind is list:
        tagged = KeyedList(tag(item, key) for item in value)
    else:
        return value  # bool, None, or already tagged
    tagged.source_key = key
    return tagged


def source_key(value: object) -> str | None:
    """The key a value came from, when it is known."""
    if type(value).__name__.endswith("Undefined"):
        # A missing field of a tagged document: Jinja's Undefined holds the document it was
        # read from (and raises on any other attribute).
        key = getattr(getattr(value, "_undefined_obj", None), SOURCE, None)
        return key if isinstance(key, str) else None
    if value is None or isinstance(value, bool):
        return _last_untagged[1] if _last_untagged[0] is value else None
    key = getattr(value, SOURCE, None)
    return key if isinstance(key, str) else None


def forget() -> None:
    """Drop the remembered true/false/null origin (one attribution render each)."""
    _last_untagged[:] = [None, None]
