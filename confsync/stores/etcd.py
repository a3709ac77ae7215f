"""The etcd v3 backend. The only module that imports the etcd client (`pyetcd`).

Facts this code is built on (see the README's design notes): the client never resumes a broken
watch by itself, a failed endpoint is refused for `time_retry` seconds, half-open connections are
only noticed with HTTP/2 pings, and all watches of one client share one stream and one callback
thread. So: a new client per watch session, keepalive options always on, and the callback only
converts and hands over.

Disasters it guards against: every call carries etcd's require-leader metadata, so a member cut
off from its quorum ends our watch ("etcdserver: no leader") instead of keeping it silently open,
and we fail over. Every reconnect, and every POSITION_CHECK_SECONDS while a watch is open,
compares the cluster id and the current revision with what this store has seen: a recreated
cluster or one restored from an older backup raises StoreReset instead of waiting for revisions
that now mean something else. Reads are linearizable (etcd's
default, `serializable=False`): a snapshot never predates a write acknowledged before it.

Static endpoints outlive the members they name: an operator replaces members one by one
(`member remove`, `member add` on new hosts), and once every configured one is gone a
daemon would be cut off from a healthy cluster for good, its registrations lapsed. So a
running watch or registrar asks the cluster for its members' client URLs (MemberList, every
MEMBERS_REFRESH_SECONDS) and tries them after the configured endpoints. A new client uses
the first endpoint whose connection comes up (one that does not costs CONNECT_SECONDS, not a
call timeout), and a watch or snapshot whose call fails goes on to the next endpoint at once:
dead members must not cost a backoff step each.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import grpc
import pyetcd
import pyetcd.exceptions
import pyetcd.watch
from pyetcd.client import Endpoint, EtcdTokenCallCredentials, MultiEndpointEtcd3Client

from confsync.errors import (
    AuthenticationFailed,
    ConfigError,
    EndpointNotNamed,
    LongReplay,
    ReplayTooLarge,
    RevisionCompacted,
    StoreReset,
    StoreUnavailable,
    describe_error,
)
from confsync.fileversion import FileVersion, file_version
from confsync.logs import Repeats
from confsync.paths import expand_user
from confsync.settings import EtcdSettings, read_password
from confsync.stores.base import (
    Change,
    ChangeBatch,
    ReplayComplete,
    ReplayStarted,
    Snapshot,
    WatchHandle,
    WatchSink,
)
from confsync.stores.endpoints import (
    auth_not_enabled,
    check_client_pair,
    describe_endpoints,
    endpoint_urls,
    read_tls_file,
    refuse_clear_credentials,
    split_endpoint,
)
from confsync.stores.history_mark import HistoryMark
from confsync.stores.last_address import LastAddresses

if TYPE_CHECKING:
    from confsync.stores.srv import LastAnswer

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
# gRPC's connectivity states (grpc._cython.cygrpc.ConnectivityState) of a channel whose
# connection is being made, made, refused (or lost), and closed.
_CONNECTING, _READY, _TRANSIENT_FAILURE, _SHUTDOWN = 1, 2, 3, 4
# After an error an endpoint is skipped this long; the client's default is 300 s.
ENDPOINT_RETRY_SECONDS = 1.0
# A new client waits this long (at most its calls' timeout) for each endpoint's connection, in
# turn, before it passes on to the next. A refused one fails at once; a black-holed address or
# a frozen member (TCP accepted, no HTTP/2 answer) cost every reconnect its whole call
# timeout (etcd.timeout), one endpoint per follower backoff step.
CONNECT_SECONDS = 1.0
# The first endpoint's connection is waited for alone this long (a live member's comes up in
# milliseconds); then the others' are begun too, and the first in turn that comes up within
# CONNECT_SECONDS is used: silent endpoints listed first cost the connect wait once, not once
# each (a registrar's 3 s lease, its calls limited to ttl/3 = 1 s, lapsed behind two).
HEAD_START_SECONDS = 0.25
# An endpoint whose connection did not come up is tried after the others for this long: a
# member removed or a host switched off costs its connect wait once, not at every reconnect.
# One whose connection, used when none came up, had still not come up when its client was
# closed, etcd.timeout or more after it began (`_judge_fallbacks`), is silent, not slow: as
# long, it is not used that way again (a call on it only times out).
DOWN_SECONDS = 60.0
# etcd's WithRequireLeader: the server refuses calls, and cancels open watch streams a few
# election timeouts after the member lost its leader (a partitioned member otherwise serves a
# watch that will never see another event).
REQUIRE_LEADER = ("hasleader", "true")
# While a watch is open, its server's identity and revision are checked this often (one tiny
# linearizable read). A gRPC proxy that reconnects upstream to a recreated etcd keeps our stream
# open and silent; so does a member whose leader loss the proxy does not report.
POSITION_CHECK_SECONDS = 10.0
# etcd replays a watch's missed revisions in parts of 1,000 (of its prefix), one part per pass
# over lagging watches (every 100 ms), unordered against the other watches of the stream: a
# resume of several prefixes that missed more than this many revisions reads a snapshot instead
# (`LongReplay`). Half of etcd's 1,000 leaves room for what is written while the watches are made.
REPLAY_REVISIONS_MAX = 500
# etcd's watchBatchMaxRevs: a replay response with this many revisions may be one part of
# several (its header says the server's revision all the same), so it does not end a replay.
REPLAY_PART_REVISIONS = 1000
# Ranges of a check sent at once (`_read_ranges`): one round trip for most checks, without
# a fleet resuming together putting hundreds each on etcd at the same moment.
RANGES_IN_FLIGHT = 32
# A running watch or registrar asks for the cluster's members on each new connection and at
# most this often while connected (one MemberList call, which a member answers from memory);
# their client URLs are tried after the configured endpoints.
MEMBERS_REFRESH_SECONDS = 10.0
# A snapshot whose revision is compacted between two of its ranges is read again this many
# times in all before the read counts as failed.
SNAPSHOT_COMPACTED_RETRIES = 3
# A snapshot reads each prefix in pages of this many keys (fewer where a page of big values
# passes the gRPC message limit), all at one revision.
SNAPSHOT_PAGE_KEYS = 10_000
# A position check's wait that ends this much later than asked means the process was stopped.
STOPPED_GAP = 1.0


class WatchCanceled(Exception):
    """etcd cancelled a watch: refused at creation (the role may not read the prefix any more)
    or ended by the server. The reason is etcd's, e.g. "etcdserver: permission denied"."""


class _Watcher(pyetcd.watch.Watcher):  # type: ignore[misc]
    """The library's watcher, except that a watch etcd cancels is an error, never silence.

    etcd refuses a watch it may not serve (permission denied) with a response that is both
    "created" and "canceled", on the stream that carries our other watches; the library takes it
    for a created watch (under the watch id it asked for, 0, which may be another watch's) and
    drops every later cancel: the prefix would stay silently unwatched under a connected stream.
    """

    def _run(self) -> None:
        """The library's, except that a stream the client was closed before it began (a
        session cancelled as it was made) ends as a lost stream, which the library's own
        `finally` has reported, not as a thread death (an ERROR and a traceback)."""
        try:
            super()._run()
        except ValueError as exc:  # gRPC's "Cannot invoke RPC: Channel closed!"
            if "closed" not in str(exc):
                raise
            log.debug("etcd watch stream not begun: %s", exc)

    def _handle_response(self, rs: Any) -> None:
        if not rs.canceled or rs.compact_revision:  # (compaction: the library reports it)
            super()._handle_response(rs)
            return
        error = WatchCanceled(rs.cancel_reason or "watch canceled by etcd")
        with self._lock:
            if rs.created and self._new_watch is not None:
                self._new_watch.err = error  # add_callback raises it
                self._new_watch_cond.notify_all()
                return
            callback = self._callbacks.pop(rs.watch_id, None)
        if callback is not None:  # (None: a watch we cancelled ourselves)
            callback(error)


CLOSED_CHANNEL = "Cannot invoke RPC on closed channel!"  # (gRPC's own words for a call)


def _guarded_stub(name: str, stub_class: type) -> property:
    """The library's lazy stub property, made on an open channel only (see _Client)."""

    def get(self: _Client) -> Any:
        with self._stubs_lock:
            stub = self._stubs.get(name)
            if stub is None:
                if self.closed:
                    raise ValueError(CLOSED_CHANNEL)
                stub = self._stubs[name] = stub_class(self.channel)
            return stub

    return property(get)


class _Client(MultiEndpointEtcd3Client):  # type: ignore[misc]
    """The library's client with the require-leader metadata on every call, watches included
    (its watcher takes the client's `metadata`), a watcher that reports cancelled watches, and
    stubs made on an open channel only.

    The library makes each stub at its first use (again after a failover), and gRPC (1.85)
    ends the process with SIGSEGV when a generated stub is made on a closed channel (a call
    on one is a ValueError). A thread of a watch session (its position check asking for the
    members) made its first stub as the main loop closed the session's client: `watch`
    died, without a line, on a SIGHUP refused while the new prefixes were read. Stubs are
    made under a lock that close() takes before closing the channels: after it, a ValueError,
    as a call on a closed channel gives."""

    authstub = _guarded_stub("authstub", pyetcd.etcdrpc.AuthStub)
    kvstub = _guarded_stub("kvstub", pyetcd.etcdrpc.KVStub)
    clusterstub = _guarded_stub("clusterstub", pyetcd.etcdrpc.ClusterStub)
    leasestub = _guarded_stub("leasestub", pyetcd.etcdrpc.LeaseStub)
    maintenancestub = _guarded_stub("maintenancestub", pyetcd.etcdrpc.MaintenanceStub)

    def __init__(self, endpoints: Sequence[Endpoint], timeout: float,
                 user: str | None = None, password: str | None = None,
                 failover: bool = True,
                 on_close: Callable[[Iterable[Endpoint]], None] | None = None) -> None:
        self._stubs_lock = threading.RLock()
        self.closed = False
        self._on_close = on_close
        super().__init__(endpoints=endpoints, timeout=timeout, failover=failover)
        # The first endpoint is the one to use (the library picks one at random, and logged
        # in there: a dead one failed the connection however many members were up).
        self._current_endpoint_label = endpoints[0].netloc
        if user is not None and password is not None:  # the library's login, on that one
            response = self.authstub.Authenticate(
                pyetcd.etcdrpc.AuthenticateRequest(name=user, password=password), timeout)
            self.metadata: tuple[tuple[str, str], ...] = (("token", response.token),)
            self.call_credentials = grpc.metadata_call_credentials(
                EtcdTokenCallCredentials(response.token))
        token: tuple[tuple[str, str], ...] = getattr(self, "metadata", None) or ()
        self.metadata = (*token, REQUIRE_LEADER)

    def close(self) -> None:
        """Close the channels, `on_close` first (it reads their states)."""
        with self._stubs_lock:
            first, self.closed = not self.closed, True
        if first and self._on_close is not None:
            try:
                self._on_close(self.endpoints.values())
            except Exception:  # (a judgement must never keep a client open)
                log.debug("etcd client close hook failed", exc_info=True)
        super().close()

    def refresh_lease(self, lease_id: int) -> Iterator[Any]:
        """One lease keepalive: the first answer, then the call is cancelled.

        The library's sends its request, half-closes and reads to the end of the stream.
        Through etcd's gRPC proxy that end is an error ("context canceled", after the answer
        has come): every keepalive through a proxy failed, and every registration lapsed
        after one TTL. So the request stream stays open until the answer is in, and the
        answer is what counts.
        """
        answered = threading.Event()

        def requests() -> Iterator[Any]:
            yield pyetcd.etcdrpc.LeaseKeepAliveRequest(ID=lease_id)
            answered.wait(self.timeout)

        call = self.leasestub.LeaseKeepAlive(requests(), self.timeout,
                                             credentials=self.call_credentials,
                                             metadata=self.metadata)
        response = None
        try:
            response = next(call, None)
        except grpc.RpcError as exc:
            self._manage_grpc_errors(exc)  # the library's own translation and failover
        finally:
            answered.set()
            call.cancel()
        if response is not None:
            yield response

    def get_watcher(self) -> pyetcd.watch.Watcher:
        with self._stubs_lock:
            if self.closed:
                raise ValueError(CLOSED_CHANNEL)
            stub = pyetcd.etcdrpc.WatchStub(self.channel)
        return _Watcher(stub, timeout=self.timeout, call_credentials=self.call_credentials,
                        metadata=self.metadata)


class _Endpoint(Endpoint):  # type: ignore[misc]
    """The library's endpoint, whose channel may dial a gRPC target other than `host:port`
    (a name's last addresses); `netloc` still names the endpoint as configured."""

    channel: grpc.Channel
    # (url, when its connection began) of one a client uses though it had not come up
    # (`_first_in_turn`); judged when the client is closed (`_judge_fallbacks`).
    fallback: tuple[str, float] | None = None

    def __init__(self, host: str, port: int, target: str | None = None,
                 **kwargs: Any) -> None:
        self._target = target
        self._opts = kwargs.get("opts")
        super().__init__(host, port, **kwargs)

    def idle_again(self) -> None:
        """A new channel, not connected, in place of one whose connection was begun for a
        client that uses another endpoint (the client's failover connects it when needed):
        one connection a client, not one to every member."""
        old, self.channel = self.channel, self._mkchannel(self._opts)
        old.close()

    def _mkchannel(self, opts: Any) -> grpc.Channel:
        if self._target is None:
            return super()._mkchannel(opts)
        if self.secure:
            return grpc.secure_channel(self._target, self.credentials, options=opts)
        return grpc.insecure_channel(self._target, options=opts)


def _address_target(addresses: Sequence[str], port: int) -> str:
    """A gRPC target of these addresses, tried in this order (pick_first): `ipv4:a:p,b:p`,
    or `ipv6:` with IPv4 addresses mapped when the families are mixed."""
    if all(":" not in address for address in addresses):
        return "ipv4:" + ",".join(f"{address}:{port}" for address in addresses)
    return "ipv6:" + ",".join(
        f"[{address if ':' in address else '::ffff:' + address}]:{port}"
        for address in addresses)


class _EndpointFailed(StoreUnavailable):
    """The endpoint in use failed a call (or the login): the next one may serve."""


class _AllSilent(ValueError):
    """No endpoint's connection came up, and each one was found silent lately."""


def _begin_connection(channel: grpc.Channel) -> None:
    """Start `channel`'s connection now (gRPC makes it at the first call otherwise)."""
    with contextlib.suppress(Exception):  # (a gRPC without it: `_connection` says None)
        channel._channel.check_connectivity_state(True)


def _connection(channel: grpc.Channel, wait: float,
                stop: Callable[[], bool] = lambda: False) -> int | None:
    """The state `channel`'s connection reaches within `wait` seconds: READY, TRANSIENT_FAILURE
    (refused, unreachable, TLS refused), or still CONNECTING at the end (a black-holed
    address, a frozen member); None without gRPC's state API (the endpoint is used as is).
    The wait ends early (within 0.1 s) once `stop()` says so (the store was closed)."""
    try:
        core = channel._channel
        state = int(core.check_connectivity_state(True))
        deadline = time.monotonic() + wait
        while state not in (_READY, _TRANSIENT_FAILURE, _SHUTDOWN):
            left = deadline - time.monotonic()
            if left <= 0 or stop():
                break
            until = time.time() + min(left, 0.1)  # wall clock: gRPC's deadline is absolute
            core.watch_connectivity_state(state, until)
            state = int(core.check_connectivity_state(False))
        return state
    except Exception:  # (a gRPC without it: the calls find out, as before)
        return None


def _range_end(prefix: bytes) -> bytes:
    return bytes(pyetcd.utils.prefix_range_end(prefix))


def _compacted(exc: grpc.RpcError) -> bool:
    """etcd's "mvcc: required revision has been compacted" (a read at an old revision)."""
    code = exc.code() if hasattr(exc, "code") else None
    return code == grpc.StatusCode.OUT_OF_RANGE and "compacted" in str(exc)


def _too_large(exc: BaseException) -> bool:
    """A message over GRPC_OPTIONS' receive limit ("Received message larger than max")."""
    code = exc.code() if isinstance(exc, grpc.RpcError) and hasattr(exc, "code") else None
    return code == grpc.StatusCode.RESOURCE_EXHAUSTED and "larger than max" in str(exc)


def _permission_denied(exc: BaseException) -> bool:
    """etcd refuses the role (a read of a prefix it may no longer read)."""
    code = exc.code() if isinstance(exc, grpc.RpcError) and hasattr(exc, "code") else None
    return code == grpc.StatusCode.PERMISSION_DENIED or "permission denied" in str(exc)


def token_expired(exc: BaseException) -> bool:
    """UNAUTHENTICATED ("invalid auth token"): the token timed out (--auth-token-ttl) or etcd
    restarted and forgot it. A fresh client authenticates again."""
    code = exc.code() if isinstance(exc, grpc.RpcError) and hasattr(exc, "code") else None
    return code == grpc.StatusCode.UNAUTHENTICATED or "invalid auth token" in str(exc)


def _read_ranges(client: MultiEndpointEtcd3Client, requests: Sequence[Any]) -> list[Any]:
    """The responses of `requests`, each range on its own call, never one read-only txn: etcd
    before 3.5.5 panics, and the member exits, when a read-only txn's client goes away (a
    timeout, a closed connection) while the txn runs (etcd-io/etcd#14110); a range returns
    the error. Every range that must agree with the others names its revision, so a txn's
    atomicity adds nothing. Up to RANGES_IN_FLIGHT at once."""
    responses: list[Any] = []
    for first in range(0, len(requests), RANGES_IN_FLIGHT):
        calls = [client.kvstub.Range.future(r, client.timeout,
                                            credentials=client.call_credentials,
                                            metadata=client.metadata)
                 for r in requests[first:first + RANGES_IN_FLIGHT]]
        try:
            responses += [call.result() for call in calls]
        finally:
            for call in calls:
                call.cancel()  # (done ones ignore it; after a failure, the rest)
    return responses



def _tls_file_version(path: Path | None) -> FileVersion | None:
    """A TLS file's version, its `~user` expanded now (None while the user is not known)."""
    try:
        return file_version(None if path is None else expand_user(path))
    except ValueError:
        return None

class EtcdStore:
    name = "etcd"

    def __init__(self, settings: EtcdSettings, connect_budget: float | None = None) -> None:
        """`connect_budget`: how long a connection may take to come up over a slow link
        (`etcd.timeout` by default; a registrar's calls time out sooner, at ttl/3, and it
        keeps a connecting client for the configured etcd.timeout: see `_judge_fallbacks`)."""
        self._settings = settings
        self._connect_budget = settings.timeout if connect_budget is None else connect_budget
        self._lock = threading.Lock()
        self._client: MultiEndpointEtcd3Client | None = None
        # Built credentials by the TLS files' identity: certificates rotated on disk (a short-
        # lived client certificate renewed by cert-manager or Vault, a new CA bundle) are read
        # again by the next client, so a months-long daemon never needs a restart for them.
        self._credentials_cache: dict[tuple[FileVersion | None, ...],
                                      grpc.ChannelCredentials | None] = {}
        check_client_pair(settings)  # TLS settings that can never work fail at start
        if not settings.srv_domain:
            try:
                self._credentials(settings.endpoints)
            except ConfigError as exc:
                # A TLS file not there yet is a state of the machine, not of the settings:
                # at boot, vault-agent or cert-manager may write it after we start, and an
                # exit 2 is one systemd does not restart (RestartPreventExitStatus=2). Each
                # connection reads the files again, and is refused, until they can be read.
                log.error("%s; connecting once it can be read", exc)
        self._closed = False  # (`close`)
        self._rotation = 0  # after a failure, the next client starts at the next endpoint
        self._rotation_lock = threading.Lock()
        # The history followed: cluster id and the highest revision seen in any response.
        self._cluster_id = 0
        self._highest_revision = 0
        self._reset_pending = False  # a StoreReset was raised: the next snapshot is the truth
        # The newest write seen (snapshot or watch), and the newest one a position check had
        # seen when it found our history (at first the first one seen): each check reads both
        # back at their revisions, which tells another history that has passed our revisions.
        # (A gRPC proxy resumes its upstream watch on that history by itself: our newest write
        # is then its own.)
        self._mark: HistoryMark | None = None
        self._verified: HistoryMark | None = None
        # A LongReplay was raised: the watch after the snapshot it asked for is not checked
        # again (writes faster than a snapshot read would otherwise never let a watch start).
        self._long_replay_read = False
        # A follower retrying its snapshot while etcd is away would warn per endpoint per try.
        self._read_warnings = Repeats()
        # The cluster's members' client URLs, as etcd last listed them (`learn_members`).
        self._members: tuple[str, ...] = ()
        self._members_asked = -MEMBERS_REFRESH_SECONDS
        self._members_lock = threading.Lock()
        # When each endpoint's (URL's) connection last failed to come up (`_first_up`), and
        # the endpoints the last client was made with (counted without another SRV lookup).
        self._down: dict[str, float] = {}
        # When each endpoint was last found silent (`_judge_fallbacks`), under _members_lock.
        self._silent: dict[str, float] = {}
        self._last_urls: tuple[str, ...] = ()
        # Each endpoint name's last address, dialled while DNS fails for now (`last_address`).
        self._last_addresses = LastAddresses()
        # The last endpoints the SRV records named (`srv_domain`), used while DNS fails.
        self._srv_answer: LastAnswer | None = None
        if settings.srv_domain:
            from confsync.stores.srv import LastAnswer

            self._srv_answer = LastAnswer(settings.srv_domain,
                                          functools.partial(endpoint_urls, settings),
                                          settings.timeout)

    # ---- clients

    def _credentials(self, urls: Sequence[str]) -> grpc.ChannelCredentials | None:
        if not self._settings.uses_tls(urls):
            return None
        identity = self._tls_files_identity()
        cached = self._credentials_cache.get(identity)
        if cached is None:
            cached = self._build_credentials()
            self._credentials_cache.clear()  # only the files as they are now
            self._credentials_cache[identity] = cached
        return cached

    def _tls_files_identity(self) -> tuple[FileVersion | None, ...]:
        s = self._settings
        return tuple(_tls_file_version(path) for path in (s.ca_cert, s.cert, s.key))

    def _build_credentials(self) -> grpc.ChannelCredentials:
        s = self._settings
        check_client_pair(s)
        return grpc.ssl_channel_credentials(
            root_certificates=read_tls_file(s.ca_cert, "CA certificate"),
            private_key=read_tls_file(s.key, "client key"),
            certificate_chain=read_tls_file(s.cert, "client certificate"),
        )

    def endpoint_urls(self) -> tuple[str, ...]:
        """The configured endpoints, or those DNS SRV records name now (`srv_domain`); then
        the members etcd listed that they do not name (`learn_members`)."""
        urls = self._srv_urls() if self._settings.srv_domain else self._settings.endpoints
        with self._members_lock:
            members = self._members
        return urls + tuple(url for url in members if url not in urls)

    def _srv_urls(self) -> tuple[str, ...]:
        """The endpoints the SRV records name now; their last answer while DNS fails for now.
        A reconnect asks again, and DNS down must not cut it off from members that are up."""
        assert self._srv_answer is not None
        return self._srv_answer.endpoints()

    def learn_members(self, client: MultiEndpointEtcd3Client, fresh: bool = False) -> None:
        """Ask the cluster for its members' client URLs, to try after the configured
        endpoints: members replaced one by one would otherwise leave a long-running daemon
        with no endpoint that is still a member. `fresh`: a new connection (after a failure
        the membership may just have changed); else at most every MEMBERS_REFRESH_SECONDS.

        With `srv_domain` the records are asked again instead (`_check_records`: raises
        EndpointNotNamed when they moved away from the member in use). Only URLs of the
        configured scheme: an http:// member must not turn the channel's TLS off, nor carry a
        password in clear. Only a list that names an endpoint in use (configured or learned
        before): a gRPC proxy may pass etcd's own list on. Best effort: a failure is logged
        at debug and changes nothing (a role may not be allowed to list members)."""
        now = time.monotonic()
        with self._members_lock:
            if not fresh and now - self._members_asked < MEMBERS_REFRESH_SECONDS:
                return
            self._members_asked = now
        if self._settings.srv_domain:
            if not fresh:  # (a new client was made from the records' answer of the moment)
                self._check_records(client)
            return
        configured = self._settings.endpoints
        schemes = {urlsplit(url).scheme.lower() for url in configured}
        try:
            response = client.clusterstub.MemberList(
                pyetcd.etcdrpc.MemberListRequest(), client.timeout,
                credentials=client.call_credentials, metadata=client.metadata)
            # A learner serves no reads or watches: left out where the client's stubs know
            # the field (etcd-sdk-python's predate it; a learner then costs one failed try
            # when it comes up). A member added but not started yet has no client URL.
            urls = tuple(dict.fromkeys(
                str(url) for member in response.members
                if not getattr(member, "isLearner", False)
                for url in member.clientURLs if urlsplit(url).scheme.lower() in schemes))
            listed = {_netloc(str(url)) for member in response.members
                      for url in member.clientURLs}
        except Exception as exc:  # grpc errors alike: the configured endpoints still count
            log.debug("etcd member list failed: %s", describe_error(exc))
            return
        with self._members_lock:
            in_use = {_netloc(url) for url in (*configured, *self._members)}
        if not urls or not listed & in_use:
            # Not the cluster we talk to directly: a gRPC proxy passing etcd's list on (its
            # members taken as endpoints would send a fleet around the proxy at its next
            # restart, for good), or members advertising other names than we were given.
            log.debug("etcd member list names no endpoint in use; not used: %s",
                      ", ".join(urls))
            return
        with self._members_lock:
            known, self._members = self._members, urls
        if set(urls) == set(known) or set(urls) <= set(configured):
            return
        gone = [url for url in configured if url not in urls]
        log.log(logging.WARNING if gone else logging.INFO,
                "etcd members not in etcd.endpoints: %s%s; they are tried after the "
                "configured endpoints (update etcd.endpoints)",
                ", ".join(url for url in urls if url not in configured),
                f" (configured but no member any more: {', '.join(gone)})" if gone else "")

    def _check_records(self, client: MultiEndpointEtcd3Client) -> None:
        """Raise EndpointNotNamed when the SRV records now name other members than the one
        `client` uses. Records moved to new members or a rebuilt cluster while the old member
        kept serving left a running watch and registrar on the old cluster for good (a new
        client follows the records; a connection that never fails never made one): files
        stale, registrars started since rendered nowhere, /ready 200. Best effort: DNS failing
        or saying the records are gone changes nothing (a DNS fault must not cut a working
        connection)."""
        in_use = client.endpoint_in_use
        assert self._srv_answer is not None
        try:
            urls = self._srv_answer.endpoints()
        except Exception as exc:  # StoreUnavailable, or dnspython's own errors alike
            log.debug("DNS SRV records not checked: %s", describe_error(exc))
            return
        named = {"{}:{}".format(*split_endpoint(url)).lower() for url in urls}
        if in_use is None or not named or str(in_use.netloc).lower() in named:
            return
        # The snapshots' client too: kept while it answers, it read the old cluster's state,
        # which the watch on the new one took for another store reset, again and again.
        self._drop_client()
        raise EndpointNotNamed(
            f"etcd {in_use.netloc} is no longer named by the DNS SRV records of "
            f"{self._settings.srv_domain} (now: {', '.join(urls)}); connecting to those")

    def _describe_endpoints(self) -> str:
        return describe_endpoints(self._settings)

    def _endpoints(self, urls: Sequence[str], timeout: float) -> list[Endpoint]:
        """One Endpoint per URL; a name DNS cannot resolve for now is dialled at its last
        good addresses (gRPC tries them in turn), with the name kept for TLS verification and
        the :authority header."""
        credentials = self._credentials(urls)
        names = [split_endpoint(url) for url in urls]
        fallback = self._last_addresses.targets(names, timeout)
        endpoints = []
        for host, port in names:
            addresses = fallback.get((host, port))
            options = GRPC_OPTIONS
            if addresses:
                options = [*GRPC_OPTIONS, ("grpc.default_authority", f"{host}:{port}")]
                if credentials is not None:
                    options.append(("grpc.ssl_target_name_override", host))
            endpoints.append(_Endpoint(
                host, port, target=_address_target(addresses, port) if addresses else None,
                secure=credentials is not None, creds=credentials,
                time_retry=ENDPOINT_RETRY_SECONDS, opts=options))
        return endpoints

    def new_client(self, authenticate: bool = True,
                   timeout: float | None = None) -> MultiEndpointEtcd3Client:
        """A fresh client (and so a fresh auth token and fresh endpoint state; no token while
        etcd's auth is switched off, or with `authenticate=False`: etcd serves lease keepalives
        without one). Raises AuthenticationFailed when etcd refuses the user and password.
        `timeout`: a shorter limit for its calls, login included, than `etcd.timeout`.

        It uses the first endpoint whose connection comes up (`_first_up`), from the one after
        the last that failed (`endpoint_failed`): a reconnect after a member died or lost its
        leader moves on instead of picking the dead one at random, and while nothing fails
        every client talks to the same member.
        """
        if self._closed:
            raise StoreUnavailable(f"etcd {self._describe_endpoints()}: store closed")
        urls = self.endpoint_urls()
        if authenticate:
            refuse_clear_credentials(self._settings, urls)
        password = read_password(self._settings) if authenticate else None
        limit = self._settings.timeout if timeout is None else min(timeout,
                                                                   self._settings.timeout)
        endpoints = self._endpoints(urls, limit)
        self._last_urls = tuple(urls)
        user = self._settings.user if password is not None else None
        try:
            first = self._first_up(endpoints, urls, min(limit, CONNECT_SECONDS))
            if self._closed:  # (`close` ended the wait: an abandoned reload's join)
                _close_endpoints(endpoints)
                raise StoreUnavailable(f"etcd {self._describe_endpoints()}: store closed")
            ordered = [first] + [e for e in endpoints if e is not first]
            try:
                client = _Client(ordered, limit, user=user, password=password,
                                 on_close=self._judge_fallbacks)
            except grpc.RpcError as exc:
                if user is None or not auth_not_enabled(exc):
                    raise
                log.debug("etcd auth is disabled; connecting without a token")
                client = _Client(ordered, limit, on_close=self._judge_fallbacks)
        except (grpc.RpcError, pyetcd.exceptions.Etcd3Exception, ValueError) as exc:
            self._judge_fallbacks(endpoints)  # (a login that timed out on one)
            _close_endpoints(endpoints)
            self.endpoint_failed()
            refused = isinstance(exc, grpc.RpcError) and "authentication failed" in str(exc)
            raise (AuthenticationFailed if refused else _EndpointFailed)(
                f"etcd {self._describe_endpoints()}: cannot connect: "
                f"{exc if isinstance(exc, _AllSilent) else describe_error(exc)}") from None
        return client

    def _first_up(self, endpoints: Sequence[Endpoint], urls: Sequence[str],
                  wait: float) -> Endpoint:
        """The first endpoint, from the rotation's, whose connection comes up within `wait`;
        those whose connection did not within DOWN_SECONDS come last. Each one passed is
        marked failed in the client (its failover skips it) and remembered as down. When
        none came up: the first one still connecting (a slow link: its calls' own timeout
        may finish the connection), else the first one (its calls fail with gRPC's words:
        refused, a name DNS cannot resolve); `_all_down` then says so.

        A member that is gone cost a whole follower backoff step, and a silent one its call
        timeout on top: with a few dead endpoints listed first, or members replaced one by
        one, a watch took 20-40 s to find a live member (README: "A reconnect passes dead
        and silent endpoints").

        `wait` is the wait of them all: when the first has not come up within
        HEAD_START_SECONDS, the others' connections are begun too (and those not used are
        made idle again after)."""
        with self._rotation_lock:
            start = self._rotation % len(endpoints)
        rotated = [*range(start, len(endpoints)), *range(start)]
        down = self._down_now()
        order = ([i for i in rotated if urls[i] not in down]
                 + [i for i in rotated if urls[i] in down])
        deadline = time.monotonic() + wait
        head = _connection(endpoints[order[0]].channel, min(wait, HEAD_START_SECONDS),
                           self._is_closed)
        begun = head not in (None, _READY)
        if begun:  # (slow, silent or refused: the others connect meanwhile)
            for i in order[1:]:
                _begin_connection(endpoints[i].channel)
        chosen = self._first_in_turn(endpoints, urls, order, head, deadline, wait)
        if begun:
            for i in order:
                if i != chosen:
                    endpoints[i].idle_again()
        self._use(chosen)
        return endpoints[chosen]

    def _first_in_turn(self, endpoints: Sequence[Endpoint], urls: Sequence[str],
                       order: Sequence[int], head: int | None, deadline: float,
                       wait: float) -> int:
        """`_first_up`'s choice, the first endpoint's state after its head start `head`.

        When none came up: the first still connecting, unless found silent lately (a slow
        link's connection comes up within its calls' timeout; a silent one's never does, and
        each attempt waited that timeout on it: 1 s + 5 s a try, while a refused one fails
        at once). Else the first refused (its calls say why); when each one is silent,
        _AllSilent (no call can be answered)."""
        started = deadline - wait
        silent = self._silent_now()
        slow: int | None = None
        refused: int | None = None
        for i in order:
            if i == order[0] and head in (None, _READY, _TRANSIENT_FAILURE, _SHUTDOWN):
                state = head
            else:
                state = _connection(endpoints[i].channel,
                                    max(0.0, deadline - time.monotonic()), self._is_closed)
            if state is None or state == _READY:
                with self._members_lock:
                    self._down.pop(urls[i], None)
                    self._silent.pop(urls[i], None)
                return i
            log.debug("etcd %s: %s in %gs; trying the next endpoint", urls[i],
                      "refused" if state == _TRANSIENT_FAILURE else "no connection", wait)
            with self._members_lock:
                self._down[urls[i]] = time.monotonic()
            endpoints[i].fail()
            if state == _TRANSIENT_FAILURE:
                refused = i if refused is None else refused
            elif slow is None and urls[i] not in silent:
                slow = i
        if slow is None and refused is None:
            raise _AllSilent(f"no connection in {wait:g}s; each endpoint is silent (not up "
                             f"within etcd.timeout at its last try either; over a link slower "
                             f"than that, raise etcd.timeout)")
        if slow is not None:
            # (Begun at the start, or after the first one's head start at the latest.)
            begun = started if slow == order[0] else started + min(wait, HEAD_START_SECONDS)
            endpoints[slow].fallback = (urls[slow], begun)
        chosen = refused if slow is None else slow
        assert chosen is not None
        endpoints[chosen].last_failed = 0
        return chosen

    def _judge_fallbacks(self, endpoints: Iterable[Endpoint]) -> None:
        """A client is closed: an endpoint it used though its connection had not come up
        (`_first_in_turn`), and still CONNECTING `connect_budget` (etcd.timeout) or more
        after it began, is silent (a black-holed address, a frozen member), not slow: a slow
        link's connection comes up within that (the budget a registrar keeps a connecting
        client for). One that came up is READY or IDLE after; a refused one is
        TRANSIENT_FAILURE."""
        now = time.monotonic()
        for endpoint in endpoints:
            fallback = getattr(endpoint, "fallback", None)
            if fallback is None or now - fallback[1] < self._connect_budget:
                continue
            try:
                state = int(endpoint.channel._channel.check_connectivity_state(False))
            except Exception:  # (a gRPC without it: not judged)
                continue
            if state == _CONNECTING:
                log.debug("etcd %s: no connection in %.1fs; silent", fallback[0],
                          now - fallback[1])
                with self._members_lock:
                    self._silent[fallback[0]] = now

    def _silent_now(self) -> set[str]:
        """The endpoints found silent within DOWN_SECONDS (`_judge_fallbacks`)."""
        now = time.monotonic()
        with self._members_lock:
            self._silent = {url: at for url, at in self._silent.items()
                            if now - at < DOWN_SECONDS}
            return set(self._silent)

    def _is_closed(self) -> bool:
        return self._closed

    def _down_now(self) -> set[str]:
        """The endpoints whose connection did not come up within DOWN_SECONDS (older ones
        are forgotten: members replaced over months leave no trail)."""
        now = time.monotonic()
        with self._members_lock:
            self._down = {url: at for url, at in self._down.items() if now - at < DOWN_SECONDS}
            return set(self._down)

    def _all_down(self) -> bool:
        """Whether no endpoint's connection came up at the last try of each (`_first_up`):
        trying the next one at once is of no use, the follower's backoff is."""
        return set(self._last_urls) <= self._down_now()

    def _use(self, index: int) -> None:
        """The next client starts at endpoint `index` (until one fails)."""
        with self._rotation_lock:
            self._rotation = index

    @staticmethod
    def still_connecting(client: MultiEndpointEtcd3Client) -> bool:
        """Whether the connection of `client`'s endpoint in use is being made or was made
        since (gRPC CONNECTING or READY): a call that timed out on it met a slow link, not a
        refusal, and a new client would start that connection over (over a link that takes
        longer than a call's timeout to connect, every try did, and it never registered).
        When every endpoint of the client is marked failed, those still connecting are
        unmarked, so its next call goes on with them rather than failing at once."""
        connecting = []
        for endpoint in client.endpoints.values():
            try:
                state = endpoint.channel._channel.check_connectivity_state(False)
            except Exception:  # (a gRPC without it: a new client, as before)
                return False
            if state in (_CONNECTING, _READY):
                connecting.append(endpoint)
        in_use = client.endpoint_in_use
        if in_use is None or in_use not in connecting:
            return False
        if all(e.is_failed() for e in client.endpoints.values()):
            for endpoint in connecting:
                endpoint.last_failed = 0
        return True

    def endpoint_failed(self) -> None:
        """The endpoint in use failed: the next client starts at the next one."""
        with self._rotation_lock:
            self._rotation += 1

    def _shared_client(self) -> MultiEndpointEtcd3Client:
        """The snapshot's client, made outside the lock: its connect wait (up to
        CONNECT_SECONDS, a login on top) held the watch's callback (`_saw`), the position
        check and `close()` for all of it. A client made meanwhile by another thread wins;
        one made for a store closed meanwhile is closed, never installed."""
        with self._lock:
            if self._client is not None:
                return self._client
        fresh = self.new_client()
        with self._lock:
            closed, installed = self._closed, self._client
            if not closed and installed is None:
                self._client = fresh
                return fresh
        _close_quietly(fresh)
        if closed or installed is None:
            raise StoreUnavailable(f"etcd {self._describe_endpoints()}: store closed")
        return installed

    def _drop_client(self, client: MultiEndpointEtcd3Client | None = None) -> None:
        """Close the shared client (only if it is still `client`, when given: another
        thread's fresh one stays)."""
        with self._lock:
            if client is not None and self._client is not client:
                return
            client, self._client = self._client, None
        if client is not None:
            client.close()

    # ---- snapshot

    def snapshot(self, prefixes: Sequence[str]) -> Snapshot:
        """All prefixes at one revision: the first read fixes it, the rest are read at it.

        Each endpoint is tried in turn (after a failure a new client starts at the next one),
        so one dead member does not fail `once`. The client never refreshes its auth token, so
        once the token's TTL has passed every call fails UNAUTHENTICATED: then authenticate
        again with a new client, once.
        """
        # Every member gets its turn: with srv_domain, those the records name now.
        endpoints = len(self.endpoint_urls())
        reauthenticated = False
        failures: list[str] = []
        while len(failures) < max(1, endpoints):
            client = None
            try:
                client = self._shared_client()
                return self._read(client, prefixes)
            except Exception as exc:  # the client raises grpc, pyetcd and ValueError alike
                if client is not None:
                    self._drop_client(client)
                if isinstance(exc, ConfigError):
                    raise
                if self._closed:  # (its call was cancelled by `close`: no next endpoint)
                    raise StoreUnavailable(f"etcd {self._describe_endpoints()}: store "
                                           f"closed") from None
                if not reauthenticated and token_expired(exc):
                    reauthenticated = True
                    log.info("etcd auth token expired or revoked; authenticating again")
                    continue
                if not isinstance(exc, StoreUnavailable):  # (new_client moved on already)
                    self.endpoint_failed()
                failures.append(str(exc) if isinstance(exc, StoreUnavailable)
                                else describe_error(exc))
                if self._all_down():
                    break  # (every endpoint was tried, none connects)
                if len(failures) < endpoints:
                    message = f"etcd read failed ({failures[-1]}); trying the next endpoint"
                    log.log(logging.WARNING if self._read_warnings.due(message)
                            else logging.DEBUG, "%s", message)
        raise StoreUnavailable(f"etcd {self._describe_endpoints()}: "
                               f"read failed: {'; '.join(dict.fromkeys(failures))}")

    def _read(self, client: MultiEndpointEtcd3Client, prefixes: Sequence[str]) -> Snapshot:
        """One revision for every prefix. A compaction past it between two ranges (a busy
        cluster compacting while a big snapshot reads) starts the read over at the new
        revision: the member is fine, so it is neither a failed endpoint nor a lost stream."""
        for attempt in range(SNAPSHOT_COMPACTED_RETRIES):
            try:
                return self._read_at_one_revision(client, prefixes)
            except grpc.RpcError as exc:
                if not _compacted(exc) or attempt == SNAPSHOT_COMPACTED_RETRIES - 1:
                    raise
                log.info("etcd compacted past the snapshot's revision while it was read; "
                         "reading again")
        raise AssertionError("unreachable")

    def _read_at_one_revision(self, client: MultiEndpointEtcd3Client,
                              prefixes: Sequence[str]) -> Snapshot:
        # Linearizable ranges (the library's default, serializable=False): the member confirms
        # with the leader that it has applied everything committed before answering.
        # Pages of at most `page` keys, each read at the first one's revision: one response
        # for a whole prefix could pass the gRPC message limit (then every retry failed alike).
        values: dict[str, bytes] = {}
        revision = cluster_id = 0
        page = SNAPSHOT_PAGE_KEYS
        mark: HistoryMark | None = None
        for prefix in prefixes:
            key, end = prefix.encode(), _range_end(prefix.encode())
            while True:
                kwargs: dict[str, Any] = {"serializable": False}  # explicit: never stale
                if revision:
                    kwargs["revision"] = revision
                try:
                    response = client.get_range_response(key, end, limit=page, **kwargs)
                except grpc.RpcError as exc:
                    if not _too_large(exc) or page == 1:
                        raise
                    page = max(1, page // 4)  # big values: fewer keys a page
                    continue
                if not revision:
                    revision = int(response.header.revision)
                    cluster_id = int(response.header.cluster_id)
                for kv in response.kvs:
                    values[kv.key.decode("utf-8", "surrogateescape")] = bytes(kv.value)
                mark = HistoryMark.latest(response.kvs, mark)
                if not response.more or not response.kvs:
                    break
                key = bytes(response.kvs[-1].key) + b"\0"
        if not prefixes:
            cluster_id, revision = self._current_position(client)
        self._adopt(cluster_id, revision, mark)
        return Snapshot(revision, values, cluster_id)

    def _current_position(self, client: MultiEndpointEtcd3Client,
                          key: bytes = b"\0") -> tuple[int, int]:
        """(cluster id, current revision), by a linearizable read of one key (a key inside a
        watched prefix: a role allowed to read only those may read it)."""
        response = client.get_response(key)
        return int(response.header.cluster_id), int(response.header.revision)

    def _position_and_history(self, client: MultiEndpointEtcd3Client,
                              key: bytes) -> tuple[int, int, str | None]:
        """`_current_position`, and in the same linearizable txn the marks' keys read at
        their revisions: how the server's history differs from ours there (None: it does
        not, or cannot tell: no mark, or compacted past one, or a revision the server does
        not have yet, which the revision comparison reports). The newest write seen then
        counts as checked by the next call."""
        with self._lock:
            newest = self._mark
            marks = [m for m in dict.fromkeys((self._verified, newest)) if m is not None]
        if not marks:
            return (*self._current_position(client, key), None)
        rpc = pyetcd.etcdrpc
        requests = [rpc.RangeRequest(key=key)]
        requests += [rpc.RangeRequest(key=m.key, revision=m.mod_revision, keys_only=True)
                     for m in marks]
        try:
            responses = _read_ranges(client, requests)
        except grpc.RpcError as exc:
            # (Through a gRPC proxy these come as UNKNOWN: known by their text.)
            why = describe_error(exc)
            if "future revision" not in why and "compacted" not in why \
                    and not _permission_denied(exc):
                raise
            if "future revision" not in why:  # they cannot tell any more; newer writes will
                with self._lock:
                    self._verified = None
                    if self._mark is newest:
                        self._mark = None
            return (*self._current_position(client, key), None)
        differs = next((why for why in (
            m.differs(r.kvs[0] if r.kvs else None)
            for m, r in zip(marks, responses[1:], strict=True)) if why), None)
        if differs is None:
            with self._lock:
                if not self._reset_pending:
                    self._verified = newest
        header = responses[0].header
        return int(header.cluster_id), int(header.revision), differs

    # ---- the history followed

    def _adopt(self, cluster_id: int, revision: int, mark: HistoryMark | None = None) -> None:
        """A snapshot's position becomes the history followed: the first one, the one after a
        StoreReset (a lower revision must not keep the old high-water mark), or one that agrees
        with it. One that disagrees otherwise changes nothing: the watch's next position check
        raises the StoreReset, so the follower also replaces its resume points. `mark`: the
        snapshot's newest write."""
        with self._lock:
            if self._reset_pending or not self._cluster_id:
                self._cluster_id, self._highest_revision = cluster_id, revision
                self._reset_pending = False
                self._mark = self._verified = mark
            elif cluster_id in (0, self._cluster_id) and revision >= self._highest_revision:
                self._highest_revision = revision
                if mark is not None:
                    self._mark = HistoryMark.latest([mark], self._mark)
                    self._verified = self._verified or self._mark

    def _saw_write(self, kv: Any) -> None:
        """A watch delivered this write (the newest of its response): the mark moves on."""
        with self._lock:
            if not self._reset_pending:
                self._mark = HistoryMark.latest([kv], self._mark)
                self._verified = self._verified or self._mark  # (the first one: ours)

    def _saw(self, cluster_id: int, revision: int) -> StoreReset | None:
        """Record a response header; a StoreReset when it belongs to another history."""
        with self._lock:
            known = self._cluster_id
            if known and cluster_id and cluster_id != known:
                self._reset_pending = True
                return StoreReset(known, cluster_id, self._highest_revision, revision)
            self._cluster_id = cluster_id or known
            self._highest_revision = max(self._highest_revision, revision)
            return None

    def check_position(self, client: MultiEndpointEtcd3Client, start_revision: int,
                       key: bytes) -> int:
        """Raise StoreReset unless the server is the cluster we followed and has every revision
        we delivered (`start_revision - 1`) or saw, in our history (the mark). A recreated etcd
        (new cluster id) or one restored from an older backup (revision back in time) would
        otherwise accept a watch "from revision N+1" and stay silent until its own history
        passed N; one past N already (same cluster id) would send its later writes on top of
        a mirror of ours. Returns the server's revision."""
        with self._lock:
            seen = self._highest_revision
        cluster_id, revision, history = self._position_and_history(client, key)
        reset = self._saw(cluster_id, revision)
        if reset is not None:
            raise reset
        # What was seen before asking, not since: the watch goes on meanwhile, and a revision
        # it delivered after the server answered is newer than that answer. (Compared with the
        # high-water mark after it, a busy pool's writes made a periodic check a false "below
        # revision N already seen": a degraded watch, a full re-read and four WARNINGs.)
        highest = max(seen, start_revision - 1)
        if revision < highest or history is not None:
            with self._lock:
                self._reset_pending = True
            raise StoreReset(cluster_id, cluster_id, max(seen, start_revision - 1), revision,
                             history="" if revision < highest else history or "")
        return revision

    # ---- watch

    def check_replay(self, prefixes: int, missed: int) -> None:
        """Raise LongReplay when a watch of `prefixes` that missed `missed` revisions would get
        its replay in parts, unless it follows the snapshot an earlier LongReplay asked for.

        The replay hold (daemon) waited for a quiet between parts: a part later than that
        (a long replay, a busy etcd, a stalled link) was rendered beside the other prefixes'
        newer values, a state etcd never held. One prefix's parts are states it really held."""
        if self._long_replay_read:
            self._long_replay_read = False
            return
        if prefixes > 1 and missed > REPLAY_REVISIONS_MAX:
            self._long_replay_read = True
            raise LongReplay(missed)

    def changed_prefixes(self, client: MultiEndpointEtcd3Client, starts: Mapping[str, int],
                         until: int) -> set[str]:
        """The prefixes (of `starts`) that changed in [their start, until]."""
        same = self._unchanged(client, [(p, start, until) for p, start in starts.items()])
        return {prefix for prefix, unchanged in zip(starts, same, strict=True)
                if not unchanged}

    def replay_starts(self, client: MultiEndpointEtcd3Client, starts: Mapping[str, int],
                      until: int) -> dict[str, int]:
        """Where each prefix's watch may start so that it replays what it missed up to
        `until`: where it holds at `until` the keys and values it held at start - 1, at
        until + 1 (nothing to replay); where it does at until - REPLAY_REVISIONS_MAX, at the
        revision after (a replay of that many revisions at most); else at its own start.

        A prefix resumes from its last event, so one quiet for long was as many revisions
        behind as were written elsewhere since, and the first txn that touched it after that
        made the resume a long one (a snapshot, 0-4 s of jitter late), however few of its
        own revisions it missed. Starting where it holds what the mirror holds skips no
        change: the mirror's state of it is etcd's at that revision (what it did in between
        and undid, a key made and deleted, leaves nothing to render; its replay was never
        waited for either). The look 500 back is a second round trip, for a prefix that
        changed and is that far behind only: each look reads every key of the prefix."""
        chosen = dict(starts)
        for prefix, same in zip(starts, self._unchanged(
                client, [(prefix, start, until) for prefix, start in starts.items()]),
                strict=True):
            if same:
                chosen[prefix] = until + 1
        back = until - REPLAY_REVISIONS_MAX
        far = [prefix for prefix, start in chosen.items() if back >= start]
        for prefix, same in zip(far, self._unchanged(
                client, [(prefix, starts[prefix], back) for prefix in far]), strict=True):
            if same:
                chosen[prefix] = back + 1
        return chosen

    def _unchanged(self, client: MultiEndpointEtcd3Client,
                   checks: Sequence[tuple[str, int, int]]) -> list[bool]:
        """For each (prefix, start, at): whether the prefix held at `at` the keys and values it
        held at start - 1. So it did when no key has been written since its start at `at` and
        it has as many keys as at start - 1 (a range cannot see deletions: a deleted key
        lowers the count). (etcd counts before a min_mod_revision filter, so that range asks
        for one key instead.) Three ranges a check, each naming its revision, so they agree
        however they are sent (`_read_ranges`: one txn of every prefix's ranges also passed
        etcd's --max-txn-ops, 128 by default, from 43 prefixes on)."""
        rpc = pyetcd.etcdrpc
        requests = []
        for prefix, start, at in checks:
            key = prefix.encode()
            end = _range_end(key)
            requests += [rpc.RangeRequest(key=key, range_end=end, count_only=True,
                                          revision=max(start - 1, 1)),
                         rpc.RangeRequest(key=key, range_end=end, keys_only=True, limit=1,
                                          revision=at, min_mod_revision=start),
                         rpc.RangeRequest(key=key, range_end=end, count_only=True,
                                          revision=at)]
        ranges = _read_ranges(client, requests)
        same = []
        for index, (_, start, _) in enumerate(checks):
            before, written, now = ranges[3 * index:3 * index + 3]
            # (Revision 0 would be read as "now": nothing was there before revision 1.)
            count_before = int(before.count) if start > 1 else 0
            same.append(not written.kvs and int(now.count) == count_before)
        return same

    def watch(self, prefixes: Sequence[str], start_revision: int, sink: WatchSink,
              starts: Mapping[str, int] | None = None) -> WatchHandle:
        """One client, one gRPC stream, one watch per (merged) prefix, each from its own
        start where `starts` gives a later one than `start_revision`.

        Raises StoreUnavailable or RevisionCompacted when the watch cannot be created.
        Each endpoint gets its turn before it gives up (`_first_up` passes those that do not
        connect; one that fails a call, a member without a leader, passes to the next): one
        failed endpoint cost the follower a backoff step.
        """
        turn = 0
        while True:
            turn += 1
            try:
                return _EtcdWatch(self, prefixes, start_revision, sink, starts or {})
            except LongReplay:
                raise
            except BaseException as exc:
                # The watch after a long replay's snapshot was this one, failed before its
                # check: the next is checked (etcd away for minutes of writes: its replay
                # comes in parts).
                self._long_replay_read = False
                if (not isinstance(exc, _EndpointFailed) or turn >= len(self._last_urls)
                        or self._all_down()):
                    raise
                log.debug("%s; trying the next endpoint", exc)

    def close(self) -> None:
        """No new client from now on: a follower still reading (a reload abandoned while its
        snapshot hung on a member that does not answer) has its call cancelled here and
        must not go on to the next endpoint with a client of a store nobody closes again.
        It did, and held the loop's join of that follower for another whole timeout."""
        with self._lock:  # (`_shared_client` installs under it: closed, or dropped here)
            self._closed = True
        self._drop_client()


class _EtcdWatch:
    """A watch session. After its first error it reports once and goes quiet for good.

    A small thread re-checks the server's position every POSITION_CHECK_SECONDS: an open
    stream alone cannot tell a silent cluster from a replaced one behind a proxy.
    """

    def __init__(self, store: EtcdStore, prefixes: Sequence[str], start_revision: int,
                 sink: WatchSink, starts: Mapping[str, int]) -> None:
        self._sink = sink
        self._lock = threading.Lock()
        self._dead = False
        self._closed = threading.Event()
        self._store = store
        self._client = store.new_client()
        # The position checks' client: the stream's own at first, a fresh one (authenticated
        # again) once its token has expired. An open stream keeps its authorisation, but a
        # unary call after a JWT's fixed lifetime, or a simple token's TTL between checks,
        # is refused: that is not a lost watch.
        self._check_client = self._client
        self._endpoints = store._describe_endpoints()
        # When each prefix's watch last brought anything (an event or a progress notification):
        # watchers sharing one stream can starve one by one.
        started = time.monotonic()
        self._last_heard = dict.fromkeys(prefixes, started)
        self._position_key = prefixes[0].encode() if prefixes else b"\0"
        # The server's revision before the watches exist: what they bring up to it is etcd's
        # replay of what this session missed, what comes after is live (the loop waits for
        # the replay alone: `replay_until`).
        self.replay_until = 0
        # The prefixes whose replay has not fully arrived: each watch is created after
        # `replay_until`, so the first response of one that changed by then, unless a part,
        # carries all of it. A ReplayComplete follows when none is left (`replay_pending`).
        self._replaying: set[str] = set()
        self.replay_pending = False
        # Each prefix resumes from its own last revision: from the lowest of them, a prefix
        # quiet since the last snapshot held every other one's resume there, and etcd sent
        # all they had delivered since again (a day of a busy prefix's events, for nothing).
        own = {p: max(start_revision, starts.get(p, start_revision)) for p in prefixes}
        # The last revision each prefix delivered in this session (a lagging one's replay is
        # checked against the others': `_check_lag`).
        self._heard = {p: own[p] - 1 for p in prefixes}
        # Each prefix's revision up to which etcd's history showed nothing to replay (its
        # watch starts after it): the follower resumes it from there next time.
        self.delivered: dict[str, int] = {}
        try:
            self.replay_until = store.check_position(self._client, start_revision,
                                                     self._position_key)
            missed = 0
            if len(prefixes) > 1 and self.replay_until >= start_revision:
                own = self._replay_starts(own)
                self.delivered = {p: own[p] - 1 for p in prefixes}
                self._heard = dict(self.delivered)
                self._replaying = {p for p in prefixes if own[p] <= self.replay_until}
                self.replay_pending = bool(self._replaying)
                # Only a prefix with something to replay can get it in parts.
                missed = max((self.replay_until - (own[p] - 1) for p in self._replaying),
                             default=0)
            store.check_replay(len(prefixes), missed)
            if self._replaying:
                # Said before the watches exist: the first one's replay can come while the
                # next is created (a slow link, a proxy), and must not render alone.
                self._report(ReplayStarted(self.replay_until))
            for prefix in prefixes:
                key = prefix.encode()
                try:
                    self._client.add_watch_callback(
                        key, functools.partial(self._ending_on_a_bug(self._on_response), prefix),
                        range_end=_range_end(key), start_revision=own[prefix],
                        progress_notify=True)
                except WatchCanceled as exc:
                    raise StoreUnavailable(f"etcd {self._endpoints}: watch of {prefix} "
                                           f"refused: {exc}") from None
        except pyetcd.exceptions.RevisionCompactedError as exc:
            self.cancel()
            raise RevisionCompacted(int(exc.compacted_revision)) from None
        except (StoreReset, StoreUnavailable, LongReplay, RevisionCompacted):
            self.cancel()
            raise
        except Exception as exc:
            self.cancel()
            if _too_large(exc):  # a replay that came while the next prefix's watch was added
                raise ReplayTooLarge(describe_error(exc)) from None
            store.endpoint_failed()
            raise _EndpointFailed(f"etcd {self._endpoints}: watch failed: "
                                  f"{describe_error(exc)}") from None
        threading.Thread(target=self._check_position, name="confsync-etcd-check",
                         daemon=True).start()

    def _replay_starts(self, starts: Mapping[str, int]) -> dict[str, int]:
        """`replay_starts` up to `replay_until`; a compacted start is the watch's own."""
        try:
            return self._store.replay_starts(self._client, starts, self.replay_until)
        except Exception as exc:
            if "compacted" in describe_error(exc):
                raise RevisionCompacted(min(starts.values()) - 1) from None
            raise

    def _ending_on_a_bug(self, work: Callable[..., None]) -> Callable[..., None]:
        """`work`, a session's thread's (the position check) or callback's (the watch's), with
        an exception nothing expected ending the session as a lost stream: the follower opens
        a new one from what it has delivered. The check thread died alone before, and the
        watch went on without its silence limit and its reset checks, under a green /ready;
        the library's callback thread logs a callback's exception and drops the response:
        the change was never rendered, nor read again."""

        @functools.wraps(work)
        def guarded(*args: Any) -> None:
            try:
                work(*args)
            except Exception as exc:
                log.error("etcd watch session: unexpected error in %s; reopening the watch",
                          threading.current_thread().name, exc_info=True)
                self._report(StoreUnavailable(f"etcd {self._endpoints}: internal error: "
                                              f"{describe_error(exc)}"))

        return guarded

    def _check_position(self) -> None:
        """The position check's thread (`_position_check_loop`), a bug in it a lost stream."""
        self._ending_on_a_bug(self._position_check_loop)()

    def _position_check_loop(self) -> None:
        silence_limit = self._store._settings.silence_limit
        period = min(POSITION_CHECK_SECONDS, silence_limit / 2 or POSITION_CHECK_SECONDS)
        self._store.learn_members(self._check_client, fresh=True)
        while True:
            asked = time.monotonic()
            if self._closed.wait(period):
                return
            self._not_counting_a_stop(time.monotonic() - asked - period)
            prefix, heard = min(self._last_heard.items(), key=lambda item: item[1],
                                default=("", time.monotonic()))
            silent = time.monotonic() - heard
            if silence_limit and silent > silence_limit:
                # etcd's own watchers can starve on a busy stream without a word (etcd issue
                # 17529): the stream and its pings live, and the data goes stale forever.
                self._report(StoreUnavailable(
                    f"etcd {self._endpoints}: watch of {prefix} silent for {silent:.0f}s (no "
                    f"event, no progress notification; etcd.silence_limit {silence_limit:g}s)"))
                return
            try:
                try:
                    self._store.check_position(self._check_client, 0, self._position_key)
                except Exception as exc:
                    if not token_expired(exc) or self._closed.is_set():
                        raise
                    self._renew_check_client()
                    self._store.check_position(self._check_client, 0, self._position_key)
            except StoreReset as exc:
                self._report(exc)
            except Exception as exc:  # the client raises grpc, pyetcd and ValueError alike
                if not self._closed.is_set():
                    self._report(StoreUnavailable(f"etcd {self._endpoints}: position check "
                                                  f"failed: {describe_error(exc)}"))
            else:
                try:
                    self._store.learn_members(self._check_client)
                except EndpointNotNamed as exc:  # (SRV records moved: reconnect to them)
                    self._report(exc)
            with self._lock:
                if self._dead:
                    return

    def _not_counting_a_stop(self, late: float) -> None:
        """A wait that ended `late` seconds after its time: the process was stopped (SIGSTOP,
        a paused VM, a debugger), and the monotonic clock ran on meanwhile. That time is not
        etcd's silence: every watch's last word is moved on by it (else, on SIGCONT, a watch
        whose queued notifications were not read yet was reported silent and reopened)."""
        if late < STOPPED_GAP:
            return
        now = time.monotonic()
        for prefix, heard in list(self._last_heard.items()):
            self._last_heard[prefix] = min(heard + late, now)

    def _renew_check_client(self) -> None:
        log.debug("etcd auth token of the position check expired; authenticating again")
        fresh = self._store.new_client()
        with self._lock:
            old, self._check_client = self._check_client, fresh
            closed = self._dead
        if old is not self._client:
            _close_quietly(old)
        if closed:  # cancelled meanwhile: cancel() may have missed the new one
            _close_quietly(fresh)

    def _report(self, item: ChangeBatch | ReplayComplete | ReplayStarted | Exception) -> None:
        """Hand `item` over unless the watch is dead. The sink runs under the lock, as does
        `cancel`: a report that passed the check is handed over before another thread's error
        (or the follower's cancel) is, so nothing of a dead watch follows its lost stream (a
        dying watch's ReplayComplete came after it, and the next session took it for its own)."""
        with self._lock:
            if self._dead:
                return
            if isinstance(item, Exception):
                self._dead = True
            if isinstance(item, StoreUnavailable):
                self._store.endpoint_failed()
            self._sink(item)

    def _on_response(self, prefix: str, response: Any) -> None:
        # Runs on the client's callback thread: convert and hand over, nothing more.
        self._last_heard[prefix] = time.monotonic()
        if isinstance(response, pyetcd.exceptions.RevisionCompactedError):
            self._report(RevisionCompacted(int(response.compacted_revision)))
        elif response is not None and _too_large(response):
            # Resuming from the same revision would get the same replay: not a lost stream.
            self._report(ReplayTooLarge(describe_error(response)))
        elif response is None or isinstance(response, BaseException):
            why = describe_error(response) if response is not None else "stream ended"
            self._report(StoreUnavailable(f"etcd {self._endpoints}: watch lost: {why}"))
        else:
            header = response.header
            reset = self._store._saw(int(header.cluster_id), int(header.revision))
            if reset is not None:  # e.g. a gRPC proxy that reconnected to a recreated cluster
                self._report(reset)
                return
            changes = tuple(
                Change(ev.key.decode("utf-8", "surrogateescape"),
                       None if isinstance(ev, pyetcd.events.DeleteEvent) else bytes(ev.value))
                for ev in response.events)
            revisions = {int(ev.mod_revision) for ev in response.events}
            revision = max(revisions, default=int(header.revision))
            puts = [ev for ev in response.events if isinstance(ev, pyetcd.events.PutEvent)]
            if puts:
                self._store._saw_write(max(puts, key=lambda ev: int(ev.mod_revision)))
            # etcd sends a live change as one revision, at the server's revision: anything
            # else is a lagging watch's replay (a gRPC proxy that resumed its upstream
            # watches itself, one after the other), and the other prefixes' parts may follow.
            lagging = (len(self._heard) > 1 and bool(revisions) and not self._replaying
                       and (len(revisions) > 1 or int(header.revision) > revision))
            if lagging:
                self._report(ReplayStarted(int(header.revision)))
            self._report(ChangeBatch(revision, changes, prefix))
            self._heard[prefix] = max(self._heard[prefix], revision)
            if lagging:
                self._check_lag(prefix, response)
            elif self._replaying and self._replay_arrived(prefix, response):
                self._report(ReplayComplete(self.replay_until))

    def _check_lag(self, prefix: str, response: Any) -> None:
        """After a lagging replay of `prefix`: which other prefixes changed between what they
        delivered and its revision (one txn, as at a resume); a ReplayComplete follows once
        each has sent its part. A failed check ends the watch: the resume knows its replay."""
        until = int(response.header.revision)
        others = {p: heard + 1 for p, heard in self._heard.items()
                  if p != prefix and heard < until}
        try:
            changed = (self._store.changed_prefixes(self._client, others, until)
                       if others else set())
        except Exception as exc:  # the client raises grpc, pyetcd and ValueError alike
            if not self._closed.is_set():
                self._report(StoreUnavailable(f"etcd {self._endpoints}: replay check "
                                              f"failed: {describe_error(exc)}"))
            return
        if len({int(ev.mod_revision) for ev in response.events}) >= REPLAY_PART_REVISIONS:
            changed.add(prefix)  # (a part: the rest of its replay follows)
        with self._lock:
            self.replay_until = until
            self._replaying = changed
        if not changed:
            self._report(ReplayComplete(until))

    def _replay_arrived(self, prefix: str, response: Any) -> bool:
        """Whether this response ends the last replay still on its way."""
        if (int(response.header.revision) < self.replay_until
                or len({int(ev.mod_revision) for ev in response.events})
                >= REPLAY_PART_REVISIONS):
            return False
        with self._lock:
            if prefix not in self._replaying:
                return False
            self._replaying.discard(prefix)
            return not self._replaying

    def cancel(self) -> None:
        self._closed.set()
        with self._lock:
            self._dead = True
            check_client = self._check_client
        _close_quietly(self._client)
        if check_client is not self._client:
            _close_quietly(check_client)


def _netloc(url: str) -> tuple[str, str]:
    """(scheme, host:port) of an endpoint URL, for telling the same endpoint spelled apart."""
    parts = urlsplit(url if "://" in url else "http://" + url)
    return parts.scheme.lower(), parts.netloc.lower()


def _close_endpoints(endpoints: Sequence[Endpoint]) -> None:
    """Close the channels of a client that was not made (each would keep connecting)."""
    for endpoint in endpoints:
        try:
            endpoint.close()
        except Exception as exc:
            log.debug("closing etcd channel: %s", describe_error(exc))


def _close_quietly(client: MultiEndpointEtcd3Client) -> None:
    try:
        client.close()
    except Exception as exc:  # closing a broken channel must not stop a resume
        log.debug("closing etcd watch client: %s", describe_error(exc))
