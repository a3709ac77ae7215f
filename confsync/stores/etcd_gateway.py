"""A light read path for `confsync once` and `confsync check`: etcd's own JSON gateway.

Why: a one-shot run spends more time importing gRPC, protobuf and the etcd client (80-110 ms)
than reading 5,000 keys. etcd serves the same API as JSON over HTTP/1.1 on its client URL
(grpc-gateway, on by default in etcd 3.5), which the standard library speaks.

What it keeps from the gRPC store (`etcd.py`):
- **One revision for all prefixes**: one `POST /v3/kv/range` per merged prefix, the first
  fixing the revision the others are read at. Not one read-only txn, which would be one round
  trip: etcd before 3.5.5 panics (the member exits) when a read-only txn's client goes away
  while it runs (etcd-io/etcd#14110), and a `once` killed or timing out mid-read crashed it.
- **Never stale**: the ranges are linearizable (the gateway's default, `serializable` unset),
  and every request carries `Grpc-Metadata-Hasleader: true`, which the gateway passes on as
  gRPC metadata `hasleader=true`: a member cut off from its quorum answers "no leader" at once
  and the next endpoint is asked.
- **The same settings and errors**: TLS (CA, client cert and key), user + password_file
  (`POST /v3/auth/authenticate`, the token in `Authorization`), `etcd.timeout` per endpoint,
  endpoints tried in turn (or from DNS SRV), StoreUnavailable (exit 3) naming each endpoint
  and why, ConfigError (exit 2) for unusable TLS files.
- **Reads while etcd's NOSPACE alarm is raised.** A full backend quota makes etcd (3.5) refuse
  every txn, a read-only one too, while it still serves ranges (a txn read made `once` exit 3,
  "store unavailable", with etcd serving).
- **Cluster identity**: the snapshot carries the header's cluster id. A one-shot run has no
  earlier history to compare it with, so the store-reset check of the watch does not apply.

When no endpoint serves through the gateway, it reads through the gRPC store instead, asking
only the endpoints that answered: an endpoint that timed out is not waited for twice. Gateways
that do not serve: none at all (HTTP 404 from an `etcd grpc-proxy`, a non-HTTP or non-JSON
answer); etcd refusing a client certificate with a CommonName when client-cert-auth and auth
are both on (HTTP 400: the gateway cannot pass the certificate's identity on); a gateway whose
own gRPC connection to etcd fails (its server certificate lacks the clientAuth usage).
"""

from __future__ import annotations

import binascii
import json
import logging
import socket
import time
from collections.abc import Mapping, Sequence
from io import BufferedReader
from typing import TYPE_CHECKING, Any

from confsync.errors import ConfigError, StoreUnavailable
from confsync.paths import expand_user
from confsync.resolve import create_connection
from confsync.settings import EtcdSettings, read_password
from confsync.stores.base import Snapshot
from confsync.stores.endpoints import (
    auth_not_enabled,
    check_client_pair,
    describe_endpoints,
    endpoint_urls,
    read_tls_file,
    refuse_clear_credentials,
    split_endpoint,
)

if TYPE_CHECKING:
    import ssl

    from confsync.stores.base import WatchHandle, WatchSink

log = logging.getLogger(__name__)

# grpc-gateway passes `Grpc-Metadata-<name>` headers on as gRPC metadata: etcd's require-leader.
REQUIRE_LEADER_HEADER = ("Grpc-Metadata-Hasleader", "true")
# HTTP statuses that mean "no gateway here" (grpc-proxy answers 404 to every /v3 path).
NO_GATEWAY_STATUSES = frozenset({404, 405, 501})
# How etcd's own errors start; any other error is the gateway's (see _answer).
ETCD_ERRORS = ("etcdserver:", "auth:", "mvcc:")
# gRPC status UNAUTHENTICATED: the token is unknown (expired, or the member restarted).
UNAUTHENTICATED = 16


# The revision hint's bound: it is worth a few milliseconds of set-up, never a wait.
REVISION_HINT_TIMEOUT = 0.5


class _NoGateway(Exception):
    """The endpoint answered, but its JSON gateway is missing or refused: gRPC may still work
    there."""


class _EndpointFailed(Exception):
    """The endpoint could not be asked, or etcd answered with an error."""


class _InvalidToken(_EndpointFailed):
    pass


def _range_end(prefix: bytes) -> bytes:
    """The end of `prefix`'s range: its last byte below 0xff incremented, the rest dropped.
    b"\\0" (every key after `prefix`) when there is no such byte."""
    for i in reversed(range(len(prefix))):
        if prefix[i] < 0xFF:
            return prefix[:i] + bytes([prefix[i] + 1])
    return b"\0"


def _b64(data: bytes) -> str:
    # (base64.b64encode's own call: the `base64` module, and the `struct` it imports, are not
    # loaded for it)
    return binascii.b2a_base64(data, newline=False).decode("ascii")


def range_ops(prefixes: Sequence[str], revision: int = 0) -> list[dict[str, Any]]:
    """Txn ops: one linearizable RangeRequest per prefix, at `revision` when given."""
    ops = []
    for prefix in prefixes:
        key = prefix.encode("utf-8", "surrogateescape")
        request: dict[str, Any] = {"key": _b64(key), "range_end": _b64(_range_end(key))}
        if revision:
            request["revision"] = str(revision)
        ops.append({"request_range": request})
    return ops


def _error_text(status: int, body: bytes) -> tuple[int | None, str]:
    """(gRPC code, message) of a gateway error body, or (None, the start of the text)."""
    try:
        answer = json.loads(body)
        return int(answer.get("code", 0)), str(answer.get("message") or answer.get("error"))
    except (ValueError, AttributeError, TypeError):
        text = body[:200].decode("utf-8", "replace").strip()
        return None, f"HTTP {status}" + (f": {text}" if text else "")


class _NotHTTP(Exception):
    """The answer is not HTTP/1.x as this client reads it."""


class _Connection:
    """One endpoint, one keep-alive HTTP/1.1 connection, one deadline for all its requests.

    A few lines of HTTP/1.1 instead of `http.client`, whose import (with `email` and `ssl`)
    costs a one-shot run 13 ms: POST with a Content-Length, and answers with a Content-Length,
    chunked, or up to the close. `ssl` is imported only for TLS endpoints.
    """

    def __init__(self, url: str, context: ssl.SSLContext | None, timeout: float) -> None:
        self.host, self.port = split_endpoint(url)
        self.url = url
        self.context = context
        self.timeout = timeout
        self.deadline = time.monotonic() + timeout
        self.headers = {"Content-Type": "application/json", REQUIRE_LEADER_HEADER[0]:
                        REQUIRE_LEADER_HEADER[1]}
        self.sock: socket.socket | None = None
        self.reader: BufferedReader | None = None

    def _connect(self, remaining: float) -> tuple[socket.socket, BufferedReader]:
        # An ASCII host as bytes (getaddrinfo takes both): it then skips the idna codec,
        # whose import (stringprep, unicodedata) costs ~5 ms of a one-shot run.
        # The lookup is bounded too: getaddrinfo has no timeout of its own, and a DNS server
        # that never answers held `once` for minutes past `etcd.timeout`.
        host: Any = self.host.encode() if self.host.isascii() else self.host
        sock = create_connection((host, self.port), timeout=remaining)
        try:
            if self.context is not None:
                sock = self.context.wrap_socket(sock, server_hostname=self.host)
        except BaseException:
            sock.close()
            raise
        self.sock, self.reader = sock, sock.makefile("rb")
        return self.sock, self.reader

    def post(self, path: str, request: dict[str, Any]) -> dict[str, Any]:
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise _EndpointFailed(f"no answer within {self.timeout:g}s")
        body = json.dumps(request).encode()
        host = f"[{self.host}]" if ":" in self.host else self.host
        head = (f"POST {path} HTTP/1.1\r\nHost: {host}:{self.port}\r\n"
                f"Content-Length: {len(body)}\r\n"
                + "".join(f"{name}: {value}\r\n" for name, value in self.headers.items())
                + "\r\n")
        try:
            if self.sock is None or self.reader is None:
                sock, reader = self._connect(remaining)
            else:
                sock, reader = self.sock, self.reader
                sock.settimeout(remaining)
            sock.sendall(head.encode("latin-1") + body)
            status, headers = _read_head(reader)
            data = _read_body(reader, headers)
        except TimeoutError:
            raise _EndpointFailed(f"no answer within {self.timeout:g}s") from None
        except _NotHTTP as exc:
            # A gRPC-only server drops an HTTP/1.1 request (or answers with HTTP/2 frames).
            raise _NoGateway(str(exc)) from None
        except OSError as exc:  # refused, unreachable, TLS handshake or certificate failure
            raise _EndpointFailed(exc.strerror or str(exc) or type(exc).__name__) from None
        if headers.get("connection", "").lower() == "close":
            self.close()
        return _answer(path, status, data)

    def close(self) -> None:
        if self.reader is not None:
            self.reader.close()
        if self.sock is not None:
            self.sock.close()
        self.sock = self.reader = None


MAX_HEADER_LINE = 65536
MAX_HEADERS = 100


def _read_head(reader: BufferedReader) -> tuple[int, dict[str, str]]:
    """The status code and the headers (names lower-cased) of an HTTP/1.x answer."""
    line = reader.readline(MAX_HEADER_LINE + 1)
    if not line:
        raise _NotHTTP("closed the connection without an HTTP answer")
    parts = line.split(None, 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
        raise _NotHTTP(f"not an HTTP/1.1 answer: {line[:40]!r}")
    headers: dict[str, str] = {}
    for _ in range(MAX_HEADERS + 1):
        line = reader.readline(MAX_HEADER_LINE + 1)
        if line in (b"\r\n", b"\n", b""):
            return int(parts[1]), headers
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    raise _NotHTTP(f"more than {MAX_HEADERS} header lines")


def _read_exactly(reader: BufferedReader, size: int) -> bytes:
    data = reader.read(size)
    if len(data) != size:
        raise _NotHTTP(f"answer cut short ({len(data)} of {size} bytes)")
    return data


def _read_body(reader: BufferedReader, headers: dict[str, str]) -> bytes:
    if "chunked" in headers.get("transfer-encoding", "").lower():
        chunks: list[bytes] = []
        while True:
            line = reader.readline(MAX_HEADER_LINE + 1)
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise _NotHTTP(f"bad chunk size line {line[:40]!r}") from None
            if size == 0:
                while reader.readline(MAX_HEADER_LINE + 1) not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return b"".join(chunks)
            chunks.append(_read_exactly(reader, size))
            if reader.readline(3) not in (b"\r\n", b"\n"):
                raise _NotHTTP("a chunk not followed by its line end")
    length = headers.get("content-length")
    if length is not None:
        if not length.isdigit():
            raise _NotHTTP(f"bad Content-Length {length[:40]!r}")
        return _read_exactly(reader, int(length))
    return reader.read()  # up to the close


def _answer(path: str, status: int, body: bytes) -> dict[str, Any]:
    """The JSON of a 200, or the exception that says what the status and body mean."""
    if status in NO_GATEWAY_STATUSES:
        raise _NoGateway(f"{path} answered HTTP {status}")
    if status != 200:
        code, message = _error_text(status, body)
        if code == UNAUTHENTICATED:
            raise _InvalidToken(message)
        if message.startswith(ETCD_ERRORS):
            raise _EndpointFailed(message)  # etcd's own answer: gRPC would get the same
        # The gateway itself refused or failed: a client certificate with a CommonName under
        # client-cert-auth + auth (HTTP 400), or its own gRPC dial to etcd failed (a server
        # certificate without clientAuth). gRPC may still work there.
        raise _NoGateway(f"{path} answered {message}")
    try:
        answer = json.loads(body)
    except ValueError:
        raise _NoGateway(f"{path} answered HTTP 200 without JSON") from None
    if not isinstance(answer, dict) or not isinstance(answer.get("header"), dict):
        raise _NoGateway(f"{path} answered JSON that is not an etcd response")
    return answer


def _take_kvs(range_response: dict[str, Any], values: dict[str, bytes]) -> None:
    """Decode a RangeResponse's key-values into `values`."""
    b64decode = binascii.a2b_base64  # base64.b64decode's checks cost 2x for 10,000
    for kv in range_response.get("kvs", ()):
        key = b64decode(kv["key"]).decode("utf-8", "surrogateescape")
        values[key] = b64decode(kv.get("value", ""))


class EtcdGatewayStore:
    """Snapshots through the JSON gateway; `watch` is the gRPC store's (a stream needs it)."""

    name = "etcd"

    def __init__(self, settings: EtcdSettings) -> None:
        self._settings = settings
        self._contexts: dict[bool, ssl.SSLContext | None] = {}
        if not settings.srv_domain:
            self._tls_context(settings.endpoints)  # bad TLS settings fail at start

    def _tls_context(self, urls: Sequence[str]) -> ssl.SSLContext | None:
        """Built once per store: a store reads one snapshot, so the files are read once."""
        secure = self._settings.uses_tls(urls)
        if secure not in self._contexts:
            self._contexts[secure] = self._build_context() if secure else None
        return self._contexts[secure]

    def _build_context(self) -> ssl.SSLContext:
        import ssl

        s = self._settings
        check_client_pair(s)
        ca = read_tls_file(s.ca_cert, "CA certificate")
        try:
            context = ssl.create_default_context(cadata=ca.decode("ascii", "replace")
                                                 if ca is not None else None)
        except ssl.SSLError as exc:
            raise ConfigError(str(s.ca_cert), f"not a usable CA certificate: {exc}") from None
        if s.cert is not None and s.key is not None:
            read_tls_file(s.cert, "client certificate")  # the same error as gRPC's when unreadable
            read_tls_file(s.key, "client key")
            try:
                context.load_cert_chain(expand_user(s.cert), expand_user(s.key))
            except (ssl.SSLError, OSError) as exc:
                raise ConfigError(str(s.cert), f"client certificate and key {s.key} are not "
                                  f"a usable pair: {exc}") from None
        return context

    def snapshot(self, prefixes: Sequence[str]) -> Snapshot:
        """Every key under `prefixes` at one revision, from the first endpoint that serves.

        Raises StoreUnavailable when no endpoint served (each is given `etcd.timeout`), after
        trying gRPC on those that answered without a gateway.
        """
        urls = endpoint_urls(self._settings)
        context = self._tls_context(urls)
        refuse_clear_credentials(self._settings, urls)
        password = read_password(self._settings)
        failures: list[str] = []
        gatewayless: list[str] = []
        for index, url in enumerate(urls):
            try:
                return self._read(url, context, prefixes, password)
            except _NoGateway as exc:
                log.debug("etcd %s: JSON gateway not usable (%s)", url, exc)
                gatewayless.append(url)
            except _EndpointFailed as exc:
                failures.append(f"{url}: {exc}")
                if index + 1 < len(urls):
                    log.warning("etcd read failed (%s); trying the next endpoint", failures[-1])
        if gatewayless:
            return self._grpc_snapshot(gatewayless, prefixes, failures)
        raise StoreUnavailable(f"etcd {describe_endpoints(self._settings)}: read failed: "
                               f"{'; '.join(failures)}")

    def revision_hint(self) -> int | None:
        """etcd's revision now, as the first endpoint's member knows it: one serializable
        count of one key on a connection of its own, while `snapshot` reads on another.
        A guess for `once` (whether the data moved since the render its memo kept: oneshot.py),
        never what is read or rendered. None where it is not cheap (SRV endpoints, a user: a
        token is one more round trip) or on any failure."""
        settings = self._settings
        if settings.srv_domain or settings.user or not settings.endpoints:
            return None
        url = settings.endpoints[0]
        connection = _Connection(url, self._tls_context([url]),
                                 min(settings.timeout, REVISION_HINT_TIMEOUT))
        try:
            answer = connection.post("/v3/kv/range", {"key": _b64(b"\0"), "count_only": True,
                                                      "serializable": True})
            return int(answer["header"].get("revision", 0)) or None
        except Exception:  # (a guess: whatever went wrong, the snapshot's read says it)
            return None
        finally:
            connection.close()

    def _read(self, url: str, context: ssl.SSLContext | None, prefixes: Sequence[str],
              password: str | None) -> Snapshot:
        user = self._settings.user if password is not None else None
        connection = _Connection(url, context, self._settings.timeout)
        try:
            if user is not None:
                self._authenticate(connection, user, password or "")
            try:
                return self._ranges(connection, prefixes)
            except _InvalidToken:
                if user is None:
                    raise
                log.info("etcd auth token expired or revoked; authenticating again")
                self._authenticate(connection, user, password or "")
                return self._ranges(connection, prefixes)
        finally:
            connection.close()

    @staticmethod
    def _authenticate(connection: _Connection, user: str, password: str) -> None:
        """Get a token; it goes with every later request on this connection (none while
        etcd's auth is switched off)."""
        connection.headers.pop("Authorization", None)  # not the stale one
        try:
            answer = connection.post("/v3/auth/authenticate",
                                     {"name": user, "password": password})
        except _InvalidToken as exc:  # never retried: the password itself is refused
            raise _EndpointFailed(str(exc)) from None
        except _EndpointFailed as exc:
            if not auth_not_enabled(str(exc)):
                raise
            log.debug("etcd auth is disabled; reading without a token")
            return
        token = answer.get("token")
        if not isinstance(token, str) or not token:
            raise _EndpointFailed("authentication answered without a token")
        connection.headers["Authorization"] = token

    @staticmethod
    def _ranges(connection: _Connection, prefixes: Sequence[str]) -> Snapshot:
        """One range per prefix, the first fixing the revision that the others are read at
        (one revision for all, as one txn would give). Never a read-only txn: etcd before
        3.5.5 panics, and the member exits, when such a txn's client goes away while it runs
        (etcd-io/etcd#14110): a `once` killed or timing out mid-read of 5,000 keys crashed
        it. Ranges are also served while the NOSPACE alarm refuses every txn."""
        values: dict[str, bytes] = {}
        revision = cluster_id = 0
        # No prefix: one key's range, for the revision and the cluster id alone.
        for op in range_ops(prefixes) if prefixes else [{"request_range": {"key": _b64(b"\0")}}]:
            request = dict(op["request_range"])
            if revision:
                request["revision"] = str(revision)
            answer = connection.post("/v3/kv/range", request)
            if not revision:
                header = answer["header"]
                revision = int(header.get("revision", 0))
                cluster_id = int(header.get("cluster_id", 0))
            _take_kvs(answer, values)
        return Snapshot(revision, values, cluster_id)

    def _grpc_snapshot(self, urls: list[str], prefixes: Sequence[str],
                       failures: list[str]) -> Snapshot:
        """The gRPC store's snapshot, from the endpoints that answered without a gateway."""
        log.debug("etcd JSON gateway not served by %s; reading through gRPC", ", ".join(urls))
        from confsync.stores.etcd import EtcdStore

        store = EtcdStore(self._settings._replace(endpoints=tuple(urls), srv_domain=""))
        try:
            return store.snapshot(prefixes)
        except StoreUnavailable as exc:
            if not failures:
                raise
            raise StoreUnavailable(f"{exc}; {'; '.join(failures)}") from None
        finally:
            store.close()

    def watch(self, prefixes: Sequence[str], start_revision: int, sink: WatchSink,
              starts: Mapping[str, int] | None = None) -> WatchHandle:
        """Not this store's job: a watch is a gRPC stream (open_store gives EtcdStore)."""
        raise NotImplementedError("EtcdGatewayStore reads snapshots only; watch with EtcdStore")

    def close(self) -> None:
        """Nothing stays open between snapshots."""
