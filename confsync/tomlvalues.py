"""Typed values from TOML files and `CONFSYNC_*` strings: one set of converters for the main
config (settings.py), the resource files (resources.py) and plugin tables.

Each converter takes the raw value and returns the typed one, or raises ValueError saying what
it expected and what it found; `convert` turns that into a ConfigError naming file and key.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import shlex
import signal
import stat
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from confsync.durations import parse_duration
from confsync.errors import ConfigError
from confsync.paths import absolute

T = TypeVar("T")

duration = parse_duration


def read_toml(path: Path) -> dict[str, Any]:
    """A whole TOML file; a ConfigError naming the file when it cannot be read or parsed."""
    try:
        return parse_toml(read_regular_file(path))
    except ValueError as exc:
        raise ConfigError(str(path), f"not valid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(str(path), f"cannot read: {exc.strerror or exc}") from None


# /dev/null (Linux's character device 1:3): `--config /dev/null` is the usual way to say "no
# configuration file", and it reads as an empty one.
_NULL_DEVICE = (1, 3)


def read_regular_file(path: Path) -> bytes:
    """The bytes of `path`, which must be a regular file (or /dev/null, read as empty): opened
    without blocking, so a FIFO or a device named like a config file (/dev/zero would never
    end) is refused instead of hanging the reader."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fd)
        device = (os.major(st.st_rdev), os.minor(st.st_rdev))
        if stat.S_ISCHR(st.st_mode) and device == _NULL_DEVICE:
            return b""
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, "not a regular file")
        return fh.read()


def parse_toml(raw: bytes) -> dict[str, Any]:
    """TOML bytes; every way they can be bad is a ValueError saying how.

    tomllib raises TOMLDecodeError (a ValueError) for syntax, but a plain ValueError for an
    integer of over 4,300 digits, and RecursionError for arrays or inline tables nested a
    thousand deep; bytes that are not UTF-8 fail before parsing.
    """
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"not UTF-8 ({exc.reason} at byte {exc.start})") from None
    try:
        return tomllib.loads(text)
    except RecursionError:
        raise ValueError("arrays or tables nested too deeply") from None


def positive_duration(value: Any) -> float:
    seconds = parse_duration(value)
    if seconds <= 0:
        raise ValueError(f"expected a duration above 0, found {value!r}")
    return seconds


def convert(source: str, key: str, converter: Callable[[Any], T], value: Any) -> T:
    """`converter(value)`, with a ValueError reported as a ConfigError for `source` and `key`."""
    try:
        return converter(value)
    except ValueError as exc:
        raise ConfigError(source, str(exc), key) from None


def string(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, found {value!r}")
    return value


def nonempty(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"expected a non-empty string, found {value!r}")
    return value


def path_text(text: str) -> str:
    """A path's text; a NUL in it is refused here (the OS would refuse every use of it, with a
    ValueError far from the setting that named it)."""
    if "\0" in text:
        raise ValueError(f"a path cannot contain a NUL character, found {text!r}")
    return text


def nonempty_path_text(value: Any) -> str:
    """A non-empty path as written (no ~ expansion, not made absolute)."""
    return path_text(nonempty(value))


def late_user_path(value: Any) -> Path:
    """A file or directory; a relative one is taken from the directory confsync started in.
    `~` and `~user/...` are expanded, but for a user this system does not know yet (one a
    package creates after confsync starts, one LDAP serves once sssd is up) the path is kept
    as written and expanded where it is used (paths.expand_user), failing that use until the
    user exists, instead of the whole configuration."""
    raw = Path(path_text(string(value)))
    try:
        return absolute(raw.expanduser())
    except RuntimeError:
        return raw


def nonempty_late_user_path(value: Any) -> Path:
    return late_user_path(nonempty(value))


def nonempty_late_user_path_as_written(value: Any) -> Path:
    """As `nonempty_late_user_path`, but a relative path stays relative: an HAProxy socket,
    compared with the `-S` argument HAProxy was started with."""
    raw = Path(path_text(nonempty(value)))
    try:
        return raw.expanduser()
    except RuntimeError:
        return raw


def string_list(value: Any) -> tuple[str, ...]:
    """A TOML list of strings, or one comma-separated string (the environment's form)."""
    if isinstance(value, str):
        items = [v.strip() for v in value.split(",")]
    elif isinstance(value, list) and all(isinstance(v, str) for v in value):
        items = [v.strip() for v in value]
    else:
        raise ValueError(f"expected a list of strings (or comma-separated), found {value!r}")
    return tuple(v for v in items if v)


def late_user_paths(value: Any) -> tuple[Path, ...]:
    """A list of `late_user_path`s (TOML list, or comma-separated)."""
    return tuple(late_user_path(p) for p in string_list(value))


# Characters a shell treats as operators when unquoted (lists, pipes, redirections, `$(`...`)`,
# subshells, background jobs, command substitution with backticks).
SHELL_OPERATOR_CHARS = "();<>|&`"


def shell_operator(command: str) -> str | None:
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


def command(value: Any, allow_empty: bool = False, refuse_shell: bool = True) -> tuple[str, ...]:
    """A command line: a string is split like a shell would (no shell ever runs), or an argv
    list. "" or [] only with `allow_empty` (meaning "none"). With
    `refuse_shell`, a string holding shell syntax (`&&`, `;`, `>` ...) is an error: it would
    reach the program as literal arguments."""
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        argv = tuple(value)
    elif isinstance(value, str):
        try:
            argv = tuple(shlex.split(value))
            operator = shell_operator(value) if refuse_shell else None
        except ValueError as exc:
            raise ValueError(f"cannot split command {value!r}: {exc}") from None
        if operator is not None:
            raise ValueError(f"{operator!r} is shell syntax, but commands run without a shell; "
                             f"write sh -c '...' to use one (or give the command as a list for "
                             f"a literal {operator!r} argument): {value!r}")
    else:
        raise ValueError(f"expected a command string or a list of strings, found {value!r}")
    if not argv and (value or not allow_empty):  # "" / [] is "none"; "  " is a mistake
        raise ValueError("expected a command, found an empty one")
    if argv and not argv[0]:
        raise ValueError(f"expected a program to run, found an empty one: {value!r}")
    if any("\0" in arg for arg in argv):  # exec() refuses it at every run, far from here
        raise ValueError(f"a command cannot contain a NUL character, found {value!r}")
    return argv


def optional_command_strict(value: Any) -> tuple[str, ...]:
    """check_cmd / reload_cmd: "" means none; shell syntax is refused."""
    return command(value, allow_empty=True)


def optional_command(value: Any) -> tuple[str, ...]:
    """The exec-mode command ("" turns exec mode off)."""
    return command(value, allow_empty=True, refuse_shell=False)


def signal_name(value: Any) -> signal.Signals:
    """"SIGHUP", "hup", "HUP" -> signal.SIGHUP."""
    name = string(value).strip().upper()
    name = name if name.startswith("SIG") else "SIG" + name
    if name not in signal.Signals.__members__:
        raise ValueError(f"expected a signal name such as \"SIGHUP\", found {value!r}")
    return signal.Signals[name]


def signals(value: Any) -> tuple[signal.Signals, ...]:
    return tuple(signal_name(v) for v in string_list(value))


def positive_int(value: Any) -> int:
    """At least 1; a string of digits is accepted (the environment's form)."""
    try:
        number = int(value)
    except (TypeError, ValueError, OverflowError):  # OverflowError: a TOML inf
        number = 0
    if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()) \
            or number < 1:
        raise ValueError(f"expected a whole number of at least 1, found {value!r}")
    return number


def non_negative_int(value: Any) -> int:
    """0 or more, a TOML integer."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"expected a whole number >= 0, found {value!r}")
    return value


def boolean(value: Any) -> bool:
    """A TOML true/false."""
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, found {value!r}")
    return value


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def flag(value: Any) -> bool:
    """true/false, or the words an environment variable says it with ("yes", "off", "1" ...)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in _TRUE + _FALSE:
        return value.lower() in _TRUE
    raise ValueError(f"expected true or false, found {value!r}")


def choice(*choices: str) -> Callable[[Any], str]:
    def convert_choice(value: Any) -> str:
        if value not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}, found {value!r}")
        return str(value)

    return convert_choice


def octal_mode(value: Any) -> int:
    """File mode: "0644", or 644 (a TOML integer is read as octal digits too, because nobody
    means decimal 644 = 0o1204)."""
    text = str(value) if isinstance(value, int | str) and not isinstance(value, bool) else None
    if text is None or not text.isdigit() or any(c in "89" for c in text) or int(text, 8) > 0o7777:
        raise ValueError(f"expected an octal mode such as \"0644\" (at most 07777), "
                         f"found {value!r}")
    return int(text, 8)


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


def listen_address(value: Any) -> str:
    """A listen address (host:port), or "" for off."""
    text = string(value).strip()
    if text:
        parse_host_port(text)
    return text
