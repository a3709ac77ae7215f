"""The address a registration publishes when its file names none, and following it.

That address is the source address this host uses to reach etcd. It is not fixed for the life of
a sidecar: a DHCP lease renewed with another address, a cloud NIC re-attached, a VM migrated.
AddressFollower runs the detection again on a thread of its own (it may resolve endpoint names
or SRV records in DNS, which must never stall the loop): every POLL_INTERVAL, and soon after the
kernel reports an address added or removed (rtnetlink), and tells the loop only when the answer
changed. The loop then moves the registrations (`moved`) and republishes them.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import select
import socket
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from confsync import resolve
from confsync.backoff import Backoff
from confsync.errors import ConfigError, StoreUnavailable
from confsync.register import lease_clock
from confsync.settings import EtcdSettings
from confsync.stores.endpoints import endpoint_urls

log = logging.getLogger("confsync.register")

POLL_INTERVAL = 10.0  # the detection runs again this often even when the kernel says nothing
SETTLE = 0.2  # after an address event, wait for the burst (new address added, old removed)
# Address events come all the time on some hosts (a Kubernetes node adds a veth, and its
# link-local address, per pod): they start a detection (maybe a DNS or SRV query) at most this
# often.
MIN_GAP = 1.0
# rtnetlink multicast groups: IPv4 and IPv6 addresses added or removed (linux/rtnetlink.h).
RTMGRP_IPV4_IFADDR = 0x10
RTMGRP_IPV6_IFADDR = 0x100


class LookupFailing(OSError):
    """No endpoint name could be resolved for now (DNS silent past the deadline, or
    EAI_AGAIN), or no route to etcd yet: a failure of the moment, not of the configuration."""


class StoppedWaiting(Exception):
    """A stop signal came while the start waited for DNS or a route (`default_address`)."""


def source_address(endpoints: Sequence[str], timeout: float = 5.0) -> str:
    """The source address the kernel picks to reach the first resolvable etcd endpoint (a UDP
    connect sends nothing). Each name's lookup is given `timeout` (getaddrinfo has no bound of
    its own). Raises OSError naming the last endpoint tried and why not; LookupFailing when
    a lookup failed only for now."""
    problem = "no endpoints"
    transient = False
    for url in endpoints:
        parts = urlsplit(url if "://" in url else "http://" + url)
        try:
            infos = resolve.getaddrinfo(parts.hostname, parts.port or 2379,
                                        type=socket.SOCK_DGRAM, timeout=timeout)
        except (OSError, UnicodeError) as exc:
            problem = f"{url}: {exc}"
            transient = transient or (isinstance(exc, socket.gaierror)
                                      and exc.errno == socket.EAI_AGAIN)
            continue
        for family, _, _, _, address in infos:
            with socket.socket(family, socket.SOCK_DGRAM) as sock:
                try:
                    sock.connect(address)
                except OSError as exc:
                    problem = f"{url}: {exc.strerror or exc}"
                    # No route yet: the network is still coming up (boot, a NIC attached late).
                    transient = transient or exc.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH)
                    continue
                source = str(sock.getsockname()[0])
            if ipaddress.ip_address(source.split("%", 1)[0]).is_unspecified:
                # A route with no address of this host on it (an interface still unnumbered):
                # 0.0.0.0 must never be published.
                problem, transient = f"{url}: no local address on the route yet", True
                continue
            return source
    raise (LookupFailing if transient else OSError)(f"no route to etcd: {problem}")


def detect_address(etcd: EtcdSettings) -> str:
    """The address a registration publishes when it names none: the one this host uses to
    reach etcd, whose endpoints may come from DNS SRV records (the static `endpoints` then
    still hold their loopback default, which would publish 127.0.0.1 to every consumer).
    SRV records DNS cannot give for now are LookupFailing, as an endpoint name's lookup."""
    try:
        urls = endpoint_urls(etcd)
    except StoreUnavailable as exc:  # (only with srv_domain: static endpoints need no DNS)
        from confsync.stores.srv import SrvLookupFailed

        raise (LookupFailing if isinstance(exc, SrvLookupFailed) else OSError)(
            f"no route to etcd: {exc}") from None
    return source_address(urls, etcd.timeout)


def default_address(etcd: EtcdSettings, stopped: Callable[[], bool] = lambda: False) -> str:
    """detect_address at start, where no answer is a configuration error (exit 2), except
    an endpoint name DNS cannot resolve for now: asked again (1 s, doubling to 10 s) until it
    answers. A resolver not up yet at boot made exit 2, which the unit does not restart (the
    node was never registered), and one that never answered held the start for minutes.

    Raises StoppedWaiting once `stopped()` (a held SIGTERM): this wait has no end, and the
    stop signal's handler comes after it (a `systemctl stop` at boot waited for SIGKILL)."""
    waits = Backoff(1.0, POLL_INTERVAL)
    while True:
        try:
            return detect_address(etcd)
        except LookupFailing as exc:
            if waits.attempts == 0:
                log.warning("register: cannot tell the local address used to reach etcd yet "
                            "(%s); asking again until DNS answers and a route exists (or set "
                            "`address`)", exc)
            until = lease_clock.now() + waits.next()
            while not stopped() and lease_clock.now() < until:
                time.sleep(min(0.1, max(0.0, until - lease_clock.now())))
            if stopped():
                raise StoppedWaiting from None
        except OSError as exc:
            raise ConfigError("register", f"cannot tell the local address used to reach etcd "
                              f"({exc}); set `address` in the registration",
                              "address") from None


def is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


def warn_if_loopback(address: str, keys: Iterable[str]) -> None:
    if is_loopback(address):
        log.warning("register: publishing %s, a loopback address (the one this host uses to "
                    "reach etcd), for %s: only consumers on this host can reach it; set "
                    "`address` in the registration", address, ", ".join(keys),
                    extra={"address": address})


@dataclass(frozen=True)
class AddressChanged:
    """Posted to the loop's queue when the detected address is another one."""

    old: str
    new: str


class AddressFollower:
    """Runs `detect` again and again on its own thread; `report`s each change of its answer.

    A detection that fails keeps the last address: logged once when it starts failing, once
    when it works again, and retried sooner (1 s, doubling up to the poll interval).
    """

    def __init__(self, detect: Callable[[], str], current: str,
                 report: Callable[[AddressChanged], None], interval: float = POLL_INTERVAL,
                 netlink: bool = True) -> None:
        self.current = current
        self._detect = detect
        self._report = report
        self.interval = interval
        self._netlink = netlink
        self._failing = Backoff(min(1.0, interval), interval)
        self._stop = threading.Event()
        self._thread = self._new_thread()
        self._last_check = float("-inf")

    def _new_thread(self) -> threading.Thread:
        return threading.Thread(target=self._run, daemon=True, name="address")

    def start(self) -> AddressFollower:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def revive(self) -> None:
        """Called by the loop each tick: a thread killed by a bug is started again."""
        if self._stop.is_set() or self._thread.is_alive() or self._thread.ident is None:
            return
        log.error("register: the address thread stopped unexpectedly; starting it again")
        self._thread = self._new_thread()
        self._thread.start()

    def check(self) -> float:
        """One detection; the seconds until the next one."""
        self._last_check = lease_clock.now()
        try:
            new = self._detect()
        except Exception as exc:  # DNS, no route, a bug: keep publishing the last address
            if self._failing.attempts == 0:
                log.warning("register: cannot tell this host's address now (%s); keeping %s",
                            exc, self.current)
            return self._failing.next()
        if self._failing.attempts:
            log.info("register: this host's address can be told again: %s", new)
            self._failing.reset()
        if new != self.current:
            old, self.current = self.current, new
            self._report(AddressChanged(old, new))
        return self.interval

    def _run(self) -> None:
        events = _address_events() if self._netlink else None
        poller = select.poll()  # (not select: no limit on the descriptor's number, see fdlimit)
        if events is not None:
            poller.register(events, select.POLLIN)
        try:
            delay = self.interval
            while not self._stop.is_set():
                if events is None:
                    self._stop.wait(delay)
                elif poller.poll(delay * 1000):
                    _drain(events)
                    # The rest of the burst comes meanwhile; and never more often than MIN_GAP.
                    self._stop.wait(max(SETTLE, self._last_check + MIN_GAP - lease_clock.now()))
                    _drain(events)
                if not self._stop.is_set():
                    delay = self.check()
        finally:
            if events is not None:
                events.close()


def _address_events() -> socket.socket | None:
    """A socket the kernel writes to when an address is added or removed; None where there is
    none (not Linux, a sandbox without AF_NETLINK): polling alone then."""
    try:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
    except (OSError, AttributeError) as exc:
        log.debug("register: no address events (%s); polling every %gs", exc, POLL_INTERVAL)
        return None
    try:
        sock.bind((0, RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR))
    except OSError as exc:
        sock.close()
        log.debug("register: no address events (%s); polling every %gs", exc, POLL_INTERVAL)
        return None
    sock.setblocking(False)
    return sock


def _drain(sock: socket.socket) -> None:
    """Reads every pending event (only their arrival matters, not what they say)."""
    try:
        while sock.recv(65536):
            pass
    except OSError:  # BlockingIOError once drained; ENOBUFS when the kernel dropped some
        pass
