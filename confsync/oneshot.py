"""`confsync once` and `confsync check`: one snapshot, one pass, an exit code that tells."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Generic, TextIO, TypeVar

from confsync.errors import (
    EXIT_BAD_CONFIG,
    EXIT_OK,
    EXIT_RESOURCE_FAILED,
    EXIT_WOULD_CHANGE,
)
from confsync.mirror import Mirror
from confsync.render_memo import RenderMemo
from confsync.resources import Resource, ResourceSet, load_resources
from confsync.settings import Settings
from confsync.stores import Store, merge_prefixes, open_snapshot_store

if TYPE_CHECKING:
    from confsync.outcome import Outcome
    from confsync.renderer import Renderer
    from confsync.sync import Syncer

T = TypeVar("T")

log = logging.getLogger("confsync")


def load_resource_set(settings: Settings) -> ResourceSet:
    """Load conf.d; log each bad file (the good ones still run)."""
    resource_set = load_resources(settings.confdir, settings.prefix)
    for error in resource_set.errors:
        log.error("configuration: %s", error)
    return resource_set


def snapshot_mirror(store: Store, resources: tuple[Resource, ...]) -> Mirror:
    prefixes = merge_prefixes(p for r in resources for p in r.watched_prefixes)
    mirror = Mirror()
    mirror.load(store.snapshot(prefixes))
    return mirror


def _exit_code(resource_set: ResourceSet, outcomes: list[Outcome]) -> int:
    from confsync.outcome import FAILED

    if resource_set.errors:
        return EXIT_BAD_CONFIG
    return EXIT_RESOURCE_FAILED if any(o.status == FAILED for o in outcomes) else EXIT_OK


class _Background(threading.Thread, Generic[T]):
    """One call on its own thread; `result()` waits and returns or re-raises what it did."""

    def __init__(self, call: Callable[[], T]) -> None:
        super().__init__(name="confsync-snapshot", daemon=True)
        self._call = call
        self._result: T | None = None
        self._error: BaseException | None = None
        self.start()

    def run(self) -> None:
        try:
            self._result = self._call()
        except BaseException as exc:  # handed to the caller's thread by result()
            self._error = exc

    def result(self) -> T:
        self.join()
        if self._error is not None:
            raise self._error
        return self._result  # type: ignore[return-value]


def _data_moved(store: Store, memo: RenderMemo, resources: tuple[Resource, ...]) -> bool:
    """Whether the store moved on since the renders the memo kept, by the revision the store
    gives cheaply while its snapshot is read (the gateway's `revision_hint`): then the data
    may well have changed, and the render path is set up during the read, not after it
    (~9 ms of a `once` after a data change). A guess either way: the memo's digests decide.
    Where other keys move the store on between runs it is set up in vain (CPU, not time)."""
    hint = getattr(store, "revision_hint", None)  # (only the gateway store has one)
    now = hint() if hint is not None else None
    moved = now is not None and any(memo.revision(r) != now for r in resources)
    if moved:
        log.debug("etcd is at revision %d, not that of the renders the memo kept: setting up "
                  "the render path while the snapshot is read", now)
    return moved


def prepare(settings: Settings, data: Path | None = None) -> tuple[ResourceSet, Syncer] | None:
    """Load conf.d and take one snapshot (of the store, or of a fixture file).

    The snapshot is read on a thread while this one imports and sets up the render path
    (Jinja2 and our renderer, ~30 ms): etcd's answer costs no extra wall time up to that.
    Unless the render memo expects to stand in for every render (the same code, templates and
    resources as at the last run: render_memo.py) and the store is where it was then
    (`_data_moved`): the render path is then set up only if the data turns out to have
    changed. None when no resource loaded at all (the errors are already logged).
    """
    resource_set = load_resource_set(settings)
    if not resource_set.resources:
        return None
    templates = settings.confdir / "templates"
    if data is not None:
        from confsync.stores.file import FileStore

        store: Store = FileStore([data])
    else:
        store = open_snapshot_store(settings)
    memo: RenderMemo | None = None

    def make_renderer() -> Renderer:
        from confsync.renderer import Renderer

        # With a memo, the templates it digested: read again, a deploy since would be rendered
        # and its output kept as the output of the templates before it.
        return Renderer(templates, render_timeout=settings.render_timeout,
                        max_output_size=settings.max_output_size,
                        sources=memo.sources if memo is not None else None,
                        srcs=[r.src for r in resource_set.resources], reuse_blocks=False)

    renderer: Renderer | Callable[[], Renderer] = make_renderer
    try:
        reading = _Background(lambda: snapshot_mirror(store, resource_set.resources))
        try:
            # First what waits on files and on etcd, the sync step's imports after: the reader
            # takes the GIL while this thread waits, so its request goes out sooner (a thread
            # that holds the GIL in pure Python hands it over only every 5 ms).
            memo = RenderMemo.open(templates, resource_set.resources,
                                   (settings.render_timeout, settings.max_output_size)) \
                if settings.render_memo else None
            if memo is None or not all(memo.expects(r) for r in resource_set.resources) \
                    or _data_moved(store, memo, resource_set.resources):
                renderer = make_renderer()
            from confsync.sync import Syncer
        finally:
            reading.join()  # the store is never closed under a read
        mirror = reading.result()
    finally:
        store.close()
    return resource_set, Syncer(renderer, mirror, memo=memo)


def run_once(settings: Settings) -> int:
    prepared = prepare(settings)
    if prepared is None:
        return EXIT_BAD_CONFIG
    from confsync.ops.report import report

    resource_set, syncer = prepared
    outcomes = syncer.apply(resource_set.resources)
    for outcome in outcomes:
        report(outcome, syncer.mirror.revision)
    return _exit_code(resource_set, outcomes)


def run_check(settings: Settings, show_diff: bool, data: Path | None, out: TextIO) -> int:
    prepared = prepare(settings, data)
    if prepared is None:
        return EXIT_BAD_CONFIG
    from confsync.outcome import FAILED, UPDATED

    resource_set, syncer = prepared
    outcomes = syncer.plan(resource_set.resources)
    owed = False
    daemon: str | None = None  # the `watch` keeping the confdir, looked up when needed
    for outcome in outcomes:
        name = outcome.resource.name
        for warning in outcome.warnings:
            out.write(f"# {name}: WARNING: {warning}\n")
        if outcome.status == FAILED:
            out.write(f"# {name}: FAILED: {outcome.error}\n")
        elif outcome.status == UPDATED:
            out.write(f"# {name}: would change {outcome.resource.dest}\n")
            if show_diff:
                out.write(outcome.diff or "(mode or owner only)\n")
        elif syncer.reload_left_owed(outcome.resource):
            owed = True
            if daemon is None:
                from confsync.confdir_lock import daemon_holding

                daemon = daemon_holding(settings.confdir)
            if daemon:  # its reload under way, or retried: not a stopped confsync's
                out.write(f"# {name}: {outcome.resource.dest} is up to date, but not live yet: "
                          f"the running `confsync watch` ({daemon}) is making it live (its "
                          "reload is under way or being retried)\n")
            else:
                out.write(f"# {name}: {outcome.resource.dest} is up to date, but its reload "
                          "is owed (confsync stopped before it was done); `once` or `watch` "
                          "will reload it\n")
        else:
            out.write(f"# {name}: {outcome.resource.dest} is up to date\n")
    code = _exit_code(resource_set, outcomes)
    if code == EXIT_OK and (owed or any(o.status == UPDATED for o in outcomes)):
        return EXIT_WOULD_CHANGE  # scripts and CI tell "pending changes" from "in step"
    return code
