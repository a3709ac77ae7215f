"""The etcd side of `confsync register`: one lease, its keepalive, and ownership-checked writes.

The loop says what each key should hold (`want(key, value)`, None for absent); a thread of its
own converges etcd to that, so a slow or unreachable etcd never delays the checks, a drain or a
dead child. Every write is a transaction: create when absent, replace only when the value there
names our host (a registrar restarted on this host takes its key over at once), never overwrite
another host's live key. When etcd is back after an outage, or the lease was lost (expired,
revoked, etcd recreated), a new lease is granted and every key written again.

A value of our host on another lease is taken over only by a key's first write: then it is
most often an earlier run of this host, whose lease lives on until its TTL. Once this process
has written the key, a value of our host on another lease etcd still holds is another live
registrar with our host name (a cloned image, two containers given one --hostname): the key
is neither overwritten nor deleted while that lease lives, and reported as a conflict. Both
took it back at every read-back before, so the published value flipped between the two hosts
every ttl/3 for good, and the loser's failing check deleted the winner's healthy key.

The lease never keeps a stale key alive. When a key etcd holds says what is no longer wanted
and the change cannot be written (etcd refuses: a write permission revoked, credentials
refused), the lease is left to lapse and its keys go with it: a "ready" must not outlive the
check that went down. When only the credentials are refused (a password changed before its
file, a deleted user) and nothing etcd holds is stale, the lease is renewed without a token
(etcd serves keepalives without one), so a healthy instance does not fall out of the pool over
a password.

A live lease does not prove the keys are still there: an operator's `etcdctl del`, a restore
from a backup that still holds the lease, or another writer can take a key away while the
keepalives go on succeeding. So after every keepalive the keys written are read back and any
that is missing, different or on another lease is written again. The read-back is plain range
reads, not a transaction: while etcd's NOSPACE alarm is raised (its backend quota is full) it
refuses every transaction, a read-only one too (etcd 3.5), but serves reads and keepalives; a
read-back by transaction turned every keepalive of a healthy registration into "etcd
unreachable" and back.
"""

from __future__ import annotations

import collections
import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from confsync.backoff import Backoff
from confsync.errors import (
    AuthenticationFailed,
    EndpointNotNamed,
    StoreUnavailable,
    describe_error,
)
from confsync.register import lease_clock
from confsync.register.revoke import StopRevoke, lease_not_found

log = logging.getLogger(__name__)

RETRY_MIN = 0.2
CLOSE_JOIN = 0.2  # `close` waits this long for the thread before revoking
CLONE_REMEDY = "two hosts share a host name (a cloned image?); give each a distinct " \
    "--hostname or id"


@dataclass(frozen=True)
class Conflict:
    key: str
    owner: str  # the other host, or a description of a value without one
    # The granted TTL of the lease the key lives on; 0 when it has none (it never goes by
    # itself). A live registrar renews its lease; a dead host's key goes within this time.
    lease_ttl: int = 0


@dataclass(frozen=True)
class RegistrarEvent:
    """What the registrar tells the loop: kind is connected, lost, written, conflict,
    keepalive_failed, lease_granted, refused (key: the keys etcd refuses to let us write or
    read, `verb`, detail: its answer) or accepted (what was refused before, `verb`, went
    through)."""

    kind: str
    key: str = ""
    detail: str = ""
    value: dict[str, Any] | None = None
    # A conflict with another live registrar of our host name (a clone): its lease.
    lease: int = 0
    verb: str = "writing"  # refused, accepted: "writing" or "reading"
    nospace: bool = False  # refused: by etcd's NOSPACE alarm (its quota full), not a role


class WriteRefused(Exception):
    """etcd refused writes of `keys` for lack of permission. It answered: an outage it is not,
    and /ready must not say "etcd not connected" (an operator looked for a network fault)."""

    verb = "writing"

    def __init__(self, keys: Sequence[str], cause: BaseException) -> None:
        self.keys = list(keys)
        self.detail = describe_error(cause)
        self.nospace = _nospace(cause)
        super().__init__(f"{', '.join(self.keys)}: {self.detail}")


class ReadRefused(WriteRefused):
    """etcd refused reading back a key of ours (a role that may write the prefix but not read
    it). Not an outage either: it was reported as "etcd unreachable" after every keepalive,
    and "connected" again at the next call, so /ready and etcd_connected flapped every ttl/3
    for as long as the role stayed so, two log lines each time."""

    verb = "reading"


def owner_of(raw: bytes) -> str:
    """The host recorded in a registration value ("" when it has none)."""
    try:
        value = json.loads(raw)
    except ValueError:
        return ""
    host = value.get("host") if isinstance(value, dict) else None
    return host if isinstance(host, str) else ""


class Registrar:
    """Converges etcd to the wanted registrations. `want` and `close` are thread-safe."""

    def __init__(self, new_client: Callable[[], Any], host: str, ttl: int,
                 report: Callable[[RegistrarEvent], None],
                 endpoint_failed: Callable[[], None] = lambda: None,
                 token_expired: Callable[[BaseException], bool] = lambda exc: False,
                 keepalive_client: Callable[[], Any] | None = None,
                 learn_members: Callable[[Any, bool], None] = lambda client, fresh: None,
                 stop_client: Callable[[float], Any] | None = None,
                 endpoint_count: Callable[[], int] = lambda: 1,
                 still_connecting: Callable[[Any], bool] = lambda client: False,
                 connect_budget: float = 5.0,
                 ) -> None:
        self._new_client = new_client
        # For `close`: a new client whose calls (its login too) give up within the seconds
        # given, and how many endpoints there are to try.
        self._stop_client = stop_client or (lambda timeout: new_client())
        self._endpoint_count = endpoint_count
        self._hurried = False
        # Given the client after each keepalive: the store learns the cluster's members
        # (rate-limited there), so replaced members do not leave it with no endpoint.
        self._learn_members = learn_members
        self._client_fresh = False  # no keepalive on this client yet
        # A client without a token, for keepalives while the credentials are refused.
        self._keepalive_client = keepalive_client
        # An expired auth token (a JWT's fixed lifetime, a simple token's TTL between
        # keepalives) is not an outage: a new client authenticates again, quietly and at once.
        self._token_expired = token_expired
        # Told on every failure, so the next client starts at the next endpoint: a member that
        # hangs must not take every retry (and with them the lease) down with it.
        self._endpoint_failed = endpoint_failed
        # A new client's connection gets `connect_budget` (etcd's own timeout) to come up while
        # its calls still time out at theirs (see `_drop_client_unless_connecting`).
        self._still_connecting = still_connecting
        self._connect_budget = connect_budget
        self._client_since = 0.0  # when the client was made (lease_clock)
        self._client_answered = False  # a step went through on it
        self.host = host
        self.ttl = ttl
        self._report = report
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closing = False
        self._reconnect = False
        self._wanted: dict[str, bytes | None] = {}
        # Counts `want` changes; `_converge` notes the count it wrote for (see `_between_keys`).
        self._wants_changed = 0
        self._wants_written = 0
        self._written: dict[str, bytes | None] = {}  # what etcd holds from us (under the lease)
        # Keys a value was sent for on the current lease, answered or not: one whose answer was
        # lost (etcd killed as it committed) may be there. The stop's warning names them.
        self._sent: set[str] = set()
        # Per key, the mod revision and value of our last write (or of this host's value read
        # to take over). Writes are guarded by both: a revision alone also matched another
        # host's value in a recreated etcd, whose revisions start again from 1.
        self._revision: dict[str, tuple[int, bytes]] = {}
        self._conflicts: dict[str, str] = {}
        # Keys this process has written: a value of our host on another live lease is an
        # earlier run's only before that (taken over at once), a clone's after it (left).
        self._held: set[str] = set()
        # Leases of this process given up (lapsed by our count): still etcd's, they are ours.
        # The last few only: one per outage over months, and each lapses within its TTL.
        self._past_leases: collections.deque[int] = collections.deque(maxlen=16)
        # Of those, the ones given up by our own count (not renewed for their TTL) that etcd
        # may hold still, with the keys that may be on them: etcd expires no lease while it
        # has no leader, and a new leader extends every lease by a whole TTL. Forgotten once a
        # read-back found none of our keys left on them; revoked by `close` until then (a stop
        # said "no lease held; nothing to revoke", exit 0, and the key stayed).
        self._given_up: collections.deque[tuple[int, list[str]]] = collections.deque(maxlen=16)
        # When each key another host holds is tried again (lease_clock). Per key: a conflict
        # used to hold the whole registrar back for ttl/3, so every other registration's
        # change (a check down, a drain, an exec child gone) waited too.
        self._conflict_retry: dict[str, float] = {}
        self._client: Any = None
        self._lease: int | None = None  # its id
        self._lease_expires = 0.0  # lease_clock: the last renewal (or the grant) plus its TTL
        self._next_keepalive = 0.0
        self._retry_at = 0.0
        # Jittered: after an etcd outage a fleet's registrars must not retry in lockstep.
        self._retry = Backoff(RETRY_MIN, max(ttl / 3, 1.0))
        self.connected = False
        # A "lost" was reported since the last "connected". Not `connected` alone: a registrar
        # refused from its first call on (a role that may read but not write, a password
        # refused) never reported one, so /ready said "etcd not connected" without a reason
        # and the log said nothing at all.
        self._said_lost = False
        # Calls failed in a row, each on the next endpoint: etcd is unreachable once every
        # endpoint failed in turn, not at the first member that did.
        self._failed_in_row = 0
        self._refused_said = ""  # the refusal reported (keys and etcd's answer); "" for none
        self._read_refused_said = ""  # the same for reads: cleared only by a read that passes
        self._reread = False  # a refused read-back was tried again on a new client
        self._reauthenticated = False
        self._regranted = False
        self.keepalive_failures = 0
        self._thread = threading.Thread(target=self._run, daemon=True, name="registrar")

    # ---- the loop's side

    def start(self) -> Registrar:
        self._thread.start()
        return self

    def revive(self) -> None:
        """Called by the loop each tick: a registrar thread killed by a bug is started again
        (its lease, keys and wants are kept), never left dead under a green /health."""
        with self._lock:
            if self._closing or self._thread.is_alive() or self._thread.ident is None:
                return
        log.error("register: the etcd thread stopped unexpectedly; starting it again")
        self._thread = threading.Thread(target=self._run, daemon=True, name="registrar")
        self._thread.start()

    def want(self, key: str, value: dict[str, Any] | None) -> None:
        encoded = None if value is None else json.dumps(value, sort_keys=True).encode()
        with self._lock:
            if self._wanted.get(key, None) == encoded and key in self._wanted:
                return
            self._wanted[key] = encoded
            self._conflict_retry.pop(key, None)  # another value: tried at once
            self._wants_changed += 1
        self._wake.set()

    def reconnect(self) -> None:
        """This host's address changed: a connection made from the old one can be dead without
        a word (no reset comes from an address that is gone), so the next call, at once, goes
        on a new client instead of waiting for a timeout first. The lease is kept."""
        with self._lock:
            self._reconnect = True
        self._wake.set()

    def lease_until(self) -> float:
        """Until when (lease_clock) a value to publish can be on etcd: the lease's TTL from its
        last renewal; -inf with a value to publish and no lease (lost, or not granted yet), or
        a key to publish not written on it yet (none there: /ready said 200 while 60 keys
        over a slow link were written, one after another, for seconds); inf with nothing to
        publish (or only keys another host holds)."""
        with self._lock:
            wanted = [k for k, v in self._wanted.items()
                      if v is not None and k not in self._conflicts]
            unwritten = any(self._written.get(k) is None for k in wanted)
        lease, expires = self._lease, self._lease_expires
        if not wanted:
            return float("inf")
        return expires if lease is not None and not unwritten else float("-inf")

    @property
    def writes_refused(self) -> bool:
        """etcd answers but refuses a write of ours (permission denied)."""
        return bool(self._refused_said)

    def settled(self) -> bool:
        """True when etcd holds what is wanted (as far as this registrar knows)."""
        with self._lock:
            return all(self._written.get(k) == v for k, v in self._wanted.items()
                       if k not in self._conflicts)

    def flush(self, timeout: float) -> bool:
        deadline = lease_clock.now() + timeout
        while lease_clock.now() < deadline:
            if self.settled():
                return True
            self._wake.set()
            time.sleep(0.01)
        return self.settled()

    def hurry(self) -> None:
        """A second stop signal: `close` stops waiting for etcd. Safe in a signal handler
        (one assignment, no lock)."""
        self._hurried = True

    def close(self, timeout: float) -> bool:
        """Stop the thread, then revoke the lease (its keys go with it) through any member
        that answers, within `timeout` (`StopRevoke`; its first try always runs), and each
        lease given up that may still hold a key of ours (`_given_up`). True when nothing of
        ours is left on them: revoked, gone already, or no key of ours on them.

        The revoke does not wait for the thread: it may be stuck in a call to a member that
        hangs (frozen, black-holed) for the whole call timeout, and its own final revoke came
        after that, on that member, or never (the process had exited): a stopped node's key
        stayed for its lease's TTL and proxies sent it traffic. The tries run on a thread of
        their own, so that `hurry` ends the wait at once, even in the middle of a call."""
        deadline = lease_clock.now() + timeout
        with self._lock:
            self._closing = True
        self._wake.set()
        self._thread.join(min(CLOSE_JOIN, timeout))  # an idle thread ends at once
        lease = self._lease
        with self._lock:  # (the thread may still be in a step that ends with it)
            given_up = {g: keys for g, keys in self._given_up if keys and g != lease}
        if lease is None and not given_up:
            log.info("register: no lease held; nothing to revoke")
            return True
        leases = ([lease] if lease is not None else []) + list(given_up)
        revokes = [StopRevoke(self._stop_client, self._endpoint_failed,
                              self._endpoint_count()) for _ in leases]
        done: list[bool] = []

        def revoke_each() -> None:
            for each, revoke in zip(leases, revokes, strict=True):
                # (the first try always runs; the next lease's, only within the deadline)
                done.append(bool(not done or lease_clock.now() < deadline)
                            and revoke.run(each, deadline))

        worker = threading.Thread(target=revoke_each, daemon=True, name="registrar-stop")
        worker.start()
        while worker.is_alive() and not self._hurried:
            worker.join(0.05)
        removed = True
        for i, each in enumerate(leases):
            if i < len(done) and done[i]:
                continue
            why = ("a second stop signal: not waiting for etcd" if i >= len(done) else
                   revokes[i].why() if revokes[i].tries else "no time left")
            if each == lease:
                removed = self._left_on_lease(lease, why) and removed
            else:
                log.warning("register: could not revoke lease %x, given up when it could not "
                            "be renewed (%s); etcd may hold it still (a cluster without a "
                            "leader expires no lease), and its keys with it until %ss after "
                            "etcd has a leader: %s", each, why, self.ttl,
                            ", ".join(given_up[each]))
                removed = False
        return removed

    def _left_on_lease(self, lease: int, why: str) -> bool:
        """The current lease could not be revoked: says which keys of ours it keeps until
        its TTL; True when there are none."""
        with self._lock:
            # (and what was sent without an answer: a put etcd committed as it died is there)
            held = sorted({k for k, v in self._written.items() if v is not None}
                          | {k for k in self._sent if k not in self._written})
        if held:
            log.warning("register: could not revoke lease %x (%s); its keys go within %ss, "
                        "when it lapses: %s", lease, why, self.ttl, ", ".join(held))
            return False
        log.info("register: could not revoke lease %x (%s); no key of ours is on it, and "
                 "it lapses within %ss", lease, why, self.ttl)
        return True

    def conflicts(self, keys: Sequence[str], wait_out_leases: bool = False,
                  waiting: Callable[[], None] = lambda: None,
                  stopped: Callable[[], bool] = lambda: False) -> list[Conflict]:
        """Keys held by another host now (a read, at start). Raises StoreUnavailable.

        With `wait_out_leases`, keys that all live on leases get one lease TTL (plus a second)
        to lapse first, re-read every 0.5 s on the same client: a host that died or was
        replaced leaves its key until then. `waiting` is called at each re-read (the caller's
        heartbeat: the wait is work, not a hang); `stopped` ends the wait (a stop signal).
        """
        client = self._new_client()
        try:
            found = self._held_by_others(client, keys)
            if wait_out_leases and found and all(c.lease_ttl for c in found):
                wait = max(c.lease_ttl for c in found) + 1.0
                log.warning("register: %s is registered by host %r; waiting up to %.0fs for "
                            "its lease to lapse (a host that is gone stops renewing it)",
                            found[0].key, found[0].owner, wait)
                deadline = lease_clock.now() + wait
                while found and lease_clock.now() < deadline and not stopped():
                    waiting()
                    until = min(deadline, lease_clock.now() + 0.5)
                    while lease_clock.now() < until and not stopped():
                        time.sleep(0.05)
                    found = self._held_by_others(client, keys)
            return found
        except Exception as exc:
            raise StoreUnavailable(f"reading {', '.join(keys)}: {describe_error(exc)}") from None
        finally:
            client.close()

    def _held_by_others(self, client: Any, keys: Sequence[str]) -> list[Conflict]:
        """A key whose lease lapsed between its read and its lease's (TTL -1: gone, and the
        key with it) is none: it was taken for a key on no lease, refused at once (exit 2,
        not restarted), as a replaced node's lease ran out just then."""
        found = []
        for key in keys:
            raw, meta = client.get(key)
            if raw is not None and owner_of(raw) != self.host:
                lease_ttl = 0
                if meta is not None and int(meta.lease_id):
                    info = client.get_lease_info(int(meta.lease_id))
                    if int(info.TTL) < 0:
                        continue
                    lease_ttl = max(int(info.grantedTTL), 0)
                found.append(Conflict(key, owner_of(raw) or _no_owner(raw), lease_ttl))
        return found

    # ---- the thread

    def _run(self) -> None:
        try:
            self._loop()
        except Exception:  # (`revive` starts it again; said once, not again as a thread death)
            log.exception("register: the etcd thread failed")

    def _loop(self) -> None:
        while True:
            with self._lock:
                closing = self._closing
            if closing:  # (`close` revokes the lease)
                self._drop_client()
                return
            with self._lock:
                reconnect, self._reconnect = self._reconnect, False
            if reconnect:  # (a retry waiting for its backoff goes now, too)
                self._drop_client()
                self._retry_at = 0.0
            now = lease_clock.now()
            if now >= self._retry_at:
                try:
                    self._step(now)
                    self._retry.reset()
                except Exception as exc:  # grpc, pyetcd and ValueError alike: etcd trouble
                    if self._token_expired(exc) and not self._reauthenticated:
                        self._reauthenticate()
                        continue
                    if lease_not_found(exc) and self._lease is not None \
                            and not self._regranted:
                        self._lease_gone()
                        continue
                    if isinstance(exc, EndpointNotNamed):
                        # The SRV records moved (new members, a rebuilt cluster): the next
                        # step connects to those named now; not an unreachable etcd.
                        log.warning("register: %s", exc)
                        self._drop_client()
                        continue
                    if isinstance(exc, ReadRefused):
                        # A client made while auth was off has no token, and once it is on
                        # again etcd refuses its reads: a new client authenticates. Asked
                        # again at once, keepalive and read-back, before it is said.
                        self._drop_client()
                        if not self._reread:
                            self._reread = True
                            self._next_keepalive = 0.0
                            continue
                    if isinstance(exc, WriteRefused):  # (a ReadRefused too)
                        self._write_refused(exc)
                    else:
                        self._lost(exc)
                else:
                    self._client_answered = True
                    self._reauthenticated = False
                    self._regranted = False
                    self._failed_in_row = 0
                    self._writes_accepted()
            now = lease_clock.now()
            with self._lock:
                retries = list(self._conflict_retry.values())
            if self._retry_at > now:
                until = self._retry_at
            elif self._lease is not None:
                until = self._next_keepalive
            else:  # no lease: a want() or close() gives work, or the next ask of etcd
                until = min(now + 1.0, self._next_keepalive)
            if retries and self._retry_at <= now:
                until = min(until, *retries)
            self._wake.wait(max(0.0, until - now))
            self._wake.clear()

    def _step(self, now: float) -> None:
        if self._client is None:
            try:
                self._client = self._new_client()
            except AuthenticationFailed:
                self._renew_without_token(now)
                raise
            self._client_fresh = True
            self._client_since = lease_clock.now()
            self._client_answered = False
        if self._lease is not None and now >= self._lease_expires \
                and not self._still_held() and self._lease is not None:
            # Not renewed for its whole TTL (keepalives failing, or etcd refusing what the
            # lease should hold): gone whatever the other calls say, so start over. (None
            # now: etcd said it is gone, and `_keepalive` said so.)
            log.warning("register: lease %x lapsed (not renewed for its TTL); starting over "
                        "with a new lease", self._lease)
            self._forget_lease(given_up=True)
        read_back = False  # every key read back: none of ours left on a lease given up
        if self._lease is None:
            if not self._has_work():  # nothing to publish: no lease needed yet
                if not self.connected or now >= self._next_keepalive:
                    # Is etcd there? (for /ready and the status line; a call any role may
                    # make.) Asked as often as a lease would be renewed: with nothing
                    # registered no other call is made, and an etcd that went away meanwhile
                    # was reported connected (/ready 200) for as long as it stayed away.
                    self._client.status()
                    self._verify_absent()
                    read_back = True
                    self._reads_accepted()
                    # The members too, as after a keepalive: an instance whose checks stay
                    # down for months holds no lease, and its configured members may all be
                    # replaced meanwhile (it could never register once its checks passed).
                    self._learn_members(self._client, self._client_fresh)
                    self._client_fresh = False
                    self._next_keepalive = now + max(self.ttl / 3, 0.2)
                    self._connected()
                self._converge()  # a stale value of ours to delete; conflicts to clear
                self._read_back(read_back)
                return
            try:
                lease = self._client.lease(self.ttl)
            except Exception as exc:
                if _nospace(exc):  # (etcd answers: a refusal, said as such, not an outage)
                    with self._lock:
                        keys = sorted(k for k, v in self._wanted.items() if v is not None)
                    raise WriteRefused(keys, exc) from None
                raise
            self._lease, granted = int(lease.id), int(lease.ttl)
            self._renewed(granted)
            with self._lock:
                self._written.clear()  # keys on an old lease are gone or about to go
                self._sent.clear()
            self._report(RegistrarEvent("lease_granted", detail=f"lease {self._lease:x}, "
                                        f"ttl {granted}s"))
        elif now >= self._next_keepalive:
            if self._stale():
                self._converge()  # a stale key that cannot be fixed is not kept alive
            self._keepalive(self._client)
            if self._lease is None:  # it had expired or was revoked: register again at once
                self._step(lease_clock.now())
                return
            self._verify()
            self._verify_absent()
            read_back = True
            self._reads_accepted()
            self._learn_members(self._client, self._client_fresh)
            self._client_fresh = False
        self._converge()
        self._read_back(read_back)
        self._connected()  # (a refused write reports its own: `_write_refused`)

    def _read_back(self, done: bool) -> None:
        """After a step that read every key back and wrote what differed: what is wanted is on
        the current lease, and what is not was deleted, so a lease given up holds nothing of
        ours any more (`close` need not revoke it)."""
        if not done:
            return
        with self._lock:
            given_up = list(self._given_up)
            self._given_up.clear()
        if given_up:
            log.debug("register: nothing of ours left on lease(s) given up: %s",
                      ", ".join(f"{lease:x}" for lease, _ in given_up))

    def _still_held(self) -> bool:
        """Past its TTL by our clock, is the lease still etcd's? A new leader extends every
        lease when it is elected, so after a frozen leader (the member we talked to) the lease
        outlives our count; it was given up anyway, and every key moved to a new lease. One
        keepalive asks. Not while a key on it is stale (that one must lapse), and a keepalive
        that fails (etcd unreachable, or keepalives alone refused, as through a broken proxy)
        still means start over."""
        if self._stale():
            return False
        try:
            self._keepalive(self._client)
        except Exception as exc:
            log.debug("register: lease %x not renewed past its TTL: %s", self._lease,
                      describe_error(exc))
            return False
        if self._lease is None:
            return False  # gone: `_keepalive` said so and forgot it
        log.info("register: lease %x renewed after %ss without a keepalive; etcd still held it",
                 self._lease, self.ttl)
        return True

    def _renewed(self, ttl: int) -> None:
        now = lease_clock.now()
        self._lease_expires = now + ttl
        self._next_keepalive = now + max(ttl / 3, 0.2)

    def _forget_lease(self, given_up: bool = False) -> None:
        """`given_up`: by our own count, not because etcd said it is gone (see `_given_up`)."""
        if self._lease is not None:
            self._past_leases.append(self._lease)
            if given_up:
                with self._lock:
                    keys = sorted({k for k, v in self._written.items() if v is not None}
                                  | self._sent)
                    self._given_up.append((self._lease, keys))
        self._lease = None
        with self._lock:
            self._written.clear()
            self._sent.clear()

    def _renew_without_token(self, now: float) -> None:
        """Credentials refused: renew the lease anyway while no key it holds is stale."""
        if (self._lease is None or self._keepalive_client is None
                or now < self._next_keepalive or now >= self._lease_expires or self._stale()):
            return
        client = self._keepalive_client()
        try:
            self._keepalive(client)
            if self._lease is not None:
                log.debug("register: lease %x renewed without a token", self._lease)
        except Exception as exc:
            log.debug("register: lease keepalive without a token failed: %s", describe_error(exc))
        finally:
            client.close()

    def _connected(self) -> None:
        if not self.connected:
            self.connected = True
            self._said_lost = False
            self._report(RegistrarEvent("connected"))

    def _stale(self) -> bool:
        """A key etcd holds under our lease says what is no longer wanted."""
        with self._lock:
            return any(v is not None and self._wanted.get(k) != v
                       for k, v in self._written.items())

    def _has_work(self) -> bool:
        with self._lock:
            return any(v is not None for v in self._wanted.values())

    def _keepalive(self, client: Any) -> None:
        """Renew the lease; when it had expired or was revoked, forget it (and its keys)."""
        try:
            responses = list(client.refresh_lease(self._lease))
        except Exception as exc:
            if not self._token_expired(exc):  # (an expired token is renewed, not a failure)
                self.keepalive_failures += 1
                self._report(RegistrarEvent("keepalive_failed"))
            raise
        ttl = int(responses[0].TTL) if responses else 0
        if ttl <= 0:  # expired or revoked meanwhile: its keys are gone
            self.keepalive_failures += 1
            self._report(RegistrarEvent("keepalive_failed", detail="lease expired"))
            log.warning("register: lease %x expired or was revoked; granting a new one and "
                        "registering again", self._lease)
            self._forget_lease()
            return
        self._renewed(ttl)

    def _keep_alive_if_due(self, progress: bool = False) -> None:
        """Renew the lease when it is due in the middle of a step, whose calls go one key at a
        time: with many registrations over a slow link (60 keys, 50 ms of round trip, ttl 3s)
        writing them all outlasted the lease, which lapsed before the step's end and its
        keepalive, again at every try, so they were never all registered. Not while a key etcd
        holds under it is stale, unless the step has just written one (fixing, not refused:
        a key whose write is refused is still never kept alive)."""
        if self._lease is None or lease_clock.now() < self._next_keepalive:
            return
        if self._stale() and not progress:
            return
        self._keepalive(self._client)

    def _between_keys(self) -> None:
        """Between two read-backs: the lease renewed when due, and a change the loop asked for
        meanwhile written at once. A read-back of many keys over a slow link lasts seconds (60
        keys, 50 ms of round trip: 4.5 s, and one began every ttl/3), and a check gone down
        waited for its end: the key of an instance known to be down stayed "ready" that long,
        where one registration's goes within a round trip."""
        self._keep_alive_if_due()
        with self._lock:
            changed = self._wants_changed != self._wants_written
        if changed:
            self._converge()

    def _verify(self) -> None:
        """Read back what we wrote; forget (so `_converge` rewrites) whatever etcd lost."""
        if self._lease is None:
            return
        with self._lock:
            keys = [k for k, v in self._written.items() if v is not None]
        for key in keys:
            self._between_keys()
            # One linearizable range per key (see the module docstring: no transaction).
            raw, meta = self._read(key)
            with self._lock:
                expected = self._written.get(key)
                if expected is None:
                    continue
                intact = (raw == expected and meta is not None
                          and int(meta.lease_id) == self._lease)
                if intact:
                    continue
                del self._written[key]
            last = self._revision.pop(key, None)
            if last is not None and meta is not None:
                self._went_back(key, meta, last[0])
            if raw is not None and meta is not None and owner_of(raw) == self.host \
                    and int(meta.lease_id) not in (0, self._lease):
                continue  # our host name on another lease: `_write` tells a clone (left)
            log.warning("register: %s %s; writing it again", key,
                        "was deleted" if raw is None else "was changed under us")

    def _verify_absent(self) -> None:
        """Read the keys wanted absent: one holding this host's value on no lease (a backup
        restored, a hand-made copy) never goes by itself, and a "ready" there sent traffic to
        an instance whose checks are down for as long as they stayed down. It is ours (it
        names this host): deleted, guarded by its revision. A key on a lease (an earlier run
        of this host killed with SIGKILL) is left to go with that lease within its TTL, so a
        restart does not take a healthy instance out while its checks rise again; another
        host's value is not ours to touch. One on our own lease is a write that etcd committed
        but whose answer was lost (a timeout): never recorded, so never deleted, it was kept
        alive by our keepalives for as long as the checks stayed down. One on a lease of ours
        given up (`_past_leases`) is ours too: etcd kept that lease (no leader for longer than
        its TTL, then extended by a whole TTL at the election; a restored backup), and the
        "ready" of an instance whose checks went down meanwhile was served for that TTL."""
        with self._lock:
            keys = [k for k, v in self._wanted.items() if v is None
                    and k not in self._conflicts and self._written.get(k) is None]
        for key in keys:
            self._between_keys()
            raw, meta = self._read(key)
            if raw is None or meta is None or owner_of(raw) != self.host:
                continue
            lease = int(meta.lease_id)
            given_up = lease in self._past_leases
            if lease and lease != self._lease and not given_up:
                continue  # an earlier run's lease: the key goes with it
            with self._lock:
                if key not in self._wanted or self._wanted[key] is not None:
                    continue  # wanted meanwhile: `_converge` takes it over
                self._written[key] = raw  # stale: `_converge` deletes it
            self._revision[key] = (int(meta.mod_revision), raw)
            on = ("no lease" if not lease else
                  f"lease {lease:x}, one of ours given up (etcd kept it)" if given_up else
                  "our lease (a write whose answer was lost)")
            log.warning("register: %s holds this host's value on %s, but it is not registered "
                        "now; deleting it", key, on)

    def _read(self, key: str) -> tuple[bytes | None, Any]:
        """A read-back of `key`; ReadRefused when the role may not read it."""
        try:
            return self._client.get(key, serializable=False)  # type: ignore[no-any-return]
        except Exception as exc:
            if _permission_denied(exc):
                raise ReadRefused([key], exc) from None
            raise

    def _converge(self) -> None:
        """Write what differs. A value only ever goes on the lease: with none held (nothing was
        to publish when this step began) a value wanted meanwhile waits for the next step,
        which grants one (want() wakes it). It was put on no lease, to be put again on a new
        one a moment later; a registrar killed in between left a key that never goes."""
        now = lease_clock.now()
        with self._lock:
            self._wants_written = self._wants_changed
            todo = [(k, v) for k, v in self._wanted.items()
                    if (self._written.get(k) != v or k in self._conflicts)
                    and self._conflict_retry.get(k, 0.0) <= now
                    and (v is None or self._lease is not None)]
        refused: list[str] = []
        cause: Exception | None = None
        wrote = False
        for key, value in todo:
            # (a key being fixed is progress; one refused is not kept alive by it)
            self._keep_alive_if_due(progress=wrote and not refused)
            if value is not None and self._lease is None:
                continue  # the lease was gone: the next step grants one and writes it
            try:
                self._write(key, value)
                wrote = True
            except Exception as exc:
                # etcd refusing this key (the role may not write it) says nothing about the
                # others: they are written all the same, then the refusal is reported. It
                # used to end the step at every try, and the keys after it (a file sorted
                # later) were never registered, nor their changes ever written.
                if not _permission_denied(exc) and not _nospace(exc):
                    raise
                refused.append(key)
                cause = cause or exc
        if cause is not None:
            raise WriteRefused(refused, cause)

    def _write(self, key: str, value: bytes | None) -> None:
        c = self._client
        t = c.transactions
        last = self._revision.get(key)
        for _ in range(5):
            if value is not None:
                guard = [t.mod(key) == last[0], t.value(key) == last[1]] if last else [
                    t.version(key) == 0]
                with self._lock:
                    self._sent.add(key)
                ok, responses = c.transaction(compare=guard,
                                              success=[t.put(key, value, lease=self._lease)],
                                              failure=[t.get(key)])
            else:
                # Only a value of ours is deleted: guarded by the revision of our last write,
                # or of this host's value read just now. (An unguarded delete, after a
                # conflict had forgotten that revision, took away the key another host had
                # registered meanwhile.)
                if not last:
                    raw, meta = c.get(key, serializable=False)
                    if raw is None:
                        self._done(key, None, None)
                        return
                    if owner_of(raw) != self.host:
                        self._not_ours(key, owner_of(raw) or _no_owner(raw))
                        return
                    if self._other_registrar(key, meta, value):
                        return
                    last = (int(meta.mod_revision), raw)
                ok, responses = c.transaction(
                    compare=[t.mod(key) == last[0], t.value(key) == last[1]],
                    success=[t.delete(key)], failure=[t.get(key)])
            if ok:
                revision = int(responses[0].response_put.header.revision if value is not None
                               else responses[0].response_delete_range.header.revision)
                self._done(key, value, revision if value is not None else None)
                return
            current = responses[0] if responses else []
            if not current:  # absent
                if value is None:
                    self._done(key, None, None)
                    return
                last = None
                continue
            raw, meta = current[0]
            owner = owner_of(raw)
            if owner != self.host:
                if value is None:
                    self._not_ours(key, owner or _no_owner(raw))
                else:
                    self._conflict(key, owner or _no_owner(raw))
                return
            if last is not None:
                self._went_back(key, meta, last[0])
            if self._other_registrar(key, meta, value):
                return
            last = (int(meta.mod_revision), raw)  # ours (an earlier run of this host)
        raise StoreUnavailable(f"{key}: changed under us five times in a row")

    def _other_registrar(self, key: str, meta: Any, value: bytes | None) -> bool:
        """Our host's value is there on another lease etcd still holds: True when it is left
        alone (neither overwritten nor deleted). A key's first write takes it over (an earlier
        run of this host, killed: its lease lives until its TTL, and a restart must register
        at once); after that the lease is another live registrar's with our host name (a
        clone), and a conflict. A delete never takes a key from a live lease: an earlier
        run's goes with it (as in `_verify_absent`)."""
        lease = int(meta.lease_id)
        first = key not in self._held
        if not lease or lease == self._lease or lease in self._past_leases \
                or (first and value is not None):
            return False
        if int(self._client.get_lease_info(lease).TTL) <= 0:
            return False  # lapsed: the key goes (or went) with it
        if first:
            log.info("register: %s holds this host's value on lease %x (an earlier run's); "
                     "left to go with that lease", key, lease)
            self._done(key, None, None)
        else:
            self._conflict(key, f"another registrar with host name {self.host!r} on lease "
                           f"{lease:x}", lease)
        return True

    def _went_back(self, key: str, meta: Any, ours: int) -> None:
        """`key` was last modified before our own write of it, at revision `ours`: etcd's
        history went back (restored from a backup, a VM snapshot rolled back, or recreated),
        which no writer can do. What it holds of our host is then an earlier run's (a restored
        lease gets its whole TTL again, and nobody renews it): taken over, as by a first
        write. It was taken for a clone's live lease: an ERROR "two hosts share a host name",
        /ready 503, and the key left to a lease that lapsed with it."""
        if int(meta.mod_revision) >= ours or key not in self._held:
            return
        self._held.discard(key)
        log.warning("register: etcd's history went back (restored from a backup?): %s was last "
                    "modified at revision %s, before our write at %s; this host's value there "
                    "is an earlier run's, taken over", key, int(meta.mod_revision), ours)

    def _done(self, key: str, value: bytes | None, revision: int | None) -> None:
        with self._lock:
            self._written[key] = value
            conflict = self._conflicts.pop(key, None)
            self._conflict_retry.pop(key, None)
        if revision is None or value is None:
            self._revision.pop(key, None)
        else:
            self._revision[key] = (revision, value)
            self._held.add(key)
        if conflict is not None:
            log.info("register: %s is ours again (was held by %s)", key, conflict)
        self._report(RegistrarEvent("written", key=key,
                                    value=None if value is None else json.loads(value)))

    def _not_ours(self, key: str, owner: str) -> None:
        """To be absent, and another host holds it: nothing of ours is there, so nothing is
        refused (no conflict: that is a value of ours that cannot be written) and nothing is
        deleted."""
        with self._lock:
            self._conflicts.pop(key, None)
        log.info("register: %s is registered by host %r; not ours to delete", key, owner)
        self._done(key, None, None)

    def _conflict(self, key: str, owner: str, lease: int = 0) -> None:
        """`lease`: the other live lease of a registrar with our host name (a clone)."""
        with self._lock:
            known = self._conflicts.get(key)
            self._conflicts[key] = owner
            self._conflict_retry[key] = lease_clock.now() + max(self.ttl / 3, RETRY_MIN)
        self._revision.pop(key, None)
        if known != owner:
            self._report(RegistrarEvent("conflict", key=key, detail=owner, lease=lease))

    def _lease_gone(self) -> None:
        """A write on our lease was refused because etcd no longer has it (revoked from
        outside, or etcd recreated) before a keepalive said so. Not an outage: a new lease and
        every key written again, at once. (It was taken for etcd unreachable: /ready 503, the
        endpoint given up, and the write retried on the dead lease; the keepalive that would
        have noticed comes only after a stale key is written, so it never came, and the lease
        was given up only when its whole TTL had run out.) Once per failure streak."""
        log.warning("register: lease %x is gone (revoked, or etcd recreated); granting a new "
                    "one and registering again", self._lease)
        self._regranted = True
        self._forget_lease()

    def _reauthenticate(self) -> None:
        """Once per failure streak: a token refused twice in a row is a real problem."""
        log.debug("register: etcd auth token expired; authenticating again")
        self._reauthenticated = True
        self._drop_client()

    def _write_refused(self, exc: WriteRefused) -> None:
        """etcd answers but refuses our writes (the role may not write the prefix): connected,
        and the refusal reported by itself, naming the keys. The client and the endpoint are
        kept (every member refuses alike); retried with the outage's backoff, so a permission
        granted again is used within ttl/3. Keepalives do not hide a stale key meanwhile:
        `_step` converges (and fails) before renewing, so the lease lapses with it."""
        self._connected()
        said = str(exc)
        reading = isinstance(exc, ReadRefused)
        if said != (self._read_refused_said if reading else self._refused_said):
            if reading:
                self._read_refused_said = said
            else:
                self._refused_said = said
            self._report(RegistrarEvent("refused", key=", ".join(exc.keys),
                                        detail=exc.detail, verb=exc.verb,
                                        nospace=exc.nospace))
        self._retry_at = lease_clock.now() + self._retry.next()

    def _writes_accepted(self) -> None:
        """A step went through: a write refusal reported before is over. (A read refusal is
        over only once the read-back passes: most steps read nothing.)"""
        if self._refused_said:
            self._refused_said = ""
            self._report(RegistrarEvent("accepted"))

    def _reads_accepted(self) -> None:
        self._reread = False
        if self._read_refused_said:
            self._read_refused_said = ""
            self._report(RegistrarEvent("accepted", verb="reading"))

    def _lost(self, exc: BaseException) -> None:
        self._failed_in_row += 1
        if self._failed_in_row < self._endpoint_count():
            # One member failed (restarted by an upgrade, rebooted, cut off): the next is asked
            # at once. Reported after one failure, every member restart of a rolling upgrade
            # said "etcd unreachable" (a WARNING, /ready 503) while a quorum served.
            log.debug("register: etcd call failed (%s); trying the next endpoint",
                      describe_error(exc))
            self._drop_client_unless_connecting()
            if not isinstance(exc, StoreUnavailable):
                self._endpoint_failed()
            self._retry_at = 0.0
            return
        reason = describe_error(exc)
        # (unreachable now: what it refused is told again when back)
        self._refused_said = self._read_refused_said = ""
        if not self._said_lost:
            self.connected = False
            self._said_lost = True
            self._report(RegistrarEvent("lost", detail=reason))
        self._drop_client_unless_connecting()
        if not isinstance(exc, StoreUnavailable):  # (the store moved on already)
            self._endpoint_failed()
        self._retry_at = lease_clock.now() + self._retry.next()

    def _drop_client_unless_connecting(self) -> None:
        """After a failed call: a new client, unless this one's connection is still being made
        (or was made since) and has had less than `connect_budget`. Over a slow link (a
        round trip of 0.5 s, a lease TTL of 2 s: calls time out at ttl/3) a connection takes
        longer to come up than a call may take; made anew after every failure, it never came
        up, and the registrar never registered ("etcd unreachable"). The failure still counts
        (reported, the next endpoint asked: the client moves on by itself), so a dead link
        or a frozen member is said and left as fast as before; a client that has answered
        once is replaced at once, as before (a half-open connection, a NAT that forgot it)."""
        if (self._client is not None and not self._client_answered
                and lease_clock.now() - self._client_since < self._connect_budget
                and self._still_connecting(self._client)):
            log.debug("register: keeping the etcd connection being made (%.1fs of its %gs)",
                      lease_clock.now() - self._client_since, self._connect_budget)
            return
        self._drop_client()

    def _drop_client(self) -> None:
        """Close the client (best effort); the next step makes a new one."""
        client, self._client = self._client, None
        if client is not None:
            try:
                client.close()
            except Exception as close_exc:
                log.debug("closing etcd client: %s", close_exc)

def _permission_denied(exc: BaseException) -> bool:
    """etcd's answer to a write the role may not make (PERMISSION_DENIED): about one key."""
    return "PERMISSION_DENIED" in describe_error(exc)


def _nospace(exc: BaseException) -> bool:
    """etcd's NOSPACE alarm is raised (its backend quota is full: months of growth without
    compaction): it refuses puts, transactions and lease grants, and serves reads and
    keepalives. It answers: said as "etcd unreachable" with etcd_connected 0, it sent
    operators after a network fault."""
    return "database space exceeded" in describe_error(exc)


def _no_owner(raw: bytes) -> str:
    return f"a value without a host field ({raw[:60]!r})"
