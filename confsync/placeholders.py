"""The placeholders of a check or reload command: `{{src}}` and `{{dest}}`, nothing else.

Only `{{src}}` and `{{dest}}` (or confd's spelling, `{{.src}}` and `{{.dest}}`) are substituted,
and only whole argv elements change, so nothing from the data can ever reach a command line.
Apart from commands.py, which runs them: conf.d's loading checks the placeholders and needs
nothing of running commands.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

# (patterns compiled at first use, by re's cache: a run with no command never compiles them)
_PLACEHOLDER = r"\{\{\s*\.?(src|dest)\s*\}\}"
_ANY_PLACEHOLDER = r"\{\{.*?\}\}"


def substitute(argv: Sequence[str], src: Path, dest: Path) -> list[str]:
    values = {"src": str(src), "dest": str(dest)}
    return [re.sub(_PLACEHOLDER, lambda m: values[m.group(1)], arg) for arg in argv]


def unknown_placeholder(arg: str) -> str | None:
    """The first `{{...}}` in `arg` that is not a src/dest placeholder (checked at load time, so
    a confd command using other template syntax is an error, not a literal argument)."""
    for match in re.finditer(_ANY_PLACEHOLDER, arg):
        if not re.fullmatch(_PLACEHOLDER, match.group()):
            return match.group()
    return None
