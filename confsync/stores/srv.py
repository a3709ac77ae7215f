"""etcd endpoints from DNS SRV records, as etcd's own discovery and confd's `-srv-domain` do.

`_etcd-client-ssl._tcp.<domain>` gives https endpoints; without it `_etcd-client._tcp.<domain>`
gives http ones (etcd's names). Without either, confd's `_etcdv3._tcp.<domain>` (confd names
the record after its backend): https when TLS files are configured (confd's `scheme`), else
http, so a zone written for confd serves confsync as it is. The store resolves again for every
new client, so a changed record set is picked up on the next reconnect without a restart.

While DNS fails for now (SERVFAIL, silence), the records' last answer serves instead
(`LastAnswer`), so a DNS outage does not cut a running daemon off members that are up. With that
answer in hand a reconnect waits a short while only: a silent resolver cost every reconnect
its full `etcd.timeout` (a snapshot two of them) before the last answer was used, while a
lease's TTL ran. The lookup goes on in the background and its answer is kept.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import dns.exception
import dns.resolver

from confsync.errors import StoreUnavailable
from confsync.settings import parse_host_port

log = logging.getLogger(__name__)

# With a last answer to fall back on, a reconnect waits this long at most for a fresh one (and
# a quarter of its timeout at most), as for an endpoint name's addresses (`last_address`).
FALLBACK_WAIT = 0.5


class SrvLookupFailed(StoreUnavailable):
    """DNS could not be asked for now (no answer in time, SERVFAIL, no server answering): not
    an answer that the records are gone."""


# (service, scheme); None: https with TLS files, else http (confd's record carries no scheme).
SERVICES: tuple[tuple[str, str | None], ...] = (
    ("_etcd-client-ssl", "https"), ("_etcd-client", "http"), ("_etcdv3", None))


def _resolver(nameserver: str, timeout: float) -> dns.resolver.Resolver:
    """The system's resolver (resolv.conf), or only `nameserver` (host:port) when given."""
    resolver = dns.resolver.Resolver(configure=not nameserver)
    if nameserver:
        host, port = parse_host_port(nameserver)
        resolver.nameservers = [host]
        resolver.port = port
    resolver.lifetime = timeout
    return resolver


def resolve_endpoints(domain: str, nameserver: str = "", timeout: float = 5.0,
                      tls: bool = False) -> tuple[str, ...]:
    """Endpoint URLs ordered by SRV priority, then weight (highest first).

    Raises StoreUnavailable when DNS cannot be asked (SrvLookupFailed) or neither record
    exists: like an unreachable etcd, the daemon stays degraded and retries.
    """
    resolver = _resolver(nameserver, timeout)
    domain = domain.strip().rstrip(".")
    for service, scheme_of in SERVICES:
        scheme = scheme_of or ("https" if tls else "http")
        name = f"{service}._tcp.{domain}."
        try:
            answer = resolver.resolve(name, "SRV")
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            continue
        except dns.exception.DNSException as exc:
            raise SrvLookupFailed(f"DNS SRV lookup of {name} failed: {exc}") from None
        records = sorted(answer, key=lambda r: (r.priority, -r.weight))
        return tuple(f"{scheme}://{r.target.to_text(omit_final_dot=True)}:{r.port}"
                     for r in records)
    raise StoreUnavailable(f"DNS SRV: no _etcd-client-ssl._tcp, _etcd-client._tcp or (confd's) "
                           f"_etcdv3._tcp records for {domain}")


class LastAnswer:
    """The SRV records' last answer, served while DNS fails for now; never after DNS said
    they are gone (NXDOMAIN, no records), nor after another error that is no failure of the
    moment. One lookup at a time: callers while one is in flight share it."""

    def __init__(self, domain: str, lookup: Callable[[], tuple[str, ...]],
                 timeout: float) -> None:
        self._domain, self._lookup = domain, lookup
        self._wait = min(timeout / 4, FALLBACK_WAIT)
        self._lock = threading.Lock()
        self._last: tuple[str, ...] = ()
        self._failing = False  # said once: WARNING when it starts, INFO when it ends
        self._flight: _Flight | None = None

    def endpoints(self) -> tuple[str, ...]:
        """The endpoints the records name now; their last answer while the lookup fails for
        now or gives no answer within the short wait. Raises StoreUnavailable otherwise."""
        with self._lock:
            flight = self._flight
            if flight is None:
                flight = self._flight = _Flight(self)
            waits = bool(self._last)
        # Without a last answer the lookup is waited for: dnspython bounds it (its lifetime).
        flight.done.wait(self._wait if waits else None)
        with self._lock:
            last = self._last  # (read again: an answer that the records are gone clears it)
            first = not self._failing
        if flight.done.is_set():
            if flight.error is None:
                return flight.result
            if not isinstance(flight.error, SrvLookupFailed) or not last:
                raise flight.error
            why = str(flight.error)
        elif last:
            why = f"DNS SRV lookup of {self._domain}: no answer within {self._wait:.3g}s yet"
        else:  # (not reached: the wait above ended with the lookup)
            raise SrvLookupFailed(f"DNS SRV lookup of {self._domain}: no answer")
        with self._lock:
            self._failing = True
        log.log(logging.WARNING if first else logging.DEBUG, "%s; using its last answer: %s",
                why, ", ".join(last))
        return last

    def _ended(self, flight: _Flight) -> None:
        """On the lookup's thread: keep what it says about the records."""
        with self._lock:
            if self._flight is flight:
                self._flight = None
            if flight.error is None:
                recovered, self._failing = self._failing and bool(self._last), False
                self._last = flight.result
            else:
                recovered = False
                if not isinstance(flight.error, SrvLookupFailed):
                    self._last = ()  # gone, or unknown: no old answer from now on
        if recovered:
            log.info("DNS SRV records of %s answer again", self._domain)


class _Flight:
    """One lookup on a thread of its own, which records its outcome after callers moved on."""

    def __init__(self, owner: LastAnswer) -> None:
        self.done = threading.Event()
        self.result: tuple[str, ...] = ()
        self.error: BaseException | None = None
        self._owner = owner
        threading.Thread(target=self._run, daemon=True, name="resolve-srv").start()

    def _run(self) -> None:
        try:
            self.result = self._owner._lookup()
        except BaseException as exc:  # handed to the callers, never lost on this thread
            self.error = exc
        finally:
            self._owner._ended(self)
            self.done.set()
