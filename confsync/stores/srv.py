"""etcd endpoints from DNS SRV records, as confd's `-srv-domain` and etcd's own discovery do.

`_etcd-client-ssl._tcp.<domain>` gives https endpoints; without it `_etcd-client._tcp.<domain>`
gives http ones. The store resolves again for every new client, so a changed record set is
picked up on the next reconnect without a restart.
"""

from __future__ import annotations

import dns.exception
import dns.resolver

from confsync.errors import StoreUnavailable
from confsync.settings import parse_host_port

SERVICES = (("_etcd-client-ssl", "https"), ("_etcd-client", "http"))


def _resolver(nameserver: str, timeout: float) -> dns.resolver.Resolver:
    """The system's resolver (resolv.conf), or only `nameserver` (host:port) when given."""
    resolver = dns.resolver.Resolver(configure=not nameserver)
    if nameserver:
        host, port = parse_host_port(nameserver)
        resolver.nameservers = [host]
        resolver.port = port
    resolver.lifetime = timeout
    return resolver


def resolve_endpoints(domain: str, nameserver: str = "", timeout: float = 5.0) -> tuple[str, ...]:
    """Endpoint URLs ordered by SRV priority, then weight (highest first).

    Raises StoreUnavailable when DNS cannot be asked or neither record exists: like an
    unreachable etcd, the daemon stays degraded and retries.
    """
    resolver = _resolver(nameserver, timeout)
    domain = domain.strip().rstrip(".")
    for service, scheme in SERVICES:
        name = f"{service}._tcp.{domain}."
        try:
            answer = resolver.resolve(name, "SRV")
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            continue
        except dns.exception.DNSException as exc:
            raise StoreUnavailable(f"DNS SRV lookup of {name} failed: {exc}") from None
        records = sorted(answer, key=lambda r: (r.priority, -r.weight))
        return tuple(f"{scheme}://{r.target.to_text(omit_final_dot=True)}:{r.port}"
                     for r in records)
    raise StoreUnavailable(f"DNS SRV: no _etcd-client-ssl._tcp or _etcd-client._tcp records "
                           f"for {domain}")
