"""Where to dial an etcd endpoint given by name: the name itself while DNS answers, its last
good addresses while DNS fails for now.

A new etcd client is a new gRPC channel, which resolves its endpoint names again. Every
reconnect after any error (a member restarted, a connection reset) does so, and while DNS is
down (SERVFAIL, or silence) each one failed although etcd was up at the address it had a
moment before: a registrar's lease lapsed and the node left every pool. So each new client
first looks its names up (bounded, `confsync/resolve.py`); a name whose lookup answers is
dialled by name (gRPC resolves it itself, and an etcd that moved is followed), one whose lookup
fails for now is dialled at every address of its last answer, in that answer's order, as gRPC
dials a name's addresses (only the first was kept: with its member down during a DNS outage,
the name's other members were never tried). TLS still verifies the host name (the channel's
target name override), so an address reused by another host is refused.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading
import time
from collections.abc import Iterable

from confsync import resolve

log = logging.getLogger(__name__)

# A new client waits this long at most (and a quarter of its call timeout at most) for its
# names' lookups when it has an address to fall back on: a reconnect is often racing a lease's
# TTL. DNS slower than that is as good as down for now; a later answer still updates the
# address, which the next client uses.
FALLBACK_WAIT = 0.5
# Answers that a name has no address: final, never replaced by an old one.
_NO_SUCH_NAME = {getattr(socket, name) for name in ("EAI_NONAME", "EAI_NODATA")
                 if hasattr(socket, name)}


def is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class LastAddresses:
    """The addresses each (host, port) last resolved to, and which names are dialled by them
    now."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._known: dict[tuple[str, int], tuple[str, ...]] = {}
        self._falling_back: set[tuple[str, int]] = set()

    def targets(self, names: Iterable[tuple[str, int]],
                timeout: float) -> dict[tuple[str, int], tuple[str, ...]]:
        """Look each name up again (in parallel, each lookup within `timeout`); return the
        addresses to dial instead (all of the last answer, in its order), for the names that
        resolved before and whose lookup fails for now or gives no answer within
        FALLBACK_WAIT. Names absent from the result are dialled by name; a name never
        resolved yet is not waited for."""
        pending = {name: _Lookup(self, name, timeout) for name in dict.fromkeys(names)
                   if not is_address(name[0])}
        with self._lock:
            known = dict(self._known)
        deadline = time.monotonic() + min(timeout / 4, FALLBACK_WAIT)
        fallback: dict[tuple[str, int], tuple[str, ...]] = {}
        for name, lookup in pending.items():
            addresses = known.get(name)
            if not addresses:  # nothing to fall back on: gRPC resolves it; the lookup
                continue  # goes on in the background and its answer is kept
            lookup.done.wait(max(0.0, deadline - time.monotonic()))
            why = lookup.failure()
            if why is None:
                self._recovered(name)
                continue
            fallback[name] = addresses
            with self._lock:
                first = name not in self._falling_back
                self._falling_back.add(name)
            log.log(logging.WARNING if first else logging.DEBUG,
                    "etcd endpoint %s:%d: DNS fails for now (%s); dialling its last %s %s "
                    "(TLS still verifies %s)", name[0], name[1], why,
                    "address" if len(addresses) == 1 else "addresses in turn",
                    ", ".join(addresses), name[0])
        return fallback

    def _recovered(self, name: tuple[str, int]) -> None:
        with self._lock:
            was = name in self._falling_back
            self._falling_back.discard(name)
        if was:
            log.info("etcd endpoint %s:%d: DNS answers again; dialling it by name", *name)

    def _learn(self, name: tuple[str, int], addresses: tuple[str, ...]) -> None:
        with self._lock:
            self._known[name] = addresses

    def _forget(self, name: tuple[str, int]) -> None:
        with self._lock:
            self._known.pop(name, None)


class _Lookup:
    """One lookup on a thread of its own: it records a late answer after its caller moved on."""

    def __init__(self, owner: LastAddresses, name: tuple[str, int], timeout: float) -> None:
        self.done = threading.Event()
        self.error: BaseException | None = None
        self._owner, self._name, self._timeout = owner, name, timeout
        threading.Thread(target=self._run, daemon=True, name="resolve-endpoint").start()

    def _run(self) -> None:
        host, port = self._name
        try:
            infos = resolve.getaddrinfo(host, port, 0, socket.SOCK_STREAM,
                                        timeout=self._timeout)
            addresses = tuple(dict.fromkeys(str(info[4][0]) for info in infos))
            if addresses:
                self._owner._learn(self._name, addresses)
        except BaseException as exc:  # reported by failure(), never lost on this thread
            self.error = exc
            if isinstance(exc, socket.gaierror) and exc.errno in _NO_SUCH_NAME:
                self._owner._forget(self._name)  # DNS says it is gone: no old address
        finally:
            self.done.set()

    def failure(self) -> str | None:
        """Why this lookup gives no address for now; None when it answered, or answered that
        the name has none (then the old address must not be used)."""
        if not self.done.is_set():
            return f"resolving {self._name[0]}: no answer from DNS yet"
        if self.error is None:
            return None
        if isinstance(self.error, socket.gaierror) and self.error.errno in _NO_SUCH_NAME:
            return None
        return str(self.error)
