"""The process's first code (`confsync` and `python -m confsync`): signals held before the rest.

A daemon's signals are held (confsync/ops/held_signals.py) before anything else is imported:
importing the CLI and what it needs is ~0.1 s (several times that on a loaded host), and a
SIGHUP, SIGUSR1 or SIGUSR2 in that window took its default action and ended the process (a
logrotate-style signal, or a reload, sent just after a restart). Only the standard library's
`signal` is imported first; a one-shot command holds nothing and pays for nothing here.
"""

from __future__ import annotations

import sys

from confsync.command_kinds import LONG_RUNNING_COMMANDS


def entry() -> None:  # (never returns: `typing` is not imported for saying so)
    if sys.argv[1:2] and sys.argv[1] in LONG_RUNNING_COMMANDS:
        from confsync.ops import held_signals

        held_signals.hold(stop=True)
    from confsync.cli import entry as run

    run()
