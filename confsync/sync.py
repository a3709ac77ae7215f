"""One pass over a set of resources: render, guard, apply, then one reload per reload action.

Used by `confsync once`, `confsync check` and every batch of the watch loop. Each resource
fails on its own; the others go on. Reloads go through the `ReloadTarget` interface
(confsync/targets.py): this module knows no particular service.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import os
import stat
import time
from collections.abc import Callable, Collection, Hashable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from confsync import render_purity
from confsync.applier import (
    DestCache,
    FileState,
    NotDurable,
    Seen,
    Target,
    install,
    look,
    remove_stale_staged,
    remove_undeleted,
    restore,
    run_check,
    undeleted_waiting,
    unreplaceable,
    write_staged,
    written_path,
)
from confsync.dest_io import DestIo, IoStuck, Progress, no_progress
from confsync.errors import ResourceError
from confsync.fdlimit import describe
from confsync.judged_renders import JudgedRenders
from confsync.left_copies import LeftCopies
from confsync.logs import Repeats
from confsync.mirror import Mirror
from confsync.outcome import FAILED, UNCHANGED, UPDATED, Outcome, Status
from confsync.processes import boot_clock
from confsync.reload import has_reload_action, target_for
from confsync.render_memo import data_digest
from confsync.renders_ahead import RendersAhead
from confsync.resources import Resource
from confsync.running_copy import read_kept, reloaded, running_copy
from confsync.said import shape
from confsync.targets import (
    UNKNOWN_PROBE,
    Liveness,
    Probe,
    ReloadFailed,
    ReloadKind,
    ReloadResult,
    ReloadTarget,
    Sibling,
    TargetGauge,
)

log = logging.getLogger(__name__)
if TYPE_CHECKING:
    from confsync.render_memo import RenderMemo
    from confsync.renderer import Renderer, RenderWarning

T = TypeVar("T")
# A reload that keeps failing fails back into the previous file at each retry too: said once,
# then at most every 5 minutes (the failure itself is rate-limited by the daemon), and anew
# once the resource went through or the set was reloaded (rollback_failures_forgotten).
_ROLLBACK_FAILURES = Repeats()
# A probe that cannot ask (a process table that does not answer: processes.py) is asked again
# each heartbeat: said once, then at most every 5 minutes.
_PROBE_FAILURES = Repeats()


def rollback_failures_forgotten(name: str | None = None) -> None:
    """`name` (every resource by default) applied, or a new set: its next failed reload back
    into the previous file is said at once, as its failure is (repeated_failures.py)."""
    _ROLLBACK_FAILURES.forget("" if name is None else f"{name}\0")


def _no_beat() -> None:
    pass


class Syncer:
    def __init__(self, renderer: Renderer | Callable[[], Renderer], mirror: Mirror,
                 last_counts: dict[str, int] | None = None, probe: bool = False,
                 io: DestIo | None = None, memo: RenderMemo | None = None) -> None:
        # A Renderer, or what makes one at the first render: `once` with a render memo that
        # stands in for every render never imports Jinja2 (render_memo.py).
        self._renderer = renderer
        self.mirror = mirror
        self.memo = memo
        # The renders that judged this Syncer's resource set (a SIGHUP), for its first apply.
        self.judged = JudgedRenders()
        # Renders made while the daemon waited for the rest of a revision, for the next apply.
        self.ahead = RendersAhead()
        # The daemon's file work on a dest runs with a deadline (dest_io.py); `once` and
        # `check` call it directly.
        self.io = io
        # The daemon's Syncer (`probe`) asks the target of a file found current at its first
        # apply whether it runs (`once` reloads only what it wrote, and asks nothing).
        self.probe_first = probe
        # Keys each resource saw at its last successful render: the default guard's memory.
        self.last_counts: dict[str, int] = last_counts if last_counts is not None else {}
        self.dests = DestCache()
        # dest -> the last bytes that passed check_cmd in this process and were installed: the
        # anchor every proof for skipping a check starts from (proofs never chain).
        self.checked: dict[Path, bytes] = {}
        # Resources whose file may be installed but whose reload did not happen or failed: the
        # next apply reloads them even when the file already matches.
        self.reload_owed: set[str] = set()
        # Resources whose last reload found nothing running (the target reads the installed
        # file when it starts): the next apply asks the target again, against that file.
        self.not_running: set[str] = set()
        # Of those, the ones whose target answered a quick look since (`check_targets`): the
        # next apply asks it properly. Until an apply gets that far (one failing before the
        # reload step, on its check or its data, never does), it is not reported back again:
        # it was at every heartbeat, each report an apply, so a failing check ran every second.
        self.answered: set[str] = set()
        # dest -> the bytes this process installed last (checked or proven).
        self.installed: dict[Path, bytes] = {}
        # dest -> `boot_clock()` time since which it holds what this process installed (or
        # found equal to its render): a target that started after that read this file.
        self.in_place: dict[Path, float] = {}
        # Resources whose target this Syncer asked (reloaded or probed) at least once.
        self.asked: set[str] = set()
        # Of those, the ones whose target a comparison between applies found running other
        # than their file (`compare_targets`): the next apply asks it as at a first look, and
        # its probe's STALE makes the file live (HAProxy: its servers brought in step).
        self.found_stale: set[str] = set()
        self._targets: dict[Resource, ReloadTarget | None] = {}
        self._dests_of: dict[str, Path] = {}  # resource name -> dest, as last applied
        self._swept: set[Path] = set()  # dests whose stale staged files were looked for
        # Dests looked at for a running copy a predecessor left (running_copy.py); those with
        # one kept now (by us or it); what their service runs, where a predecessor kept it
        # (None: unknown) until the reload owed is done.
        self._looked: set[Path] = set()
        self._kept: set[Path] = set()
        self._running: dict[Path, FileState | None] = {}
        # Kept copies whose resource a config reload took away, for one to come back.
        self._left = LeftCopies()

    @property
    def renderer(self) -> Renderer:
        if callable(self._renderer):
            self._renderer = self._renderer()
        return self._renderer

    def successor(self, renderer: Renderer, mirror: Mirror, resources: Sequence[Resource],
                  judged: JudgedRenders | None = None) -> Syncer:
        """The Syncer of a new resource set (a config reload), carrying over what is still
        true of `resources` and nothing of a resource that is gone. `judged`: the renders that
        judged the set, standing in for its first apply's renders where sound.

        Kept: the guard's memory by name; owed reloads by name and by dest (a resource renamed,
        or its file moved to another conf.d file, while its reload was owed still owes it: the
        file at dest was installed and never made live, and its render now matches it, so
        nothing else would reload it); when each file has been in place by dest; and the reload
        target of a resource whose definition did not change (it holds
        state: HAProxy servers parked in maintenance, deleted by a later pass, were left in
        HAProxy for good by any SIGHUP that came first), and for one whose definition was
        edited (same dest) a new target that takes that state over. A removed resource's memory is
        dropped: months of added and removed resources must not pile up, and one added back
        later starts as at a daemon's start (the file at dest is the guard's memory).
        """
        kept = set(resources)
        names = {r.name for r in resources}
        dests = {r.dest for r in resources}
        new = Syncer(renderer, mirror, {n: c for n, c in self.last_counts.items() if n in names},
                     probe=self.probe_first, io=self.io)
        if judged is not None:
            new.judged = judged
        owed_dests = {self._dests_of[n] for n in self.reload_owed if n in self._dests_of}
        new.reload_owed = {r.name for r in resources
                           if r.name in self.reload_owed or r.dest in owed_dests}
        # Still nothing running: the next apply asks again, against the time each file has
        # been in place (not reloading what the service read when it started).
        new.not_running = self.not_running & names
        new.answered = self.answered & names
        new.in_place = {d: t for d, t in self.in_place.items() if d in dests}
        new._targets = {r: t for r, t in self._targets.items() if r in kept}
        by_dest = {r.dest: t for r, t in self._targets.items() if r not in kept}
        for resource in resources:
            earlier = by_dest.get(resource.dest)
            if resource not in new._targets and earlier is not None:
                target = new.target(resource)
                take_over = getattr(target, "take_over", None)  # duck-typed targets may lack it
                if take_over is not None:
                    take_over(earlier)
        new._dests_of = {n: d for n, d in self._dests_of.items() if n in names}
        reloading = {r.dest for r in resources if has_reload_action(r)}
        # A resource back on a dest whose owed reload lost its resource: its first apply
        # finds the copy (left_copies.py).
        back = self._left.back(reloading)
        new._looked = (self._looked & dests) - back
        new._kept = self._kept & reloading
        new._left = self._left.carried(self._kept - reloading, reloading, time.monotonic())
        for dest in sorted(back):
            log.info("%s: a resource reloads it again while the reload of its earlier one is "
                     "owed; making that reload", dest)
        new._running = {d: f for d, f in self._running.items() if d in dests}
        return new

    def _drop_running_copy(self, dest: Path, wait: bool = False) -> None:
        """Remove the running copy (running_copy.py) beside a dest whose owed reload no
        resource made within LEFT_GRACE (removed, moved to another dest, or reloading nothing
        now: left_copies.py). On a worker (the dest's filesystem may be frozen), waited for
        by nobody, or with the dest's deadline (`wait`: at a stop, before the process ends)."""
        def drop(_: Progress | None = None) -> None:
            with contextlib.suppress(OSError):  # (a link no longer followed: left as it is)
                reloaded(written_path(dest))

        if self.io is None:
            drop()
        elif wait:
            with contextlib.suppress(IoStuck):  # (left: a successor ignores it, or owes it)
                self.io.call("(removed)", dest, "reload", drop)
        else:
            self.io.background(f"running copy of {dest}", drop)

    def drop_left(self) -> None:
        """At a stop: remove the copies no resource of this run took up again."""
        for dest in self._left.take_all():
            self._drop_running_copy(dest, wait=True)

    def target(self, resource: Resource) -> ReloadTarget | None:
        """The resource's reload target, kept for the life of this Syncer (targets hold state,
        e.g. HAProxy servers waiting to be deleted)."""
        if resource not in self._targets:
            self._targets[resource] = target_for(resource)
        return self._targets[resource]

    def stop_asked(self) -> None:
        """A stop signal arrived: tell every target (see `ReloadTarget.stop_asked`). Called in
        the signal handler."""
        for target in list(self._targets.values()):
            stop_asked = getattr(target, "stop_asked", None)  # duck-typed targets may lack it
            if stop_asked is not None:
                stop_asked()

    def step_bound(self, resources: Iterable[Resource]) -> float:
        """The longest step between two heartbeats of `apply` by the timeouts that bound it:
        a resource's render and check, or one reload."""
        bound = 0.0
        for resource in resources:
            render = resource.render_timeout or self.renderer.render_timeout
            bound = max(bound, render + (resource.check_timeout if resource.check_cmd else 0.0)
                        + (2 * self.io.patience if self.io is not None else 0.0))
            if self.target(resource) is not None:
                bound = max(bound, resource.reload_timeout)
        return bound

    def _sweep(self, resources: Iterable[Resource], min_age: float = 0.0) -> None:
        """Remove staged files a killed run left beside each dest, the first time we see it,
        and those an earlier failed apply of this process could not remove. With a DestIo
        that is the dest's file work (a removal on a frozen filesystem blocks): done by the
        first read of each dest (`_read_dest`), and the leftovers on a worker (`tidy`).
        `min_age`: only files at least that old (remove_stale_staged)."""
        self.tidy()
        if self.io is not None:
            return
        new = [r.dest for r in resources if r.dest not in self._swept]
        if new:
            self._swept.update(new)
            remove_stale_staged({path for dest in new for path in _beside(dest)}, min_age)

    def _render_against(self, resource: Resource,
                        current: FileState) -> tuple[bytes, tuple[RenderWarning, ...]]:
        """render(); with no memory of an earlier render (`once`, `check`, a daemon's start),
        the file at dest is the memory: zero keys may not replace a non-empty file."""
        remembered = resource.name in self.last_counts
        content, warnings = self.render_with_warnings(resource, current.content)
        if (not remembered and resource.min_keys is None and resource.keys
                and self.last_counts[resource.name] == 0
                and current.content and content != current.content):
            del self.last_counts[resource.name]
            raise ResourceError(resource.name, "guard",
                                f"no keys under {', '.join(resource.watched_prefixes)}, and "
                                f"{resource.dest} is not empty; keeping it (min_keys = 0 "
                                f"allows rendering from no keys)")
        return content, warnings

    def tidy(self) -> None:
        """Remove staged files that could not be removed earlier (a read-only filesystem), at
        each heartbeat: once it is writable again they go, with no apply needed. The daemon's
        run on a worker, one at a time and waited for by nobody (it may block: frozen)."""
        if self.io is None:
            remove_undeleted()
        elif undeleted_waiting():
            self.io.background("tidy", remove_undeleted)
        for dest in self._left.expired(time.monotonic()):
            self._drop_running_copy(dest)

    def _io(self, resource: Resource, step: str, fn: Callable[[Progress], T]) -> T:
        """fn on the dest's worker, with a deadline (raises IoStuck past it); directly when
        this Syncer has no DestIo."""
        if self.io is None:
            return fn(no_progress)
        return self.io.call(resource.name, resource.dest, step, fn)

    def io_stuck(self, resource: Resource) -> bool:
        """Whether file work on the resource's dest was left running, stuck (dest_io.py)."""
        return self.io is not None and self.io.stuck(resource.dest)

    def drifted(self, resources: Iterable[Resource]) -> list[Resource]:
        """Resources whose dest someone else changed since this Syncer last looked at it
        (a dest whose stat does not return is stuck, not drifted)."""
        resources = list(resources)
        if self.io is None:
            return [r for r in resources if self.dests.changed(r.dest)]
        changed, stuck = self.io.each([(r.name, r.dest) for r in resources], "stat",
                                      self.dests.changed)
        if stuck is not None:
            log.error("%s", stuck, extra={"resource": stuck.resource, "step": stuck.step})
        return [r for r in resources if changed.get(r.dest)]

    def foreign(self, resource: Resource) -> bool:
        """Its dest is not what this Syncer last left there, as the resource sees it: other
        bytes, or a mode or owner it sets (a touch, or a chmod of a mode it leaves alone, is
        not); one read. How a drifted dest whose repair has to wait is told apart."""
        try:
            last, now = self._io(resource, "stat", lambda _: self.dests.peek(resource.dest))
        except (OSError, IoStuck):
            return True
        if last is None or last.content is None:
            return True
        try:
            return not Target.for_resource(resource, last.content, now).matches(now)
        except ResourceError:  # an owner not known now: the apply that repairs it says so
            return True

    def render(self, resource: Resource) -> bytes:
        return self.render_with_warnings(resource)[0]

    def render_with_warnings(self, resource: Resource, dest_content: bytes | None = None,
                             ) -> tuple[bytes, tuple[RenderWarning, ...]]:
        """Render and guard; raise ResourceError naming the step.

        The guard keeps the last good file when the data looks like a blip: fewer keys than
        `min_keys`, or (by default) none at all where the last render had some. With a render
        memo, `dest_content` (the bytes at dest) is the output when a render with the same
        inputs wrote it.
        """
        count = self.mirror.count(resource.key_dirs) + sum(
            1 for key in resource.key_names if self.mirror.get(key) is not None)
        where = ", ".join(resource.watched_prefixes)
        if resource.min_keys is not None and count < resource.min_keys:
            raise ResourceError(resource.name, "guard",
                                f"only {count} keys under {where}, min_keys is "
                                f"{resource.min_keys}; keeping the last good file")
        if resource.min_keys is None and count == 0 and self.last_counts.get(resource.name):
            raise ResourceError(resource.name, "guard",
                                f"all {self.last_counts[resource.name]} keys under {where} "
                                f"vanished; keeping the last good file (min_keys = 0 allows it)")
        reused = self.judged.take(resource, self.renderer, self.mirror, dest_content) \
            if self.judged else None
        if reused is not None:
            log.debug("%s: %s holds what the render that judged the new resource set gave, "
                      "from the same data: not rendered again", resource.name, resource.dest)
            self.last_counts[resource.name] = count
            return reused, ()
        if self.memo is None:
            taken = self.ahead.take(resource, self.renderer, self.mirror) if self.ahead else None
            if taken is not None:
                log.debug("%s: rendered while the revision settled, from the same data: not "
                          "rendered again", resource.name)
                self.last_counts[resource.name] = count
                return taken
            rendered = self.renderer.render_result(resource, self.mirror)
            content = rendered.text.encode("utf-8")
        else:
            data = data_digest(self.mirror, resource)
            if self.memo.stands_for(resource, data, dest_content):
                log.debug("%s: %s holds what a render would write (a render with the same "
                          "inputs wrote it: render memo)", resource.name, resource.dest)
                if self.memo.revision(resource) != self.mirror.revision:
                    # Other keys moved the store on: the next run's hint compares with this.
                    self.memo.record(resource, data, dest_content or b"", self.mirror.revision)
                self.last_counts[resource.name] = count
                return dest_content or b"", ()
            rendered, pure = render_purity.counting(
                lambda: self.renderer.render_result(resource, self.mirror))
            content = rendered.text.encode("utf-8")
            if pure and not rendered.warnings:
                self.memo.record(resource, data, content, self.mirror.revision)
        self.last_counts[resource.name] = count
        return content, rendered.warnings

    def render_ahead(self, resource: Resource) -> None:
        """Render `resource` now for the next apply, which takes the output if the mirror
        has not changed since (renders_ahead.py); the daemon's, while it waits for the rest of
        a revision. Nothing is written or reported here."""
        if self.memo is None:
            self.ahead.render(self.renderer, resource, self.mirror)

    def apply(self, resources: Sequence[Resource],
              heartbeat: Callable[[], None] | None = None) -> list[Outcome]:
        """Write what changed, then reload each affected target once.

        `heartbeat` is called after every step (each resource's render/check/install, each
        reload), so a long batch never starves the systemd watchdog.
        """
        beat = heartbeat or _no_beat
        self._sweep(resources)
        outcomes = []
        for resource in resources:
            outcomes.append(self._apply_one(resource))
            beat()
        self.judged.clear()  # (they stand in for the apply that follows the switch only)
        self.ahead.clear()  # (and these for the apply that follows the wait only)
        groups: dict[Hashable, tuple[ReloadTarget, list[Outcome]]] = {}
        probes: dict[Hashable, tuple[ReloadTarget, list[Outcome]]] = {}
        for outcome in outcomes:
            target = self.target(outcome.resource)
            if target is None:
                continue
            if outcome.status is Status.UPDATED:
                groups.setdefault(target.key(), (target, []))[1].append(outcome)
            elif outcome.probe:
                probes.setdefault(target.key(), (target, []))[1].append(outcome)
        for target, group in groups.values():
            self._reload(target, group, beat)
            beat()
        for key, (target, group) in probes.items():
            reloaded = groups.get(key)
            done = reloaded[1][0].reload if reloaded is not None else None
            # The same target was just reloaded, or found not running: that is the answer.
            # Not a runtime pass on another file of it: that says nothing of this one.
            if done is not None and (done.kind.reloaded or done.kind is ReloadKind.NO_TARGET):
                self._settle(group, done)
            else:
                self._probe(target, group, beat)
            beat()
        return outcomes

    def _apply_one(self, resource: Resource) -> Outcome:
        start = time.monotonic()
        step = "stage"  # what an exception no step turned into a ResourceError is blamed on
        warnings: tuple[RenderWarning, ...] = ()
        self._dests_of[resource.name] = resource.dest
        try:
            has_target = self.target(resource) is not None
            first_look = has_target and resource.dest not in self._looked
            sweep = self.io is not None and resource.dest not in self._swept
            self._swept.add(resource.dest)  # (a sweep left stuck finishes when it returns)
            # What this Syncer last left at dest (or found there): rendered against first, so
            # that a change is read and installed in one call on the dest's worker. (The
            # render does not depend on the file here: the resource rendered before, and no
            # judged render or memo stands in for one.)
            last = (self.dests.last(resource.dest) if self.io is not None and not first_look
                    and not sweep and not self.judged and self.memo is None
                    and resource.name in self.last_counts else None)
            rendered: tuple[bytes, tuple[RenderWarning, ...]] | None = None
            if last is not None:
                step = "render"
                content, warnings = rendered = self._render_against(resource, last)
                target = Target.for_resource(resource, content, last)
                if not target.matches(last):
                    step = "install"
                    done = self._install(resource, target, last, has_target, start, warnings,
                                         expected=last)
                    if done is not None:
                        return done
                    # (Changed behind our back since: read, and judged from it, below.)
                step = "stage"
            current, kept = self._io(resource, "stage", functools.partial(
                self._read_dest, resource, first_look, sweep))
            if first_look:
                self._look_for_running_copy(resource, kept)
            seen = boot_clock()  # the file read (or known unchanged) is in place since
            step = "render"
            if rendered is not None:  # (the render above stands)
                content, warnings = rendered
            else:
                content, warnings = self._render_against(resource, current)
            target = Target.for_resource(resource, content, current)
            if target.matches(current):
                self.in_place.setdefault(resource.dest, seen)
                if resource.name in self.reload_owed and has_target:
                    # Installed earlier, never made live: reload it (as a new file, or from
                    # what a predecessor's running copy says the service runs).
                    return Outcome(resource, UPDATED, seconds=time.monotonic() - start,
                                   previous=self._running.get(resource.dest),
                                   content=content, warnings=warnings)
                # Never asked in this process (a start that finds the file current), or nothing
                # ran to reload: ask the target whether it runs, and whether it read this file.
                probe = has_target and (resource.name in self.not_running
                                        or resource.name in self.found_stale or (
                    self.probe_first and resource.name not in self.asked))
                return Outcome(resource, UNCHANGED, seconds=time.monotonic() - start,
                               previous=current if probe else None,
                               content=content if probe else None, warnings=warnings,
                               probe=probe)
            step = "install"
            installed = self._install(resource, target, current, has_target, start, warnings)
            assert installed is not None  # (nothing expected: installed, or raised)
            return installed
        except ResourceError as exc:
            return Outcome(resource, FAILED, exc, seconds=time.monotonic() - start,
                           warnings=warnings)
        except Exception as exc:  # OSError (dest is a directory...) or anything unexpected
            return Outcome(resource, FAILED, _unexpected(resource, step, exc),
                           seconds=time.monotonic() - start, warnings=warnings)

    def _install(self, resource: Resource, target: Target, current: FileState,
                 has_target: bool, start: float, warnings: tuple[RenderWarning, ...],
                 expected: FileState | None = None) -> Outcome | None:
        """Install `target` over `current` on the dest's worker; the UPDATED outcome of an
        apply begun at `start`. `expected`: only if dest still holds it, read in the same call
        (one thread hop instead of two for a watch's change); None when it does not (nothing
        written)."""
        content = target.content
        check = self._needs_check(resource, current, content)

        def work(progress: Progress) -> tuple[float | None, Seen] | None:
            if expected is not None:
                try:
                    if self.dests.current(resource.dest) is not expected:
                        return None
                except OSError:
                    return None  # (the caller's read says why)
            # (The file read back on the worker too: DestCache.remember.)
            return (install(resource, target, check=check, keep=has_target, progress=progress),
                    look(resource.dest))

        try:
            done = self._io(resource, "stage", work)
        except IoStuck:
            # It may yet rename the file into place (at thaw) with nobody to reload it:
            # owe the reload, and drop the running copy it may keep, as if it had.
            if has_target:
                self._owe(resource, current)
                self._kept.add(resource.dest)
            raise
        except NotDurable:
            # The file is live on disk but its target never reloaded into it: without
            # this the retry would find the file "up to date" and never reload.
            self.in_place[resource.dest] = boot_clock()
            if has_target:
                self._owe(resource, current)
            else:  # (nothing runs it: no running file to keep, nothing pops it)
                self.reload_owed.add(resource.name)
            raise
        if done is None:
            return None
        check_seconds, read_back = done
        self.in_place[resource.dest] = boot_clock()
        if check:
            self.checked[resource.dest] = content
        self.installed[resource.dest] = content
        self.dests.remember(resource.dest, FileState(content, target.mode, target.uid,
                                                     target.gid), read_back)
        if has_target:
            self._kept.add(resource.dest)
        # What the service runs: the file replaced, unless a predecessor's reload is still
        # owed (then what its running copy holds; None: unknown, a full reload).
        previous = self._running.get(resource.dest, current)
        return Outcome(resource, UPDATED, seconds=time.monotonic() - start, previous=previous,
                       content=content, check_seconds=check_seconds, warnings=warnings)

    def _owe(self, resource: Resource, current: FileState) -> None:
        """Owe the reload of a file whose install may land (or landed) unreloaded: the target
        still runs `current`, the file replaced, where it ran it (no reload owed before), and
        it is kept as what it runs (`_running`). Not kept, a shared HAProxy's passes of its
        other files took this one for unknown, and with it the whole configuration: a
        maintenance etcd lifted on a server of another file was kept as an operator's."""
        if resource.name not in self.reload_owed:
            self._running.setdefault(resource.dest, current)
        self.reload_owed.add(resource.name)

    def _read_dest(self, resource: Resource, first_look: bool, sweep: bool, _: Progress
                   ) -> tuple[FileState, tuple[Path, tuple[bytes, os.stat_result]] | None]:
        """What is at dest now, and, at a first look, any running copy a predecessor left
        (read on a worker: only the loop's thread changes this Syncer's state). `sweep`: first
        remove the staged files a killed run left beside it (see `_sweep`)."""
        if sweep:
            remove_stale_staged(_beside(resource.dest))
        return self.dests.current(resource.dest), _kept_for(resource) if first_look else None

    def _needs_check(self, resource: Resource, current: FileState, content: bytes) -> bool:
        """Always, unless the reload target proves `content` valid from the last file that
        passed the check here, and the file being replaced is the one this process installed
        (so nobody edited it behind our back)."""
        if not resource.check_cmd:
            return True  # nothing to skip
        checked = self.checked.get(resource.dest)
        target = self.target(resource)
        if (target is None or checked is None or current.content is None
                or self.installed.get(resource.dest) != current.content):
            return True
        return not target.may_skip_check(current.content, content, checked)

    def _reload(self, target: ReloadTarget, group: list[Outcome],
                beat: Callable[[], None], runs_previous: bool = True) -> None:
        first = group[0].resource
        # Each file tells the target what changed (HAProxy runtime updates, bind checks, the
        # state kept across the reload); not when what the target runs is unknown
        # (`runs_previous` false: a full reload).
        previous = group[0].previous.content if runs_previous and group[0].previous else None
        content = group[0].content
        siblings = self._siblings(target, group, runs_previous)
        started = time.monotonic()
        names = {o.resource.name for o in group}
        # Those whose file the target surely runs once a rollback puts it back: what it ran
        # was the previous file, and this Syncer has seen it run their dest (asked, not owed).
        settled = (names & self.asked) - self.reload_owed if runs_previous else set()
        self.not_running -= names
        self.answered -= names
        self.found_stale -= names  # (a pass compares with what runs: brings drift in step)
        self.asked |= names
        try:
            # (only given when there are some: duck-typed targets may not take them)
            done = target.reload(previous, content, siblings) if siblings else target.reload(
                previous, content)
        except Exception as raised:  # a socket timeout or refusal must not kill the daemon
            exc = raised if isinstance(raised, ReloadFailed) else ReloadFailed(
                _unexpected(first, "reload", raised).reason)
            self.reload_owed.update(names)
            for outcome in group:
                outcome.reload_seconds = time.monotonic() - started
            # Roll the whole group back to what the target was running, and reload into that.
            restored = []
            for outcome in group:
                # (None: what the service runs is unknown, an owed reload's: nothing to put
                # back, and it said "previous file restored" all the same.)
                rolled_back = ("previous file restored" if outcome.previous is not None else
                               "the file stays in place, its reload owed")
                if outcome.previous is not None:
                    try:
                        self._io(outcome.resource, "reload", functools.partial(
                            _restore, outcome.resource, outcome.previous, self.dests))
                        restored.append(outcome.resource)
                    except (ResourceError, OSError) as rexc:
                        log.error("%s (while rolling back)", rexc)
                        rolled_back = "the previous file could not be restored"
                outcome.status = FAILED
                outcome.error = ResourceError(outcome.resource.name, "reload",
                                              f"{exc}; {rolled_back}")
            if exc.untouched:  # the target never saw the new file: nothing to reload back
                self._rolled_back(restored, settled)
                return
            beat()
            back = [(now, before if before is not None else now) for before, now in siblings]
            try:
                target.reload(content, previous, back) if back else target.reload(
                    content, previous)
            except Exception as again:
                why = str(again if isinstance(again, ReloadFailed)
                          else _unexpected(first, "reload", again).reason)
                log.log(logging.ERROR if _ROLLBACK_FAILURES.due(f"{first.name}\0{shape(why)}")
                        else logging.DEBUG,
                        "resource %s: reload after rollback failed too: %s", first.name, why)
            else:
                self._rolled_back(restored, settled)
            return
        self.reload_owed -= names
        if done.kind is ReloadKind.NO_TARGET:
            self.not_running |= names
        for outcome in group:
            self._reloaded(outcome.resource)
            outcome.reload = done
            outcome.reload_seconds = time.monotonic() - started

    def _rolled_back(self, restored: Sequence[Resource], settled: set[str]) -> None:
        """The target runs what is at these dests again (the file it ran, put back): of those
        `settled` (known to run the file put back), no reload is owed. Left owed, a shared
        HAProxy's passes of its other files took what it runs of them for unknown, and with it
        the whole configuration: a maintenance etcd had set at runtime and lifted since was
        kept as if an operator's, for good. Any other (owed before the pass, never seen
        running its dest, or stale) may never have loaded the file put back: still owed."""
        for resource in restored:
            self._reloaded(resource)
            if resource.name in settled:
                self.reload_owed.discard(resource.name)

    def _siblings(self, target: ReloadTarget, group: Sequence[Outcome],
                  runs_previous: bool) -> list[Sibling]:
        """The files of `target` besides the group's first: the rest of the group, then those
        of other resources sharing it (`haproxy -f a.cfg -f b.cfg`) as last seen at their dest
        (no I/O: one never seen by this Syncer is left out), taken for what the target runs
        unless their reload is owed: then what is known it runs (`_running`: a predecessor's
        running copy, the file a stuck install was to replace), else unknown. (One changed
        while confsync was down and not yet compared is brought in step too, where the target
        compares with what runs: HAProxy's runtime pass.)"""
        files: list[Sibling] = []
        for outcome in group[1:]:
            if outcome.content is not None:
                ran = outcome.previous.content if runs_previous and outcome.previous else None
                files.append((ran, outcome.content))
        grouped = {o.resource for o in group}
        key = None
        for resource, other in self._targets.items():
            if other is None or resource in grouped:
                continue
            key = target.key() if key is None else key
            if other.key() != key:
                continue
            last = self.dests.last(resource.dest)
            if last is not None and last.content is not None:
                live = runs_previous and resource.name not in self.reload_owed
                running = self._running.get(resource.dest) if runs_previous else None
                ran = last.content if live else running.content if running else None
                files.append((ran, last.content))
        return files

    def _look_for_running_copy(self, resource: Resource,
                               found: tuple[Path, tuple[bytes, os.stat_result]] | None) -> None:
        """At the first apply of a dest: a running copy kept beside it (`found`) means a
        predecessor installed the file and stopped before its reload was done
        (running_copy.py), or a resource removed since owed it (left_copies.py)."""
        self._looked.add(resource.dest)
        if found is None:
            return
        path, (content, info) = found
        self._kept.add(resource.dest)
        self.reload_owed.add(resource.name)
        self._running[resource.dest] = FileState(
            content, stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid) if content else None
        log.warning("resource %s: the reload of %s was still owed by an earlier run (it "
                    "stopped first, or its reload and rollback failed, or its resource was "
                    "removed since; %s is what the service ran); making the file live",
                    resource.name,
                    resource.dest, running_copy(path).name)

    def reload_left_owed(self, resource: Resource) -> bool:
        """Whether a predecessor installed `resource`'s file and stopped before its reload
        (`check` reports it: the next `once` or `watch` reloads)."""
        return self.target(resource) is not None and _kept_for(resource) is not None

    def _reloaded(self, resource: Resource) -> None:
        """The service runs the file at its dest: drop its running copy."""
        dest = resource.dest
        self._running.pop(dest, None)
        if dest in self._kept:
            self._kept.discard(dest)
            try:
                self._io(resource, "reload", lambda _: reloaded(written_path(dest)))
            except OSError:
                pass  # a link no longer followed: reloaded again
            except IoStuck as exc:  # it is removed when the call returns
                log.error("%s", exc, extra={"resource": resource.name, "step": exc.step})

    def _ask(self, target: ReloadTarget, group: Sequence[Outcome], quick: bool = False,
             compare: bool = False) -> Probe:
        """The target's probe for the group's files (an error is an unknown answer)."""
        since = max(self.in_place.get(o.resource.dest, boot_clock()) for o in group)
        probe = getattr(target, "probe", None)  # a duck-typed target may lack it
        if probe is None:
            return UNKNOWN_PROBE
        try:
            found: Probe = (probe(since, quick=True) if quick
                            else probe(since, compare=True) if compare else probe(since))
        except Exception as exc:  # a probe must never fail an apply, nor the daemon
            reason = (str(exc) if isinstance(exc, ReloadFailed)
                      else _unexpected(group[0].resource, "reload", exc).reason)
            message = (f"resource {group[0].resource.name}: cannot ask its reload target "
                       f"whether it runs: {reason}")
            if _PROBE_FAILURES.due(message):
                log.warning("%s", message)
            return UNKNOWN_PROBE
        return found

    def _probe(self, target: ReloadTarget, group: list[Outcome],
               beat: Callable[[], None]) -> None:
        """Outcomes whose file was in place already: ask the target instead of reloading it.

        Nothing runs: NO_TARGET, asked again later. It runs and started after the file was in
        place: it read this file, nothing to reload (an outage of the target costs no reload).
        It runs, at the first look: in step, as far as anyone can tell. It runs but may have
        started before the file was in place after finding nothing (or cannot say), or it
        loaded its configuration before the file was written, or runs other HAProxy servers
        than it names (STALE: a confsync killed between installing and reloading or sending
        runtime commands, found at the first look, which compares): reload.
        """
        names = {o.resource.name for o in group}
        recovering = bool(names & self.not_running)
        # Found drifted by a comparison between applies: the daemon said so already.
        said = names & self.found_stale
        self.found_stale -= names
        # Recovering, a target that runs is reloaded whatever a comparison would say (a change
        # made while it was not running may have been structural): not compared.
        found = self._ask(target, group, compare=not recovering)
        self.asked |= names
        if found.liveness is Liveness.DOWN:
            self.not_running |= names
            self._settle(group, ReloadResult(ReloadKind.NO_TARGET, found.detail))
        elif found.liveness is Liveness.STARTED_SINCE:
            self._settle(group, ReloadResult(
                ReloadKind.IN_STEP, f"{found.detail}; it read this file, nothing to reload"))
        elif not recovering and len(group) > 1 and found.liveness in (Liveness.RUNNING,
                                                                      Liveness.STALE):
            self._compare_each(target, group, found, beat, said)
        elif not recovering and found.liveness is Liveness.RUNNING:
            self._settle(group, ReloadResult(ReloadKind.IN_STEP, found.detail))
        elif recovering or found.liveness is Liveness.STALE:  # make this one live
            log.log(logging.INFO if said else logging.WARNING,
                    "resource %s: %s; making the file live", group[0].resource.name,
                    found.detail or "its reload target may run an older file")
            for outcome in group:
                outcome.status = UPDATED
            # What it runs is not the previous file: a full reload (HAProxy's runtime strategy
            # may bring its servers in step instead, where its probe found only those differ).
            self._reload(target, group, beat, runs_previous=False)

    def _compare_each(self, target: ReloadTarget, group: list[Outcome], found: Probe,
                      beat: Callable[[], None], said: Collection[str] = ()) -> None:
        """A first look at several files of one target (`haproxy -f a.cfg -f b.cfg`), which
        runs (`found`, the group's target's answer about the first file alone). Each file is
        compared by its own resource's target, and one it runs stale is made live on its own
        (as `_probe` does a group), until a reload made them all live: comparing the first
        alone left a second file changed while confsync was down unloaded, `/ready` 200."""
        done = ReloadResult(ReloadKind.IN_STEP, found.detail)
        made_live = []
        for outcome in group:
            own = self.target(outcome.resource)
            answer = found if own is target or own is None else self._ask(
                own, [outcome], compare=True)
            if answer.liveness is not Liveness.STALE or own is None:
                continue
            log.log(logging.INFO if outcome.resource.name in said else logging.WARNING,
                    "resource %s: %s; making the file live", outcome.resource.name,
                    answer.detail or "its reload target may run an older file")
            outcome.status = UPDATED
            made_live.append(outcome)
            self._reload(own, [outcome], beat, runs_previous=False)
            if outcome.reload is not None and outcome.reload.kind.reloaded:
                done = outcome.reload  # every file was read again
                break
        self._settle([o for o in group if all(o is not m for m in made_live)], done)

    def _settle(self, group: Sequence[Outcome], done: ReloadResult) -> None:
        names = {o.resource.name for o in group}
        self.answered -= names
        self.found_stale -= names
        if done.kind is ReloadKind.NO_TARGET:
            self.not_running |= names
        else:
            self.not_running -= names
        self.asked |= names
        for outcome in group:
            outcome.reload = done

    def gauges(self, resources: Iterable[Resource]) -> dict[str, tuple[TargetGauge, ...]]:
        """What each resource's reload target measured when last asked (HAProxy's old
        workers), for /metrics; a target that measures nothing is left out."""
        found = {}
        for resource in resources:
            measure = getattr(self.target(resource), "gauges", None)  # (duck-typed targets)
            values = tuple(measure()) if measure is not None else ()
            if values:
                found[resource.name] = values
        return found

    def check_targets(self, resources: Iterable[Resource],
                      heartbeat: Callable[[], None] | None = None
                      ) -> tuple[list[tuple[Resource, Probe]], list[Resource]]:
        """Between applies, ask each resource's target whether it runs: nothing else would
        notice a service stopped, or started, by someone else.

        Returns the resources whose target stopped (`not_running` from now on) and those whose
        target was not running and now answers (a quick look: the next apply asks properly,
        against the time its file was in place, and settles it). `heartbeat` is called after
        each target's answer, as between the steps of `apply`: a frozen HAProxy takes a probe's
        whole timeout, and several in a row made /health late.
        """
        beat = heartbeat or _no_beat
        probes: dict[tuple[bool, Hashable], tuple[ReloadTarget, list[Outcome]]] = {}
        for resource in resources:
            name = resource.name
            target = self.target(resource)
            if (target is None or name not in self.asked or name in self.reload_owed
                    or name in self.answered):
                continue
            probes.setdefault((name in self.not_running, target.key()),
                              (target, []))[1].append(Outcome(resource, UNCHANGED))
        down: list[tuple[Resource, Probe]] = []
        up: list[Resource] = []
        for (was_down, _), (target, group) in probes.items():
            found = self._ask(target, group, quick=was_down)
            beat()
            if was_down and found.liveness not in (Liveness.DOWN, Liveness.UNKNOWN):
                up.extend(o.resource for o in group)
                self.answered |= {o.resource.name for o in group}
            elif not was_down and found.liveness is Liveness.DOWN:
                self.not_running |= {o.resource.name for o in group}
                down.extend((o.resource, found) for o in group)
        return down, up

    def compare_targets(self, resources: Iterable[Resource],
                        heartbeat: Callable[[], None] | None = None
                        ) -> list[tuple[Resource, Probe]]:
        """Between applies, ask each resource's own target whether what it runs is its file
        (`probe(compare=True)`: HAProxy's `show servers state` against the file's servers).

        A `del server` or `set server ... addr` by hand was otherwise undone only at the next
        pool change, days later for a stable pool, while /ready said 200. Returns the
        resources found STALE: `found_stale` from now on, so the next apply makes their file live
        (as a start that finds HAProxy's servers other than the file's does). Only targets
        asked, running, owing nothing and not already drifted are compared; `heartbeat` is
        called after each answer, as in `check_targets`.
        """
        beat = heartbeat or _no_beat
        found: list[tuple[Resource, Probe]] = []
        for resource in resources:
            name = resource.name
            target = self.target(resource)
            if (target is None or name not in self.asked or name in self.reload_owed
                    or name in self.not_running or name in self.answered
                    or name in self.found_stale):
                continue
            answer = self._ask(target, [Outcome(resource, UNCHANGED)], compare=True)
            beat()
            if answer.liveness is Liveness.STALE:
                self.found_stale.add(name)
                found.append((resource, answer))
        return found

    def plan(self, resources: Iterable[Resource]) -> list[Outcome]:
        """Render to a temporary place, run the check there, diff against `dest`; write nothing."""
        # (only `check` needs these, and tempfile with them: not imported for `once`)
        from confsync.check_dirs import MIN_AGE, make_check_dir, remove_dead_check_dirs

        resources = list(resources)
        # Only leftovers an hour old: `check` writes nothing beside dests, and may run in
        # another container than the `watch` that does (one dest volume, pids apart), whose
        # staged file under its check_cmd has a pid we cannot see.
        self._sweep(resources, MIN_AGE)
        remove_dead_check_dirs()
        try:
            tmp = make_check_dir()
        except OSError as exc:
            return [Outcome(r, FAILED, ResourceError(
                r.name, "check", f"cannot create a temporary directory: {exc.strerror}"))
                for r in resources]
        with tmp:
            return [self._plan_one(resource, Path(tmp.name)) for resource in resources]

    def _plan_one(self, resource: Resource, tmp: Path) -> Outcome:
        start = time.monotonic()
        step = "stage"
        try:
            directory = written_path(resource.dest).parent
            if not directory.is_dir():  # `once` could not stage there either
                raise ResourceError(resource.name, "stage", f"cannot write a staged file in "
                                    f"{directory}: no such directory")
            current = FileState.read(resource.dest)
            step = "render"
            content, warnings = self._render_against(resource, current)
            step = "stage"
            try:
                staged = write_staged(resource.dest, tmp, content)
            except OSError as exc:  # said as such: `once` stages beside dest, not in TMPDIR
                raise ResourceError(resource.name, "stage", (
                    f"cannot write the copy to check in {tmp.parent} (the temporary "
                    f"directory: TMPDIR, else /tmp; `once` stages beside dest instead): "
                    f"{describe(exc)}")) from None
            # In `once`'s order, so that both name the same step: the owner is looked up and
            # the file staged beside dest before the check runs (a name the system does not
            # know, or a read-only dest directory, said "check failed" here).
            step = "owner"
            target = Target.for_resource(resource, content, current)
            status = UNCHANGED if target.matches(current) else UPDATED
            unwritable = _unwritable(directory) if status is UPDATED else None
            if unwritable is not None:  # `once` would fail at staging
                raise ResourceError(resource.name, "stage", f"cannot write a staged file in "
                                    f"{directory}: {unwritable}")
            step = "check"
            run_check(resource, staged)
        except ResourceError as exc:
            return Outcome(resource, FAILED, exc, seconds=time.monotonic() - start)
        except Exception as exc:  # OSError (dest is a directory, temp dir full...) or unexpected
            return Outcome(resource, FAILED, _unexpected(resource, step, exc),
                           seconds=time.monotonic() - start)
        refused = unreplaceable(resource.dest) if status is UPDATED else None
        if refused is not None:  # `once` would fail at its rename
            return Outcome(resource, FAILED, ResourceError(resource.name, "install", refused),
                           seconds=time.monotonic() - start)
        return Outcome(resource, status, seconds=time.monotonic() - start, previous=current,
                       content=content, warnings=warnings)


def _kept_for(resource: Resource) -> tuple[Path, tuple[bytes, os.stat_result]] | None:
    """The file `resource.dest` is written to and the running copy kept beside it, if any."""
    try:
        path = written_path(resource.dest)
        found = read_kept(path)
    except OSError:
        return None  # a link not followed, an unreadable copy: the apply reports what matters
    return (path, found) if found is not None else None


def _restore(resource: Resource, previous: FileState, dests: DestCache, _: Progress) -> None:
    """Put `previous` back at dest, and remember it there: the other files of a shared target
    are given to its passes as last seen (`Syncer._siblings`), and a pass of another file was
    checked, and refused, against the file this rollback took away."""
    restore(resource, previous)
    dests.remember(resource.dest, previous)


def _unwritable(directory: Path) -> str | None:
    """Why a file cannot be created in `directory` (for `check`, which writes nothing there):
    a read-only filesystem, or no write permission; None when it can, or cannot be told."""
    try:
        if os.statvfs(directory).f_flag & os.ST_RDONLY:
            return os.strerror(errno.EROFS)
    except OSError:
        return None
    if not os.access(directory, os.W_OK | os.X_OK):
        return os.strerror(errno.EACCES)
    return None


def _beside(dest: Path) -> set[Path]:
    """Where staged files of `dest` are written: beside it, and beside its target if a link."""
    try:
        return {dest, written_path(dest)}
    except OSError:  # a link not followed: the apply reports it
        return {dest}


def _unexpected(resource: Resource, step: str, exc: Exception) -> ResourceError:
    """A per-resource error for an exception no step turned into one: one resource fails,
    the pass (and the daemon) goes on."""
    if isinstance(exc, OSError) and exc.strerror:
        where = f"{exc.filename}: " if exc.filename else ""
        reason = f"{where}{describe(exc)}"
    else:
        reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    log.debug("resource %s: %s step raised", resource.name, step, exc_info=exc)
    return ResourceError(resource.name, step, reason)
