"""The etcd v3 backend. The only module that imports the etcd client (`pyetcd`).

Facts this code is built on (see the README's design notes): the client never resumes a broken
watch by itself, a failed endpoint is refused for `time_retry` seconds, half-open connections are
only noticed with HTTP/2 pings, and all watches of one client share one stream and one callback
thread. So: a new client per watch session, keepalive options always on, and the callback only
converts and hands over.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

import grpc
import pyetcd
import pyetcd.exceptions
from pyetcd.client import Endpoint, MultiEndpointEtcd3Client

from confsync.errors import ConfigError, RevisionCompacted, StoreUnavailable
from confsync.settings import EtcdSettings, read_password
from confsync.stores import Change, ChangeBatch, Snapshot, WatchHandle, WatchSink

log = logging.getLogger(__name__)

# Keepalive pings detect a frozen server or a dead peer in about 15 s. Not below 5 s: etcd's
# default --grpc-keepalive-min-time is 5 s and it closes clients that ping more often.
GRPC_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.http2.ping_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.max_receive_message_length", 512 * 1024 * 1024),
]
# After an error an endpoint is skipped this long; the client's default is 300 s.
ENDPOINT_RETRY_SECONDS = 1.0


def _range_end(prefix: bytes) -> bytes:
    return bytes(pyetcd.utils.prefix_range_end(prefix))


def _describe(exc: BaseException) -> str:
    if isinstance(exc, grpc.RpcError):
        code = exc.code() if hasattr(exc, "code") else None
        details = exc.details() if hasattr(exc, "details") else ""
        return f"{getattr(code, 'name', code)}: {details}"
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _token_expired(exc: BaseException) -> bool:
    """UNAUTHENTICATED ("invalid auth token"): the token timed out (--auth-token-ttl) or etcd
    restarted and forgot it. A fresh client authenticates again."""
    code = exc.code() if isinstance(exc, grpc.RpcError) and hasattr(exc, "code") else None
    return code == grpc.StatusCode.UNAUTHENTICATED or "invalid auth token" in str(exc)


class EtcdStore:
    name = "etcd"

    def __init__(self, settings: EtcdSettings) -> None:
        self._settings = settings
        self._lock = threading.Lock()
        self._client: MultiEndpointEtcd3Client | None = None
        self._credentials = self._build_credentials()
        self._rotation = 0  # each new client starts at the next endpoint

    # ---- clients

    def _build_credentials(self) -> grpc.ChannelCredentials | None:
        s = self._settings
        secure = s.ca_cert is not None or any(
            urlsplit(e).scheme == "https" for e in s.endpoints)
        if not secure:
            return None
        if (s.cert is None) != (s.key is None):
            raise ConfigError("etcd", "give both cert and key for client TLS, or neither", "cert")

        def read(path: Any, what: str) -> bytes | None:
            if path is None:
                return None
            try:
                return bytes(path.read_bytes())
            except OSError as exc:
                raise ConfigError(str(path), f"cannot read {what}: {exc.strerror}") from None

        return grpc.ssl_channel_credentials(
            root_certificates=read(s.ca_cert, "CA certificate"),
            private_key=read(s.key, "client key"),
            certificate_chain=read(s.cert, "client certificate"),
        )

    def _endpoints(self) -> list[Endpoint]:
        endpoints = []
        for url in self._settings.endpoints:
            parts = urlsplit(url if "://" in url else "http://" + url)
            if not parts.hostname or parts.scheme not in ("http", "https"):
                raise ConfigError("etcd", f"expected an endpoint such as "
                                  f"http://127.0.0.1:2379, found {url!r}", "endpoints")
            endpoints.append(Endpoint(
                parts.hostname, parts.port or 2379, secure=self._credentials is not None,
                creds=self._credentials, time_retry=ENDPOINT_RETRY_SECONDS, opts=GRPC_OPTIONS))
        return endpoints

    def new_client(self) -> MultiEndpointEtcd3Client:
        """A fresh client (and so a fresh auth token and fresh endpoint state).

        Clients are made after failures, so each starts at the next endpoint in the list: a
        reconnect after a member died moves on instead of picking the dead one at random.
        """
        password = read_password(self._settings)
        endpoints = self._endpoints()
        first = endpoints[self._rotation % len(endpoints)]
        self._rotation += 1
        ordered = [first] + [e for e in endpoints if e is not first]
        try:
            client = MultiEndpointEtcd3Client(
                endpoints=ordered, timeout=self._settings.timeout,
                user=self._settings.user if password is not None else None,
                password=password, failover=True)
        except (grpc.RpcError, pyetcd.exceptions.Etcd3Exception, ValueError) as exc:
            raise StoreUnavailable(f"etcd {', '.join(self._settings.endpoints)}: "
                                   f"cannot connect: {_describe(exc)}") from None
        client._current_endpoint_label = first.netloc  # the client picks at random otherwise
        return client

    def _shared_client(self) -> MultiEndpointEtcd3Client:
        with self._lock:
            if self._client is None:
                self._client = self.new_client()
            return self._client

    def _drop_client(self) -> None:
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()

    # ---- snapshot

    def snapshot(self, prefixes: Sequence[str]) -> Snapshot:
        """All prefixes at one revision: the first read fixes it, the rest are read at it.

        Each endpoint is tried in turn (each new client starts at the next one), so one dead
        member does not fail `once`. The client never refreshes its auth token, so once the
        token's TTL has passed every call fails UNAUTHENTICATED: then authenticate again with
        a new client, once.
        """
        endpoints = len(self._settings.endpoints)
        reauthenticated = False
        failures: list[str] = []
        while len(failures) < max(1, endpoints):
            try:
                return self._read(self._shared_client(), prefixes)
            except Exception as exc:  # the client raises grpc, pyetcd and ValueError alike
                self._drop_client()
                if isinstance(exc, ConfigError):
                    raise
                if not reauthenticated and _token_expired(exc):
                    reauthenticated = True
                    log.info("etcd auth token expired or revoked; authenticating again")
                    continue
                failures.append(str(exc) if isinstance(exc, StoreUnavailable)
                                else _describe(exc))
                if len(failures) < endpoints:
                    log.warning("etcd read failed (%s); trying the next endpoint", failures[-1])
        raise StoreUnavailable(f"etcd {', '.join(self._settings.endpoints)}: "
                               f"read failed: {'; '.join(dict.fromkeys(failures))}")

    def _read(self, client: MultiEndpointEtcd3Client, prefixes: Sequence[str]) -> Snapshot:
        values: dict[str, bytes] = {}
        revision = 0
        for prefix in prefixes:
            key = prefix.encode()
            kwargs: dict[str, Any] = {"revision": revision} if revision else {}
            response = client.get_range_response(key, _range_end(key), **kwargs)
            if not revision:
                revision = int(response.header.revision)
            for kv in response.kvs:
                values[kv.key.decode("utf-8", "surrogateescape")] = bytes(kv.value)
        if not prefixes:
            revision = self._current_revision(client)
        return Snapshot(revision, values)

    def _current_revision(self, client: MultiEndpointEtcd3Client) -> int:
        response = client.get_response(b"\0")
        return int(response.header.revision)

    # ---- watch

    def watch(self, prefixes: Sequence[str], start_revision: int, sink: WatchSink) -> WatchHandle:
        """One client, one gRPC stream, one watch per (merged) prefix.

        Raises StoreUnavailable or RevisionCompacted when the watch cannot be created.
        """
        return _EtcdWatch(self, prefixes, start_revision, sink)

    def close(self) -> None:
        self._drop_client()


class _EtcdWatch:
    """A watch session. After its first error it reports once and goes quiet for good."""

    def __init__(self, store: EtcdStore, prefixes: Sequence[str], start_revision: int,
                 sink: WatchSink) -> None:
        self._sink = sink
        self._lock = threading.Lock()
        self._dead = False
        self._client = store.new_client()
        self._endpoints = ", ".join(store._settings.endpoints)
        try:
            for prefix in prefixes:
                key = prefix.encode()
                self._client.add_watch_callback(
                    key, functools.partial(self._on_response, prefix), range_end=_range_end(key),
                    start_revision=start_revision, progress_notify=True)
        except pyetcd.exceptions.RevisionCompactedError as exc:
            self.cancel()
            raise RevisionCompacted(int(exc.compacted_revision)) from None
        except Exception as exc:
            self.cancel()
            raise StoreUnavailable(f"etcd {self._endpoints}: watch failed: "
                                   f"{_describe(exc)}") from None

    def _report(self, item: ChangeBatch | Exception) -> None:
        with self._lock:
            if self._dead:
                return
            if isinstance(item, Exception):
                self._dead = True
        self._sink(item)

    def _on_response(self, prefix: str, response: Any) -> None:
        # Runs on the client's callback thread: convert and hand over, nothing more.
        if isinstance(response, pyetcd.exceptions.RevisionCompactedError):
            self._report(RevisionCompacted(int(response.compacted_revision)))
        elif response is None or isinstance(response, BaseException):
            why = _describe(response) if response is not None else "stream ended"
            self._report(StoreUnavailable(f"etcd {self._endpoints}: watch lost: {why}"))
        else:
            changes = tuple(
                Change(ev.key.decode("utf-8", "surrogateescape"),
                       None if isinstance(ev, pyetcd.events.DeleteEvent) else bytes(ev.value))
                for ev in response.events)
            revision = max((int(ev.mod_revision) for ev in response.events),
                           default=int(response.header.revision))
            self._report(ChangeBatch(revision, changes, prefix))

    def cancel(self) -> None:
        with self._lock:
            self._dead = True
        try:
            self._client.close()
        except Exception as exc:  # closing a broken channel must not stop a resume
            log.debug("closing etcd watch client: %s", _describe(exc))
