"""`watch`'s Prometheus metrics and health, fed by the daemon's observer events.

`Metrics` is an Observer that keeps its own CollectorRegistry (never the global one: two daemons
in one test process, or a library user's own metrics, must not collide). `confsync.ops.http`
serves it (`/metrics`, `/health`, `/ready`), as it serves `register`'s.

Per-resource freshness is exported as a timestamp gauge (`..._last_success_timestamp_seconds`),
the Prometheus convention: alert on `time() - confsync_resource_last_success_timestamp_seconds`.
A "seconds since" gauge would be stale between scrapes and wrong once the process stops.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.registry import Collector

from confsync import __version__
from confsync.errors import TemplateMissing
from confsync.logs import redact
from confsync.ops.events import Observer
from confsync.ops.http import DURATION_BUCKETS, HEALTH_MAX_AGE, MetricsServer
from confsync.outcome import Status
from confsync.provenance import show_key
from confsync.reload import has_reload_action
from confsync.targets import Probe, ReloadKind, ReloadResult, TargetGauge

if TYPE_CHECKING:

    from confsync.ops.supervisor import Supervisor
    from confsync.outcome import Outcome
    from confsync.resources import Resource

log = logging.getLogger(__name__)
REASON_CAP = 500  # characters of a failing resource's reason in /ready
M = TypeVar("M", bound=MetricWrapperBase)

# Steps at which an apply can fail (ResourceError.step), in pipeline order.
STEPS = ("render", "guard", "stage", "check", "install", "reload")
_AFTER_CHECK = {"install", "reload"}


class Metrics(Observer):
    """The collectors and the readiness state they imply. Thread-safe for HTTP readers."""

    def __init__(self, registry: CollectorRegistry | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        self._clock = clock
        self._wall = wall
        self._lock = threading.Lock()
        self._resources: dict[str, Resource] = {}
        self._failing: dict[str, str] = {}  # name -> why its last apply failed
        # name -> its template file not there (yet?): a config error of its file, not failing.
        self._template_missing: dict[str, str] = {}
        # resource -> keys its last render left out (refused instance values): /ready detail.
        self._left_out: dict[str, list[str]] = {}
        # resource -> why its last reload step found nothing running (file current, not served).
        self._not_running: dict[str, str] = {}
        self._ready_seen = False
        # resource -> what its reload target last measured (`confsync_haproxy_old_workers`).
        self._target_gauges: dict[str, tuple[TargetGauge, ...]] = {}
        self._exec: Supervisor | None = None  # exec mode: the child is part of being ready
        self._connected = False
        self._lost_reason = ""
        self._failed_parts: dict[str, str] = {}  # daemon threads that died, and why
        # conf.d files left out of the running set, and why the last reload was refused.
        self._config_errors: tuple[str, ...] = ()
        self._reload_refused: str | None = None
        # Resources whose dest holds another writer's file while its repair waits (drift.py).
        self._drift_held: list[str] = []
        self._io_stuck: list[str] = []  # resources whose file work on dest does not return
        # Resources whose render of what a watch back from an outage brought is still due.
        self._catching_up: list[str] = []
        self._connections = 0
        self._last_beat = clock()
        self._step_bound = 0.0  # how late a beat may be while one bounded step runs
        self._applied_revision = 0
        self._current_revision = 0
        r = self.registry
        ns = "confsync"
        # Every metric with a `resource` label and its label names: a resource a config
        # reload drops is removed from each.
        self._per_resource: list[tuple[MetricWrapperBase, tuple[str, ...]]] = []

        Info("build", "confsync version", namespace=ns, registry=r).info({"version": __version__})
        self.applies = self._labelled(Counter,
            "applies", "Apply attempts per resource and outcome (unchanged, updated, failed)",
            ["resource", "outcome"], namespace=ns, registry=r)
        self.apply_seconds = self._labelled(Histogram,
            "apply_duration_seconds", "Render, check and install time per resource",
            ["resource"], namespace=ns, registry=r, buckets=DURATION_BUCKETS)
        self.renders = self._labelled(Counter,
            "renders", "Template renders per resource and outcome (ok, failed)",
            ["resource", "outcome"], namespace=ns, registry=r)
        self.checks = self._labelled(Counter,
            "checks", "check_cmd runs per resource and outcome (ok, failed)",
            ["resource", "outcome"], namespace=ns, registry=r)
        self.check_seconds = self._labelled(Histogram,
            "check_duration_seconds", "check_cmd run time", ["resource"], namespace=ns,
            registry=r, buckets=DURATION_BUCKETS)
        self.reloads = self._labelled(Counter,
            "reloads", "Reloads (reload_cmd, signal, exec child) per resource and outcome",
            ["resource", "outcome"], namespace=ns, registry=r)
        self.reload_seconds = self._labelled(Histogram,
            "reload_duration_seconds", "Reload time per resource", ["resource"], namespace=ns,
            registry=r, buckets=DURATION_BUCKETS)
        self.runtime_updates = self._labelled(Counter,
            "runtime_updates", "Changes applied to the running service without a reload "
            "(HAProxy runtime API) per resource", ["resource", "outcome"], namespace=ns, registry=r)
        self.runtime_seconds = self._labelled(Histogram,
            "runtime_update_duration_seconds", "Runtime-API update time per resource",
            ["resource"], namespace=ns, registry=r, buckets=DURATION_BUCKETS)
        self.failures = self._labelled(Counter,
            "apply_failures", "Failed applies per resource and step (render, guard, stage, "
            "check, install, reload)", ["resource", "step"], namespace=ns, registry=r)
        self.values_left_out = self._labelled(Gauge,
            "values_left_out", "Values the resource's last render left out because a filter "
            "refused them (gets skip_invalid); the keys are in /ready", ["resource"],
            namespace=ns, registry=r)
        self.guard_trips = self._labelled(Counter,
            "guard_trips", "Renders refused by the min_keys guard (last good file kept)",
            ["resource"], namespace=ns, registry=r)
        self.last_success = self._labelled(Gauge,
            "resource_last_success_timestamp_seconds", "Unix time of the last successful apply "
            "(unchanged or updated)", ["resource"], namespace=ns, registry=r)
        self.resource_ok = self._labelled(Gauge,
            "resource_ok", "1 when the resource's last apply succeeded", ["resource"],
            namespace=ns, registry=r)
        self.dest_io_stuck = self._labelled(Gauge,
            "dest_io_stuck", "1 while the resource's file work on its dest has not returned "
            "in time (a filesystem frozen by fsfreeze, a hung network mount); it is applied "
            "again when it returns", ["resource"], namespace=ns, registry=r)
        self.target_up = self._labelled(Gauge,
            "reload_target_up", "0 when the resource's last reload step found nothing running "
            "to reload (the file is current but not served), 1 when it found it",
            ["resource"], namespace=ns, registry=r)
        self.target_drifts = self._labelled(Counter,
            "reload_target_drifts", "Times the resource's reload target was found, between "
            "applies, running other than its file (HAProxy servers deleted, moved or added by "
            "hand) and the file was made live again", ["resource"], namespace=ns, registry=r)
        self.batches = Counter(
            "batches", "Debounced batches applied", namespace=ns, registry=r)
        self.debounced_changes = Counter(
            "debounced_changes", "Key changes delivered to the renderer in debounced batches",
            namespace=ns, registry=r)
        self.changes = Counter(
            "changes_received", "Key changes received from the store (before debouncing)",
            namespace=ns, registry=r)
        self.watch_reconnects = Counter(
            "watch_reconnects", "Watch streams re-opened after the first", namespace=ns,
            registry=r)
        self.watch_losses = Counter(
            "watch_lost", "Watch streams lost", namespace=ns, registry=r)
        self.watch_up = Gauge(
            "watch_connected", "1 while a watch stream is open", namespace=ns, registry=r)
        self.snapshots = Counter(
            "snapshots", "Full snapshots loaded (start, compaction, resync)", namespace=ns,
            registry=r)
        self.store_resets = Counter(
            "store_resets", "Store resets seen: another cluster id, or revisions gone back "
            "(recreated or restored etcd); each replaced the mirror", namespace=ns, registry=r)
        self.backlog_drops = Counter(
            "watch_backlog_dropped", "Times changes queued for a held loop passed the cap and "
            "were dropped for a fresh snapshot", namespace=ns, registry=r)
        self.current_revision = Gauge(
            "store_revision", "Newest store revision seen", namespace=ns, registry=r)
        self.applied_revision = Gauge(
            "applied_revision", "Store revision of the last applied batch", namespace=ns,
            registry=r)
        self.config_reloads = Counter(
            "config_reloads", "Configuration reloads (SIGHUP) per outcome (ok, refused)",
            ["outcome"], namespace=ns, registry=r)
        self.config_errors_gauge = Gauge(
            "config_errors", "Resource files of conf.d that did not load when the running "
            "set did, plus 1 while the last configuration reload is refused (what runs is not "
            "what conf.d holds)", namespace=ns, registry=r)
        self.resources_gauge = Gauge(
            "resources", "Resources loaded", namespace=ns, registry=r)
        self.parts_failed = Gauge(
            "part_failed", "1 while a thread of the daemon is dead or cannot start, and is "
            "being restarted (follower: the store follower; local-files: the conf.d/templates "
            "watcher, edits there not followed); /health is 503 meanwhile", ["part"],
            namespace=ns, registry=r)
        self.ready_gauge = Gauge(
            "ready", "1 when /ready answers 200", namespace=ns, registry=r)
        self.heartbeat_ts = Gauge(
            "heartbeat_timestamp_seconds", "Unix time of the loop's last heartbeat",
            namespace=ns, registry=r)
        r.register(_TargetCollector(self))

    def track_exec(self, supervisor: Supervisor) -> None:
        """Export the exec-mode child's state, read at scrape time."""
        self.registry.register(_ExecCollector(supervisor))
        self._exec = supervisor

    # ---- state for /health and /ready

    def _revision_seen(self, revision: int) -> None:
        with self._lock:
            if revision <= self._current_revision:
                return
            self._current_revision = revision
        self.current_revision.set(revision)

    def step_bound(self, seconds: float) -> None:
        with self._lock:
            self._step_bound = seconds

    def health(self, max_age: float = HEALTH_MAX_AGE) -> tuple[bool, dict[str, Any]]:
        """Healthy: the loop beats and none of the daemon's threads is dead.

        A heartbeat may be late by the longest step its timeouts allow (a 25 s check_cmd of
        30 s allowed is no stuck loop): /health said 503 after 10 s of it, and a liveness probe
        restarted a daemon that was only waiting, at every apply that ran the same check."""
        with self._lock:
            age = self._clock() - self._last_beat
            failed = dict(self._failed_parts)
            limit = max_age + self._step_bound
        detail: dict[str, Any] = {"heartbeat_age_seconds": round(age, 3), "max_age": limit}
        if failed:
            detail["failed_parts"] = failed
        return age <= limit and not failed, detail

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """Ready: first full render done, watch connected, no resource's last apply failed,
        every reload target runs, and no dest holds another writer's file awaiting its repair.

        Resources left out of a batch were not affected by it, so their last good render is as
        current as the batch's revision; only a failed apply leaves a file behind the data.
        """
        with self._lock:
            reasons = []
            if not self._ready_seen:
                reasons.append("first render not finished")
            if not self._connected:
                reasons.append("watch not connected")
            elif self._catching_up:
                reasons.append("catching up after the watch came back: "
                               + ", ".join(self._catching_up))
            if self._failing:
                reasons.append("failing: " + ", ".join(sorted(self._failing)))
            # Like the exec child: a current file that nothing serves is not ready.
            reasons.extend(f"not running: {name} ({why})"
                           for name, why in sorted(self._not_running.items()))
            # Another writer keeps replacing these files; the service may run its file until
            # the next spaced repair.
            if self._drift_held:
                reasons.append("changed by someone else, repair waiting: "
                               + ", ".join(self._drift_held))
            if self._io_stuck:
                reasons.append("stuck on I/O (filesystem frozen or hung?): "
                               + ", ".join(self._io_stuck))
            # In exec mode confsync is the service's supervisor: files in place while the
            # service is down (restarting after a crash) is not ready.
            if self._exec is not None and self._ready_seen and not self._exec.alive:
                reasons.append("exec child not running")
            elif self._exec is not None and self._exec.reload_held:
                reasons.append("exec child starting or reloading: its reload waits until it "
                               "handles "
                               f"{self._exec.policy.reload_signal.name}")
            detail: dict[str, Any] = {"revision": self._applied_revision,
                                      "resources": len(self._resources), "reasons": reasons}
            if self._left_out:  # reported, not failing: the rest of the file is current
                detail["left_out"] = {name: list(keys) for name, keys in self._left_out.items()}
            if self._failing:  # why, as the log said it (the names alone sent operators there)
                detail["failing"] = dict(sorted(self._failing.items()))
            if not self._connected and self._lost_reason:
                detail["watch_lost"] = self._lost_reason
            # Reported, not failing: the resources that loaded are current, and one bad file
            # rolled out everywhere must not take every instance out of service.
            if self._config_errors or self._template_missing:
                detail["config_errors"] = [*self._config_errors,
                                           *sorted(self._template_missing.values())]
            if self._reload_refused is not None:
                detail["config_reload_refused"] = self._reload_refused
            return not reasons, detail

    def _update_ready(self) -> None:
        ok, _ = self.readiness()
        self.ready_gauge.set(1 if ok else 0)

    # ---- observer

    def started(self, resources: Sequence[Resource]) -> None:
        with self._lock:
            removed = set(self._resources) - {r.name for r in resources}
            self._resources = {r.name: r for r in resources}
            self._failing = {n: w for n, w in self._failing.items() if n in self._resources}
            self._template_missing = {n: w for n, w in self._template_missing.items()
                                      if n in self._resources}
            self._left_out = {n: k for n, k in self._left_out.items() if n in self._resources}
            # One that reloads nothing now (its reload action removed by a config reload) has
            # no target that could be down: nothing would ever ask it again to clear this.
            untargeted = {n for n, r in self._resources.items() if not has_reload_action(r)}
            self._not_running = {n: w for n, w in self._not_running.items()
                                 if n in self._resources and n not in untargeted}
            self._drift_held = [n for n in self._drift_held if n in self._resources]
            self._io_stuck = [n for n in self._io_stuck if n in self._resources]
            self._target_gauges = {n: g for n, g in self._target_gauges.items()
                                   if n in self._resources}
        # A resource dropped by a config reload leaves no series: a stale `resource_ok 0` or
        # an ageing last-success timestamp would alert forever on a file nobody manages any
        # more, and its counters and histograms (about 40 lines per resource) made /metrics
        # grow with every name a resource ever had: conf.d generated per service, renamed
        # and removed for months, is an unbounded cardinality. One added back starts from
        # zero, which Prometheus takes for a counter reset.
        for name in removed:
            self._forget(name)
        for name in untargeted:
            with contextlib.suppress(KeyError):
                self.target_up.remove(name)
        self.resources_gauge.set(len(resources))
        self._update_config_errors()  # (a template missing of a resource removed)
        self._update_ready()

    def _labelled(self, kind: type[M], name: str, documentation: str, labelnames: list[str],
                  **kwargs: Any) -> M:
        """A metric labelled by resource, remembered with its label names in the order
        `remove` takes them (prometheus_client keeps them only in a private attribute)."""
        metric = kind(name, documentation, labelnames, **kwargs)
        self._per_resource.append((metric, tuple(labelnames)))
        return metric

    def _forget(self, name: str) -> None:
        """Remove every series labelled with resource `name` (any outcome or step)."""
        for metric, labelnames in self._per_resource:
            series = {tuple(sample.labels[n] for n in labelnames)
                      for family in metric.collect() for sample in family.samples
                      if sample.labels.get("resource") == name}
            for values in series:
                metric.remove(*values)

    def snapshot_loaded(self, revision: int, keys: int) -> None:
        self.snapshots.inc()
        self._revision_seen(revision)

    def backlog_dropped(self) -> None:
        self.backlog_drops.inc()

    def store_reset(self, old_cluster: int, new_cluster: int, old_revision: int,
                    new_revision: int) -> None:
        self.store_resets.inc()
        with self._lock:  # revisions start again: the high-water marks do too
            self._current_revision = new_revision
            self._applied_revision = new_revision
        self.current_revision.set(new_revision)
        self.applied_revision.set(new_revision)

    def watch_connected(self, revision: int) -> None:
        with self._lock:
            self._connections += 1
            if self._connections > 1:
                self.watch_reconnects.inc()
            self._connected = True
        self.watch_up.set(1)
        self._update_ready()

    def catching_up(self, names: Sequence[str]) -> None:
        with self._lock:
            self._catching_up = list(names)
        self._update_ready()

    def watch_lost(self, reason: str) -> None:
        with self._lock:
            self._connected = False
            self._lost_reason = reason
        self.watch_losses.inc()
        self.watch_up.set(0)
        self._update_ready()

    def changes_received(self, revision: int, keys: int) -> None:
        """Optional hook: a watch batch arrived (before debouncing)."""
        self.changes.inc(keys)
        self._revision_seen(revision)

    def batch_applied(self, revision: int, changed_keys: Sequence[str],
                      outcomes: Sequence[Outcome]) -> None:
        self.batches.inc()
        self.debounced_changes.inc(len(changed_keys))
        self._revision_seen(revision)
        self.applied_revision.set(revision)
        now = self._wall()
        with self._lock:
            self._applied_revision = max(self._applied_revision, revision)
        for outcome in outcomes:
            self._count(outcome, now)
        self._update_ready()

    def revision_current(self, revision: int) -> None:
        self._revision_seen(revision)
        with self._lock:
            self._applied_revision = max(self._applied_revision, revision)
            applied = self._applied_revision
        self.applied_revision.set(applied)

    def _count(self, outcome: Outcome, now: float) -> None:
        resource = outcome.resource
        name = resource.name
        step = outcome.error.step if outcome.error is not None else None
        self.applies.labels(name, outcome.status.value).inc()
        self.apply_seconds.labels(name).observe(outcome.seconds)
        failed = outcome.status is Status.FAILED
        with self._lock:
            missing = len(self._template_missing)
            if failed and isinstance(outcome.error, TemplateMissing):
                # A template not there (yet?): reported as a config error of its file, not
                # failing, as one with a syntax error is (TemplateMissing).
                self._template_missing[name] = redact(
                    f"{resource.source}: {outcome.error.reason}")[:REASON_CAP]
                self._failing.pop(name, None)
            elif failed:
                self._template_missing.pop(name, None)
                error = outcome.error
                # (masked as log lines are: /ready may be read by more than the journal)
                self._failing[name] = (redact(f"{error.step} failed: {error.reason}")[:REASON_CAP]
                                       if error is not None else "failed")
            else:
                self._template_missing.pop(name, None)
                self._failing.pop(name, None)
            missing_changed = missing != len(self._template_missing)
            # What the file in place left out: a failed apply left the previous file.
            if not failed and outcome.warnings:
                self._left_out[name] = [show_key(w.key) for w in outcome.warnings]
            elif not failed:
                self._left_out.pop(name, None)
        if not failed:
            self.values_left_out.labels(name).set(len(outcome.warnings))
        if missing_changed:
            self._update_config_errors()
        if failed:
            self.failures.labels(name, step or "unknown").inc()
            self.resource_ok.labels(name).set(0)
        else:
            self.last_success.labels(name).set(now)
            self.resource_ok.labels(name).set(1)
        if step == "guard":
            self.guard_trips.labels(name).inc()
        if step != "guard":  # a guard trip is refused before rendering
            self.renders.labels(name, "failed" if step == "render" else "ok").inc()
        # A check ran when the staged file existed: the apply got to the check step or past it.
        if resource.check_cmd and outcome.status is not Status.UNCHANGED and step not in (
                "render", "guard", "stage"):
            self.checks.labels(name, "failed" if step == "check" else "ok").inc()
            if outcome.check_seconds is not None:
                self.check_seconds.labels(name).observe(outcome.check_seconds)
        # A reload step counts when it acted (reloaded, or applied through a runtime API) or
        # failed; "nothing to do" results (no action configured, target already in step,
        # nothing running) do not.
        kind = outcome.reload.kind if outcome.reload is not None else ReloadKind.NONE
        if outcome.reload is not None and kind is not ReloadKind.NONE:
            self._target_seen(name, outcome.reload)
        if step == "reload" or (outcome.status is Status.UPDATED and (
                kind.reloaded or kind is ReloadKind.RUNTIME)):
            counter, histogram = ((self.runtime_updates, self.runtime_seconds)
                                  if kind is ReloadKind.RUNTIME
                                  else (self.reloads, self.reload_seconds))
            counter.labels(name, "failed" if step == "reload" else "ok").inc()
            if outcome.reload_seconds is not None:
                histogram.labels(name).observe(outcome.reload_seconds)

    def _target_seen(self, name: str, result: ReloadResult) -> None:
        """What the resource's reload step or probe found: its target runs, or nothing does."""
        down = result.kind is ReloadKind.NO_TARGET
        with self._lock:
            if down:
                self._not_running[name] = str(result)
            else:
                self._not_running.pop(name, None)
        self.target_up.labels(name).set(0 if down else 1)

    def target_probed(self, resource: Resource, result: ReloadResult) -> None:
        with self._lock:
            if resource.name not in self._resources:
                return  # dropped by a configuration reload meanwhile
        self._target_seen(resource.name, result)
        self._update_ready()

    def target_drifted(self, resource: Resource, found: Probe) -> None:
        with self._lock:
            if resource.name not in self._resources:
                return  # dropped by a configuration reload meanwhile
        self.target_drifts.labels(resource.name).inc()

    def target_gauges(self, gauges: Mapping[str, Sequence[TargetGauge]]) -> None:
        with self._lock:
            self._target_gauges = {name: tuple(values) for name, values in gauges.items()
                                   if name in self._resources}

    def target_figures(self) -> dict[str, tuple[TargetGauge, ...]]:
        with self._lock:
            return dict(self._target_gauges)

    def ready(self, revision: int) -> None:
        with self._lock:
            self._ready_seen = True
            self._applied_revision = max(self._applied_revision, revision)
        self._revision_seen(revision)
        self.applied_revision.set(revision)
        self._update_ready()

    def heartbeat(self) -> None:
        with self._lock:
            self._last_beat = self._clock()
        self.heartbeat_ts.set(self._wall())

    def config_reloaded(self, ok: bool, message: str) -> None:
        self.config_reloads.labels("ok" if ok else "refused").inc()
        with self._lock:
            self._reload_refused = None if ok else message
        self._update_config_errors()

    def config_errors(self, errors: Sequence[str]) -> None:
        with self._lock:
            self._config_errors = tuple(errors)
        self._update_config_errors()

    def _update_config_errors(self) -> None:
        with self._lock:
            count = len(self._config_errors) + (self._reload_refused is not None) + \
                len(self._template_missing)
        self.config_errors_gauge.set(count)

    def part_failed(self, part: str, reason: str) -> None:
        with self._lock:
            self._failed_parts[part] = reason
        self.parts_failed.labels(part).set(1)

    def part_recovered(self, part: str) -> None:
        with self._lock:
            self._failed_parts.pop(part, None)
        self.parts_failed.labels(part).set(0)

    def drift_held(self, names: Sequence[str]) -> None:
        with self._lock:
            self._drift_held = list(names)
        self._update_ready()

    def io_stuck(self, names: Sequence[str]) -> None:
        with self._lock:
            was, self._io_stuck = set(self._io_stuck), list(names)
        for name in was - set(names):
            self.dest_io_stuck.labels(name).set(0)
        for name in names:
            self.dest_io_stuck.labels(name).set(1)
        self._update_ready()


class _TargetCollector(Collector):
    """The reload targets' own gauges, one family per name, labelled by resource."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def describe(self) -> Iterable[Metric]:
        return ()  # names known only once targets report (a plugin's own)

    def collect(self) -> Iterable[Metric]:
        families: dict[str, GaugeMetricFamily] = {}
        for resource, gauges in sorted(self.metrics.target_figures().items()):
            for gauge in gauges:
                family = families.get(gauge.name)
                if family is None:
                    family = families[gauge.name] = GaugeMetricFamily(
                        f"confsync_{gauge.name}", gauge.help, labels=["resource"])
                family.add_metric([resource], gauge.value)
        yield from families.values()


class _ExecCollector(Collector):
    def __init__(self, supervisor: Supervisor) -> None:
        self.supervisor = supervisor

    def describe(self) -> Iterable[Metric]:
        return self.collect()

    def collect(self) -> Iterable[Metric]:
        sup = self.supervisor
        yield GaugeMetricFamily("confsync_exec_child_up", "1 while the exec-mode child runs",
                                value=1 if sup.alive else 0)
        yield CounterMetricFamily("confsync_exec_restarts", "Exec-mode child restarts",
                                  value=sup.restarts)
        yield GaugeMetricFamily("confsync_exec_crash_loop",
                                "1 once confsync gave up on a crash-looping child",
                                value=1 if sup.gave_up is not None else 0)


def start_metrics(address: str, metrics: Metrics | None = None) -> tuple[Metrics, MetricsServer]:
    """What the daemon calls when `metrics_address` is set: the observer and its running server."""
    metrics = metrics if metrics is not None else Metrics()
    return metrics, MetricsServer(metrics, address).start()
