"""A dest's file work runs on a worker with a deadline, so a hung filesystem stops one resource.

A dest on a filesystem frozen by `fsfreeze` (LVM or cloud snapshots), or on a hard NFS mount
whose server died, blocks its writes in the kernel until thaw. Run on the watch loop's thread,
one such write stopped every other resource and the heartbeat: `/health` 503, the watchdog's
restart, blocked again at the same write. Python cannot cancel a blocked syscall, so the loop
waits for a dest's call up to its patience and then leaves it running, "stuck": that dest gets
no second call until the first returns (at most one blocked thread per dest), and `on_return`
tells the loop when it did, so the resource is judged again against the data of then.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Generic, TypeVar

from confsync.errors import ResourceError

if TYPE_CHECKING:
    import queue

log = logging.getLogger(__name__)

IO_PATIENCE = 3.0  # seconds a dest's file step may take before it counts as stuck
# ... when a call on another dest in the same directory (so the same filesystem) is stuck
# already: ten dests in a frozen /etc/haproxy would otherwise hold the loop 30 s.
NEIGHBOUR_PATIENCE = 0.2
_LATE_GRACE = 0.05  # one more look past the deadline: a process stopped (SIGSTOP) woke late
# A call past its patience on a disk that is completing writes is slow, not stuck (an fsync
# behind a large dirty page cache, or behind a `dd` hammering the same disk, takes 3-5 s and
# more): it is waited for in steps of this long, each while the disk goes on writing...
SLOW_STEP = 1.0
# The first look has nothing to compare with (a look at each call's start cost the hot path
# as much as its thread hop): it waits this long for a second one. A frozen filesystem is
# given up on after its patience plus this.
SLOW_FIRST_LOOK = 0.5
# ...up to this long in all per SLOW_WINDOW, whatever the number of calls: ten dests on a disk
# whose fsync takes 10 s must not hold the loop (and every other resource) 100 s. Past it, a
# call is stuck at its patience as on a frozen filesystem, and returns as such.
SLOW_LIMIT = 15.0
SLOW_WINDOW = 30.0
_IDLE_SECONDS = 30.0  # an idle worker thread ends after this long

T = TypeVar("T")
R = TypeVar("R")
# (step now under way, seconds it may take beyond the patience): `check` runs check_cmd.
Progress = Callable[[str, float], None]


def no_progress(step: str, extra: float) -> None:
    """The Progress of a call made directly (no deadline to move)."""


class IoStuck(ResourceError):
    """A dest's file step has not returned within its patience (or an earlier one has not)."""

    def __init__(self, resource: str, step: str, dest: Path, seconds: float,
                 earlier: bool = False) -> None:
        what = (f"an earlier {step} of {dest} has not returned for {seconds:.1f}s" if earlier
                else f"the {step} of {dest} has not returned after {seconds:.1f}s")
        super().__init__(resource, step, f"stuck on I/O: {what} (a filesystem frozen by "
                                         f"fsfreeze, or a hung network mount?); dest is never "
                                         f"partial, the other resources go on, and it is "
                                         f"applied again once the call returns")
        self.dest = dest


class _Call(Generic[T]):
    """One call on a worker, on one dest at a time (`each` moves it from dest to dest); the
    loop either takes its result or abandons it, stuck on the dest it is at."""

    def __init__(self, fn: Callable[[Progress], T], resource: str, dest: Path, step: str,
                 patience: float) -> None:
        self.fn = fn
        self.patience = patience
        self.lock = threading.Lock()
        self.done = threading.Event()
        self.abandoned = False
        self.result: T | None = None
        self.error: BaseException | None = None
        self.ended = 0.0
        self.stuck_step = step  # the step it was at when the loop left it
        self.writes: tuple[int, int] | None = None  # its disk's writes at the last look
        self.begin(resource, dest, step, patience)

    def begin(self, resource: str, dest: Path, step: str, patience: float) -> None:
        self.resource, self.dest, self.step, self.patience = resource, dest, step, patience
        self.started = time.monotonic()
        self.deadline = self.started + patience
        self.writes = None

    def progress(self, step: str, extra: float) -> None:
        self.step = step
        self.deadline = time.monotonic() + self.patience + extra

    def run(self, on_abandoned_return: Callable[[Path], None]) -> None:
        try:
            self.result = self.fn(self.progress)
        except BaseException as exc:  # handed to the caller, or dropped if it left
            self.error = exc
        with self.lock:
            self.ended = time.monotonic()
            self.done.set()
            late = self.abandoned
        if late:
            on_abandoned_return(self.dest)


class _Workers:
    """Threads that run calls; a new one starts when none is idle (a stuck call keeps its
    thread, and nothing ever waits behind it), and an idle one ends after _IDLE_SECONDS."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._idle: list[_Worker] = []

    def submit(self, job: Callable[[], None]) -> None:
        with self._lock:  # an idle worker is handed one job, and idle again only after it
            worker = self._idle.pop() if self._idle else None
        if worker is None:
            worker = _Worker(self)
            worker.start()
        worker.jobs.put(job)

    def idle(self, worker: _Worker) -> None:
        with self._lock:
            self._idle.append(worker)

    def retire(self, worker: _Worker) -> bool:
        """True when `worker` may end (still idle: no job is being handed to it)."""
        with self._lock:
            if worker in self._idle:
                self._idle.remove(worker)
                return True
            return False


class _Worker(threading.Thread):
    def __init__(self, pool: _Workers) -> None:
        import queue  # (here: `once` and `check` do their file work in place, without it)

        super().__init__(name="confsync-dest-io", daemon=True)
        self.pool = pool
        self.jobs: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._empty = queue.Empty

    def run(self) -> None:
        while True:
            try:
                job = self.jobs.get(timeout=_IDLE_SECONDS)
            except self._empty:
                if self.pool.retire(self):
                    return
                continue  # taken just now: its job is on the way
            job()
            self.pool.idle(self)


class DestIo:
    """Runs each dest's file work with a deadline; remembers the dests whose call is stuck."""

    def __init__(self, patience: float = IO_PATIENCE,
                 on_return: Callable[[Path], None] | None = None,
                 on_slow: Callable[[], None] | None = None,
                 slow_limit: float = SLOW_LIMIT) -> None:
        self.patience = patience
        self.slow_limit = slow_limit
        self._slow_spent: collections.deque[tuple[float, float]] = collections.deque()
        self._on_return = on_return
        # Called at each step of waiting for a slow disk (the daemon's heartbeat: the loop is
        # alive, waiting on a disk that works).
        self._on_slow = on_slow
        self._devices: dict[Path, int] = {}  # directory -> its filesystem's device
        self._workers = _Workers()
        self._stuck: dict[Path, _Call[object]] = {}
        self._lock = threading.Lock()
        self._background: set[str] = set()  # keys of `background` calls not returned yet

    def stuck(self, dest: Path) -> bool:
        """Whether a call on `dest` was left running and is not released yet."""
        return dest in self._stuck

    def release(self, dest: Path) -> tuple[str, float] | None:
        """Forget `dest`'s stuck call once it returned (the loop, told by `on_return`); its
        step and how long it took, or None when it has not returned (or none was stuck)."""
        with self._lock:
            call = self._stuck.get(dest)
            if call is None or not call.done.is_set():
                return None
            del self._stuck[dest]
        return call.stuck_step, call.ended - call.started

    def _held(self, dest: Path) -> _Call[object] | None:
        """`dest`'s stuck call, while it holds the dest: until it returns and, when there is
        an `on_return` to tell the loop, until the loop released it."""
        earlier = self._stuck.get(dest)
        if earlier is None or not earlier.done.is_set() or self._on_return is not None:
            return earlier
        with self._lock:
            self._stuck.pop(dest, None)  # returned, and nobody to tell: released here
        return None

    def _free(self, resource: str, dest: Path) -> None:
        """Raise IoStuck while an earlier call holds `dest`."""
        earlier = self._held(dest)
        if earlier is not None:
            raise IoStuck(resource, earlier.stuck_step, dest,
                          time.monotonic() - earlier.started, earlier=True)

    def call(self, resource: str, dest: Path, step: str, fn: Callable[[Progress], T]) -> T:
        """fn(progress) on a worker; its result, or what it raised. Raises IoStuck when it
        does not return within the patience (it runs on), or an earlier call on `dest` has
        not: never two calls on one dest at a time."""
        self._free(resource, dest)

        def noted(progress: Progress) -> T:
            self._note_device(dest)
            return fn(progress)

        job: _Call[T] = _Call(noted, resource, dest, step,
                              self._patience(dest, self._blocked()))
        self._wait(job)
        if job.error is not None:
            raise job.error
        return job.result  # type: ignore[return-value]

    def each(self, items: Sequence[tuple[str, Path]], step: str,
             fn: Callable[[Path], R]) -> tuple[dict[Path, R], IoStuck | None]:
        """fn(dest) for each (resource, dest) whose dest is not stuck, one after the other in
        one call on a worker (one thread hop for all: the drift stat of every dest each
        second). A dest whose fn does not return within the patience is stuck as in `call`,
        and those after it wait for the next time. Returns the results and that IoStuck."""
        todo = [(name, dest) for name, dest in items if self._held(dest) is None]
        results: dict[Path, R] = {}
        if not todo:
            return results, None
        blocked = self._blocked()

        def run(_: Progress) -> None:
            for name, dest in todo:
                with job.lock:
                    if job.abandoned:
                        return
                    job.begin(name, dest, step, self._patience(dest, blocked))
                self._note_device(dest)
                results[dest] = fn(dest)

        job: _Call[None] = _Call(run, *todo[0], step, self._patience(todo[0][1], blocked))
        try:
            self._wait(job)
        except IoStuck as stuck:
            return dict(results), stuck
        if job.error is not None:
            raise job.error
        return results, None

    def background(self, key: str, fn: Callable[[], object]) -> None:
        """fn() on a worker, waited for by nobody: file work no dest's apply needs (removing
        staged files left behind), which must not block the loop either. At most one per
        `key` at a time (a call not returned yet makes this a no-op); what it raises is
        logged."""
        with self._lock:
            if key in self._background:
                return
            self._background.add(key)

        def job() -> None:
            try:
                fn()
            except Exception:
                log.exception("%s: unexpected error on a file worker", key)
            finally:
                with self._lock:
                    self._background.discard(key)

        self._workers.submit(job)

    def _blocked(self) -> frozenset[Path | int]:
        """Directories holding a dest whose stuck call has not returned, and the devices of
        their filesystems where known (a frozen filesystem holds every directory on it)."""
        if not self._stuck:
            return frozenset()
        directories = {dest.parent for dest, call in list(self._stuck.items())
                       if not call.done.is_set()}
        return frozenset(directories | {self._devices[d] for d in directories
                                        if d in self._devices})

    def _note_device(self, dest: Path) -> None:
        """Remember the device of `dest`'s filesystem (on the worker: a stat of a hung mount
        blocks), so that the loop can tell a slow disk from a frozen one (`_slow`)."""
        if dest.parent not in self._devices:
            with contextlib.suppress(OSError):
                self._devices[dest.parent] = os.stat(dest.parent).st_dev

    def _slow(self, job: _Call[T]) -> bool:
        """At `job`'s deadline: whether its disk is slow rather than stuck, and so worth
        SLOW_STEP more (it moves the deadline on), within `slow_limit` per SLOW_WINDOW.
        Slow: the block device of the dest's filesystem completed writes since the last look,
        or has writes in flight. Not a block device (NFS, tmpfs, overlayfs), or beside a dest
        stuck already: not slow. A frozen filesystem writes nothing: stuck after the first
        look's SLOW_FIRST_LOOK. (The loop's thread only: the budget has no lock.)"""
        if job.patience < self.patience:
            return False
        writes = _device_writes(self._devices.get(job.dest.parent))
        if writes is None:
            return False
        now = time.monotonic()
        spent = self._slow_spent
        while spent and spent[0][0] < now - SLOW_WINDOW:
            spent.popleft()
        left = self.slow_limit - sum(seconds for _, seconds in spent)
        if left <= 0:
            return False
        with job.lock:
            if job.done.is_set():
                return True
            last, job.writes = job.writes, writes
            if last is not None and writes[0] == last[0] and not writes[1]:
                return False  # nothing written since the last look, nothing under way
            step = min(left, SLOW_STEP if last is not None else SLOW_FIRST_LOOK)
            job.deadline = now + step
        spent.append((now, step))
        if self._on_slow is not None:
            self._on_slow()
        return True

    def _patience(self, dest: Path, blocked: frozenset[Path | int]) -> float:
        """Shorter beside a stuck call: in its directory, or on its filesystem (its device,
        as noted by an earlier call: a stat here would block on a hung mount). Dests in ten
        directories of one frozen filesystem paid the whole patience each."""
        near = dest.parent in blocked or self._devices.get(dest.parent, -1) in blocked
        return min(self.patience, NEIGHBOUR_PATIENCE) if near else self.patience

    def _wait(self, job: _Call[T]) -> None:
        """Run `job` on a worker and wait for it up to its deadline (which progress moves);
        past it (and past `_slow`'s looks at its disk), leave it running, stuck on its dest,
        and raise IoStuck."""
        self._workers.submit(lambda: job.run(self._returned))
        while not job.done.wait(max(0.0, job.deadline - time.monotonic())):
            if time.monotonic() < job.deadline:
                continue  # moved on by progress (check_cmd started, the next dest)
            if job.done.wait(_LATE_GRACE):
                return
            if self._slow(job):
                continue
            with job.lock:
                if job.done.is_set():
                    return
                if time.monotonic() < job.deadline:
                    continue
                job.abandoned = True
                job.stuck_step = job.step
                resource, dest, step, started = job.resource, job.dest, job.step, job.started
            with self._lock:
                self._stuck[dest] = job  # type: ignore[assignment]
            raise IoStuck(resource, step, dest, time.monotonic() - started)

    def _returned(self, dest: Path) -> None:
        if self._on_return is not None:
            self._on_return(dest)


def _device_writes(device: int | None) -> tuple[int, int] | None:
    """(Writes completed, writes in flight) of block device `device`, from sysfs (reads do
    not count: a frozen filesystem still serves them); None when it is no block device
    (tmpfs, NFS, overlayfs, btrfs) or cannot be read."""
    if device is None or not os.major(device):
        return None
    where = f"/sys/dev/block/{os.major(device)}:{os.minor(device)}"
    try:
        with open(f"{where}/stat") as fh:
            completed = int(fh.read().split()[4])  # (Documentation/block/stat.rst)
        with open(f"{where}/inflight") as fh:
            in_flight = int(fh.read().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    return completed, in_flight
