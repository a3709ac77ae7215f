"""A confd resource's fields as confd 0.17 reads them, before they are written for confsync.

confd decodes conf.d with BurntSushi/toml into a struct, which matches table and field names
case-insensitively (`[Template]`, `Src`), takes `uid`/`gid` -1 as unset, and applies `mode`
as `os.FileMode(strconv.ParseUint(mode, 0, 32))`: Go's number prefixes (`0o640`, `0x1a4`),
an empty string as unset, and only the permission bits (Go's setuid is another bit, so
`04755` wrote 0755). confsync's spelling is narrower (octal digits, ids from 0), so each is
written as the value confd used, and said when that is not what the file says.
"""

from __future__ import annotations

import re
from typing import Any

from confsync.stores.goyaml import parse_uint

FIELDS = ("src", "dest", "keys", "prefix", "mode", "uid", "gid", "owner", "group",
          "check_cmd", "reload_cmd")


class SpellingError(Exception):
    """Two spellings of one field: confd took either (Go's map order), so nothing is sure."""


def template_table(data: dict[str, Any]) -> Any:
    """The `[template]` table, any case of its name (exact first, as BurntSushi's decoder)."""
    if "template" in data:
        return data["template"]
    return next((v for k, v in data.items() if k.lower() == "template"), None)


def other_tables(data: dict[str, Any]) -> list[str]:
    return [k for k in data if k.lower() != "template"]


def fold_fields(table: dict[str, Any]) -> dict[str, Any]:
    """Field names as confsync spells them: a known field in any case is that field."""
    folded: dict[str, Any] = {}
    spelt: dict[str, str] = {}
    for key, value in table.items():
        name = key.lower() if key.lower() in FIELDS else key
        if name in folded:
            raise SpellingError(f"template.{spelt[name]} and template.{key} are one field to "
                                "confd, which took either; keep one")
        folded[name] = value
        spelt[name] = key
    return folded


def confd_mode(value: Any) -> tuple[str | None, str | None]:
    """(mode to write, or None to leave it unset; a note, or None) for confd's `mode`.

    A string confd cannot parse is kept as written: confd failed that resource, and
    confsync's load fails it too, naming the field."""
    if not isinstance(value, str):
        return None, None  # confd's decoder refuses it; the caller writes it as it is
    if value == "":
        return "", "empty: confd leaves the mode unset (the file's, else 0644); dropped"
    if value.isdigit() and not value.startswith("0"):
        return value, decimal_note(value)
    mode = parse_uint(value, 0, 32)
    if mode is None:
        return value, None
    perm = mode & 0o777
    if mode != perm:
        return f"{perm:04o}", (f"{value!r}: confd applies only the permission bits (its files "
                               f"were mode {perm:04o}); written as \"{perm:04o}\"")
    if value.isdigit():  # 0644, 00644: confsync reads these as confd does
        return value, None
    return f"{perm:04o}", None  # 0o640, 0x1a4: the same mode in confsync's spelling


def decimal_note(text: str) -> str | None:
    """confd parses mode with Go's ParseUint(mode, 0, 32): "644" is decimal there (0204 on
    disk), where confsync reads octal digits as octal. Said, since the file's mode changes."""
    if "8" in text or "9" in text:
        return None
    confd = int(text) & 0o777
    if confd == int(text, 8) & 0o777:
        return None
    return (f"{text!r} is decimal to confd (it wrote files mode {confd:04o}); confsync reads "
            f"it as octal {int(text, 8):04o}, as you meant: the file's mode changes")


def unset_id(key: str, value: Any) -> bool:
    """confd's uid/gid -1: unset (confd's own user or group), which confsync's absent key is."""
    return key in ("uid", "gid") and value == -1 and not isinstance(value, bool)


# What confd 0.17 substitutes in each command: check_cmd is a Go template over {"src": ...}
# (so {{.dest}} is "<no value>"); reload_cmd goes to `sh -c` as written.
_SUBSTITUTED = {"check_cmd": ("src",), "reload_cmd": ()}
_PLACEHOLDER = re.compile(r"\{\{\s*\.(src|dest)\s*\}\}")


def unsubstituted_note(key: str, command: str) -> str | None:
    """A note when the command names a placeholder confd left alone there, which confsync
    fills in: the converted command does what was meant, not what confd did."""
    names = sorted({m.group(1) for m in _PLACEHOLDER.finditer(command)}
                   - set(_SUBSTITUTED.get(key, ("src", "dest"))))
    if not names:
        return None
    left = "<no value>" if key == "check_cmd" else "the text as written, to sh"
    spelt = ", ".join("{{." + n + "}}" for n in names)
    return (f"{spelt}: confd 0.17 does not fill this in {key} (it ran {left}); confsync "
            "does: review")
