"""What the daemon tells the outside world: one observer interface, many listeners.

The watch loop calls these; metrics, sd_notify, logs and the exec-mode child supervisor listen.
Listeners must be quick and must not raise: they run on the loop's thread.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from confsync.outcome import Outcome
    from confsync.resources import Resource
    from confsync.targets import Probe, ReloadResult, TargetGauge

log = logging.getLogger(__name__)


class Observer:
    """No-op base: override what you need."""

    def started(self, resources: Sequence[Resource]) -> None:
        """The daemon loaded its resources and is about to take the first snapshot."""

    def snapshot_loaded(self, revision: int, keys: int) -> None:
        """A full snapshot (start, compaction, resync) replaced the mirror."""

    def watch_connected(self, revision: int) -> None:
        """A watch stream is open from `revision`."""

    def watch_lost(self, reason: str) -> None:
        """The stream broke; the loop backs off and resumes. Until then: degraded."""

    def catching_up(self, names: Sequence[str]) -> None:
        """The watch is back, and these resources' renders of what it caught up with are
        still due (all of them: an empty list means the files hold it; catch_up.py)."""

    def changes_received(self, revision: int, keys: int) -> None:
        """A watch batch changed `keys` keys of the mirror (before debouncing)."""

    def batch_applied(self, revision: int, changed_keys: Sequence[str],
                      outcomes: Sequence[Outcome]) -> None:
        """One debounced batch was rendered/applied (outcomes hold status, error, reload)."""

    def ready(self, revision: int) -> None:
        """The first full render finished (every resource tried once)."""

    def revision_current(self, revision: int) -> None:
        """The files reflect the store at `revision`, though no batch was applied for it (its
        changes left every value as it was, and nothing else waits)."""

    def heartbeat(self) -> None:
        """The loop is alive; called at least once a second, and after every step of an
        apply."""

    def step_bound(self, seconds: float) -> None:
        """The longest one step of an apply may take by its timeouts (a resource's render and
        check, or a reload), for the resources that now run: a heartbeat may be that late
        without the loop being stuck."""

    def reloading_config(self) -> None:
        """SIGHUP (or a conf.d change) is being handled."""

    def config_reloaded(self, ok: bool, message: str) -> None:
        """The new resource set replaced the old one (ok) or was refused (the old one runs on)."""

    def config_errors(self, errors: Sequence[str]) -> None:
        """The resource files of conf.d that did not load when the running set was loaded
        (the others run); empty: none. Said with `started`."""

    def stopping(self) -> None:
        """SIGTERM/SIGINT: the apply in flight finishes, then the loop exits."""

    def hurry(self) -> None:
        """A second SIGTERM/SIGINT while stopping: cut what the stop still waits for. Called
        in the signal handler: set a flag, nothing more (no locks, no logging)."""

    def store_reset(self, old_cluster: int, new_cluster: int, old_revision: int,
                    new_revision: int) -> None:
        """The store was recreated or restored; a snapshot of the new history replaces the
        mirror (revisions may go down)."""

    def backlog_dropped(self) -> None:
        """Changes queued for a loop that was held passed the cap and were dropped; the
        snapshot that replaces them is being loaded."""

    def part_failed(self, part: str, reason: str) -> None:
        """A thread of the daemon (`follower`, `local-files`) died; the loop restarts it."""

    def part_recovered(self, part: str) -> None:
        """A part that had failed runs again."""

    def drift_held(self, names: Sequence[str]) -> None:
        """These resources' dests hold another writer's file until their spaced repair (all
        of them: an empty list means none)."""

    def io_stuck(self, names: Sequence[str]) -> None:
        """These resources' file work on their dest has not returned in time (a frozen or
        hung filesystem; all of them: an empty list means none)."""

    def target_probed(self, resource: Resource, result: ReloadResult) -> None:
        """Between applies, the resource's reload target was found not running (NO_TARGET:
        stopped by someone else); applies report what they find in their outcomes."""

    def target_drifted(self, resource: Resource, found: Probe) -> None:
        """Between applies, the resource's reload target was found running other than its
        file (HAProxy's servers changed by hand); the file is being made live again."""

    def target_gauges(self, gauges: Mapping[str, Sequence[TargetGauge]]) -> None:
        """Every heartbeat: what each resource's reload target measured when last asked
        (resource name -> its gauges; a resource left out has none now)."""


class Observers(Observer):
    """Fan-out to several observers; one failing observer never stops the loop."""

    def __init__(self, observers: Sequence[Observer] = ()) -> None:
        self.observers = list(observers)

    def add(self, observer: Observer) -> None:
        self.observers.append(observer)

    def _each(self, name: str, *args: object) -> None:
        for observer in self.observers:
            try:
                getattr(observer, name)(*args)
            except Exception:
                log.exception("observer %s failed in %s", type(observer).__name__, name)

    def started(self, resources: Sequence[Resource]) -> None:
        self._each("started", resources)

    def config_errors(self, errors: Sequence[str]) -> None:
        self._each("config_errors", errors)

    def snapshot_loaded(self, revision: int, keys: int) -> None:
        self._each("snapshot_loaded", revision, keys)

    def watch_connected(self, revision: int) -> None:
        self._each("watch_connected", revision)

    def watch_lost(self, reason: str) -> None:
        self._each("watch_lost", reason)

    def catching_up(self, names: Sequence[str]) -> None:
        self._each("catching_up", names)

    def changes_received(self, revision: int, keys: int) -> None:
        self._each("changes_received", revision, keys)

    def batch_applied(self, revision: int, changed_keys: Sequence[str],
                      outcomes: Sequence[Outcome]) -> None:
        self._each("batch_applied", revision, changed_keys, outcomes)

    def ready(self, revision: int) -> None:
        self._each("ready", revision)

    def revision_current(self, revision: int) -> None:
        self._each("revision_current", revision)

    def heartbeat(self) -> None:
        self._each("heartbeat")

    def step_bound(self, seconds: float) -> None:
        self._each("step_bound", seconds)

    def reloading_config(self) -> None:
        self._each("reloading_config")

    def config_reloaded(self, ok: bool, message: str) -> None:
        self._each("config_reloaded", ok, message)

    def stopping(self) -> None:
        self._each("stopping")

    def hurry(self) -> None:
        for observer in self.observers:  # (in a signal handler: no logging on failure)
            with contextlib.suppress(Exception):
                observer.hurry()

    def store_reset(self, old_cluster: int, new_cluster: int, old_revision: int,
                    new_revision: int) -> None:
        self._each("store_reset", old_cluster, new_cluster, old_revision, new_revision)

    def backlog_dropped(self) -> None:
        self._each("backlog_dropped")

    def part_failed(self, part: str, reason: str) -> None:
        self._each("part_failed", part, reason)

    def part_recovered(self, part: str) -> None:
        self._each("part_recovered", part)

    def drift_held(self, names: Sequence[str]) -> None:
        self._each("drift_held", names)

    def io_stuck(self, names: Sequence[str]) -> None:
        self._each("io_stuck", names)

    def target_probed(self, resource: Resource, result: ReloadResult) -> None:
        self._each("target_probed", resource, result)

    def target_drifted(self, resource: Resource, found: Probe) -> None:
        self._each("target_drifted", resource, found)

    def target_gauges(self, gauges: Mapping[str, Sequence[TargetGauge]]) -> None:
        self._each("target_gauges", gauges)
