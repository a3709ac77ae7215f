"""What one registration should publish now: a pure function of health, maintenance and drain.

    child gone (exec mode)                  -> absent
    draining, drain time over               -> absent
    draining (was ready)                    -> "drain"
    maintenance file exists                 -> "maint"   (operator intent beats health)
    a check is down, never healthy yet      -> absent    (not registered until `rise` passes)
    a check is down                         -> absent, or "maint" with on_unhealthy = "maint"
    otherwise                               -> "ready"
"""

from __future__ import annotations

from confsync.register.checks import Hysteresis, Result
from confsync.register.config import Registration

ABSENT = "absent"  # the state name used in events and metrics for "no key"


NOT_RUN = "not run yet"


class InstanceState:
    """Live state of one registration; owned by the loop thread."""

    def __init__(self, registration: Registration) -> None:
        self.registration = registration
        self.checks = [Hysteresis(c.rise, c.fall) for c in registration.checks]
        self.last_detail = [NOT_RUN] * len(registration.checks)
        self.maintenance = False
        self.maintenance_error: str | None = None  # why the file cannot be looked up now
        self.child_gone = False
        self.drain_until: float | None = None
        # Every check has been up at once since start. Before, `on_unhealthy = "maint"`
        # published "maint" from the first tick (checks start down): an instance that had never
        # passed a check was in every pool's server list, and its failures reported as a
        # maintenance an operator never asked for.
        self.proven = False
        self.published = ABSENT  # the last state we decided on

    @property
    def healthy(self) -> bool:
        return all(h.up for h in self.checks)

    def observe(self, result: Result) -> bool:
        """One check result; True when it is worth a log line: the check went up or down, or
        its first result failed (checks start down, so one that fails from the start never
        changes: without this, a registration held back by it was never explained)."""
        first = self.last_detail[result.index] is NOT_RUN
        self.last_detail[result.index] = result.detail
        changed = self.checks[result.index].observe(result.ok)
        self.proven = self.proven or self.healthy
        return changed or (first and not result.ok)

    def start_drain(self, now: float) -> None:
        """SIGTERM: a ready instance drains for `drain` seconds; anything else goes at once."""
        if self.drain_until is None:
            ready = self.published == "ready"
            self.drain_until = now + (self.registration.drain if ready else 0.0)

    def desired(self, now: float) -> tuple[str, str]:
        """(state or ABSENT, why); why says so when the maintenance file cannot be looked up
        (its last known state is kept)."""
        state, why = self._desired(now)
        if self.maintenance_error is not None:
            why += (f"; cannot tell whether the maintenance file exists "
                    f"({self.maintenance_error})")
        return state, why

    def _desired(self, now: float) -> tuple[str, str]:
        if self.child_gone:
            return ABSENT, "exec child exited"
        if self.drain_until is not None:
            if now >= self.drain_until or self.published in (ABSENT, "maint"):
                return ABSENT, "drained" if self.published == "drain" else "stopping"
            return "drain", f"stopping: draining for {self.registration.drain:g}s"
        if self.maintenance:
            return "maint", f"maintenance file {self.registration.maintenance_file} exists"
        down = [i for i, h in enumerate(self.checks) if not h.up]
        if down:
            why = f"check {down[0]} down: {self.last_detail[down[0]]}"
            if self.registration.on_unhealthy == "maint" and self.proven:
                return "maint", why
            return ABSENT, why
        if self.checks:
            return "ready", "checks passing: " + "; ".join(self.last_detail)
        return "ready", "registered (no checks)"
