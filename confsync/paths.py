"""Relative paths are taken from the directory confsync started in, for the process's life.

A long-running daemon's working directory can be deleted under it (a package upgrade that
replaces it, a cleaned-up checkout, a recreated home directory). `os.getcwd()` then fails, and
a relative path resolved by the kernel names the deleted directory. Resolving every configured
path against the directory named at start keeps a SIGHUP working, and finds the directory again
once it is recreated.
"""

from __future__ import annotations

import os
from pathlib import Path


def _start_directory() -> str | None:
    try:
        return os.getcwd()
    except OSError:  # started in a deleted directory: relative paths fail where they are used
        return None


START_DIRECTORY = _start_directory()


def expand_user(path: Path) -> Path:
    """`path` with a leading `~user` expanded (made absolute), as each use of a path kept as
    written needs it (tomlvalues.late_user_path); a ValueError while this system does not know
    that user (yet)."""
    if not path.parts or not path.parts[0].startswith("~"):
        return path
    try:
        return absolute(path.expanduser())
    except RuntimeError:
        raise ValueError(f"cannot expand {path.parts[0]!r}: no such user on this system "
                         "(yet?)") from None


def absolute(path: Path) -> Path:
    """`path` made absolute against the start directory, normalised like os.path.abspath."""
    if path.is_absolute():
        return Path(os.path.normpath(path))
    if START_DIRECTORY is None:
        return path
    return Path(os.path.normpath(os.path.join(START_DIRECTORY, path)))
