"""TOML files parsed once per content: a run reading the files the last one read does not
import tomllib.

tomllib's import (its regular expressions compiled, `datetime`) is ~17M instructions, 6 % of
a `once` that finds nothing changed (issue 11), and a `once` from cron reads the same
confsync.toml and conf.d every time. What tomllib makes of some bytes depends on them and on
Python's version alone, so the result is kept, marshalled, by the digest of both, in a private
directory of the user's own (private_tmp.py: `$TMPDIR/confsync-toml-<uid>`); the same bytes
later are loaded from there. Results marshal cannot keep (TOML dates and times) are not kept.
Best effort, as the render memo: an entry that cannot be read or written is a parse.
"""

from __future__ import annotations

import contextlib
import marshal
import os
import sys
from typing import Any

from confsync import cache_prune
from confsync.private_tmp import private_directory

try:  # what hashlib.blake2b is, without hashlib's loading of OpenSSL
    from _blake2 import blake2b
except ImportError:  # (another Python)
    from hashlib import blake2b

FORMAT = b"confsync-toml-1"
_PREFIX = "toml-"


def _entry(raw: bytes) -> str | None:
    """The path of the entry for `raw`; None when there is no private directory."""
    directory = private_directory(f"confsync-toml-{os.geteuid()}")
    if directory is None:
        return None
    h = blake2b(digest_size=20)
    for part in (FORMAT, sys.version.encode(), str(marshal.version).encode(), raw):
        h.update(len(part).to_bytes(8, "big"))
        h.update(part)
    return os.path.join(directory, _PREFIX + h.hexdigest())


def load(raw: bytes) -> dict[str, Any] | None:
    """What tomllib made of `raw` when it was kept; None when it was not (or is unreadable)."""
    entry = _entry(raw)
    if entry is None:
        return None
    try:
        fd = os.open(entry, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        with open(fd, "rb") as fh:
            data = marshal.loads(fh.read())
            cache_prune.refresh(fd)  # in use: not swept
    except (OSError, ValueError, EOFError, TypeError):
        return None
    return data if isinstance(data, dict) else None


def keep(raw: bytes, data: dict[str, Any]) -> None:
    """Keep what tomllib made of `raw` (unless marshal cannot: dates and times)."""
    entry = _entry(raw)
    if entry is None:
        return
    try:
        content = marshal.dumps(data)
    except ValueError:
        return
    staged = f"{os.path.dirname(entry)}/.{os.path.basename(entry)}.{os.getpid()}"
    try:
        fd = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW
                     | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, content)
        finally:
            os.close(fd)
        os.replace(staged, entry)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(staged)
        return
    cache_prune.maybe_sweep(os.path.dirname(entry), _is_entry, _is_staged)


def _is_entry(name: str) -> bool:
    return name.startswith(_PREFIX) and len(name) == len(_PREFIX) + 40 and name[5:].isalnum()


def _is_staged(name: str) -> bool:
    return name.startswith("." + _PREFIX) and _is_entry(name[1:46])


__all__ = ["keep", "load"]
