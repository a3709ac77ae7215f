"""Command line: `confsync once | check | watch | register | convert`. Exit codes: 0 ok, 1 a
resource failed, 2 bad configuration or usage, 3 the store is unreachable, 4 (`check`) changes
are pending."""

from __future__ import annotations

import codecs
import gc
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from confsync import __version__, grpc_fork, utf8mode
from confsync.command_kinds import LONG_RUNNING_COMMANDS, ONE_SHOT_COMMANDS
from confsync.errors import (
    EXIT_BAD_CONFIG,
    EXIT_OK,
    EXIT_RESOURCE_FAILED,
    EXIT_STORE_UNAVAILABLE,
    ConfigError,
    FileNotReadable,
    Stopped,
    StoreUnavailable,
)
from confsync.fast_argv import parse_plain

if TYPE_CHECKING:
    import argparse
    from types import SimpleNamespace

    from confsync.settings import Settings

log = logging.getLogger("confsync")


def _common_options(confdir_holds: str = "conf.d/ and templates/") -> argparse.ArgumentParser:
    import argparse

    common = argparse.ArgumentParser(add_help=False)
    g = common.add_argument_group("common options")
    g.add_argument("--config", metavar="PATH",
                   help="main config file (default /etc/confsync/confsync.toml, if present)")
    g.add_argument("--confdir", metavar="DIR", help=f"directory holding {confdir_holds}")
    g.add_argument("--backend", choices=("etcd", "file", "env"))
    g.add_argument("--endpoints", metavar="URL,...", help="etcd endpoints, comma-separated")
    g.add_argument("--srv-domain", metavar="DOMAIN",
                   help="find etcd endpoints in DNS SRV records of DOMAIN (instead of --endpoints)")
    g.add_argument("--prefix", metavar="P", help="prefix prepended to every resource's keys")
    g.add_argument("--file", metavar="PATH", action="append", dest="file_paths",
                   help="data file for the file backend (YAML, JSON or TOML); repeatable")
    g.add_argument("--log-level", choices=("debug", "info", "warning", "error"))
    g.add_argument("--log-format", choices=("text", "json"))
    return common


COMMANDS = ("once", "check", "watch", "register", "convert")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The command line's parser; with `command`, only that command's options are built.

    Every command is still listed (usage, errors and `--help` stay whole), but the options of
    the four not run are left out: building them all, five copies of the common ones and
    `convert`'s import, was 3 ms of a 70 ms `once` (issue 11). A plain `once` or `check`
    command line builds none of it (fast_argv.py).
    """
    import argparse  # (not imported for a plain `once` or `check`: fast_argv.py)

    parser = argparse.ArgumentParser(
        prog="confsync", description="Keep local configuration files in step with etcd.")
    parser.add_argument("--version", action="version", version=f"confsync {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        if command in (None, name):
            _ADD_COMMAND[name](sub)
        else:
            sub.add_parser(name, help=_HELP[name])
    return parser


_HELP = {
    "once": "render every resource once; exit 0 only if all succeeded",
    "check": "render to a temporary place, check, show the diff; write and reload nothing; "
             "exit 4 when something would change",
    "watch": "run as a daemon: watch the store and keep files in step",
    "register": "register this node's instances (register.d/*.toml) in etcd on a lease, "
                "health-checked, drained on SIGTERM",
    "convert": "translate a confd confdir (Go templates, resources, confd.toml) into a confsync "
               "confdir",
}


def _add_once(sub: Any) -> None:
    sub.add_parser("once", parents=[_common_options()], help=_HELP["once"])


def _add_check(sub: Any) -> None:
    check = sub.add_parser("check", parents=[_common_options()], help=_HELP["check"])
    check.add_argument("--diff", action="store_true", default=True,
                       help="show the unified diff against each dest (the default)")
    check.add_argument("--no-diff", action="store_false", dest="diff",
                       help="only say which resources would change")
    check.add_argument("--data", metavar="FIXTURE", type=Path,
                       help="render against this YAML/JSON/TOML fixture instead of the store")


def _add_watch(sub: Any) -> None:
    watch = sub.add_parser("watch", parents=[_common_options()], help=_HELP["watch"])
    watch.add_argument("--wait-min", metavar="DURATION",
                       help="quiet period before rendering a change (e.g. 100ms)")
    watch.add_argument("--wait-max", metavar="DURATION",
                       help="longest a change waits while changes keep coming (e.g. 2s)")
    watch.add_argument("--exec", metavar="COMMAND", dest="exec_command",
                       help="run COMMAND as a supervised child after the first full render; "
                            "it gets the reload signal on change (see docs/operations.md)")
    watch.add_argument("--metrics-address", metavar="HOST:PORT",
                       help="serve /metrics, /health and /ready here (e.g. 127.0.0.1:9500)")


def _add_register(sub: Any) -> None:
    register = sub.add_parser("register", parents=[_common_options("register.d/")],
                              help=_HELP["register"])
    register.add_argument("--exec", metavar="COMMAND", dest="exec_command",
                          help="run the service as a child: registered once its checks pass, "
                               "drained before it is stopped, deregistered when it dies; "
                               "confsync exits with its status")
    register.add_argument("--metrics-address", metavar="HOST:PORT",
                          help="serve /metrics, /health and /ready here")
    register.add_argument("--hostname", metavar="NAME",
                          help="the host name recorded as the keys' owner and used in default "
                               "ids (default: CONFSYNC_REGISTER_HOSTNAME, else the system's)")


def _add_convert(sub: Any) -> None:
    from confsync.convert.cli import add_parser

    add_parser(sub, _HELP["convert"])


_ADD_COMMAND = {"once": _add_once, "check": _add_check, "watch": _add_watch,
                "register": _add_register, "convert": _add_convert}


def _cli_values(args: argparse.Namespace | SimpleNamespace) -> dict[str, Any]:
    return {
        "config": args.config,
        "confdir": args.confdir,
        "backend": args.backend,
        "etcd.endpoints": args.endpoints,
        "etcd.srv_domain": args.srv_domain,
        "prefix": args.prefix,
        "file_paths": args.file_paths,
        "log_level": args.log_level,
        "log_format": args.log_format,
        "watch.wait_min": getattr(args, "wait_min", None),
        "watch.wait_max": getattr(args, "wait_max", None),
        "exec.command": getattr(args, "exec_command", None),
        "metrics_address": getattr(args, "metrics_address", None),
    }


def main(argv: Sequence[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    # The command is the first word (top-level options are --help and --version alone).
    args: argparse.Namespace | SimpleNamespace | None = parse_plain(argv)
    if args is None:
        parsed = build_parser(argv[0] if argv and argv[0] in COMMANDS else None).parse_args(argv)
        if parsed.command == "convert":
            from confsync.convert.cli import run as run_convert

            return run_convert(parsed)
        args = parsed

    from confsync.logs import setup_logging
    from confsync.settings import load_settings, unknown_environment

    if args.command in LONG_RUNNING_COMMANDS and not _wait_for_config(args.config):
        return EXIT_OK  # (stopped while waiting)
    try:
        settings = load_settings(_cli_values(args))
    except ConfigError as exc:
        setup_logging("info", "text")
        log.error("configuration: %s", exc)
        return EXIT_BAD_CONFIG
    setup_logging(settings.log_level, settings.log_format,
                  background=args.command in LONG_RUNNING_COMMANDS)
    for name, near in unknown_environment():
        log.warning("environment: %s is not a confsync setting, ignored%s", name,
                    f" (did you mean {near}?)" if near else "")
    if args.command in LONG_RUNNING_COMMANDS:
        from confsync.fdlimit import raise_soft_limit
        from confsync.preload import preload_lazy_modules

        raised = raise_soft_limit()
        if raised is not None:
            log.info("open-file limit raised from %d to its hard limit, %d", *raised)

        try:
            preload_lazy_modules()
        except ImportError as exc:
            log.error("start-up: %s (is confsync or one of its packages being installed or "
                      "upgraded? start it again once that is done)", exc)
            return EXIT_RESOURCE_FAILED
    try:
        if args.command == "register":
            from confsync.register.run import run_register

            if settings.backend == "etcd":  # (else refused at once by run_register)
                filled = _wait_for_files(args, settings, "register.d")
                if filled is None:
                    return EXIT_OK
                settings = filled
            return run_register(settings, args.hostname)
        if args.command == "watch":
            from confsync.daemon import run_daemon
            from confsync.ops.wiring import Ops

            if _user_not_known(settings.confdir):  # no directory to lock yet: wait first
                waited = _wait_for_files(args, settings, "conf.d")
                if waited is None:
                    return EXIT_OK
                settings = waited
            refused, lock = _lock_confdir(settings.confdir, "watch")
            if refused is not None:
                return refused
            filled = _wait_for_files(args, settings, "conf.d")
            if filled is None:
                _release(lock)
                return EXIT_OK
            settings = filled
            if not _still_locked(lock, settings.confdir):  # (mounted over while waiting)
                _release(lock)
                refused, lock = _lock_confdir(settings.confdir, "watch")
                if refused is not None:
                    return refused
            try:
                ops = Ops.from_settings(settings)
            except BaseException:
                _release(lock)
                raise
            with ops:  # (run_daemon releases the lock)
                return ops.exit_code(run_daemon(settings, _cli_values(args), ops.observers,
                                                lock=lock))
        from confsync.oneshot import run_check, run_once

        if _user_not_known(settings.confdir, log_it=True):
            return EXIT_STORE_UNAVAILABLE  # (transient: tried again by a retry loop)
        if args.command == "once":
            refused, lock = _lock_confdir(settings.confdir, "once")
            if refused is not None:
                return refused
            try:
                return run_once(settings)
            finally:
                _release(lock)
        return run_check(settings, show_diff=args.diff, data=args.data, out=sys.stdout)
    except FileNotReadable as exc:  # (what `watch` waits for: transient, as etcd being away)
        log.error("store unavailable: %s", exc)
        return EXIT_STORE_UNAVAILABLE
    except ConfigError as exc:
        log.error("configuration: %s", exc)
        return EXIT_BAD_CONFIG
    except StoreUnavailable as exc:
        log.error("store unavailable: %s", exc)
        return EXIT_STORE_UNAVAILABLE
    except KeyboardInterrupt:
        if args.command in ONE_SHOT_COMMANDS:
            # Ended by SIGINT, as within a command (stop_along.py) and as a shell expects
            # (130): exit 1 said "a resource failed", and a shell loop went on to its next run.
            import signal

            raise Stopped(signal.SIGINT) from None
        return EXIT_RESOURCE_FAILED


def _lock_confdir(confdir: Path, command: str) -> tuple[int | None, int]:
    """(An exit code to end with now, or None; the descriptor holding the lock, -1 for none).

    `watch`: the confdir's exclusive lock (confdir_lock.py), waiting for `once` runs to end
    (exit 0 when stopped meanwhile). `once`: its shared lock, held until the process ends.
    Exit 2 when a `watch` holds it, saying which. A confdir that cannot be opened is not
    locked: loading it says why."""
    from confsync import confdir_lock

    def waiting(held: confdir_lock.Held) -> None:
        log.info("waiting for `confsync once` or a stopping `confsync watch` (%s) to finish "
                 "with %s before starting", held.describe(), confdir)

    try:
        if command == "watch":
            from confsync.ops import held_signals

            fd = confdir_lock.lock_daemon(confdir, waiting, held_signals.stop_held)
            if fd == -1:
                _unlocked(confdir, "the filesystem has no flock")
            return (EXIT_OK, -1) if fd is None else (None, fd)
        return None, confdir_lock.try_lock(confdir, exclusive=False)
    except confdir_lock.Held as held:
        who = held.describe()
        if command == "watch":
            log.error("confdir %s is already kept by another `confsync watch` (%s); not "
                      "starting a second one, which would write and reload the same files. "
                      "Stop that one first, or give this one its own confdir", confdir, who)
        else:
            log.error("confdir %s is kept by a running `confsync watch` (%s); `once` would "
                      "write and reload the same files beside it, so it does nothing. The "
                      "daemon keeps them in step already: send it SIGHUP (`systemctl reload "
                      "confsync`) to render everything again, run `confsync check` to see "
                      "what would change, or stop it first", confdir, who)
        return EXIT_BAD_CONFIG, -1
    except OSError as exc:
        if command == "watch" and confdir.is_dir():  # (one that is not: loading says why)
            _unlocked(confdir, exc.strerror or str(exc))
        return None, -1


def _wait_for_files(args: argparse.Namespace | SimpleNamespace, settings: Settings,
                    subdir: str) -> Settings | None:
    """Wait while the confdir or its `subdir` is empty (confdir_wait.py); None: stopped.

    After a wait the settings are read again: a confsync.toml at its default place on that
    mount was not there when they were read, and `watch` and `register` ran on the built-in
    defaults (etcd on 127.0.0.1, no prefix), not on what the file said."""
    from confsync.confdir_wait import not_there_yet, wait_until_filled
    from confsync.logs import change_logging
    from confsync.ops import held_signals
    from confsync.settings import load_settings

    while not_there_yet(settings.confdir, subdir) is not None:
        if not wait_until_filled(settings.confdir, subdir, held_signals.stop_held):
            return None
        settings = load_settings(_cli_values(args))
        change_logging(settings.log_level, settings.log_format)
    return settings


def _user_not_known(confdir: Path, log_it: bool = False) -> bool:
    """Whether `confdir` is under `~user/` of a user this system does not know yet: `watch`
    and `register` wait for it (`_wait_for_files`); `once` and `check` exit 3, as for a TLS
    file not there yet (`log_it`: say so)."""
    if not str(confdir).startswith("~"):  # expanded at load (the usual case: no import)
        return False
    from confsync.confdir_wait import user_not_known

    why = user_not_known(confdir)
    if why is not None and log_it:
        log.error("%s; `once` and `check` exit 3 until it does (`watch` and `register` wait "
                  "for it)", why)
    return why is not None


def _wait_for_config(config: str | None) -> bool:
    """Wait while the config file named is missing from an empty directory (a mount not
    made yet at boot: confdir_wait.py); False: stopped meanwhile."""
    from confsync.confdir_wait import config_not_there_yet, wait_until
    from confsync.logs import setup_logging
    from confsync.ops import held_signals
    from confsync.paths import absolute

    named = config or os.environ.get("CONFSYNC_CONFIG")
    if not named:
        return True
    path = absolute(Path(named))
    if config_not_there_yet(path) is None:
        return True
    setup_logging("info", "text")  # (the settings, with their log format, are not read yet)
    return wait_until(lambda: config_not_there_yet(path), held_signals.stop_held,
                      settle=path.parent)


def _still_locked(fd: int, confdir: Path) -> bool:
    from confsync import confdir_lock

    return fd < 0 or confdir_lock.same_directory(fd, confdir)


def _unlocked(confdir: Path, why: str) -> None:
    """A `watch` that runs without the lock says so: a confdir it can read but not open
    (mode 0711, another user's), or on NFS (flock's exclusive lock needs a file open for
    writing there: EBADF), ran silently unlocked, and a second `watch` on it ran too."""
    log.warning("confdir %s cannot be locked (%s; a network filesystem?): a second `confsync "
                "watch` on it is not refused, so make sure only one runs", confdir, why)


def _release(fd: int) -> None:
    from confsync import confdir_lock

    confdir_lock.release(fd)


def _open_standard_streams() -> None:
    """Give a closed stdin, stdout or stderr /dev/null, as daemons do (OpenSSH's
    sanitise_stdfd).

    Started with one of them closed (`confsync once >&-`, a supervisor that closes them), the
    next file opened takes that number: a staged config, a socket to etcd. Children inherit
    fds 1 and 2 (HAProxy under exec mode writes its warnings to 2), so their output went into
    whatever held the number; and Python left sys.stdout None, so `once` failed (exit 1) on
    flushing it after every resource had been written.
    """
    if sys.stdin is not None and sys.stdout is not None and sys.stderr is not None:
        return  # (the interpreter sets a stream None exactly when its fd was closed at start)
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)  # the lowest free number: fd itself
            if null != fd:
                os.dup2(null, fd)
                os.close(null)
    if sys.stdin is None:
        sys.stdin = open(0, closefd=False)  # noqa: SIM115 (the process's stream, never closed)
    if sys.stdout is None:
        sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115
    if sys.stderr is None:
        sys.stderr = open(2, "w", errors="backslashreplace", closefd=False)  # noqa: SIM115


def _stdout_never_raises() -> None:
    """A character stdout cannot encode is escaped, never an error. UTF-8 mode makes stdout
    UTF-8, but PYTHONIOENCODING (a legacy profile's `latin-1`) overrides it with strict errors:
    `confsync check` ended in a UnicodeEncodeError traceback (exit 1) at the first dest
    name or diff line it could not encode."""
    stdout = sys.stdout
    if getattr(stdout, "errors", None) == "strict" and hasattr(stdout, "reconfigure"):
        utf8 = codecs.lookup(stdout.encoding).name == "utf-8"  # (as in UTF-8 mode: raw bytes)
        stdout.reconfigure(errors="surrogateescape" if utf8 else "backslashreplace")


def _end_by(signum: int) -> NoReturn:
    """End the process as the signal's default action would have (a parent sees it killed by
    `signum`; a shell's status 128+signum), once what was under way has unwound. As PID 1 the
    kernel does not act on a signal it sent itself without a handler: exit 128+signum then."""
    import contextlib
    import signal

    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)
    os._exit(128 + signum)


def entry() -> NoReturn:
    """The process's entry point (the console script and `python -m confsync`).

    A one-shot command runs without the cyclic garbage collector (it allocates for one render
    per resource and exits) and leaves with `os._exit` once main() has returned: every file it
    writes is fsynced and renamed by then, and freeing every module and the mirror at exit is
    ~10 ms of a ~0.1 s `once` (issue 11). main() itself never exits, so it stays callable
    in-process; an exception out of it takes the normal path (traceback, exit 1).
    """
    if utf8mode.needs_reexec():  # a locale that is not UTF-8: see utf8mode
        utf8mode.reexec_in_utf8_mode()
    grpc_fork.turn_off()  # (after the re-exec, which would pass our value on; before gRPC)
    _open_standard_streams()
    _stdout_never_raises()
    argv = sys.argv[1:]
    one_shot = bool(argv) and argv[0] in ONE_SHOT_COMMANDS
    if one_shot:
        gc.disable()
    elif argv and argv[0] in LONG_RUNNING_COMMANDS:
        import faulthandler

        from confsync.ops import held_signals

        held_signals.hold(stop=True)
        # A crash in a C extension (gRPC's, see _Client in stores/etcd.py) ended `watch`
        # without a line: now every thread's stack is in the journal, with the exit status.
        faulthandler.enable()
    utf8mode.unblock_after_reexec()
    try:
        code = main(argv)
    except Stopped as stop:  # stopped while a command ran, which was stopped with us
        _end_by(stop.signum)
    if not one_shot:
        sys.exit(code)
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # closed, or a reader gone: as the interpreter's own exit,
            if stream is sys.stdout and code == 0:  # a lost stdout is exit 120
                code = 120
    os._exit(code)


__all__ = ["COMMANDS", "EXIT_OK", "LONG_RUNNING_COMMANDS", "ONE_SHOT_COMMANDS", "build_parser",
           "entry", "main"]
