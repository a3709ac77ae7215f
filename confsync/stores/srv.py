"""etcd endpoints from DNS SRV records, as etcd's own discovery and confd's `-srv-domain` do.

`_etcd-client-ssl._tcp.<domain>` gives https endpoints; without it `_etcd-client._tcp.<domain>`
gives http ones (etcd's names). Without either, confd's `_etcdv3._tcp.<domain>` (confd names
the record after its backend): https when TLS files are configured (confd's `scheme`), else
http, so a zone written for confd serves confsync as it is. The store resolves again for every
new client, so a changed record set is picked up on the next reconnect without a restart.
"""

from __future__ import annotations

import dns.exception
import dns.resolver

from confsync.errors import StoreUnavailable
from confsync.settings import parse_host_port


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
