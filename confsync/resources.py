"""Template resources: one `[template]` TOML file each under `<confdir>/conf.d/`.

Field names follow confd so resource files port over; unknown keys are errors (confd ignores
typos silently, which is how a misspelt `check_cmd` ends up never running).
"""

from __future__ import annotations

import grp
import os
import pwd
import shlex
import signal
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from confsync.durations import parse_duration
from confsync.errors import ConfigError

RELOAD_STRATEGIES = ("reload", "runtime")


@dataclass(frozen=True)
class Resource:
    """One template resource, validated and normalised."""

    name: str
    source: Path  # the .toml file it came from, for error messages
    src: Path  # absolute template path
    dest: Path
    keys: tuple[str, ...]  # as written, relative to `prefix`
    prefix: str  # global prefix + resource prefix, normalised ("" or "/a/b")
    mode: int | None = None
    uid: int | None = None
    gid: int | None = None
    check_cmd: tuple[str, ...] = ()
    reload_cmd: tuple[str, ...] = ()
    check_timeout: float = 30.0
    reload_timeout: float = 30.0
    reload_signal: signal.Signals | None = None
    pidfile: Path | None = None
    process: str | None = None
    wait_min: float | None = None
    wait_max: float | None = None
    min_keys: int | None = None  # None: only refuse to go from some keys to none
    reload_strategy: str = "reload"
    # runtime strategy only: false lets a change that touches nothing but HAProxy server lines
    # skip check_cmd when the file it replaces passed the check in this process.
    check_server_changes: bool = True
    runtime_socket: Path | None = None
    # HAProxy master CLI (`haproxy -W -S <path>`): reloads through it are confirmed.
    master_socket: Path | None = None
    # Absolute store prefixes this resource reads; derived once, used on every change.
    watched_prefixes: tuple[str, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "watched_prefixes",
                           tuple(join_key(self.prefix, k) for k in self.keys))

    def covers(self, key: str) -> bool:
        """True when a change to absolute `key` can change this resource's output."""
        return key.startswith(self.watched_prefixes)


def normalise_prefix(prefix: str) -> str:
    """'/a/b/' and 'a/b' -> '/a/b'; '' and '/' -> ''."""
    parts = [p for p in prefix.split("/") if p]
    return "/" + "/".join(parts) if parts else ""


def join_key(prefix: str, key: str) -> str:
    """Join a prefix and a key the way confd does: '/app' + '/db/host' -> '/app/db/host'."""
    key = key if key.startswith("/") else "/" + key
    return (prefix + key) if prefix else key


_Validator = Callable[[str, Any], Any]


# Characters a shell treats as operators when unquoted (lists, pipes, redirections, `$(`...`)`,
# subshells, background jobs, command substitution with backticks).
SHELL_OPERATOR_CHARS = "();<>|&`"


def _shell_operator(command: str) -> str | None:
    """The first unquoted shell operator in `command` (None: plain argv).

    shlex's punctuation mode splits runs of these characters out of unquoted text only, so
    `sh -c 'a && b'` passes and `a && b`, `x;y`, `>f`, `$(id)` do not. A standalone argument
    that is only quoted operator characters (`';'`) is refused too: write the command as a
    list for such a literal.
    """
    lexer = shlex.shlex(command, posix=True, punctuation_chars=SHELL_OPERATOR_CHARS)
    lexer.whitespace_split = True
    lexer.commenters = ""
    for token in lexer:
        if token and all(c in SHELL_OPERATOR_CHARS for c in token):
            return token
    return None


def _split_cmd(source: str, key: str, value: Any) -> tuple[str, ...]:
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        argv = tuple(value)
    elif isinstance(value, str):
        try:
            argv = tuple(shlex.split(value))
            operator = _shell_operator(value)
        except ValueError as exc:
            raise ConfigError(source, f"cannot split command {value!r}: {exc}", key) from None
        if operator is not None:
            raise ConfigError(source, f"{operator!r} is shell syntax, but commands run without "
                              f"a shell; write sh -c '...' to use one (or give the command as "
                              f"a list for a literal {operator!r} argument): {value!r}", key)
    else:
        raise ConfigError(source, f"expected a command string or list, found {value!r}", key)
    if not argv and value:
        raise ConfigError(source, "expected a command, found an empty one", key)
    return argv


def _expect_str(source: str, key: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(source, f"expected a non-empty string, found {value!r}", key)
    return value


def _parse_mode(source: str, value: Any) -> int:
    # confd writes mode as a string ("0644"); a TOML integer 644 is also read as octal digits,
    # because nobody means decimal 644 (= 0o1204).
    text = str(value) if isinstance(value, int | str) and not isinstance(value, bool) else None
    if text is None or not text.isdigit() or any(c in "89" for c in text) or int(text, 8) > 0o7777:
        raise ConfigError(source, f"expected an octal mode such as \"0644\" (at most 07777), "
                          f"found {value!r}", "template.mode")
    mode = int(text, 8)
    return mode


# uid_t/gid_t are 32-bit unsigned, and (uid_t)-1 means "leave unchanged" to chown(2).
MAX_ID = 2**32 - 2


def _parse_id(source: str, key: str, value: int) -> int:
    if not 0 <= value <= MAX_ID:
        raise ConfigError(source, f"expected a numeric id from 0 to {MAX_ID}, found {value}", key)
    return value


def _parse_user(source: str, key: str, value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return _parse_id(source, key, value)
    name = _expect_str(source, key, value)
    try:
        return pwd.getpwnam(name).pw_uid
    except KeyError:
        raise ConfigError(source, f"no such user {name!r} on this system", key) from None


def _parse_group(source: str, key: str, value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return _parse_id(source, key, value)
    name = _expect_str(source, key, value)
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        raise ConfigError(source, f"no such group {name!r} on this system", key) from None


def _parse_signal(source: str, value: Any) -> signal.Signals:
    name = _expect_str(source, "reload_signal", value).upper()
    name = name if name.startswith("SIG") else "SIG" + name
    try:
        return signal.Signals[name]
    except KeyError:
        raise ConfigError(
            source, f"expected a signal name such as \"SIGHUP\", found {value!r}", "reload_signal"
        ) from None


def _duration(source: str, key: str, value: Any) -> float:
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise ConfigError(source, str(exc), key) from None


_KNOWN_KEYS = frozenset(
    {
        "src", "dest", "keys", "prefix", "mode", "owner", "group", "uid", "gid",
        "check_cmd", "reload_cmd", "check_timeout", "reload_timeout", "reload_signal",
        "pidfile", "process", "wait_min", "wait_max", "min_keys", "reload_strategy",
        "runtime_socket", "master_socket", "check_server_changes",
    }
)  # fmt: skip


def parse_resource(
    source: Path, data: dict[str, Any], templates_dir: Path, global_prefix: str = ""
) -> Resource:
    """Validate one resource file's parsed TOML; every error names the file and the key."""
    src_name = str(source)
    unknown_tables = set(data) - {"template"}
    if unknown_tables:
        raise ConfigError(src_name, "unknown table or key (expected only [template])",
                          sorted(unknown_tables)[0])
    table = data.get("template")
    if not isinstance(table, dict):
        raise ConfigError(src_name, "missing [template] table")
    where = src_name
    for key in table:
        if key not in _KNOWN_KEYS:
            raise ConfigError(where, f"unknown key (known keys: {', '.join(sorted(_KNOWN_KEYS))})",
                              f"template.{key}")
    for required in ("src", "dest", "keys"):
        if required not in table:
            raise ConfigError(where, "required key is missing", f"template.{required}")

    src = Path(_expect_str(where, "template.src", table["src"]))
    src = Path(os.path.abspath(src if src.is_absolute() else templates_dir / src))
    if not src.is_file():
        raise ConfigError(where, f"template file {src} does not exist", "template.src")
    dest = Path(_expect_str(where, "template.dest", table["dest"]))
    dest = dest if dest.is_absolute() else Path.cwd() / dest

    keys = table["keys"]
    if isinstance(keys, str):
        keys = [keys]
    if not isinstance(keys, list) or not keys or not all(isinstance(k, str) for k in keys):
        raise ConfigError(where, f"expected a non-empty list of key prefixes, found {keys!r}",
                          "template.keys")
    own_prefix = table.get("prefix", "")
    if not isinstance(own_prefix, str):
        raise ConfigError(where, f"expected a string, found {own_prefix!r}", "template.prefix")
    prefix = normalise_prefix(normalise_prefix(global_prefix) + "/" + own_prefix)

    kwargs: dict[str, Any] = {}
    if "mode" in table:
        kwargs["mode"] = _parse_mode(where, table["mode"])
    if "uid" in table and "owner" in table:
        raise ConfigError(where, "give owner or uid, not both", "template.uid")
    if "gid" in table and "group" in table:
        raise ConfigError(where, "give group or gid, not both", "template.gid")
    for key in ("owner", "uid"):
        if key in table:
            kwargs["uid"] = _parse_user(where, f"template.{key}", table[key])
    for key in ("group", "gid"):
        if key in table:
            kwargs["gid"] = _parse_group(where, f"template.{key}", table[key])
    for key in ("check_cmd", "reload_cmd"):
        if key in table:
            kwargs[key] = _split_cmd(where, f"template.{key}", table[key])
    for key in ("check_timeout", "reload_timeout", "wait_min", "wait_max"):
        if key in table:
            kwargs[key] = _duration(where, f"template.{key}", table[key])
    if "reload_signal" in table:
        kwargs["reload_signal"] = _parse_signal(where, table["reload_signal"])
        if "pidfile" not in table and "process" not in table:
            raise ConfigError(where, "reload_signal needs pidfile or process to find the target",
                              "template.reload_signal")
    if "pidfile" in table:
        kwargs["pidfile"] = Path(_expect_str(where, "template.pidfile", table["pidfile"]))
    if "process" in table:
        kwargs["process"] = _expect_str(where, "template.process", table["process"])
    if "min_keys" in table:
        value = table["min_keys"]
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ConfigError(where, f"expected a whole number >= 0, found {value!r}",
                              "template.min_keys")
        kwargs["min_keys"] = value
    if "reload_strategy" in table:
        value = table["reload_strategy"]
        if value not in RELOAD_STRATEGIES:
            raise ConfigError(where, f"expected one of {RELOAD_STRATEGIES}, found {value!r}",
                              "template.reload_strategy")
        kwargs["reload_strategy"] = value
    if "check_server_changes" in table:
        value = table["check_server_changes"]
        if not isinstance(value, bool):
            raise ConfigError(where, f"expected true or false, found {value!r}",
                              "template.check_server_changes")
        kwargs["check_server_changes"] = value
    if "runtime_socket" in table:
        kwargs["runtime_socket"] = Path(
            _expect_str(where, "template.runtime_socket", table["runtime_socket"]))
    if "master_socket" in table:
        kwargs["master_socket"] = Path(
            _expect_str(where, "template.master_socket", table["master_socket"]))
        if kwargs.get("reload_cmd"):
            raise ConfigError(where, "give reload_cmd or master_socket, not both (the master "
                              "CLI reloads HAProxy itself)", "template.master_socket")
    if kwargs.get("reload_cmd") and kwargs.get("reload_signal"):
        raise ConfigError(where, "give reload_cmd or reload_signal, not both",
                          "template.reload_signal")
    return Resource(name=source.stem, source=source, src=src, dest=dest, keys=tuple(keys),
                    prefix=prefix, **kwargs)


@dataclass(frozen=True)
class ResourceSet:
    """The resources that loaded, and an error line for each file that did not."""

    resources: tuple[Resource, ...]
    errors: tuple[str, ...]


def load_resources(confdir: Path, global_prefix: str = "") -> ResourceSet:
    """Read every `conf.d/*.toml`. A bad file is reported, never fatal to the good ones."""
    confd = confdir / "conf.d"
    if not confd.is_dir():
        raise ConfigError(str(confd), "conf.d directory does not exist")
    templates_dir = confdir / "templates"
    resources: list[Resource] = []
    errors: list[str] = []
    dests: dict[Path, str] = {}
    for path in sorted(confd.glob("*.toml")):
        try:
            with path.open("rb") as fh:
                data = tomllib.load(fh)
            res = parse_resource(path, data, templates_dir, global_prefix)
            if res.dest in dests:
                raise ConfigError(str(path), f"dest {res.dest} is also written by resource "
                                  f"{dests[res.dest]}", "template.dest")
        except tomllib.TOMLDecodeError as exc:
            errors.append(f"{path}: not valid TOML: {exc}")
        except ConfigError as exc:
            errors.append(str(exc))
        except OSError as exc:
            errors.append(f"{path}: cannot read: {exc.strerror}")
        else:
            dests[res.dest] = res.name
            resources.append(res)
    if not resources and not errors:
        errors.append(f"{confd}: no template resources (*.toml) found")
    return ResourceSet(tuple(resources), tuple(errors))
