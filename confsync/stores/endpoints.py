"""What both etcd read paths (gRPC `etcd.py`, JSON gateway `etcd_gateway.py`) agree on: which
endpoints to ask, whether to speak TLS, which TLS files to load, and what an authentication
refused because auth is off looks like.

Kept free of heavy imports: `confsync once` reaches it without gRPC, and DNS (`srv.py`) is only
imported when `srv_domain` is set.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlsplit

from confsync.errors import ConfigError, FileNotReadable
from confsync.paths import expand_user
from confsync.settings import CLEAR_CREDENTIALS, EtcdSettings

# etcd's answer to Authenticate while its auth is off (`etcdctl auth disable`). It then serves
# every client without a token, so confsync connects without one, as etcd's own Go client does:
# an operator switching auth off and on again is not an outage.
AUTH_NOT_ENABLED = "authentication is not enabled"


def auth_not_enabled(error: BaseException | str) -> bool:
    """True when etcd refused to authenticate only because its auth is switched off."""
    details = getattr(error, "details", None)
    text = details() if callable(details) else str(error)
    return AUTH_NOT_ENABLED in str(text)


def endpoint_urls(settings: EtcdSettings) -> tuple[str, ...]:
    """The configured endpoints, or those DNS SRV records name now (`srv_domain`)."""
    if not settings.srv_domain:
        return settings.endpoints
    from confsync.stores.srv import resolve_endpoints

    return resolve_endpoints(settings.srv_domain, settings.srv_nameserver, settings.timeout,
                             tls=settings.ca_cert is not None or settings.cert is not None)


def describe_endpoints(settings: EtcdSettings) -> str:
    """How errors name the endpoints: the list, or the SRV domain they came from."""
    return f"SRV {settings.srv_domain}" if settings.srv_domain else ", ".join(settings.endpoints)


def split_endpoint(url: str) -> tuple[str, int]:
    """(host, port) of an endpoint URL; a bare `host:port` is taken as http."""
    parts = urlsplit(url if "://" in url else "http://" + url)
    if not parts.hostname or parts.scheme not in ("http", "https"):
        raise ConfigError("etcd", f"expected an endpoint such as http://127.0.0.1:2379, found "
                          f"{url!r}", "endpoints")
    return parts.hostname, parts.port or 2379


def refuse_clear_credentials(settings: EtcdSettings, urls: Sequence[str]) -> None:
    """Never send the password unencrypted. Static endpoints are refused when the settings
    load; endpoints named by DNS SRV records are known only here."""
    if settings.credentials_in_clear(urls):
        raise ConfigError(f"etcd {describe_endpoints(settings)}",
                          f"user {settings.user!r} {CLEAR_CREDENTIALS}", "user")


def check_client_pair(settings: EtcdSettings) -> None:
    if (settings.cert is None) != (settings.key is None):
        raise ConfigError("etcd", "give both cert and key for client TLS, or neither", "cert")


def read_tls_file(path: Path | None, what: str) -> bytes | None:
    """A CA, certificate or key file's bytes; an unreadable one is FileNotReadable (not there
    yet, its permissions not set yet: waited for)."""
    if path is None:
        return None
    try:
        return expand_user(path).read_bytes()
    except ValueError as exc:  # a `~user` not known yet: waited for as a file not there yet
        raise FileNotReadable(str(path), f"cannot read {what}: {exc}") from None
    except OSError as exc:
        raise FileNotReadable(str(path), f"cannot read {what}: {exc.strerror}") from None
