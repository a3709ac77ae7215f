"""`confsync watch`: the long-running loop. Read this file top to bottom to see the product.

Threads: the StoreFollower (watcher.py) does all store I/O and posts events to one queue; this
loop is the only code that touches the mirror, renders, writes files and reloads. So a change
that arrives during a render or a reload waits in the queue and starts the next batch.

    queue --> mirror.apply --> planner.touch (debounce) --> syncer.apply (render, check, swap,
                                                              one reload per target)

Nothing here may die quietly. The loop checks its threads every heartbeat and restarts a dead
one (the follower resumes from the revisions it had delivered); an unexpected error in the loop
itself is logged with its traceback and followed by a resync, and if errors keep coming the
daemon exits with EXIT_INTERNAL_ERROR so the service manager starts it afresh.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import queue
import signal
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

from confsync import children, confdir_lock, owners, processes
from confsync.catch_up import CatchUp
from confsync.confdir_wait import user_not_known
from confsync.coverage import Coverage
from confsync.dest_io import DestIo, IoStuck
from confsync.drift import DriftGuard
from confsync.errors import EXIT_BAD_CONFIG, EXIT_OK, ConfigError, ResourceError
from confsync.fswatch import start_observer, stop_observer
from confsync.judged_renders import JudgedRenders
from confsync.logs import Repeats, change_logging, log_thread_death
from confsync.mirror import Mirror
from confsync.ops import held_signals
from confsync.ops.events import Observer, Observers
from confsync.ops.report import report, settled_line
from confsync.outcome import FAILED, UNCHANGED, UPDATED, Outcome
from confsync.pending_keys import PendingKeys
from confsync.planner import RETRY_SHARE, Planner
from confsync.renderer import Renderer
from confsync.repeated_failures import RepeatedFailures, RepeatedWarnings
from confsync.resources import Resource, load_resources
from confsync.said import FIRST, Said
from confsync.settings import Settings, load_settings
from confsync.stores import Snapshot, Store, merge_prefixes, open_store
from confsync.sync import Syncer, rollback_failures_forgotten
from confsync.targets import ReloadKind, ReloadResult
from confsync.watcher import (
    Backoff,
    BatchReceived,
    ReplayArrived,
    ReplayBegan,
    SnapshotTaken,
    StoreFollower,
    StreamState,
)

log = logging.getLogger("confsync")
T = TypeVar("T")

HEARTBEAT_SECONDS = 1.0
# How often (seconds) each running reload target is asked whether what it runs is its file
# (HAProxy: one `show servers state` against the file's servers): drift by hand between pool
# changes is found within this, not at the next change.
TARGET_COMPARE_SECONDS = 5.0
LOCAL_CHANGE_QUIET = 0.5  # seconds of quiet after a conf.d/templates edit before reloading
# ...but no later than this after the first edit not loaded yet: a file there that changes more
# often than the quiet (a generator's output, an editor's swap file) put every reload off, a
# SIGHUP's too, for as long as it went on.
LOCAL_CHANGE_MAX = 3.0
# Heartbeats in a row whose start of the conf.d/templates watcher met its directories being
# replaced (ConfigMap updates) before that is reported as a watcher that cannot start.
LOCAL_MOVES_LIMIT = 30
# A reload requested while an earlier one reads its new prefixes waits at most this long for
# that read to end, rather than stop its follower mid-read (which blocks the loop).
PENDING_PATIENCE = 15.0
# `watch` exits with this (sysexits' EX_SOFTWARE) when it cannot recover from its own errors.
EXIT_INTERNAL_ERROR = 70
LOOP_ERROR_LIMIT = 5  # unexpected loop errors within LOOP_ERROR_WINDOW before exiting
LOOP_ERROR_WINDOW = 60.0
# etcd sends one revision that touches several watched prefixes (a txn) as one response per
# watch, back to back on the stream. Before applying, the loop waits until the queue is quiet
# this long or brings a later revision, so a render never sees half of a revision...
BATCH_SETTLE = 0.01
# ...but never longer than this (a stream that keeps bringing one revision's responses).
BATCH_SETTLE_MAX = 0.25
# After a (re)connect, etcd replays each watch's missed revisions from its loop for lagging
# watches (every 100 ms), and each watch of the stream is created a round trip after the
# previous one: the replays of two prefixes can come 100 ms and more apart. Renders wait until
# no batch came for this long after the watch is back...
CATCH_UP_QUIET = 0.3
# ...and at most this long after it is back (or after the first replayed batch). A store
# that says when every prefix's replay has arrived (etcd: `ReplayArrived`) is waited for
# instead, up to this long; past it, every prefix is read at one revision.
CATCH_UP_MAX = 3.0
# After a snapshot the new watches start at its revision: only what changed while they were
# being created is replayed, by etcd's next pass over lagging watches (every 100 ms). Renders
# wait this long after the watch is back, whatever comes meanwhile: CATCH_UP_QUIET's "until
# quiet" held every change for CATCH_UP_MAX after each start while etcd was busy (pool churn:
# p99 put -> served 350 ms, and joins that left again unseen).
SESSION_HOLD = 0.3
PART_RESTART_LIMIT = 5  # a dead follower restarted this often without connecting: exit
# Failed steps retried with backoff: their cause is outside the data (a check that depends on
# the machine, a full disk, a service that refused to reload, a bug). Render and guard failures
# are functions of the data and templates (a change to either renders again anyway), except
# those marked `ResourceError.retry` (a render timeout, a DNS lookup failing for now).
RETRY_STEPS = frozenset({"stage", "check", "install", "reload", "internal"})


@dataclass(frozen=True)
class SignalReceived:
    signum: int


@dataclass(frozen=True)
class LocalFilesChanged:
    path: str
    new_directory: bool = False  # the watcher is started again for it (see _check_local_files)


@dataclass(frozen=True)
class IoReturned:
    """A dest's file call that was left running, stuck (dest_io.py), returned."""

    dest: Path


class ConfdirStuck(OSError):
    """A look at the confdir at a heartbeat has not returned within its deadline."""


@dataclass(frozen=True)
class OwnerAnswered:
    """A user or group lookup that a write gave up on (owners.py) returned."""

    kind: str
    name: str


@dataclass
class ResourceSetState:
    """Everything that SIGHUP replaces as one unit."""

    settings: Settings
    resources: tuple[Resource, ...]
    renderer: Renderer
    prefixes: tuple[str, ...]
    coverage: Coverage  # changed keys -> the resources they touch


@dataclass
class PendingReload:
    """A new resource set waiting for the snapshot of its (different) prefixes or store."""

    state: ResourceSetState
    store: Store
    snapshot_in: bool = False  # its snapshot came after a newer reload was due: not applied


def _store_identity(settings: Settings) -> tuple[object, ...]:
    return (settings.backend, settings.etcd, settings.file_paths)


def build_state(settings: Settings) -> tuple[ResourceSetState, tuple[str, ...]]:
    """Load conf.d and templates; return the state and the per-file errors."""
    loaded = load_resources(settings.confdir, settings.prefix)
    renderer = Renderer(settings.confdir / "templates", render_timeout=settings.render_timeout,
                        max_output_size=settings.max_output_size,
                        srcs=[r.src for r in loaded.resources])
    prefixes = merge_prefixes(p for r in loaded.resources for p in r.watched_prefixes)
    return ResourceSetState(settings, loaded.resources, renderer, prefixes,
                            Coverage(loaded.resources)), loaded.errors


def _renders(renderer: Renderer, resource: Resource, mirror: Mirror) -> bool:
    try:
        renderer.render(resource, mirror)
    except ResourceError:
        return False
    return True


class Daemon:
    def __init__(self, settings: Settings, cli_values: Mapping[str, Any] | None = None,
                 observers: Sequence[Observer] = (), lock: int = -1) -> None:
        self.cli_values = dict(cli_values or {})
        # The lock of the confdir run (and of one a reload is switching to): confdir_lock.py.
        self._locks = confdir_lock.DaemonLocks(lock)
        if settings.config_path is not None and not self.cli_values.get("config"):
            # The file found at the default place is this daemon's config from now on: should
            # it vanish (a package upgrade half done), a reload is refused, not run on defaults.
            self.cli_values["config"] = str(settings.config_path)
        # SimpleQueue: its put() is safe from a signal handler (Queue.put can deadlock there).
        self.events: queue.SimpleQueue[object] = queue.SimpleQueue()
        self.observers = Observers(observers)
        self._init = children.is_init()  # PID 1 of a container: orphans are ours to reap
        self.mirror = Mirror()
        self.snapshot_floor = 0  # batches at or below the last snapshot's revision are in it
        # The revision of the last batch applied in this drain (0: none), and a later batch
        # taken off the queue to end the settle wait, applied first in the next drain.
        self._drained_revision = 0
        self._carried: object | None = None
        # A (re)connect's replay may still be arriving (since when), when the watch was back,
        # and when the last batch came: renders wait for it (`_replay_hold`).
        self._catch_up_since: float | None = None
        # A stream lost after the start: its resume replays what it missed.
        self._resuming = False
        # A snapshot was read and the follower creates its watches from the revision after
        # it (`_new_watch_session`): their replays may come too, until it says it is back.
        self._awaiting_watch = False
        self._catch_up_max = CATCH_UP_MAX  # SESSION_HOLD after a snapshot's new watches
        # The store's revision when the watch came back: later batches are live, and do not
        # keep the replay hold waiting (0: unknown, every batch counts).
        self._replay_until = 0
        # The store tells when the replay has arrived (`ReplayArrived`): renders wait for it,
        # not for a quiet. Waiting: the watch is back and the replay is not; arrived: it came
        # (maybe before the watch said it was back); resync: it was overdue, and the snapshot
        # that replaces it is on its way.
        self._replay_known = False
        self._replay_waiting = False
        self._replay_arrived = False
        self._replay_resync = False
        self._connected_revision = 0  # (told to the observers once the replay is in)
        # A live watch got a lagging one's replay (a gRPC proxy resumed upstream by itself):
        # since when renders wait for the other prefixes' parts (`ReplayArrived`).
        self._lag_since: float | None = None
        # The stream was lost while the revision just drained was settling (`_settle`): etcd
        # may have sent that revision's part of one prefix and not yet another's (a member
        # stopped between the responses of one txn). Renders wait for the resume, whose
        # check finds the missing part and waits for its replay, or for a snapshot.
        self._cut = False
        self._connected_at = 0.0
        self._last_batch_at = 0.0
        self.stopping = False
        self.exit_code = EXIT_OK
        self.ready = False
        self.connected = False
        self.pending_keys = PendingKeys()  # bounded: a dest stuck for months (pending_keys.py)
        self.reload_config_at: float | None = None
        self._local_since: float | None = None  # the first conf.d/templates edit not loaded
        # A reload whose new prefixes could not be read (etcd away) is tried again: refusing it
        # for good would leave the files' new definition unapplied once etcd is back.
        self._reload_retry = Backoff(base=1.0, cap=30.0)
        self.pending: PendingReload | None = None
        # Events carry the generation of the follower that posted them; only the current
        # follower's count (a stopped one may still have work queued).
        self.generation = 0
        self._local_observer: Any = None
        self._local_paths: tuple[str, ...] = ()
        self._local_tree_grew = False  # a directory appeared under conf.d/ or templates/
        self._local_moved = 0  # starts in a row that met their directories being replaced
        # Why its last start failed (None: it runs); said once, then at most every 5 minutes.
        self._local_failure: str | None = None
        self._local_warnings = Repeats()
        # Resources re-rendered because their dest may differ from the render (the interval,
        # or a dest someone else changed): a rewrite without a data change is reported.
        self._repairing: set[str] = set()
        # The renders a watch back from an outage left due: /ready waits for them.
        self._catch_up = CatchUp()
        self.drift = DriftGuard()
        self._drift_warnings = Repeats()
        # Resources whose dest another writer changed and whose repair waits its turn: /ready
        # says so meanwhile (the service may be running the other writer's file).
        self._drift_held: frozenset[str] = frozenset()
        # Drift of a reload target from its file (`_compare_targets`): each difference a
        # WARNING, the same one again within 5 minutes INFO (a script undoing the repair).
        self._target_drift_warnings = Repeats()
        self._compare_at = 0.0  # time.monotonic() of the next comparison
        # Resources whose dest's file work does not return (a frozen filesystem): /ready says
        # so; they are applied again when it returns (IoReturned).
        self._io_stuck: frozenset[str] = frozenset()
        self._loop_errors: collections.deque[float] = collections.deque()
        self._follower_restart_at: float | None = None
        self._follower_deaths = 0
        self._part_backoff = Backoff(base=1.0, cap=30.0)
        self._failed_parts: set[str] = set()
        self._last_beat = 0.0
        self._degraded_warnings = Repeats()
        self._loss_said = False  # (a warning said since the watch was last connected)
        self._unchanged_revision = 0  # (a batch that changed no value: `_note_current`)
        self._reload_warnings = Repeats()
        # A reload target down for months is asked every 30 s: what each ask found (the file
        # current, nothing running) is said once, then at most every 5 minutes.
        self._no_target_said = Repeats()
        # A resource failing for days fails at every retry and data change: the same failure
        # is logged once, then at most every 5 minutes (repeated_failures.py).
        self._failures = RepeatedFailures()
        self._left_out_said = RepeatedWarnings()  # (values left out of a pool, likewise)
        state, errors = build_state(settings)
        # Files left out of the running set: said in /ready and a gauge as long as they are,
        # not only in one log line at start.
        self._load_errors = tuple(errors)
        if errors:
            for error in errors:
                log.error("configuration: %s", error)
        if not state.resources:
            raise ConfigError(str(settings.confdir), "no valid template resources to run")
        self.state = state
        self.syncer = Syncer(state.renderer, self.mirror, probe=True,
                             io=DestIo(on_return=lambda dest: self.events.put(IoReturned(dest)),
                                       on_slow=self.observers.heartbeat))
        self.planner = Planner(settings.watch.wait_min, settings.watch.wait_max)
        owners.bound_lookups(lambda kind, name: self.events.put(OwnerAnswered(kind, name)))
        processes.bound_searches()  # a /proc read behind a process stuck on a hung mount
        self.store: Store = open_store(settings)
        self.follower = self._new_follower(self.store, state.prefixes)
        interval = settings.watch.interval
        self.next_interval_at: float | None = time.monotonic() + interval if interval else None

    def _new_follower(self, store: Store | None = None, prefixes: tuple[str, ...] | None = None,
                      resume: Mapping[str, int] | None = None,
                      first_snapshot: str = "start") -> StoreFollower:
        return StoreFollower(store or self.store, prefixes or self.state.prefixes, self.events,
                             resync_interval=self.state.settings.watch.interval,
                             generation=self.generation, resume=resume,
                             first_snapshot=first_snapshot)

    def _replace_follower(self, store: Store, prefixes: tuple[str, ...],
                          first_snapshot: str) -> None:
        """Stop the follower, and start one for `prefixes` whose events alone count from now."""
        self.follower.stop()
        self.follower.join(timeout=10)
        self.generation += 1
        self.follower = self._new_follower(store, prefixes, first_snapshot=first_snapshot)
        self._follower_restart_at = None
        self.follower.start()
        # One that had died and waited for its restart is replaced too: only that restart
        # said so, and /health stayed 503 for good after a SIGHUP came first.
        self._part_recovered("follower")

    # ---- the loop

    def _started(self) -> None:
        """Tell the observers what now runs, and how late a heartbeat may be on its account."""
        self.observers.started(self.state.resources)
        self.observers.config_errors(self._load_errors)
        self.observers.step_bound(self.syncer.step_bound(self.state.resources))

    def run(self) -> int:
        self._install_signal_handlers()
        previous_hook = threading.excepthook
        threading.excepthook = log_thread_death
        self._started()
        if self.state.settings.watch.confdir:
            try:
                self._watch_local_files()
            except Exception as exc:  # (conf.d removed or unreadable since it was loaded)
                # Raised here, it ended the daemon before its first heartbeat (a traceback,
                # exit 1); the heartbeat that follows tries again, as for any failed start.
                self._local_failed(exc)
        self.follower.start()
        try:
            while not self.stopping:
                try:
                    self._iterate()
                except Exception:
                    self._loop_failed()
        finally:
            self._locks.step_down()  # (a successor waits for this process's end now)
            self.observers.stopping()
            self.follower.stop()
            if self._local_observer is not None:
                stop_observer(self._local_observer)
            self.follower.join(timeout=5)
            self.syncer.drop_left()
            self.store.close()
            if self.pending is not None and self.pending.store is not self.store:
                self.pending.store.close()
            threading.excepthook = previous_hook
        log.info("confsync stopped")
        return self.exit_code

    def _iterate(self) -> None:
        now = time.monotonic()
        # Nothing renders before the mirror holds a snapshot of the running set's prefixes, so
        # render deadlines only count once it does (a passed one would spin the loop).
        settled = self.ready and self.pending is None
        render_at = self.planner.next_deadline()
        hold = self._replay_hold(now)
        if render_at is not None and hold is not None:
            render_at = max(render_at, hold)
        deadlines = [d for d in (self._reload_deadline(), *((render_at, self.next_interval_at)
                                                            if settled else ()))
                     if d is not None]
        timeout = min([HEARTBEAT_SECONDS, *(max(0.0, d - now) for d in deadlines)])
        self._drained_revision = 0
        try:
            carried, self._carried = self._carried, None
            self._handle(carried if carried is not None else self.events.get(timeout=timeout))
            while not self.stopping:  # drain: everything already queued joins this batch
                self._handle(self.events.get_nowait())
        except queue.Empty:
            pass
        self._settle()
        if self.stopping:
            return
        now = time.monotonic()
        deadline = self._reload_deadline()
        if deadline is not None and now >= deadline:
            self.reload_config_at = self._local_since = None
            self.reload_config()
        settled = self.ready and self.pending is None
        if settled and self.next_interval_at is not None and now >= self.next_interval_at:
            self.next_interval_at = now + self.state.settings.watch.interval
            self._touch_all(repair=True)
        due = self.planner.due(now) if settled and self._replay_hold(now) is None else []
        if due:
            self.apply(due)
        if settled:
            self._note_current(now)
        if now - self._last_beat >= HEARTBEAT_SECONDS:
            self._check_parts(now)
            self._say_settled()
            self.syncer.tidy()
            if settled:
                self._check_dests(now)
                self._check_owners(now)
                self._check_targets(now)
                if now >= self._compare_at:
                    self._compare_at = now + TARGET_COMPARE_SECONDS
                    self._compare_targets(now)
                self._note_stuck()
            self.observers.heartbeat()
            self._last_beat = now

    def _settle(self) -> None:
        """Complete the last revision drained before anything renders.

        Watches of several prefixes share one stream, and etcd sends a txn that touches two of
        them as two responses; the loop took the first and rendered before the second was
        queued (a file that mixed two revisions, which no state of etcd ever was). Wait until
        the queue is quiet for BATCH_SETTLE, or brings a batch of a later revision (kept for
        the next drain: etcd sent every part of the earlier one before it).

        The resources due then are rendered first, during the wait (renders_ahead.py): a
        quiet queue afterwards (only this loop takes from it) means nothing came all along,
        and the apply takes those renders; anything that came is handled, and the wait goes
        on for BATCH_SETTLE from there, as before."""
        if not self._drained_revision or len(self.state.prefixes) < 2:
            return
        start = time.monotonic()
        deadline = start + BATCH_SETTLE_MAX
        self._render_ahead(start)
        quiet_until = start + BATCH_SETTLE
        while not self.stopping and (left := deadline - (now := time.monotonic())) > 0:
            try:
                event = self.events.get(timeout=max(0.0, min(quiet_until - now, left)))
            except queue.Empty:
                return
            if (isinstance(event, BatchReceived) and event.generation == self.generation
                    and event.batch and event.first_revision > self._drained_revision):
                self._carried = event
                return
            # (A batch merged while the loop was busy may hold the rest of the drained
            # revision and later ones: it is applied, and the wait goes on for the newest.)
            self._handle(event)
            quiet_until = time.monotonic() + BATCH_SETTLE

    def _render_ahead(self, start: float) -> None:
        """Render what the apply after this wait will render, while the queue stays quiet
        and the wait lasts (each render is kept only while the mirror stays as it was)."""
        if not self.ready or self.pending is not None or self._replay_hold(start) is not None:
            return
        for resource in self.planner.due_by(start + BATCH_SETTLE):
            if (not self.events.empty() or self.stopping
                    or time.monotonic() - start >= BATCH_SETTLE):
                return
            if not self.syncer.io_stuck(resource):
                self.syncer.render_ahead(resource)

    def _replay_hold(self, now: float) -> float | None:
        """Until when renders wait for the rest of a resumed watch's replay; None: no wait.

        The replay of one prefix rendered beside another's old value a state etcd never
        held (a txn over both, during the outage: every reconnect over a 25 ms link did)."""
        since = self._catch_up_since
        if len(self.state.prefixes) < 2:
            return None
        if self._cut:  # (the StreamState or snapshot that ends it wakes the loop)
            return now + CATCH_UP_MAX
        if self._replay_resync:  # (the snapshot, or the lost stream, wakes the loop)
            return now + CATCH_UP_MAX
        if self._lag_since is not None:
            if not self.connected or self._awaiting_watch:
                return now + CATCH_UP_MAX  # (its StreamState, either way, wakes the loop)
            since_lag = max(self._lag_since, self._connected_at)
            if now < since_lag + CATCH_UP_MAX:
                return since_lag + CATCH_UP_MAX
            self._replay_overdue()
            return now + CATCH_UP_MAX
        if self.connected and not self._awaiting_watch and self._replay_waiting:
            if now < self._connected_at + CATCH_UP_MAX:
                return self._connected_at + CATCH_UP_MAX
            self._replay_overdue()
            return now + CATCH_UP_MAX
        if since is None:
            return None
        if self.connected and not self._awaiting_watch and self._replay_known:
            # The replay is in: what is left is a live write that reaches a prefix whose
            # watch etcd has not synced yet (its next pass, 100 ms) after the others.
            until = self._connected_at + SESSION_HOLD
        elif self.connected and not self._awaiting_watch:
            until = min(max(self._connected_at, self._last_batch_at) + CATCH_UP_QUIET,
                        self._connected_at + self._catch_up_max)
        else:  # replayed batches while the next prefix's watch is being created
            until = since + CATCH_UP_MAX
        if now >= until:
            self._catch_up_since = None
            return None
        return until

    def _replay_overdue(self) -> None:
        """etcd did not send a changed prefix's replay within CATCH_UP_MAX (a stalled link or
        member): read every prefix at one revision rather than render parts or wait for good."""
        log.warning("the replay of the resumed watch did not arrive within %gs; reading every "
                    "prefix at one revision instead", CATCH_UP_MAX)
        self._replay_waiting = False
        self._lag_since = None
        self._replay_resync = True
        self.follower.request_resync()

    def _forget_replay(self) -> None:
        """A replay awaited, arrived or replaced belongs to the watch that just ended."""
        self._replay_waiting = self._replay_arrived = self._replay_resync = False
        self._lag_since = None

    def _on_replay_arrived(self) -> None:
        self._replay_arrived = True
        self._lag_since = None
        if self._replay_waiting:
            self._replay_waiting = False
            self._watch_back(self._connected_revision)

    def _reload_deadline(self) -> float | None:
        """When the requested config reload runs. One that finds an earlier reload still
        reading its snapshot waits for that read to end (it posts its snapshot or its failure
        within the store's timeout), up to PENDING_PATIENCE: stopping its follower mid-read
        held the loop until the read timed out (about 5 s against a black-holed etcd), once
        per SIGHUP."""
        at = self.reload_config_at
        if at is None or self.pending is None or self.pending.snapshot_in:
            return at
        return at + PENDING_PATIENCE

    def _loop_failed(self) -> None:
        """An unexpected error in the loop: log it, resync (an event may be lost), go on; exit
        non-zero when it keeps happening, rather than run on as a zombie."""
        now = time.monotonic()
        self._loop_errors.append(now)
        while self._loop_errors and self._loop_errors[0] < now - LOOP_ERROR_WINDOW:
            self._loop_errors.popleft()
        count = len(self._loop_errors)
        log.exception("watch loop: unexpected error (%d in the last %.0fs)", count,
                      LOOP_ERROR_WINDOW)
        if count >= LOOP_ERROR_LIMIT:
            log.critical("watch loop: giving up after %d unexpected errors; exiting with status "
                         "%d so the service manager starts confsync afresh", count,
                         EXIT_INTERNAL_ERROR)
            self.exit_code = EXIT_INTERNAL_ERROR
            self.stopping = True
            return
        try:
            self.follower.request_resync()
            if self.ready and self.pending is None:
                self._touch_all()
        except Exception:
            log.exception("watch loop: recovering from the error failed too")
        time.sleep(min(5.0, 0.2 * 2 ** count))

    def _handle(self, event: object) -> None:
        generation = getattr(event, "generation", None)
        if generation is not None and generation != self.generation:
            log.debug("dropped %s from a stopped store follower", type(event).__name__)
            return
        if isinstance(event, (BatchReceived, SnapshotTaken, StreamState)) and \
                self.pending is not None:
            self._on_pending_event(event)
        elif isinstance(event, BatchReceived):
            self._on_batch(event)
        elif isinstance(event, SnapshotTaken):
            self._on_snapshot(event)
        elif isinstance(event, StreamState):
            self._on_stream_state(event)
        elif isinstance(event, ReplayArrived):
            self._on_replay_arrived()
        elif isinstance(event, ReplayBegan):
            self._lag_since = time.monotonic()
        elif isinstance(event, SignalReceived):
            self._on_signal(event.signum)
        elif isinstance(event, IoReturned):
            self._io_returned(event.dest)
        elif isinstance(event, OwnerAnswered):
            self._owner_answered(event.kind, event.name)
        elif isinstance(event, LocalFilesChanged):
            self._local_changed()
            self._local_tree_grew |= event.new_directory

    def _local_changed(self) -> None:
        """An edit under conf.d/templates: reload once they are quiet for LOCAL_CHANGE_QUIET,
        within LOCAL_CHANGE_MAX of the first; a reload already due (a SIGHUP) is not put off."""
        now = time.monotonic()
        if self.reload_config_at is not None and self.reload_config_at <= now:
            return
        if self._local_since is None:
            self._local_since = now
        self.reload_config_at = min(now + LOCAL_CHANGE_QUIET, self._local_since + LOCAL_CHANGE_MAX)

    def _on_batch(self, event: BatchReceived) -> None:
        batch = event.batch
        if batch.revision <= self.snapshot_floor:
            # Already part of the snapshot the mirror holds; or dropped by a backlog that
            # passed its cap (revision 0: the snapshot that replaces it is on its way).
            return
        changed = self.mirror.apply(batch)
        self._drained_revision = max(self._drained_revision, batch.revision)
        if not self._replay_until or event.first_revision <= self._replay_until:
            # (A live batch does not count: under steady writes the replay hold waited for a
            # quiet that never came, CATCH_UP_MAX, 3 s behind etcd at every member restart.)
            self._last_batch_at = time.monotonic()
        if not self.connected and self._resuming and self._catch_up_since is None:
            self._catch_up_since = self._last_batch_at  # a replay before the watch is back
        if changed:
            self.observers.changes_received(batch.revision, len(changed))
            self._touch_covering(changed)
        else:
            # Nothing changed (a put of the value already there, a delete of nothing): the
            # files reflect this revision too once nothing else waits (`_note_current`).
            # /ready's revision and confsync_applied_revision stayed behind etcd's for good.
            self._unchanged_revision = max(self._unchanged_revision, batch.revision)

    def _note_current(self, now: float) -> None:
        """Say a revision that changed nothing is reflected by the files, once no render,
        retry or replay waits (else the files may still be behind it)."""
        if (self._unchanged_revision and self.planner.next_deadline() is None
                and self._replay_hold(now) is None):
            self.observers.revision_current(self._unchanged_revision)
            self._unchanged_revision = 0

    def _on_snapshot(self, event: SnapshotTaken) -> None:
        if not self._replay_resync:
            self._load_snapshot(event)
            return
        # It replaces an overdue replay: the files may follow it once its changes are due.
        self._replay_resync = False
        self._load_snapshot(event)
        self._watch_back(event.snapshot.revision)

    def _load_snapshot(self, event: SnapshotTaken) -> None:
        snapshot = event.snapshot
        if event.reason in ("resync", "resume") and snapshot.revision < self.mirror.revision:
            log.debug("%s snapshot at %d is older than the mirror (%d); skipped",
                      event.reason, snapshot.revision, self.mirror.revision)
            return
        first = not self.ready
        if event.reason != "resync" or not self.connected:
            self._new_watch_session()
        if event.reason == "backlog":
            self.observers.backlog_dropped()
        if event.cause is not None:  # "reset": loaded even below the mirror's revision
            self._on_store_reset(event)
        changed = self.mirror.load(snapshot)
        self.snapshot_floor = snapshot.revision
        self.observers.snapshot_loaded(snapshot.revision, len(self.mirror))
        if first:
            self._first_render(snapshot)
            return
        if changed:
            level = logging.WARNING if event.reason in ("resync", "reset") else logging.INFO
            log.log(level, "%s snapshot at revision %d: %d keys differed from the mirror",
                    event.reason, snapshot.revision, len(changed),
                    extra={"revision": snapshot.revision, "changed": len(changed)})
            self._touch_covering(changed)

    def _on_store_reset(self, event: SnapshotTaken) -> None:
        """A recreated or restored store: say so loudly; the normal render path (and its
        guards: min_keys, some keys -> none) then decides what reaches the files."""
        reset = event.cause
        assert reset is not None
        log.warning("store reset: cluster id %x -> %x, revision %d -> %d (mirror at %d); the "
                    "new snapshot replaces the mirror", reset.old_cluster, reset.new_cluster,
                    reset.old_revision, reset.new_revision, self.mirror.revision,
                    extra={"old_cluster_id": f"{reset.old_cluster:x}",
                           "new_cluster_id": f"{reset.new_cluster:x}",
                           "old_revision": reset.old_revision,
                           "new_revision": event.snapshot.revision})
        self.observers.store_reset(reset.old_cluster, reset.new_cluster, reset.old_revision,
                                   event.snapshot.revision)

    def _first_render(self, snapshot: Snapshot) -> None:
        log.info("snapshot at revision %d: %d keys; rendering %d resources",
                 snapshot.revision, len(self.mirror), len(self.state.resources))
        self.apply(list(self.state.resources))
        self.ready = True
        self.observers.ready(snapshot.revision)

    def _new_watch_session(self) -> None:
        """The follower read a snapshot and now creates its watches from the revision after
        it, one prefix a round trip after the other. A change made meanwhile reaches the
        later ones as etcd's replay of lagging watches (every 100 ms) while the first has it
        live: at the start over a 25 ms link, 5-7 of 7-16 renders mixed a txn's /a with
        /b's value of before. Renders wait as after a resume (`_replay_hold`)."""
        self._awaiting_watch = True
        self._cut = False  # (the mirror now holds one revision)
        self._forget_replay()
        if self._catch_up_since is None:
            self._catch_up_since = time.monotonic()

    def _on_stream_state(self, event: StreamState) -> None:
        if event.connected:
            if not self.connected or self._awaiting_watch:
                if not self.connected:
                    log.info("watching %s from revision %d",
                             ", ".join(self.state.prefixes) or "no keys",
                             event.revision + 1)
                self._connected_at = time.monotonic()
                if (self._resuming or self._awaiting_watch) and self._catch_up_since is None:
                    self._catch_up_since = self._connected_at
                self._catch_up_max = CATCH_UP_MAX if self._resuming else SESSION_HOLD
                self._resuming = self._awaiting_watch = False
                self._cut = False  # (the resume's replay hold takes over)
                self._replay_known = event.replay_pending is not None
                self._replay_waiting = (bool(event.replay_pending) and not self._replay_arrived
                                        and len(self.state.prefixes) > 1)
            self._replay_until = event.replay_until
            self.connected = True
            self._loss_said = False
            self._follower_deaths = 0
            self._part_backoff.reset()
            if self._replay_waiting:
                # /ready says "not connected" until the files can follow etcd again.
                self._connected_revision = event.revision
                return
            self._watch_back(event.revision)
            return
        # A loss is said when the watch goes (`connected`). Before the first snapshot every
        # retry fails anew: the same reason is repeated at most every 5 minutes, not at each
        # retry for as long as etcd stays away. After it, a watch that never connected (etcd
        # gone between the snapshot and the watch) had no loss to say: not a line, for as
        # long as etcd stayed away; its first failure is said, then quiet as after a loss.
        unsaid = not self.ready or not self._loss_said
        if self.connected or (unsaid and self._degraded_warnings.due(event.reason)):
            log.warning("degraded: %s; keeping the last good files and retrying", event.reason)
            self._loss_said = True
        self.connected = False
        self._forget_replay()
        if self._drained_revision and not self._cut:
            self._cut = True
            log.debug("watch lost as revision %d came in: renders wait for the resume",
                      self._drained_revision)
        self._replay_until = 0  # (what comes before the watch is back is replay)
        self._resuming = self._resuming or self.ready
        self.observers.watch_lost(event.reason)
        if self._catch_up.clear():
            self.observers.catching_up(())

    def _watch_back(self, revision: int) -> None:
        """Tell the observers the watch is open again, and which renders of what it brought
        (a snapshot, a replay) are still due: /ready waits for them (catch_up.py), as it
        waits for the first render at the start."""
        self.observers.watch_connected(revision)
        if self.ready and self._catch_up.owe(r.name for r in self.state.resources
                                             if self.planner.pending(r.name)):
            self.observers.catching_up(self._catch_up.owed)

    def _touch_covering(self, changed: set[str]) -> None:
        affected = []
        for resource, keys in self.state.coverage.touched(changed):
            self.pending_keys.add(resource.name, keys)
            affected.append(resource)
        self.planner.touch(affected, time.monotonic())

    def _touch_all(self, repair: bool = False) -> None:
        """Render every resource again (from the mirror): a hand-edited dest is rewritten."""
        if repair:
            self._repairing.update(r.name for r in self.state.resources)
        self.planner.touch(self.state.resources, time.monotonic())

    # ---- render, check, swap, reload

    def _io_returned(self, dest: Path) -> None:
        """A stuck file call on `dest` returned (thawed): judge its resources again against
        the mirror of now (what the call did, if anything, is read back from the file)."""
        done = self.syncer.io.release(dest) if self.syncer.io is not None else None
        if done is None:
            return
        step, seconds = done
        resources = [r for r in self.state.resources if r.dest == dest]
        log.info("%s: the %s of %s returned after %.1fs%s",
                 ", ".join(r.name for r in resources) or dest, step, dest, seconds,
                 "; applying again" if resources else "",  # (none: the confdir's look)
                 extra={"step": step, "seconds": round(seconds, 2)})
        # What it wrote late is confsync's own file, not another writer's edit.
        self._repairing.difference_update(r.name for r in resources)
        self.planner.touch(resources, time.monotonic())
        self._note_stuck()

    def _note_stuck(self) -> None:
        """Tell the observers which resources' file work is stuck, when that changed."""
        stuck = frozenset(r.name for r in self.state.resources if self.syncer.io_stuck(r))
        if stuck != self._io_stuck:
            self._io_stuck = stuck
            self.observers.io_stuck(sorted(stuck))

    def apply(self, resources: list[Resource]) -> list[Outcome]:
        # A resource whose file work is stuck waits for it to return (it is touched then):
        # another try would only fail at once, or start a second blocked call on its dest.
        resources = [r for r in resources if not self.syncer.io_stuck(r)]
        if not resources:
            return []
        try:
            outcomes = self.syncer.apply(resources, heartbeat=self.observers.heartbeat)
        except Exception:
            # A bug, not a bad input. Some files of the batch may be installed already: owe
            # their reloads, and apply each resource alone so one crashing resource fails
            # alone (and is retried below) while the others go on.
            log.exception("internal error while applying %s; applying them one by one",
                          ", ".join(r.name for r in resources))
            self.syncer.reload_owed.update(r.name for r in resources)
            outcomes = [self._apply_alone(r) for r in resources]
        revision = self.mirror.revision
        now = time.monotonic()
        changed_keys: set[str] = set()
        for outcome in outcomes:
            name = outcome.resource.name
            keys, count = self.pending_keys.take(name)
            changed_keys |= keys
            no_target = outcome.reload is not None and \
                outcome.reload.kind is ReloadKind.NO_TARGET
            quiet, said, warn = self._how_said(outcome, count, no_target)
            report(outcome, revision, sorted(keys), count, quiet, said, warn)
            if name in self._repairing:
                self._repairing.discard(name)
                if outcome.status == UPDATED and not keys:
                    log.warning("resource %s: %s differed from its render without a data change"
                                " (edited outside confsync?); rewritten", name,
                                outcome.resource.dest, extra={"resource": name})
            if isinstance(outcome.error, IoStuck):
                self.planner.settled(name)  # applied again once the call returns
            elif outcome.error is not None and (outcome.error.step in RETRY_STEPS
                                                or outcome.error.retry):
                delay = self.planner.retry(outcome.resource, now,
                                           outcome.seconds + (outcome.reload_seconds or 0.0))
                log.log(logging.DEBUG if said is None else logging.INFO,
                        "resource %s: trying again in %.1fs", name, delay,
                        extra={"resource": name, "retry_in": round(delay, 2)})
            elif no_target:
                # Nothing tells us when the service starts: ask again (backoff, capped), so
                # /ready turns true and the target is checked against the file once it runs.
                # (Said after a write; each ask's own event says what it found.)
                delay = self.planner.retry(outcome.resource, now)
                log.log(logging.INFO if outcome.status is UPDATED else logging.DEBUG,
                        "resource %s: nothing running to reload; asking again in %.1fs", name,
                        delay, extra={"resource": name, "retry_in": round(delay, 2)})
            else:
                self.planner.settled(name)
        self.observers.batch_applied(revision, sorted(changed_keys), outcomes)
        if self._catch_up.applied(o.resource.name for o in outcomes):
            self.observers.catching_up(())
        self._note_stuck()
        return outcomes

    def _how_said(self, outcome: Outcome, changes: int, no_target: bool,
                  ) -> tuple[bool, Said | None, list[bool]]:
        """How loud `outcome`'s report is (`report`'s quiet, said, warn): what a resource
        repeats for months must not fill the journal. `changes`: the data changes it applied."""
        name, error = outcome.resource.name, outcome.error
        detail = outcome.reload is not None and bool(outcome.reload.detail)
        quiet = no_target and outcome.status is not UPDATED and error is None and \
            not self._no_target_said.due(f"{name}: {outcome.reload}")
        # Found current, nothing reloaded, at an interval or drift repair or after a change
        # its output does not show (another key under its prefix): one INFO line per resource
        # and interval, or per key of a prefix with per-request keys. (The start and a SIGHUP
        # still say it.)
        # A recovery is said though: a render that failed on a bad value, then found the file
        # as it was once the value is fixed, left the failure as the journal's last word.
        said: Said | None = FIRST
        recovered = False
        if error is not None:
            said = self._failures.failed(name, str(error))
        else:
            recovered = self._failures.succeeded(name)
            if recovered:
                rollback_failures_forgotten(name)
        quiet = (quiet or (outcome.status is UNCHANGED and error is None and not detail
                           and (changes > 0 or name in self._repairing))) and not recovered
        warn: list[bool] = []
        if error is None or error.step not in ("render", "guard"):
            warn = self._left_out_said.due(name, [str(w) for w in outcome.warnings])
        return quiet, said, warn

    def _say_settled(self) -> None:
        """Say the end of each intermittent failure: the resource stayed well, or failing,
        for a while (repeated_failures.SETTLE)."""
        for name, reason, said in self._failures.settled():
            if reason is None:
                rollback_failures_forgotten(name)
            line, extra = settled_line(name, reason, said)
            log.log(logging.INFO if reason is None else logging.ERROR, "%s", line,
                    extra={"resource": name, **extra})

    def _apply_alone(self, resource: Resource) -> Outcome:
        try:
            return self.syncer.apply([resource])[0]
        except Exception as exc:  # reported (and retried) by the caller like any failure
            log.debug("resource %s: internal error", resource.name, exc_info=True)
            return Outcome(resource, FAILED, ResourceError(resource.name, "internal",
                                                           f"{type(exc).__name__}: {exc}"))

    # ---- the daemon's own threads

    def _check_parts(self, now: float) -> None:
        """Every heartbeat: restart a dead follower or local-files watcher (never a zombie),
        and as PID 1 reap the orphans confsync inherits."""
        if self._init:
            children.reap_orphans()
        if not self.follower.is_alive() and not self.stopping:
            self._follower_dead(now)
        self._follow_confdir_lock()
        if self.state.settings.watch.confdir:
            try:
                self._check_local_files()
            except Exception as exc:
                self._local_failed(exc)
            else:
                # Recovered only once a watcher runs: a start that met its directory replaced
                # leaves none until the next heartbeat, and after a failed start that said
                # "runs again" and /health 200 with no watcher (a deploy's edits meanwhile
                # missed with nothing saying so); a failure stays until a start succeeds.
                if self._local_observer is not None:
                    if self._local_failure is not None:
                        self._local_failure = None
                        log.info("conf.d/templates watcher runs again")
                    self._part_recovered("local-files")
        elif self._local_observer is not None or self._local_failure is not None:
            # `[watch] confdir` turned off by a reload: edits wait for a SIGHUP from now on (the
            # watcher used to go on reloading at every edit, its inotify watches held).
            if self._local_observer is not None:
                stop_observer(self._local_observer)
            self._local_observer, self._local_paths = None, ()
            self._local_failure = None
            self._part_recovered("local-files")
            log.info("conf.d/templates watcher stopped ([watch] confdir = false)")

    def _local_failed(self, exc: Exception) -> None:
        """The conf.d/templates watcher cannot start: /health names it, and the next heartbeat
        tries again. Each try failing the same way logged a traceback and two warnings every
        second, for as long as the cause lasted (an unreadable conf.d, no threads left)."""
        reason = f"{type(exc).__name__}: {exc}"
        self._local_failure = reason
        if self._local_warnings.due(reason):
            log.error("conf.d/templates watcher: cannot start it (%s); edits there are not "
                      "followed until it runs (SIGHUP still reloads), trying again every "
                      "second", reason, exc_info=exc)
        else:
            log.debug("conf.d/templates watcher: cannot start it: %s", reason)
        self._part_failed("local-files", reason)

    def _check_dests(self, now: float) -> None:
        """Every heartbeat: a dest someone else changed (a package upgrade's own file, a hand
        edit, a deletion) is rendered again, so the service is not left on a file that is not
        etcd's until the next data change; one stat per resource. See drift.py."""
        planner = self.planner
        resources = [r for r in self.state.resources if not planner.retrying(r.name)
                     and not planner.pending(r.name) and not self.syncer.io_stuck(r)]
        repair = []
        held = set()
        for resource in self.syncer.drifted(resources):
            if self.drift.may_repair(resource.name, now):
                repair.append(resource)
                continue
            if self.syncer.foreign(resource):
                held.add(resource.name)
            if self._drift_warnings.due(resource.name):
                log.warning("resource %s: %s keeps being changed by someone else (another "
                            "writer?); rewriting it again in %.0fs", resource.name,
                            resource.dest, self.drift.delay(resource.name, now),
                            extra={"resource": resource.name})
        if held != self._drift_held:
            self._drift_held = frozenset(held)
            self.observers.drift_held(sorted(held))
        if repair:
            log.info("%s: dest changed on disk; rendering again",
                     ", ".join(r.name for r in repair))
            self._repairing.update(r.name for r in repair)
            planner.touch(repair, now)

    def _check_owners(self, now: float) -> None:
        """Every heartbeat (a lookup per name every owners.REFRESH seconds): a user or group
        whose id moved (deleted and made again) or that is gone has the files of the resources
        naming it written again; they kept the old id for the process's life."""
        moved = owners.changed()
        if not moved:
            return
        affected = [r for r in self.state.resources
                    if ("user", r.owner) in moved or ("group", r.group) in moved]
        for what in moved.values():
            log.warning("%s: applying again the resources that name it%s", what,
                        f" ({', '.join(r.name for r in affected)})" if affected else "")
        self.planner.touch(affected, now)

    def _owner_answered(self, kind: str, name: str) -> None:
        """A user or group lookup that a write gave up on returned: the resources naming it
        are tried again now, not at their backoff (which a 5 s wait made 45 s)."""
        named = [r for r in self.state.resources
                 if (r.owner if kind == "user" else r.group) == name]
        if named:
            log.info("%s %r: its lookup returned; applying again %s", kind, name,
                     ", ".join(r.name for r in named))
            self.planner.touch(named, time.monotonic())

    def _check_targets(self, now: float) -> None:
        """Every heartbeat: ask each reload target whether it runs (one `show proc` for
        HAProxy). Stopped by someone else, nothing else would notice: /ready would say 200
        while nothing serves the file; it is then reported not running. One not running is
        looked at quickly, and applied again as soon as it answers (no reload when it started
        from the current file), so /ready turns 200 within about a second of its start."""
        syncer = self.syncer
        resources = [r for r in self.state.resources
                     if r.name in syncer.not_running or not self.planner.retrying(r.name)]
        down, up = syncer.check_targets(resources, heartbeat=self.observers.heartbeat)
        self.observers.target_gauges(syncer.gauges(self.state.resources))
        for resource, found in down:
            delay = self.planner.retry(resource, now)
            log.warning("resource %s: its reload target stopped (%s); the file is current, "
                        "asking again in %.1fs", resource.name, found, delay,
                        extra={"resource": resource.name, "retry_in": round(delay, 2)})
            self.observers.target_probed(resource, ReloadResult(ReloadKind.NO_TARGET,
                                                                found.detail))
        if up:  # started: the apply path asks it properly (did it read the current file?)
            log.info("%s: reload target answers again", ", ".join(r.name for r in up))
            self.planner.touch(up, now)

    def _compare_targets(self, now: float) -> None:
        """Every TARGET_COMPARE_SECONDS: is what each reload target runs its file? HAProxy's
        servers changed by hand (`del server`, `set server ... addr`, a server added in a
        backend of the file) were otherwise brought in step only by the next pool change, while
        /ready said 200. Weight and admin state are no difference (an operator's `disable
        server` stays). One found drifted is applied again now, its probe making the file live
        (runtime API, else a confirmed reload; a failure is the resource's, in /ready). One
        WARNING a difference: the same one found again within 5 minutes (a script that
        undoes the repair) is INFO."""
        planner = self.planner
        resources = [r for r in self.state.resources if not planner.retrying(r.name)
                     and not planner.pending(r.name) and not self.syncer.io_stuck(r)]
        found = self.syncer.compare_targets(resources, heartbeat=self.observers.heartbeat)
        for resource, probe in found:
            self.observers.target_drifted(resource, probe)
            detail = probe.detail or "its reload target runs other than the file"
            level = (logging.WARNING if self._target_drift_warnings.due(
                f"{resource.name}\0{detail}") else logging.INFO)
            log.log(level, "resource %s: %s (changed by hand?); bringing it in step with the "
                    "file", resource.name, detail, extra={"resource": resource.name})
        if found:
            planner.touch([r for r, _ in found], now)

    def _follower_dead(self, now: float) -> None:
        if self._follower_restart_at is None:
            self._follower_deaths += 1
            reason = "the store follower thread died"
            self._part_failed("follower", reason)
            self.connected = False
            self._forget_replay()
            self.observers.watch_lost(reason)
            if self._follower_deaths > PART_RESTART_LIMIT:
                log.critical("%s %d times without connecting; exiting with status %d",
                             reason, self._follower_deaths, EXIT_INTERNAL_ERROR)
                self.exit_code = EXIT_INTERNAL_ERROR
                self.stopping = True
                return
            delay = self._part_backoff.next()
            log.error("%s; restarting it in %.1fs", reason, delay)
            self._follower_restart_at = now + delay
            return
        if now < self._follower_restart_at:
            return
        dead = self.follower
        # A resync the dead one still owed (a loop error meanwhile): a snapshot first, not a
        # resume from its positions, which count the event the loop lost as delivered.
        owed = dead.resync_owed()
        first = "start" if not self.ready else "resync" if owed else "resume"
        self.follower = StoreFollower(dead.store, dead.prefixes, self.events,
                                      resync_interval=dead.resync_interval,
                                      generation=dead.generation,
                                      resume=None if owed else dead.positions(),
                                      first_snapshot=first)
        self._follower_restart_at = None
        self.follower.start()
        if owed:
            log.info("store follower restarted with a fresh snapshot (a resync was owed)")
        else:
            log.info("store follower restarted from revision %d",
                     min(dead.positions().values(), default=0) + 1)
        self._part_recovered("follower")

    def _part_failed(self, part: str, reason: str) -> None:
        if part not in self._failed_parts:
            self._failed_parts.add(part)
            self.observers.part_failed(part, reason)

    def _part_recovered(self, part: str) -> None:
        if part in self._failed_parts:
            self._failed_parts.discard(part)
            self.observers.part_recovered(part)

    # ---- signals and configuration reloads

    def _install_signal_handlers(self) -> None:
        stops: list[int] = []

        def handler(signum: int, frame: FrameType | None) -> None:
            # Only enqueue: the apply in flight finishes before the loop looks at this. A
            # second stop signal cuts the waits of the stop itself (the exec child's
            # stop_timeout), which run after the loop has stopped reading its queue.
            if signum != signal.SIGHUP:
                stops.append(signum)
                if len(stops) > 1:
                    self.observers.hurry()
                # A wait of the apply in flight that only spares a fallback (an HAProxy move
                # waiting for its requests in flight, up to 4 s) ends now: the stop is not
                # held for it.
                with contextlib.suppress(Exception):  # (in a signal handler: no logging)
                    self.syncer.stop_asked()
            self.events.put(SignalReceived(signum))

        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, handler)
        # A SIGHUP or SIGTERM while confsync was starting (PID 1 ignores what it has no
        # handler for: a pod deleted as it started ran on until the SIGKILL).
        for held in held_signals.take((*held_signals.HELD, *held_signals.STOP)):
            handler(held, None)

    def _on_signal(self, signum: int) -> None:
        if signum == signal.SIGHUP:
            # Reloaded once the queue is drained: SIGHUPs that arrived together (a storm, or
            # several while a reload waited on the store) are one reload of the files as they
            # are then. One at a time, a reload that waits on a black-holed etcd (about 5 s to
            # stop its follower) held the loop for 5 s per SIGHUP: 20 in a second, over 60 s
            # without a heartbeat, and systemd's watchdog kills at 90.
            now = time.monotonic()
            if self.reload_config_at is not None and self.reload_config_at <= now:
                log.debug("SIGHUP: a reload is already due; taken together")
            else:
                log.info("SIGHUP: reloading configuration")
            self.reload_config_at = now
        else:
            log.info("%s: finishing and exiting", signal.Signals(signum).name)
            self.stopping = True

    def reload_config(self) -> bool:
        """Load settings, conf.d and templates anew and switch to them, unless they are broken.

        Refused: configuration errors (settings, resource files, template syntax) and resources
        that render with their running definition but fail with the new one. A resource that
        fails on its data (a bad value in etcd) fails the same either way: the set is taken and
        the failure reported per resource, as `once` does. New prefixes or a new store are read
        by a new follower first; nothing renders until its snapshot is in.
        """
        self.observers.reloading_config()
        try:
            settings = load_settings(self.cli_values)
            unknown = user_not_known(settings.confdir)
            if unknown is not None:  # (a user gone since the start waited for it)
                raise ConfigError("settings", unknown)
            if not self._lock_confdir(settings.confdir):
                return False
            state, errors = build_state(settings)
            if errors:
                raise ConfigError(str(settings.confdir), "; ".join(errors))
            if not state.resources:
                raise ConfigError(str(settings.confdir), "no template resources")
            for resource in state.resources:
                try:
                    state.renderer.compile(resource)  # a syntax error is a configuration error
                except ResourceError as exc:
                    if not exc.retry:
                        raise
                    # A template not there yet: judged below like a failing render, and
                    # retried by the running set until it appears.
            store_changed = _store_identity(settings) != _store_identity(self.state.settings)
            new_store = open_store(settings) if store_changed else self.store
        except (ConfigError, ResourceError) as exc:
            self._reload_retry.reset()  # broken files wait for the next edit or SIGHUP
            self._refuse(str(exc))
            self._keep_running_set()
            return False
        except Exception as exc:  # a bug or an unforeseen file error: refused all the same,
            # so systemd's RELOADING=1 is always answered and the running set goes on
            log.exception("configuration reload: unexpected error while loading")
            self._reload_retry.reset()
            self._refuse(f"{type(exc).__name__}: {exc}")
            self._keep_running_set()
            return False
        dropped = self.pending is not None
        if dropped:  # a newer reload replaces one still waiting for its snapshot
            self._drop_pending()
        if not store_changed and state.prefixes == self.state.prefixes:
            if dropped:  # the running set's follower was stopped for the dropped one
                self._replace_follower(self.store, self.state.prefixes, "resume")
            return self._judge_and_switch(state, self.mirror)
        self.pending = PendingReload(state, new_store)
        self._replace_follower(new_store, state.prefixes, "start")
        # (A retry while etcd is away says so in its refusal, below, not in a line of its own.)
        log.log(logging.DEBUG if self._reload_retry.attempts else logging.INFO,
                "configuration reload: reading a snapshot of %s before switching",
                ", ".join(state.prefixes))
        return True

    def _lock_confdir(self, confdir: Path) -> bool:
        """A reload that moves to another confdir takes its lock first (confdir_lock.py): held
        by another `watch`, the reload is refused; by a `once`, tried again shortly. The old
        confdir's lock goes once the new set runs."""
        if self._locks.holds(confdir):
            return True  # (already ours, or started unlocked)
        try:
            self._locks.take(confdir)
        except confdir_lock.Held as held:
            why = f"{confdir} is kept by another confsync process ({held.describe()})"
            if held.by_daemon:
                self._reload_retry.reset()
                self._refuse(f"{why}; not switching to it")
            else:
                self._refuse_for_now(why)
            self._keep_running_set()
            return False
        except OSError:
            pass  # loading it says why
        return True

    def _follow_confdir_lock(self) -> None:
        """Every heartbeat: the lock stays on the directory the confdir's path names now. One
        deleted and made again (`rm -r` and a copy), or a `current` symlink a deploy moved,
        left it on the old inode, and a second `watch` or a `once` on the new one ran beside
        this one, both writing and reloading; and one gone when a reload was refused left it
        unlocked for good. The files loaded stay those of the old one until a SIGHUP (or
        `[watch] confdir`) loads them."""
        confdir = self.state.settings.confdir
        if self.stopping:
            return
        try:
            if self._confdir_look("lock's stat", lambda: self._locks.holds(confdir)):
                return
        except ConfdirStuck as exc:
            if self._reload_warnings.due(str(exc)):
                log.error("%s", exc)
            return
        try:
            fd = self._locks.take(confdir)
        except confdir_lock.Held as held:  # a `once` ends soon: tried again at the next beat
            if held.by_daemon and self._reload_warnings.due(f"lock {held.describe()}"):
                log.error("confdir %s is now another directory, kept by another `confsync "
                          "watch` (%s): both write and reload its files; stop one of them",
                          confdir, held.describe())
            return
        except OSError:
            return  # (gone for now: between its deletion and its new copy)
        if fd < 0:
            return  # (a filesystem without flock)
        log.warning("confdir %s is now another directory (made anew, or its symlink moved): "
                    "its lock taken%s", confdir, "" if self.state.settings.watch.confdir
                    else "; send SIGHUP to load its files")
        self._release_other_confdirs()

    def _release_other_confdirs(self) -> None:
        """Keep only the lock of the confdir run now (and of one a pending reload reads)."""
        keep = [self.state.settings.confdir]
        if self.pending is not None:
            keep.append(self.pending.state.settings.confdir)
        self._locks.keep_only(keep)

    def _on_pending_event(self, event: object) -> None:
        assert self.pending is not None
        if isinstance(event, SnapshotTaken):
            if self.reload_config_at is not None and self.reload_config_at <= time.monotonic():
                # Superseded while it read: not applied; the due reload drops it (its follower,
                # done reading, stops at once) and reads the files as they are now.
                log.debug("configuration reload: snapshot of a superseded reload dropped")
                self.pending.snapshot_in = True
                return
            pending, self.pending = self.pending, None
            mirror = Mirror()
            mirror.load(event.snapshot)
            if not self._judge_and_switch(pending.state, mirror, pending.store,
                                          event.snapshot):
                self._abandon(pending)
        elif isinstance(event, StreamState) and not event.connected:
            pending, self.pending = self.pending, None
            self._refuse_for_now(f"cannot read the new prefixes: {event.reason}")
            self._abandon(pending)

    def _refuse_for_now(self, why: str, cost: float = 0.0) -> None:
        """Refused for a reason that passes (etcd away, DNS failing for now, a render stopped
        by render_timeout on a loaded machine): the reload is tried again with backoff, at
        least RETRY_SHARE times what this try took (a runaway new template must not hold the
        loop)."""
        delay = max(self._reload_retry.next(), RETRY_SHARE * cost)
        # The first refusal, then the same one at most every 5 minutes: a retry every
        # 30 s for as long as etcd stays away would log 240 lines an hour.
        logged = self._reload_warnings.due(why) or self._reload_retry.attempts == 1
        self._refuse(f"{why}; the reload is tried again in {delay:.1f}s", logged)
        retry_at = time.monotonic() + delay
        # (A SIGHUP or an edit already waiting keeps its earlier time.)
        self.reload_config_at = min(retry_at, self.reload_config_at or retry_at)

    def _abandon(self, pending: PendingReload) -> None:
        """Back to the running set: a new follower for its prefixes, starting with a snapshot
        (a change made while the reload was pending is not lost)."""
        if pending.store is not self.store:
            pending.store.close()
        self._release_other_confdirs()
        self._replace_follower(self.store, self.state.prefixes, "resume")

    def _keep_running_set(self) -> None:
        """A reload refused while an earlier one waits for its snapshot: that one read files
        the refused ones have replaced, so it is dropped too and the running set's own
        follower comes back. (It was left pending, its follower, watching the other prefixes,
        in charge: their events were dropped and nothing rendered until a good reload.)"""
        pending, self.pending = self.pending, None
        if pending is not None:
            self._abandon(pending)

    def _drop_pending(self) -> None:
        pending, self.pending = self.pending, None
        if pending is not None:
            self.follower.stop()
            self.follower.join(timeout=10)
            if pending.store is not self.store:
                pending.store.close()

    def _refuse(self, reason: str, logged: bool = True) -> None:
        log.log(logging.ERROR if logged else logging.DEBUG,
                "configuration reload refused, the running set stays: %s", reason)
        self.observers.config_reloaded(False, reason)
        self._release_other_confdirs()

    def _judge(self, state: ResourceSetState, mirror: Mirror,
               judged: JudgedRenders) -> tuple[str | None, bool, list[str]]:
        """(why the new set is refused or None, whether that may pass, names failing on their
        data). `judged` keeps the digests of its renders: the apply after the switch takes
        a dest that already holds one as its render (judged_renders.py), not rendering twice."""
        if not self.ready:
            return None, False, []  # no data yet to judge against: the first snapshot renders
        running = {r.name: r for r in self.state.resources}
        data_failures = []
        for resource in state.resources:
            # Each render may take up to render_timeout, the lateness /health allows one step
            # (as between the steps of an apply): a set of several slow templates judged
            # without a beat turned /health 503, and had systemd's watchdog kill confsync.
            self.observers.heartbeat()
            try:
                judged.render(state.renderer, resource, mirror)
            except ResourceError as exc:
                self.observers.heartbeat()
                old = running.get(resource.name)
                # The running definition, on the same data where the mirror has it.
                old_mirror = mirror if all(p.startswith(state.prefixes)
                                           for p in (old.watched_prefixes if old else ())) \
                    else self.mirror
                if old is not None and _renders(self.state.renderer, old, old_mirror):
                    # A failure for now (DNS, a loaded machine) is no broken set: refused for
                    # good, the new files waited for the next SIGHUP or edit.
                    return f"{exc} (the running definition renders)", exc.retry, []
                data_failures.append(resource.name)
        return None, False, data_failures

    def _judge_and_switch(self, state: ResourceSetState, mirror: Mirror,
                          store: Store | None = None, snapshot: Snapshot | None = None) -> bool:
        began = time.monotonic()
        judged = JudgedRenders()
        refused, for_now, data_failures = self._judge(state, mirror, judged)
        if refused is not None:
            if for_now:
                self._refuse_for_now(refused, time.monotonic() - began)
            else:
                self._refuse(refused)
            return False
        old = self.state.settings
        if (old.log_level, old.log_format) != (state.settings.log_level,
                                               state.settings.log_format):
            # A SIGHUP reloads the main config: these were read at the start only.
            change_logging(state.settings.log_level, state.settings.log_format)
        self.state = state
        self._release_other_confdirs()
        if store is not None and store is not self.store:
            self.store.close()
            self.store = store
        if snapshot is not None:
            self.mirror = mirror
            self.snapshot_floor = snapshot.revision
            self._new_watch_session()  # (the new follower's watches come after its snapshot)
        names = {r.name for r in state.resources}
        self.syncer = self.syncer.successor(state.renderer, self.mirror, state.resources,
                                            judged)
        self.planner.wait_min = state.settings.watch.wait_min
        self.planner.wait_max = state.settings.watch.wait_max
        interval = state.settings.watch.interval
        self.next_interval_at = time.monotonic() + interval if interval else None
        if self.follower.resync_interval != interval:  # (kept, or started for the old set)
            self.follower.set_resync_interval(interval)
        # Pending renders hold the old Resource objects; every resource is rendered anew below
        # (or after the first snapshot), so nothing pending may fire with an old definition.
        self.planner.clear()
        self.pending_keys.clear()
        self._repairing.clear()
        self._failures.clear(names)
        rollback_failures_forgotten()
        owners.forget()  # (a user made again since gets its new id at this reload's apply)
        self._left_out_said.clear()
        self.drift.keep(names)
        if self._catch_up.keep(names):  # (a removed resource owes nothing)
            self.observers.catching_up(())
        self._drift_held &= names  # as the observers' own copy (`started` below)
        self._io_stuck &= names
        self._load_errors = ()  # (a set with any is refused)
        self._started()  # observers forget resources that are gone
        if snapshot is not None:
            self.observers.snapshot_loaded(snapshot.revision, len(self.mirror))
        if self.ready and snapshot is None and self._replay_hold(time.monotonic()) is not None:
            # A resumed watch's replay is under way: the mirror may hold one prefix's half of
            # a txn (the files rendered a state etcd never held); rendered once it is whole.
            self.planner.touch(state.resources, time.monotonic())
        elif self.ready:
            self.apply(list(state.resources))
        elif snapshot is not None:
            self._first_render(snapshot)
        note = f" ({len(data_failures)} failing on their data: {', '.join(data_failures)})" \
            if data_failures else ""
        self._reload_retry.reset()
        log.info("configuration reloaded: %d resources%s", len(state.resources), note)
        self.observers.config_reloaded(True, f"{len(state.resources)} resources{note}")
        return True

    # ---- conf.d and templates

    def _confdir_look(self, what: str, look: Callable[[], T]) -> T:
        """`look` (stats under the confdir, at a heartbeat) on a file worker, with the dests'
        deadline: a confdir on a network mount whose server died held the loop's thread in
        the kernel, and with it every resource, the heartbeat and systemd's watchdog ping.
        Raises ConfdirStuck past it; the call is left running, and no other is made on the
        confdir until it returns (dest_io.py: one blocked thread at most)."""
        io = self.syncer.io
        if io is None:
            return look()
        confdir = Path(self.state.settings.confdir)
        try:
            return io.call("(confdir)", confdir, what, lambda _: look())
        except IoStuck:
            raise ConfdirStuck(f"confdir {confdir}: its filesystem does not answer (its "
                               f"{what} has not returned: a hung network mount?); its files "
                               "are not followed until it does, the resources loaded go "
                               "on") from None

    def _local_dirs(self) -> tuple[str, ...]:
        """conf.d and templates, resolved: a Kubernetes ConfigMap links them through ..data to
        a directory each update replaces, and a watch follows the directory, not the link."""
        confdir = Path(self.state.settings.confdir)
        return tuple(os.path.realpath(confdir / sub) for sub in ("conf.d", "templates")
                     if (confdir / sub).is_dir())

    def _watch_local_files(self) -> bool:
        """Treat edits under conf.d/ and templates/ like a SIGHUP (after a short quiet).
        False: not started, its directories were replaced meanwhile (the next heartbeat
        starts it)."""
        from watchdog.events import FileSystemEvent, FileSystemEventHandler

        events = self.events

        class Handler(FileSystemEventHandler):
            def on_any_event(self, event: FileSystemEvent) -> None:
                if event.event_type not in ("opened", "closed_no_write"):
                    events.put(LocalFilesChanged(str(event.src_path), event.is_directory and
                                                 event.event_type in ("created", "moved")))

        self._local_paths = self._local_dirs()
        try:
            self._local_observer = start_observer(Handler(), self._local_paths,
                                                  recursive=True, what="conf.d/templates watcher")
        except (FileNotFoundError, NotADirectoryError):
            # Replaced as the watch started (a ConfigMap update: `..data` moved to a new
            # directory and the old one deleted): started on the new one at the next
            # heartbeat. Reported, this race was /health 503 (a dead part) and an ERROR with
            # a traceback (13 of 100 updates a second apart).
            self._local_moved += 1
            if self._local_dirs() == self._local_paths or self._local_moved > LOCAL_MOVES_LIMIT:
                raise
            log.debug("conf.d/templates watcher: %s replaced as it started; starting it on "
                      "the new directory at the next heartbeat", ", ".join(self._local_paths))
            return False
        self._local_moved = 0
        return True

    def _check_local_files(self) -> None:
        """Restart the conf.d/templates watcher when it (or one of its emitters) died, when
        a directory came or went, or when a directory appeared inside; a reload follows, as
        edits may have been missed.

        A new directory inside gets its inotify watch from watchdog as it goes, and when the
        user's watches are used up watchdog only logs that it cannot, and edits there are
        missed for good. A start is all or nothing (inotify for every directory, or polling:
        fswatch.py), so the watcher starts again."""
        observer = self._local_observer
        alive = observer is not None and observer.is_alive() and all(
            e.is_alive() for e in observer.emitters)
        grew, self._local_tree_grew = self._local_tree_grew, False
        same = self._confdir_look("stat", self._local_dirs) == self._local_paths
        if alive and same and not grew:
            return
        if observer is None:  # turned on by a config reload, or its last start failed
            if self._local_failure is None and not self._local_moved:
                log.info("conf.d/templates watcher started ([watch] confdir = true)")
        elif alive and same:
            log.info("conf.d/templates watcher: a new directory; starting it again to watch "
                     "all of it")
            stop_observer(observer)
        elif not same:  # (its emitters end when their directory is deleted: no failure)
            log.info("conf.d/templates watcher: its directories changed (replaced by a deploy "
                     "or a ConfigMap update, or one came or went); watching them anew")
            stop_observer(observer)
        else:
            log.warning("conf.d/templates watcher stopped; restarting it")
            stop_observer(observer)
        self._local_observer = None  # (stopped: a start that fails leaves none to stop again)
        if self._watch_local_files():
            self.events.put(LocalFilesChanged("(watcher restarted)"))


def run_daemon(settings: Settings, cli_values: Mapping[str, Any] | None = None,
               observers: Sequence[Observer] = (), lock: int = -1) -> int:
    """`lock`: the descriptor holding the start confdir's lock (confdir_lock.py; -1 none),
    the daemon's from here on (a reload may move it to another confdir). Held until the
    process ends, so a successor never starts while this one still stops its exec child."""
    try:
        daemon = Daemon(settings, cli_values, observers, lock)
    except BaseException as exc:
        confdir_lock.release(lock)
        if not isinstance(exc, ConfigError):
            raise
        log.error("configuration: %s", exc)
        return EXIT_BAD_CONFIG
    log.info("confsync %s watching with %s backend, pid %d",
             __import__("confsync").__version__, settings.backend, os.getpid())
    return daemon.run()

