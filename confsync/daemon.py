"""`confsync watch`: the long-running loop. Read this file top to bottom to see the product.

Threads: the StoreFollower (watcher.py) does all store I/O and posts events to one queue; this
loop is the only code that touches the mirror, renders, writes files and reloads. So a change
that arrives during a render or a reload waits in the queue and starts the next batch.

    queue --> mirror.apply --> planner.touch (debounce) --> syncer.apply (render, check, swap,
                                                              one reload per target)
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from confsync.errors import EXIT_BAD_CONFIG, EXIT_OK, ConfigError, ResourceError, StoreUnavailable
from confsync.events import Observer, Observers
from confsync.mirror import Mirror
from confsync.planner import Planner
from confsync.renderer import Renderer
from confsync.report import report
from confsync.resources import Resource, load_resources
from confsync.settings import Settings, load_settings
from confsync.stores import Store, merge_prefixes, open_store
from confsync.sync import Outcome, Syncer
from confsync.watcher import BatchReceived, SnapshotTaken, StoreFollower, StreamState

log = logging.getLogger("confsync")

HEARTBEAT_SECONDS = 1.0
LOCAL_CHANGE_QUIET = 0.5  # seconds of quiet after a conf.d/templates edit before reloading


@dataclass(frozen=True)
class SignalReceived:
    signum: int


@dataclass(frozen=True)
class LocalFilesChanged:
    path: str


@dataclass
class ResourceSetState:
    """Everything that SIGHUP replaces as one unit."""

    settings: Settings
    resources: tuple[Resource, ...]
    renderer: Renderer
    prefixes: tuple[str, ...]


def _store_identity(settings: Settings) -> tuple[object, ...]:
    return (settings.backend, settings.etcd, settings.file_paths)


def build_state(settings: Settings) -> tuple[ResourceSetState, tuple[str, ...]]:
    """Load conf.d and templates; return the state and the per-file errors."""
    loaded = load_resources(settings.confdir, settings.prefix)
    renderer = Renderer(settings.confdir / "templates")
    prefixes = merge_prefixes(p for r in loaded.resources for p in r.watched_prefixes)
    return ResourceSetState(settings, loaded.resources, renderer, prefixes), loaded.errors


class Daemon:
    def __init__(self, settings: Settings, cli_values: Mapping[str, Any] | None = None,
                 observers: Sequence[Observer] = ()) -> None:
        self.cli_values = dict(cli_values or {})
        # SimpleQueue: its put() is safe from a signal handler (Queue.put can deadlock there).
        self.events: queue.SimpleQueue[object] = queue.SimpleQueue()
        self.observers = Observers(observers)
        self.mirror = Mirror()
        self.snapshot_floor = 0  # batches at or below the last snapshot's revision are in it
        self.stopping = False
        self.ready = False
        self.connected = False
        self.pending_keys: dict[str, set[str]] = {}
        self.reload_config_at: float | None = None
        self._local_observer: Any = None
        state, errors = build_state(settings)
        if errors:
            for error in errors:
                log.error("configuration: %s", error)
        if not state.resources:
            raise ConfigError(str(settings.confdir), "no valid template resources to run")
        self.state = state
        self.syncer = Syncer(state.renderer, self.mirror)
        self.planner = Planner(settings.watch.wait_min, settings.watch.wait_max)
        self.store: Store = open_store(settings)
        self.follower = self._new_follower()

    def _new_follower(self) -> StoreFollower:
        return StoreFollower(self.store, self.state.prefixes, self.events,
                             resync_interval=self.state.settings.watch.interval)

    # ---- the loop

    def run(self) -> int:
        self._install_signal_handlers()
        self.observers.started(self.state.resources)
        if self.state.settings.watch.confdir:
            self._watch_local_files()
        self.follower.start()
        last_beat = 0.0
        try:
            while not self.stopping:
                now = time.monotonic()
                deadlines = [d for d in (self.planner.next_deadline(), self.reload_config_at)
                             if d is not None]
                timeout = min([HEARTBEAT_SECONDS, *(max(0.0, d - now) for d in deadlines)])
                try:
                    self._handle(self.events.get(timeout=timeout))
                    while True:  # drain: everything already queued joins this batch
                        self._handle(self.events.get_nowait())
                except queue.Empty:
                    pass
                if self.stopping:
                    break
                now = time.monotonic()
                if self.reload_config_at is not None and now >= self.reload_config_at:
                    self.reload_config_at = None
                    self.reload_config()
                due = self.planner.due(now)
                if due:
                    self.apply(due)
                if now - last_beat >= HEARTBEAT_SECONDS:
                    self.observers.heartbeat()
                    last_beat = now
        finally:
            self.observers.stopping()
            self.follower.stop()
            if self._local_observer is not None:
                self._local_observer.stop()
            self.follower.join(timeout=5)
            self.store.close()
        log.info("confsync stopped")
        return EXIT_OK

    def _handle(self, event: object) -> None:
        if isinstance(event, BatchReceived):
            self._on_batch(event)
        elif isinstance(event, SnapshotTaken):
            self._on_snapshot(event)
        elif isinstance(event, StreamState):
            self._on_stream_state(event)
        elif isinstance(event, SignalReceived):
            self._on_signal(event.signum)
        elif isinstance(event, LocalFilesChanged):
            self.reload_config_at = time.monotonic() + LOCAL_CHANGE_QUIET

    def _on_batch(self, event: BatchReceived) -> None:
        batch = event.batch
        if batch.revision <= self.snapshot_floor:
            return  # already part of the snapshot the mirror holds
        changed = self.mirror.apply(batch)
        if changed:
            self.observers.changes_received(batch.revision, len(changed))
            self._touch_covering(changed)

    def _on_snapshot(self, event: SnapshotTaken) -> None:
        snapshot = event.snapshot
        if event.reason == "resync" and snapshot.revision < self.mirror.revision:
            log.debug("resync snapshot at %d is older than the mirror (%d); skipped",
                      snapshot.revision, self.mirror.revision)
            return
        first = not self.ready
        changed = self.mirror.load(snapshot)
        self.snapshot_floor = snapshot.revision
        self.observers.snapshot_loaded(snapshot.revision, len(self.mirror))
        if first:
            log.info("snapshot at revision %d: %d keys; rendering %d resources",
                     snapshot.revision, len(self.mirror), len(self.state.resources))
            self.apply(list(self.state.resources))
            self.ready = True
            self.observers.ready(snapshot.revision)
            return
        if changed:
            level = logging.WARNING if event.reason == "resync" else logging.INFO
            log.log(level, "%s snapshot at revision %d: %d keys differed from the mirror",
                    event.reason, snapshot.revision, len(changed),
                    extra={"revision": snapshot.revision, "changed": len(changed)})
            self._touch_covering(changed)

    def _on_stream_state(self, event: StreamState) -> None:
        if event.connected:
            if not self.connected:
                log.info("watching %s from revision %d", ", ".join(self.state.prefixes),
                         event.revision + 1)
            self.connected = True
            self.observers.watch_connected(event.revision)
            return
        if self.connected or not self.ready:
            log.warning("degraded: %s; keeping the last good files and retrying", event.reason)
        self.connected = False
        self.observers.watch_lost(event.reason)

    def _touch_covering(self, changed: set[str]) -> None:
        affected = []
        for resource in self.state.resources:
            keys = {k for k in changed if resource.covers(k)}
            if keys:
                self.pending_keys.setdefault(resource.name, set()).update(keys)
                affected.append(resource)
        self.planner.touch(affected, time.monotonic())

    # ---- render, check, swap, reload

    def apply(self, resources: list[Resource]) -> list[Outcome]:
        outcomes = self.syncer.apply(resources, heartbeat=self.observers.heartbeat)
        revision = self.mirror.revision
        changed_keys: set[str] = set()
        for outcome in outcomes:
            keys = self.pending_keys.pop(outcome.resource.name, set())
            changed_keys |= keys
            report(outcome, revision, sorted(keys))
        self.observers.batch_applied(revision, sorted(changed_keys), outcomes)
        return outcomes

    # ---- signals and configuration reloads

    def _install_signal_handlers(self) -> None:
        def handler(signum: int, frame: FrameType | None) -> None:
            # Only enqueue: the apply in flight finishes before the loop looks at this.
            self.events.put(SignalReceived(signum))

        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, handler)

    def _on_signal(self, signum: int) -> None:
        if signum == signal.SIGHUP:
            log.info("SIGHUP: reloading configuration")
            self.reload_config()
        else:
            log.info("%s: finishing and exiting", signal.Signals(signum).name)
            self.stopping = True

    def reload_config(self) -> bool:
        """Load settings, conf.d and templates anew; switch only if the new set renders."""
        self.observers.reloading_config()
        try:
            settings = load_settings(self.cli_values)
            state, errors = build_state(settings)
            if errors:
                raise ConfigError(str(settings.confdir), "; ".join(errors))
            if not state.resources:
                raise ConfigError(str(settings.confdir), "no template resources")
            store_changed = _store_identity(settings) != _store_identity(self.state.settings)
            new_store = open_store(settings) if store_changed else self.store
            try:
                if store_changed or state.prefixes != self.state.prefixes:
                    trial = Mirror()
                    trial.load(new_store.snapshot(state.prefixes))
                else:
                    trial = self.mirror
                trial_syncer = Syncer(state.renderer, trial)
                for resource in state.resources:
                    trial_syncer.render(resource)
            except BaseException:
                if new_store is not self.store:
                    new_store.close()
                raise
        except (ConfigError, ResourceError, StoreUnavailable) as exc:
            log.error("configuration reload refused, the running set stays: %s", exc)
            self.observers.config_reloaded(False, str(exc))
            return False

        restart = store_changed or state.prefixes != self.state.prefixes
        self.state = state
        self.syncer = Syncer(state.renderer, self.mirror, self.syncer.last_counts)
        self.planner.wait_min = settings.watch.wait_min
        self.planner.wait_max = settings.watch.wait_max
        # Pending renders hold the old Resource objects; every resource is rendered anew below
        # (or after the new snapshot), so nothing pending may fire with an old definition.
        self.planner.clear()
        self.pending_keys.clear()
        if restart:
            self.follower.stop()
            self.follower.join(timeout=10)
            if store_changed:
                self.store.close()
                self.store = new_store
            self.ready = False  # the next snapshot renders everything
            self.snapshot_floor = 0
            self.mirror = Mirror()
            self.syncer.mirror = self.mirror
            self.follower = self._new_follower()
            self.follower.start()
        else:
            self.apply(list(state.resources))
        self.observers.started(state.resources)  # observers forget resources that are gone
        log.info("configuration reloaded: %d resources", len(state.resources))
        self.observers.config_reloaded(True, f"{len(state.resources)} resources")
        return True

    def _watch_local_files(self) -> None:
        """Treat edits under conf.d/ and templates/ like a SIGHUP (after a short quiet)."""
        from watchdog.events import FileSystemEvent, FileSystemEventHandler
        from watchdog.observers import Observer as FsObserver

        events = self.events

        class Handler(FileSystemEventHandler):
            def on_any_event(self, event: FileSystemEvent) -> None:
                if event.event_type not in ("opened", "closed_no_write"):
                    events.put(LocalFilesChanged(str(event.src_path)))

        observer = FsObserver()
        for sub in ("conf.d", "templates"):
            path = Path(self.state.settings.confdir) / sub
            if path.is_dir():
                observer.schedule(Handler(), str(path), recursive=True)
        observer.daemon = True
        observer.start()
        self._local_observer = observer


def run_daemon(settings: Settings, cli_values: Mapping[str, Any] | None = None,
               observers: Sequence[Observer] = ()) -> int:
    try:
        daemon = Daemon(settings, cli_values, observers)
    except ConfigError as exc:
        log.error("configuration: %s", exc)
        return EXIT_BAD_CONFIG
    log.info("confsync %s watching with %s backend, pid %d",
             __import__("confsync").__version__, settings.backend, os.getpid())
    return daemon.run()

