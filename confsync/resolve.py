"""Name resolution with a deadline.

`socket.getaddrinfo` has no timeout of its own: with a DNS server that never answers, glibc
waits `timeout` x `attempts` per server of resolv.conf (up to 30 s x 5 each), whatever timeout
the caller meant to keep, and a render's deadline (an asynchronous exception) cannot stop a
thread inside a C call. So lookups run on daemon threads and the caller waits, in short slices
on a lock of its own (never inside a Condition, whose state an asynchronous exception could
leave broken), until its deadline. Callers of one name share its lookups: a new one starts
only when none in flight started within the last FRESH seconds (DNS that answers again answers
a new query at once, while an old one waits out its retries), and never more than
MAX_IN_FLIGHT per name, so asking again and again while DNS hangs cannot pile up threads.
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

AddrInfo = list[tuple[Any, ...]]

MAX_IN_FLIGHT = 16  # stuck lookups per name at most
FRESH = 1.0  # seconds a lookup in flight is joined rather than asked again
SLICE = 0.1  # a waiter wakes this often: a render's timeout exception lands meanwhile


class LookupTimeout(socket.gaierror):
    """DNS gave no answer within the deadline: a failure for now (as EAI_AGAIN), not an
    answer that the name does not exist."""

    def __init__(self, host: str, seconds: float) -> None:
        super().__init__(socket.EAI_AGAIN, f"resolving {host}: no answer from DNS within "
                                           f"{seconds:.3g}s")

    def __str__(self) -> str:
        return str(self.strerror)  # (not "[Errno -3] ...": it says what happened)


class _Name:
    """The lookups of one (host, port, family, type, proto): the start times of those in
    flight, and the outcome of the last one that ended."""

    def __init__(self) -> None:
        self.started: list[float] = []
        self.waiters: list[threading.Lock] = []  # held until an answer releases them
        self.answers = 0
        self.result: AddrInfo | None = None
        self.error: BaseException | None = None


_lock = threading.Lock()
_names: dict[tuple[Any, ...], _Name] = {}


def _run(key: tuple[Any, ...], name: _Name, started: float) -> None:
    result: AddrInfo | None = None
    error: BaseException | None = None
    try:
        result = socket.getaddrinfo(*key)
    except BaseException as exc:  # handed to the waiters, never lost on this thread
        error = exc
    with _lock:
        name.started.remove(started)
        name.answers += 1
        name.result, name.error = result, error
        for waiter in name.waiters:
            if waiter.locked():
                waiter.release()
        if not name.started and not name.waiters:
            _names.pop(key, None)


def getaddrinfo(host: Any, port: Any, family: int = 0, type: int = 0,
                proto: int = 0, timeout: float = 5.0) -> AddrInfo:
    """socket.getaddrinfo(host, port, family, type, proto), given up after `timeout` seconds
    with LookupTimeout (a socket.gaierror, EAI_AGAIN)."""
    try:  # an address, not a name: no DNS, and no thread (`once` reads 127.0.0.1 often)
        return socket.getaddrinfo(host, port, family, type, proto, socket.AI_NUMERICHOST)
    except socket.gaierror:
        pass
    key = (host, port, family, type, proto)
    now = time.monotonic()
    deadline = now + timeout
    waiter = threading.Lock()
    waiter.acquire()
    with _lock:
        name = _names.setdefault(key, _Name())
        if len(name.started) < MAX_IN_FLIGHT and all(now - t >= FRESH for t in name.started):
            name.started.append(now)
            threading.Thread(target=_run, args=(key, name, now), daemon=True,
                             name="resolve").start()
        seen = name.answers
        name.waiters.append(waiter)
    try:
        while name.answers == seen:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                label = host.decode(errors="replace") if isinstance(host, bytes) else host
                raise LookupTimeout(str(label), timeout)
            waiter.acquire(timeout=min(remaining, SLICE))
        with _lock:
            result, error = name.result, name.error
    finally:
        with _lock:
            name.waiters.remove(waiter)
            if not name.started and not name.waiters:
                _names.pop(key, None)
    if error is not None:
        raise error
    assert result is not None
    return result


def create_connection(address: tuple[Any, int], timeout: float) -> socket.socket:
    """socket.create_connection with `timeout` bounding the name's lookup too: the lookup
    takes what it needs of it, and the connects the rest. The socket keeps `timeout`."""
    deadline = time.monotonic() + timeout
    host, port = address
    infos = getaddrinfo(host, port, 0, socket.SOCK_STREAM, timeout=timeout)
    error: OSError | None = None
    for family, kind, proto, _, sockaddr in infos:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"connect {host!r}:{port}: timed out") from error
        sock = socket.socket(family, kind, proto)
        try:
            sock.settimeout(remaining)
            sock.connect(sockaddr)
            sock.settimeout(timeout)  # each later read gets it all, as with the socket module's
            return sock
        except OSError as exc:
            sock.close()
            error = exc
    raise error if error is not None else OSError(f"getaddrinfo returned nothing for {host!r}")
