"""The `[haproxy]` table of a resource file: parsed and validated at load time.

    [haproxy]
    master_socket = "/run/haproxy-master.sock"   # confirmed reloads through the master CLI
    reload_strategy = "runtime"                  # pool changes through the runtime API
    check_server_changes = false                 # proven server-only changes skip check_cmd
    runtime_socket = "/run/haproxy/admin.sock"   # default: the file's `stats socket`
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from confsync import tomlvalues as tv
from confsync.errors import ConfigError


class Strategy(Enum):
    RELOAD = "reload"  # every change reloads (confirmed when master_socket is set)
    RUNTIME = "runtime"  # server-only changes through the admin socket, no reload


@dataclass(frozen=True)
class HAProxySettings:
    master_socket: Path | None = None
    strategy: Strategy = Strategy.RELOAD
    # runtime strategy only: false lets a change that touches nothing but server lines skip
    # check_cmd when it is proven against the last file that passed the check.
    check_server_changes: bool = True
    runtime_socket: Path | None = None


_KEYS = ("master_socket", "reload_strategy", "check_server_changes", "runtime_socket")
# `~user/` of a user not known yet is kept as written: a socket not there yet (sockets.py).
_SOCKET = tv.nonempty_late_user_path_as_written


def parse_settings(source: str, table: Mapping[str, Any], template: Mapping[str, Any],
                   where: str) -> HAProxySettings:
    """Validate the table; every error names the file and `<where>.<key>`."""
    for key in table:
        if key not in _KEYS:
            raise ConfigError(source, f"unknown key (known keys: {', '.join(_KEYS)})",
                              f"{where}.{key}")
    kwargs: dict[str, Any] = {}
    if "master_socket" in table:
        kwargs["master_socket"] = tv.convert(source, f"{where}.master_socket", _SOCKET,
                                             table["master_socket"])
        if template.get("reload_cmd"):
            raise ConfigError(source, "give reload_cmd or master_socket, not both (the "
                              "master CLI reloads HAProxy itself)", f"{where}.master_socket")
    if "reload_strategy" in table:
        strategy = tv.convert(source, f"{where}.reload_strategy",
                              tv.choice(*(s.value for s in Strategy)), table["reload_strategy"])
        kwargs["strategy"] = Strategy(strategy)
    if "check_server_changes" in table:
        kwargs["check_server_changes"] = tv.convert(source, f"{where}.check_server_changes",
                                                    tv.boolean, table["check_server_changes"])
    if "runtime_socket" in table:
        kwargs["runtime_socket"] = tv.convert(source, f"{where}.runtime_socket", _SOCKET,
                                              table["runtime_socket"])
    settings = HAProxySettings(**kwargs)
    if (settings.master_socket is None and not template.get("reload_cmd")
            and template.get("reload_signal") is None):
        # Nothing could ever reload HAProxy: structural changes would be written and
        # silently never go live.
        key = ("reload_strategy" if settings.strategy is Strategy.RUNTIME
               else "master_socket")
        raise ConfigError(source, "HAProxy needs a way to reload: set master_socket (or "
                          "reload_cmd / reload_signal in [template]); without one a "
                          "structural change would be written and never go live",
                          f"{where}.{key}")
    return settings
