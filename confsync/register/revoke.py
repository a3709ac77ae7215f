"""The lease revoke of a stopping registrar, through any etcd member that answers.

A stopped node must leave every pool at once, not when its lease's TTL runs out (proxies send
it traffic until then). One try on one member was not enough: a member that is down,
leaderless or hangs (frozen, black-holed) failed it, or held it for the whole call timeout.
So each try is a new client that starts at the endpoint after the last one that failed (the
store's rotation), its calls bounded by a share of the time left, and the tries go round the
endpoints until one answers or the time is up: a member that hangs costs its share, not the
stop. After a round that failed, a short pause (the others may be electing a leader: "leader
changed" comes at once).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from confsync.errors import StoreUnavailable, describe_error
from confsync.register import lease_clock

log = logging.getLogger("confsync.register.registrar")

MIN_TRY = 0.5  # the least time a try gets, whatever is left (the first try always runs)
ROUND_PAUSE = 0.1  # after every endpoint failed once in a row


def lease_not_found(exc: BaseException) -> bool:
    """etcd's answer about a lease it does not have (NOT_FOUND)."""
    return "requested lease not found" in describe_error(exc)


class StopRevoke:
    """One revoke of `lease`, tried on each endpoint in turn until `deadline`."""

    def __init__(self, new_client: Callable[[float], Any], endpoint_failed: Callable[[], None],
                 endpoints: int) -> None:
        self._new_client = new_client  # its calls give up within the seconds given
        self._endpoint_failed = endpoint_failed
        self._endpoints = max(1, endpoints)
        self._failures: dict[str, str] = {}  # by endpoint, its last error
        self.tries = 0

    def run(self, lease: int, deadline: float) -> bool:
        """True once etcd has no such lease (revoked now, or gone already)."""
        while True:
            left = deadline - lease_clock.now()
            if self.tries:
                if left < 0.05:
                    return False
                if self.tries % self._endpoints == 0:
                    time.sleep(min(ROUND_PAUSE, left))
                    left = deadline - lease_clock.now()
            share = max(left / self._endpoints, MIN_TRY)
            if self.tries:
                share = min(share, max(left, 0.05))
            self.tries += 1
            endpoint = "etcd"
            try:
                client = self._new_client(share)
                endpoint = str(getattr(client, "_current_endpoint_label", None) or endpoint)
                try:
                    client.revoke_lease(lease)
                finally:
                    with contextlib.suppress(Exception):
                        client.close()
            except Exception as exc:
                if lease_not_found(exc):
                    log.info("register: lease %x was gone already (revoked from outside, "
                             "expired, or etcd recreated); nothing is left on it", lease)
                    return True
                self._failures[endpoint] = describe_error(exc)
                if not isinstance(exc, StoreUnavailable):  # (the store moved on already)
                    self._endpoint_failed()
                continue
            failed = f" ({self.why()})" if self._failures else ""
            log.info("register: lease %x revoked through %s%s", lease, endpoint, failed)
            return True

    def why(self) -> str:
        """What each endpoint that failed said, and how many tries were made."""
        said = "; ".join(f"{endpoint}: {error}" for endpoint, error in self._failures.items())
        return f"{said}; {self.tries} tr{'y' if self.tries == 1 else 'ies'}"
