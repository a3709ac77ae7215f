"""Main configuration: defaults < confsync.toml < CONFSYNC_* environment < command line.

One schema table drives all three sources so a setting cannot exist in one and be missing from
another, and every error names where the bad value came from.
"""

# No `from __future__ import annotations` here: it makes each NamedTuple field's annotation a
# string, which typing compiles (a ForwardRef per field) as the class is made, on every run;
# the records of the one-shot path before etcd is asked cost 0.2 ms more so (issue 11).
import os
import signal
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from confsync import tomlvalues as tv
from confsync.errors import ConfigError, FileNotReadable
from confsync.logs import register_secret
from confsync.paths import absolute, expand_user
from confsync.render_limits import DEFAULT_MAX_OUTPUT_SIZE, DEFAULT_RENDER_TIMEOUT, parse_size
from confsync.tomlvalues import parse_host_port

__all__ = ["BACKENDS", "DEFAULT_CONFIG", "LOG_FORMATS", "LOG_LEVELS", "EtcdSettings",
           "ExecSettings", "Settings", "WatchSettings", "env_name", "load_settings",
           "parse_host_port", "read_password"]

DEFAULT_CONFIG = Path("/etc/confsync/confsync.toml")
BACKENDS = ("etcd", "file", "env")
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")


# The settings are NamedTuples, not frozen dataclasses: one `exec` each to create, where a
# dataclass's six (per generated method, on Python 3.11) were ~2 ms of every run (issue 11).
# Change one with `_replace`.


class EtcdSettings(NamedTuple):
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
    # A watch stream that brings neither an event nor a progress notification for this long
    # is taken as lost and reopened (0 = never). etcd sends progress notifications every 10
    # min by default (--experimental-watch-progress-notify-interval); keep this above that.
    silence_limit: float = 900.0

    def uses_tls(self, urls: Sequence[str]) -> bool:
        """TLS for every endpoint when any is https:// or a CA is given (one channel setting)."""
        return self.ca_cert is not None or any(u.lower().startswith("https://") for u in urls)

    def credentials_in_clear(self, urls: Sequence[str]) -> bool:
        """A user and password would travel over plain HTTP/gRPC to `urls`: refused."""
        return bool(self.user) and self.password_file is not None and not self.uses_tls(urls)


CLEAR_CREDENTIALS = ("needs TLS (https:// endpoints or ca_cert): the password is never sent "
                     "in clear text")


class WatchSettings(NamedTuple):
    wait_min: float = 0.1
    wait_max: float = 2.0
    interval: float = 0.0  # periodic full resync; 0 = off
    confdir: bool = False  # watch conf.d/ and templates/ and reload on edits, like SIGHUP


class ExecSettings(NamedTuple):
    """Exec mode (`confsync watch --exec CMD`): the supervised child (confsync.ops.supervisor)."""

    command: tuple[str, ...] = ()  # empty: exec mode off
    reload_signal: signal.Signals = signal.SIGHUP
    stop_signal: signal.Signals = signal.SIGTERM
    forward_signals: tuple[signal.Signals, ...] = (signal.SIGUSR1, signal.SIGUSR2)
    stop_timeout: float = 10.0
    restart_delay: float = 1.0
    restart_delay_max: float = 30.0
    crash_limit: int = 5
    crash_window: float = 60.0


class Settings(NamedTuple):
    config_path: Path | None = None
    confdir: Path = Path("/etc/confsync")
    backend: str = "etcd"
    prefix: str = ""
    log_level: str = "info"
    log_format: str = "text"
    etcd: EtcdSettings = EtcdSettings()
    file_paths: tuple[Path, ...] = ()
    watch: WatchSettings = WatchSettings()
    metrics_address: str = ""
    exec: ExecSettings = ExecSettings()
    # Render limits for every resource (a resource's own `render_timeout`/`max_output_size` win).
    render_timeout: float = DEFAULT_RENDER_TIMEOUT
    max_output_size: int = DEFAULT_MAX_OUTPUT_SIZE
    # `once` and `check` skip a render whose inputs a render before had (render_memo.py).
    render_memo: bool = True


# (attribute path, TOML table, TOML key, converter). The env name is CONFSYNC_<TABLE>_<KEY>.
_SCHEMA: tuple[tuple[str, str, str, Callable[[Any], Any]], ...] = (
    ("confdir", "", "confdir", tv.late_user_path),
    ("backend", "", "backend", tv.choice(*BACKENDS)),
    ("prefix", "", "prefix", tv.string),
    ("log_level", "", "log_level", tv.choice(*LOG_LEVELS)),
    ("log_format", "", "log_format", tv.choice(*LOG_FORMATS)),
    ("metrics_address", "", "metrics_address", tv.listen_address),
    ("render_timeout", "", "render_timeout", tv.positive_duration),
    ("max_output_size", "", "max_output_size", parse_size),
    ("render_memo", "", "render_memo", tv.flag),
    ("etcd.endpoints", "etcd", "endpoints", tv.string_list),
    ("etcd.ca_cert", "etcd", "ca_cert", tv.late_user_path),
    ("etcd.cert", "etcd", "cert", tv.late_user_path),
    ("etcd.key", "etcd", "key", tv.late_user_path),
    ("etcd.user", "etcd", "user", tv.string),
    ("etcd.password_file", "etcd", "password_file", tv.late_user_path),
    ("etcd.timeout", "etcd", "timeout", tv.duration),
    ("etcd.srv_domain", "etcd", "srv_domain", tv.string),
    ("etcd.srv_nameserver", "etcd", "srv_nameserver", tv.listen_address),
    ("etcd.silence_limit", "etcd", "silence_limit", tv.duration),
    ("file_paths", "file", "paths", tv.late_user_paths),
    ("watch.wait_min", "watch", "wait_min", tv.duration),
    ("watch.wait_max", "watch", "wait_max", tv.duration),
    ("watch.interval", "watch", "interval", tv.duration),
    ("watch.confdir", "watch", "confdir", tv.flag),
    ("exec.command", "exec", "command", tv.optional_command),
    ("exec.reload_signal", "exec", "reload_signal", tv.signal_name),
    ("exec.stop_signal", "exec", "stop_signal", tv.signal_name),
    ("exec.forward_signals", "exec", "forward_signals", tv.signals),
    ("exec.stop_timeout", "exec", "stop_timeout", tv.duration),
    ("exec.restart_delay", "exec", "restart_delay", tv.duration),
    ("exec.restart_delay_max", "exec", "restart_delay_max", tv.duration),
    ("exec.crash_limit", "exec", "crash_limit", tv.positive_int),
    ("exec.crash_window", "exec", "crash_window", tv.duration),


)


def env_name(table: str, key: str) -> str:
    return "CONFSYNC_" + (f"{table}_{key}" if table else key).upper()


# Register's owner host name (read by register/run.py), and with the config file's path the
# variables that are no setting of the schema.
REGISTER_HOSTNAME_ENV = "CONFSYNC_REGISTER_HOSTNAME"
# In an exec child's environment (ops/strays.py): a confsync the child runs (a wrapper's
# `confsync once`, a nested `register --exec`) has it, and must not call it misspelt.
EXEC_MARK_ENV = "CONFSYNC_EXEC_ID"
OTHER_ENVIRONMENT = ("CONFSYNC_CONFIG", REGISTER_HOSTNAME_ENV, EXEC_MARK_ENV)


def unknown_environment(environ: Mapping[str, str] | None = None) -> list[tuple[str, str | None]]:
    """CONFSYNC_* variables that are no setting, each with the closest one that is (or None).

    A config file's unknown key is an error, but a misspelt variable (CONFSYNC_ETCD_ENDPOINT)
    was silently ignored: confsync then ran against 127.0.0.1:2379. Reported, not refused:
    the environment is shared with other tools, and the env backend's data may use the prefix.
    """
    environ = os.environ if environ is None else environ
    known = {env_name(table, key) for _, table, key, _ in _SCHEMA} | set(OTHER_ENVIRONMENT)
    unknown = sorted(n for n in environ if n.startswith("CONFSYNC_") and n not in known)
    if not unknown:
        return []
    import difflib  # only when there is something to report

    found = []
    for name in unknown:
        near = difflib.get_close_matches(name, known, n=1, cutoff=0.8)
        found.append((name, near[0] if near else None))
    return found


def _set(values: dict[str, Any], attr: str, raw: Any, convert: Callable[[Any], Any],
         source: str, key: str) -> None:
    values[attr] = tv.convert(source, key, convert, raw)


def _from_file(path: Path, values: dict[str, Any]) -> None:
    data = tv.read_toml(path)
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
    config_path = absolute(Path(config_arg)) if config_arg else DEFAULT_CONFIG
    try:
        config_exists = config_path.exists()
    except OSError as exc:  # a name too long, /etc/confsync not searchable: not "no file"
        raise ConfigError(str(config_path), f"cannot look up the config file: "
                          f"{exc.strerror}") from None
    if config_exists or config_arg:
        if not config_exists:
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
    settings = Settings(config_path=config_path if config_exists else None,
                        etcd=etcd, watch=watch, exec=exec_settings, **top)
    if etcd.srv_domain and "etcd.endpoints" in values:
        # SRV records replace endpoints: one set on the command line to point at another
        # cluster was ignored without a word while the file's srv_domain won.
        raise ConfigError("etcd", "endpoints and srv_domain are both set, and srv_domain's SRV "
                          "records would replace the endpoints: set only one", "srv_domain")
    if settings.backend == "etcd" and not etcd.srv_domain and \
            etcd.credentials_in_clear(etcd.endpoints):
        raise ConfigError("etcd", f"user {etcd.user!r} {CLEAR_CREDENTIALS}", "user")
    if settings.backend == "file" and not settings.file_paths:
        raise ConfigError("file backend", "needs at least one data file: set [file] paths, "
                          "CONFSYNC_FILE_PATHS or --file", "paths")
    return settings


def read_password(settings: EtcdSettings) -> str | None:
    """The etcd password, read from its file only when needed so it never sits in config."""
    if settings.password_file is None:
        return None
    try:
        password = expand_user(settings.password_file).read_text("utf-8").rstrip("\n")
    except ValueError as exc:  # a `~user` not known yet: waited for as a file not there yet
        raise FileNotReadable(str(settings.password_file), f"cannot read password: {exc}",
                              "etcd.password_file") from None
    except OSError as exc:
        raise FileNotReadable(str(settings.password_file), f"cannot read password: {exc.strerror}",
                          "etcd.password_file") from None
    register_secret(password)
    return password
