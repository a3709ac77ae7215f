"""Prometheus metrics and /health, /ready for `confsync register` (served by MetricsServer).

Own registry, like confsync.ops.metrics. Ready means: etcd reachable, no key held by another host
(or by another live registrar with our host name: a clone), not stopping. Healthy means: the
loop beat within HEALTH_MAX_AGE.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

from confsync import __version__
from confsync.ops.http import DURATION_BUCKETS, HEALTH_MAX_AGE
from confsync.register import lease_clock
from confsync.register.config import Registration

STATES = ("absent", "ready", "drain", "maint")


class RegisterMetrics:
    def __init__(self, registrations: Sequence[Registration],
                 clock: Callable[[], float] = lease_clock.now) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._clock = clock
        self._lock = threading.Lock()
        self._beat = clock()
        self._connected = False
        self._why = ""
        # Per verb (writing, reading): the keys etcd refuses us, and why; absent while none.
        self._refused: dict[str, str] = {}
        self._stopping = False
        # Until when the values to publish can be on etcd (Registrar.lease_until).
        self._lease_until = float("inf")
        self._conflicts: dict[str, str] = {}
        self._states = {r.name: "absent" for r in registrations}
        self._why_state = {r.name: "no check result yet" for r in registrations}
        r, ns = self.registry, "confsync_register"
        Info("build", "confsync version", namespace="confsync", registry=r).info(
            {"version": __version__})
        self.state = Gauge("state", "1 for the state each registration publishes now "
                           "(absent, ready, drain, maint)",
                           ["registration", "service", "id", "state"], namespace=ns, registry=r)
        self.state_changes = Counter("state_changes", "Published state changes",
                                     ["registration"], namespace=ns, registry=r)
        self.check_up = Gauge("check_up", "1 while a check is up (after rise/fall)",
                              ["registration", "check"], namespace=ns, registry=r)
        self.checks = Counter("checks", "Check results by outcome (ok, failed)",
                              ["registration", "check", "outcome"], namespace=ns, registry=r)
        self.check_seconds = Histogram("check_duration_seconds", "Check probe time",
                                       ["registration", "check"], namespace=ns, registry=r,
                                       buckets=DURATION_BUCKETS)
        self.keepalive_failures = Counter("lease_keepalive_failures", "Lease keepalives that "
                                          "failed (etcd unreachable, or the lease had expired)",
                                          namespace=ns, registry=r)
        self.leases = Counter("leases_granted", "Leases granted (more than one: the lease was "
                              "lost and everything registered again)", namespace=ns, registry=r)
        self.conflicts = Counter("conflicts", "Writes refused because another host holds the "
                                 "key", ["registration"], namespace=ns, registry=r)
        self.connected = Gauge("etcd_connected", "1 while etcd answers", namespace=ns,
                               registry=r)
        self.writes_refused = Gauge("etcd_writes_refused", "1 while etcd answers but refuses "
                                    "the registrar's writes (for lack of permission, or its "
                                    "NOSPACE alarm)",
                                    namespace=ns, registry=r)
        self.reads_refused = Gauge("etcd_reads_refused", "1 while etcd answers but refuses the "
                                   "registrar's read-back of its keys for lack of permission",
                                   namespace=ns, registry=r)
        self.heartbeat = Gauge("heartbeat_timestamp_seconds", "Unix time of the loop's last "
                               "heartbeat", namespace=ns, registry=r)
        for reg in registrations:
            # Counters at 0 from the start: a series that appears at 1 hides its first
            # increase from `increase()` and `rate()` (a conflict alert would miss it).
            self.conflicts.labels(reg.name)
            self.state_changes.labels(reg.name)
            for state in STATES:
                self.state.labels(reg.name, reg.service, reg.instance_id, state).set(
                    1 if state == "absent" else 0)
            for index in range(len(reg.checks)):
                self.check_up.labels(reg.name, str(index)).set(0)

    # ---- fed by the loop

    def beat(self) -> None:
        with self._lock:
            self._beat = self._clock()
        self.heartbeat.set(time.time())

    def published(self, registration: Registration, state: str) -> None:
        for name in STATES:
            self.state.labels(registration.name, registration.service,
                              registration.instance_id, name).set(1 if name == state else 0)
        self.state_changes.labels(registration.name).inc()
        with self._lock:
            self._states[registration.name] = state

    def explain(self, registration: str, why: str) -> None:
        """Why `registration` is in its state now (shown under `why` in /ready)."""
        with self._lock:
            self._why_state[registration] = why

    def check(self, registration: str, index: int, ok: bool, seconds: float, up: bool) -> None:
        self.checks.labels(registration, str(index), "ok" if ok else "failed").inc()
        self.check_seconds.labels(registration, str(index)).observe(seconds)
        self.check_up.labels(registration, str(index)).set(1 if up else 0)

    def etcd(self, connected: bool, why: str = "") -> None:
        """`why`: the error that cut etcd off (permission denied, authentication failed, ...),
        shown in /ready."""
        with self._lock:
            self._connected = connected
            self._why = why
        self.connected.set(1 if connected else 0)

    def refused(self, keys: str, why: str, verb: str = "writing",
                label: str = "permission denied") -> None:
        """etcd refuses `verb` (writing, reading) `keys` (`label`: permission denied, or its
        NOSPACE alarm); `keys` "" when that is over, and `verb` "" for every verb (etcd
        unreachable). Its own reason in /ready: it answers, so "etcd not connected" sent
        operators to the network."""
        with self._lock:
            for v in (verb,) if verb else ("writing", "reading"):
                if keys:
                    self._refused[v] = f"etcd refuses {v} {keys} ({label}): {why}"
                else:
                    self._refused.pop(v, None)
            writing, reading = "writing" in self._refused, "reading" in self._refused
        self.writes_refused.set(1 if writing else 0)
        self.reads_refused.set(1 if reading else 0)

    def conflict(self, registration: str, owner: str | None) -> None:
        with self._lock:
            if owner is None:
                self._conflicts.pop(registration, None)
                return
            self._conflicts[registration] = owner
        self.conflicts.labels(registration).inc()

    def stopping(self) -> None:
        with self._lock:
            self._stopping = True

    def lease_until(self, deadline: float) -> None:
        """Values to publish can be on etcd until `deadline` (this clock; see
        Registrar.lease_until). /ready compares it with the time of each request."""
        with self._lock:
            self._lease_until = deadline

    # ---- probes

    def health(self, max_age: float = HEALTH_MAX_AGE) -> tuple[bool, dict[str, Any]]:
        with self._lock:
            age = self._clock() - self._beat
        return age <= max_age, {"heartbeat_age_seconds": round(age, 3), "max_age": max_age}

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        with self._lock:
            reasons = []
            if not self._connected:
                reasons.append("etcd not connected" + (f": {self._why}" if self._why else ""))
            reasons.extend(self._refused[v] for v in sorted(self._refused, reverse=True))
            for name, owner in sorted(self._conflicts.items()):
                reasons.append(f"{name}: key held by {owner}")
            if self._stopping:
                reasons.append("stopping")
            # Compared here, at the request: after a stop of the process (SIGSTOP, a paused
            # VM) longer than the TTL the keys are gone, and until the registrar had learned
            # it and failed to register again (up to twice etcd's timeout, etcd away) /ready
            # said 200.
            if self._lease_until == float("-inf"):
                reasons.append("not registered: no lease holds the values to publish")
            elif self._clock() >= self._lease_until:
                reasons.append(f"not registered: lease not renewed for its TTL "
                               f"({self._clock() - self._lease_until:.1f}s past); its keys "
                               "are gone or going")
            # Why each registration is in its state ("check 1 down: ..."): an instance held
            # back by its own checks is the registrar working, not a reason for 503.
            return not reasons, {"registrations": dict(self._states), "reasons": reasons,
                                 "why": dict(self._why_state)}
