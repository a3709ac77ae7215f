"""Main configuration: defaults < confsync.toml < CONFSYNC_* environment < command line.

One schema table drives all three sources so a setting cannot exist in one and be missing from
another, and every error names where the bad value came from.
"""

from __future__ import annotations

import ipaddress
import os
import shlex
import signal
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from confsync.durations import parse_duration
from confsync.errors import ConfigError
from confsync.logs import register_secret
from confsync.render_limits import DEFAULT_MAX_OUTPUT_SIZE, DEFAULT_RENDER_TIMEOUT, parse_size

DEFAULT_CONFIG = Path("/etc/confsync/confsync.toml")
BACKENDS = ("etcd", "file", "env")
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")


@dataclass(frozen=True)
class EtcdSettings:
    endpoints: tuple[str, ...] = ("http://127.0.0.1:2379",)
    ca_cert: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    user: str | None = None
    password_file: Path | None = None
    timeout: float = 5.0
    # DNS SRV discovery (confsync.stores.srv): when set, replaces `endpoints`.
    srv_domain: str = ""
    srv_nameserver: str = ""  # host:port of the DNS server to ask; "" = the system's resolver


@dataclass(frozen=True)
class WatchSettings:
    wait_min: float = 0.1
    wait_max: float = 2.0
    interval: float = 0.0  # periodic full resync; 0 = off
    confdir: bool = False  # watch conf.d/ and templates/ and reload on edits, like SIGHUP


@dataclass(frozen=True)
class ExecSettings:
    """Exec mode (`confsync watch --exec CMD`): the supervised child; see confsync.supervisor."""

    command: tuple[str, ...] = ()  # empty: exec mode off
    reload_signal: signal.Signals = signal.SIGHUP
    stop_signal: signal.Signals = signal.SIGTERM
    forward_signals: tuple[signal.Signals, ...] = (signal.SIGUSR1, signal.SIGUSR2)
    stop_timeout: float = 10.0
    restart_delay: float = 1.0
    restart_delay_max: float = 30.0
    crash_limit: int = 5
    crash_window: float = 60.0


@dataclass(frozen=True)
class Settings:
    config_path: Path | None = None
    confdir: Path = Path("/etc/confsync")
    backend: str = "etcd"
    prefix: str = ""
    log_level: str = "info"
    log_format: str = "text"
    etcd: EtcdSettings = field(default_factory=EtcdSettings)
    file_paths: tuple[Path, ...] = ()
    watch: WatchSettings = field(default_factory=WatchSettings)
    metrics_address: str = ""
    exec: ExecSettings = field(default_factory=ExecSettings)
    # Render limits for every resource (a resource's own `render_timeout`/`max_output_size` win).
    render_timeout: float = DEFAULT_RENDER_TIMEOUT
    max_output_size: int = DEFAULT_MAX_OUTPUT_SIZE


# ---- value converters: (raw value, where) -> typed value; raise ValueError with what was expected


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, found {value!r}")
    return value


def _path(value: Any) -> Path:
    return Path(_str(value)).expanduser()


def _list(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        items = [v.strip() for v in value.split(",")]
    elif isinstance(value, list) and all(isinstance(v, str) for v in value):
        items = [v.strip() for v in value]
    else:
        raise ValueError(f"expected a list of strings (or comma-separated), found {value!r}")
    return tuple(v for v in items if v)


def _paths(value: Any) -> tuple[Path, ...]:
    return tuple(Path(p).expanduser() for p in _list(value))


def parse_host_port(text: str) -> tuple[str, int]:
    """'127.0.0.1:9500', '[::1]:9500', 'localhost:9500', ':9500' (any address) -> (host, port)."""
    host, sep, port_text = text.strip().rpartition(":")
    if not sep or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"expected host:port such as 127.0.0.1:9500, found {text!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        ipaddress.IPv6Address(host)  # raises ValueError
    elif ":" in host:
        raise ValueError(f"write IPv6 addresses in brackets, e.g. [::1]:9500, found {text!r}")
    return host or "0.0.0.0", int(port_text)


def _address(value: Any) -> str:
    """A listen address, or "" for off."""
    text = _str(value).strip()
    if text:
        parse_host_port(text)
    return text


def _command(value: Any) -> tuple[str, ...]:
    """A command line: a string is split like a shell would (no shell runs), or an argv list."""
    if isinstance(value, str):
        return tuple(shlex.split(value))
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise ValueError(f"expected a command string or a list of strings, found {value!r}")


def _signal(value: Any) -> signal.Signals:
    name = _str(value).strip().upper()
    name = name if name.startswith("SIG") else "SIG" + name
    if name not in signal.Signals.__members__:
        raise ValueError(f"expected a signal name such as \"SIGHUP\", found {value!r}")
    return signal.Signals[name]


def _signals(value: Any) -> tuple[signal.Signals, ...]:
    return tuple(_signal(v) for v in _list(value))


def _positive_int(value: Any) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = 0
    if isinstance(value, bool) or number < 1:
        raise ValueError(f"expected a whole number of at least 1, found {value!r}")
    return number


def _positive_duration(value: Any) -> float:
    seconds = parse_duration(value)
    if seconds <= 0:
        raise ValueError(f"expected a duration above 0, found {value!r}")
    return seconds


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on", "0", "false",
                                                    "no", "off"):
        return value.lower() in ("1", "true", "yes", "on")
    raise ValueError(f"expected true or false, found {value!r}")


def _choice(*choices: str) -> Callable[[Any], str]:
    def convert(value: Any) -> str:
        if value not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}, found {value!r}")
        return str(value)

    return convert


# (attribute path, TOML table, TOML key, converter). The env name is CONFSYNC_<TABLE>_<KEY>.
_SCHEMA: tuple[tuple[str, str, str, Callable[[Any], Any]], ...] = (
    ("confdir", "", "confdir", _path),
    ("backend", "", "backend", _choice(*BACKENDS)),
    ("prefix", "", "prefix", _str),
    ("log_level", "", "log_level", _choice(*LOG_LEVELS)),
    ("log_format", "", "log_format", _choice(*LOG_FORMATS)),
    ("metrics_address", "", "metrics_address", _address),
    ("render_timeout", "", "render_timeout", _positive_duration),
    ("max_output_size", "", "max_output_size", parse_size),
    ("etcd.endpoints", "etcd", "endpoints", _list),
    ("etcd.ca_cert", "etcd", "ca_cert", _path),
    ("etcd.cert", "etcd", "cert", _path),
    ("etcd.key", "etcd", "key", _path),
    ("etcd.user", "etcd", "user", _str),
    ("etcd.password_file", "etcd", "password_file", _path),
    ("etcd.timeout", "etcd", "timeout", parse_duration),
    ("etcd.srv_domain", "etcd", "srv_domain", _str),
    ("etcd.srv_nameserver", "etcd", "srv_nameserver", _address),
    ("file_paths", "file", "paths", _paths),
    ("watch.wait_min", "watch", "wait_min", parse_duration),
    ("watch.wait_max", "watch", "wait_max", parse_duration),
    ("watch.interval", "watch", "interval", parse_duration),
    ("watch.confdir", "watch", "confdir", _bool),
    ("exec.command", "exec", "command", _command),
    ("exec.reload_signal", "exec", "reload_signal", _signal),
    ("exec.stop_signal", "exec", "stop_signal", _signal),
    ("exec.forward_signals", "exec", "forward_signals", _signals),
    ("exec.stop_timeout", "exec", "stop_timeout", parse_duration),
    ("exec.restart_delay", "exec", "restart_delay", parse_duration),
    ("exec.restart_delay_max", "exec", "restart_delay_max", parse_duration),
    ("exec.crash_limit", "exec", "crash_limit", _positive_int),
    ("exec.crash_window", "exec", "crash_window", parse_duration),


)


def env_name(table: str, key: str) -> str:
    return "CONFSYNC_" + (f"{table}_{key}" if table else key).upper()


def _set(values: dict[str, Any], attr: str, raw: Any, convert: Callable[[Any], Any],
         source: str, key: str) -> None:
    try:
        values[attr] = convert(raw)
    except ValueError as exc:
        raise ConfigError(source, str(exc), key) from None


def _from_file(path: Path, values: dict[str, Any]) -> None:
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(path), f"not valid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(str(path), f"cannot read: {exc.strerror}") from None
    known = {(table, key) for _, table, key, _ in _SCHEMA}
    tables = {table for _, table, _, _ in _SCHEMA if table}
    for name, value in data.items():
        if isinstance(value, dict):
            if name not in tables:
                raise ConfigError(str(path), "unknown table", f"[{name}]")
            for key in value:
                if (name, key) not in known:
                    raise ConfigError(str(path), "unknown key", f"{name}.{key}")
        elif ("", name) not in known:
            raise ConfigError(str(path), "unknown key", name)
    for attr, table, key, convert in _SCHEMA:
        section = data.get(table, {}) if table else data
        if key in section:
            _set(values, attr, section[key], convert, str(path), f"{table}.{key}".lstrip("."))


def load_settings(cli: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> Settings:
    """Merge the sources. `cli` maps attribute paths (e.g. "etcd.endpoints") to given values."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    config_arg = cli.get("config") or environ.get("CONFSYNC_CONFIG")
    config_path = Path(config_arg) if config_arg else DEFAULT_CONFIG
    if config_path.exists() or config_arg:
        if not config_path.exists():
            raise ConfigError(str(config_path), "config file does not exist")
        _from_file(config_path, values)
    for attr, table, key, convert in _SCHEMA:
        name = env_name(table, key)
        if name in environ:
            _set(values, attr, environ[name], convert, "environment", name)
    for attr, _, key, convert in _SCHEMA:
        if cli.get(attr) is not None:
            _set(values, attr, cli[attr], convert, "command line", "--" + key.replace("_", "-"))

    etcd = EtcdSettings(**{k.split(".", 1)[1]: v for k, v in values.items()
                           if k.startswith("etcd.")})
    watch = WatchSettings(**{k.split(".", 1)[1]: v for k, v in values.items()
                             if k.startswith("watch.")})
    if watch.wait_max < watch.wait_min:
        raise ConfigError("watch", f"wait_max ({watch.wait_max}s) is below wait_min "
                          f"({watch.wait_min}s)", "wait_max")
    exec_settings = ExecSettings(**{k.split(".", 1)[1]: v for k, v in values.items()
                                    if k.startswith("exec.")})
    top = {k: v for k, v in values.items() if "." not in k}
    settings = Settings(config_path=config_path if config_path.exists() else None,
                        etcd=etcd, watch=watch, exec=exec_settings, **top)
    if settings.backend == "file" and not settings.file_paths:
        raise ConfigError("file backend", "needs at least one data file: set [file] paths, "
                          "CONFSYNC_FILE_PATHS or --file", "paths")
    return settings


def read_password(settings: EtcdSettings) -> str | None:
    """The etcd password, read from its file only when needed so it never sits in config."""
    if settings.password_file is None:
        return None
    try:
        password = settings.password_file.read_text().rstrip("\n")
    except OSError as exc:
        raise ConfigError(str(settings.password_file), f"cannot read password: {exc.strerror}",
                          "etcd.password_file") from None
    register_secret(password)
    return password
