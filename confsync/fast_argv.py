"""The usual `once` and `check` command lines, read without argparse.

Importing argparse and building its parser (each option's help formatter asks `shutil` for the
terminal's size, each message goes through `gettext`, which imports `locale`) was ~5 ms of a
~75 ms `once` (issue 11). A command line of the plain shapes - the command, then its own
options spelled out, as `--option VALUE` or `--option=VALUE` with a value that does not start
with `-` - is read here into the namespace argparse gives for it. Anything else (help, a
typo, an abbreviation, a missing or dash-leading value, a value outside the choices, `--`, a
word that is no option) gives None and goes to argparse, so every error message and help text
is argparse's own. tests/unit/test_fast_argv.py holds both to the same answers.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

# option -> (dest, choices or None); values as cli.py's parser defines them
_COMMON = {
    "--config": ("config", None),
    "--confdir": ("confdir", None),
    "--backend": ("backend", ("etcd", "file", "env")),
    "--endpoints": ("endpoints", None),
    "--srv-domain": ("srv_domain", None),
    "--prefix": ("prefix", None),
    "--file": ("file_paths", None),  # (appends)
    "--log-level": ("log_level", ("debug", "info", "warning", "error")),
    "--log-format": ("log_format", ("text", "json")),
}
_CHECK = {**_COMMON, "--data": ("data", None)}
_CHECK_FLAGS = {"--diff": True, "--no-diff": False}  # dest `diff`


def parse_plain(argv: Sequence[str]) -> SimpleNamespace | None:
    """What `build_parser().parse_args(argv)` gives for a plain `once` or `check` command
    line; None for any other (argparse reads it, and says what is wrong)."""
    if not argv or argv[0] not in ("once", "check"):
        return None
    check = argv[0] == "check"
    options = _CHECK if check else _COMMON
    values: dict[str, Any] = {"command": argv[0], **{dest: None for dest, _ in options.values()}}
    if check:
        values["diff"] = True
    i = 1
    while i < len(argv):
        word = argv[i]
        name, equals, value = word.partition("=")
        if check and word in _CHECK_FLAGS:
            values["diff"] = _CHECK_FLAGS[word]
            i += 1
            continue
        if name not in options:
            return None
        if not equals:
            if i + 1 == len(argv):
                return None
            value = argv[i + 1]
        if value.startswith("-"):
            return None
        dest, choices = options[name]
        if choices is not None and value not in choices:
            return None
        if dest == "file_paths":
            values[dest] = [*(values[dest] or ()), value]
        else:
            values[dest] = Path(value) if dest == "data" else value
        i += 1 if equals else 2
    return SimpleNamespace(**values)


__all__ = ["parse_plain"]
