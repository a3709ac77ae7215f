"""Request/response over HAProxy's UNIX sockets (master CLI and admin/stats socket).

Both answer one command per connection once the client half-closes its write side, then close.
The master CLI refuses connections for about 50 ms while it re-executes during a reload, so a
refused or missing socket is retried until `retry_for` runs out.

A stopped HAProxy (SIGSTOP, a paused VM, a debugger) refuses nothing: the kernel accepts the
connection into the listen backlog and the answer never comes. `timeout` bounds each wait for
it; an idempotent command is asked again while `retry_for` lasts, then it is the same
SocketUnavailable as a socket nobody listens on (nothing was done).
"""

from __future__ import annotations

import errno
import socket
import time
from pathlib import Path

from confsync.backoff import Backoff
from confsync.paths import expand_user


class SocketUnavailable(OSError):
    """Nothing answered on the socket within the retry window (HAProxy not running?)."""


def _address(path: Path | str) -> str:
    """The socket's path as used now: a `[haproxy]` socket under `~user/` of a user not known
    yet (kept as written: haproxy/settings.py) is a socket not there yet."""
    try:
        return str(expand_user(Path(path)))
    except ValueError as exc:
        raise FileNotFoundError(errno.ENOENT, str(exc)) from None


def query(path: Path | str, command: str, timeout: float = 5.0, retry_for: float = 2.0,
          idempotent: bool = True) -> str:
    """Send one command, half-close, read the answer until EOF.

    An `idempotent` command (a `show ...`) is also retried when the connection is reset
    mid-answer, which the master CLI does when a reload starts, or when no answer came within
    `timeout` (a stopped process): in all at most `timeout` or `retry_for`, whichever is
    longer (plus the backoff). A command that is not idempotent raises TimeoutError then: it
    may have been read.
    """
    if "\n" in command or "\r" in command:
        raise ValueError(f"refusing a multi-line socket command: {command!r}")
    deadline = time.monotonic() + retry_for
    backoff = Backoff(base=0.005, cap=0.05, jitter=False)
    first = True  # the first attempt gets all of `timeout`; a retry no more than what is left
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout if first else min(timeout,
                                                  max(0.05, deadline - time.monotonic())))
        first = False
        try:
            sock.connect(_address(path))
        except (ConnectionRefusedError, FileNotFoundError) as exc:
            sock.close()
            if time.monotonic() >= deadline:
                raise SocketUnavailable(exc.errno, f"{path}: {exc.strerror}") from None
            time.sleep(backoff.next())
            continue
        except TimeoutError:  # a full backlog: a process stopped for long (nothing was sent)
            sock.close()
            if time.monotonic() >= deadline:
                raise SocketUnavailable(errno.ETIMEDOUT, f"{path}: not accepting connections "
                                        f"(process stopped?)") from None
            continue
        except BaseException:
            sock.close()
            raise
        if not idempotent:
            # Once sent it is not sent again, so its answer gets all of `timeout`, not what
            # is left of a short `retry_for` (reload_confirmed asks in 0.1 s slices): a master
            # that took the connection as it came back from someone else's reload, and
            # answered 0.1 s later, failed our reload as "no answer within 0.05s".
            sock.settimeout(timeout)
        with sock:
            try:
                sock.sendall(command.encode() + b"\n")
                sock.shutdown(socket.SHUT_WR)
                chunks = []
                while chunk := sock.recv(65536):
                    chunks.append(chunk)
            except TimeoutError:
                if not idempotent:
                    raise TimeoutError(f"{path}: no answer to `{command.split()[0]}` within "
                                       f"{sock.gettimeout():g}s") from None
                if time.monotonic() >= deadline:
                    raise SocketUnavailable(errno.ETIMEDOUT, f"{path}: no answer (process "
                                            "stopped?)") from None
                continue  # the wait was the pause; a stopped process queues the next one
            except (ConnectionResetError, BrokenPipeError) as exc:
                if not idempotent:
                    raise
                if time.monotonic() >= deadline:  # dropped each time: no answer either
                    raise SocketUnavailable(exc.errno, f"{path}: {exc.strerror}") from None
                time.sleep(backoff.next())
                continue
            return b"".join(chunks).decode("utf-8", "replace")
