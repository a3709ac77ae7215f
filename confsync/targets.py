"""The reload interface: what the sync step asks of whatever it reloads, and what it gets back.

Two implementations: the plain command/signal reloader (confsync/command_reload.py) and
plugins that own a table of the resource file (`[haproxy]`: confsync/haproxy/). The core
(resources, sync) only knows this module; a plugin is found by its table name and imported
when a resource uses it, so nothing in the pipeline imports a plugin.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from enum import Enum
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

if TYPE_CHECKING:
    from confsync.resources import Resource


class ReloadKind(Enum):
    """What a reload step did."""

    NONE = "none"  # the resource has no reload action
    COMMAND = "command"  # reload_cmd ran
    SIGNAL = "signal"  # reload_signal was sent
    CONFIRMED = "confirmed"  # a reload the target confirmed (HAProxy's master CLI)
    RUNTIME = "runtime"  # applied to the running target without a reload (HAProxy runtime API)
    IN_STEP = "in-step"  # the target already runs what the file says: nothing sent
    NO_TARGET = "no-target"  # nothing runs to reload; it reads the file when it starts

    @property
    def reloaded(self) -> bool:
        """The target re-read its configuration."""
        return self in (ReloadKind.COMMAND, ReloadKind.SIGNAL, ReloadKind.CONFIRMED)


# The records below are NamedTuples, not dataclasses: one `exec` each to create, where a frozen
# dataclass's six were ~0.3 ms apiece of every one-shot run on Python 3.11 (issue 11).


class ReloadResult(NamedTuple):
    kind: ReloadKind
    detail: str = ""  # for people: "ran `systemctl reload app` in 12 ms"

    def __str__(self) -> str:
        return self.detail or self.kind.value


NO_RELOAD = ReloadResult(ReloadKind.NONE, "")


class Liveness(Enum):
    """What a probe found: whether the target runs, and whether it read the file in place."""

    DOWN = "down"  # nothing runs: it reads the file when it starts
    STARTED_SINCE = "started-since"  # runs, started after the time asked about: read that file
    RUNNING = "running"  # runs, since before the time asked about (or since when is unknown)
    STALE = "stale"  # runs a configuration it loaded before the file was last written: reload
    UNKNOWN = "unknown"  # the target cannot be asked (a reload command)


class Probe(NamedTuple):
    liveness: Liveness
    detail: str = ""  # for people: "HAProxy master pid 812 answers on /run/haproxy-master.sock"

    def __str__(self) -> str:
        return self.detail or self.liveness.value


UNKNOWN_PROBE = Probe(Liveness.UNKNOWN, "")


class TargetGauge(NamedTuple):
    """A figure a target measured when last asked, exported as `confsync_<name>{resource}`."""

    name: str  # e.g. "haproxy_old_workers"
    help: str
    value: float


# Another file of the same target: (what the target runs, None when unknown; what is installed).
Sibling = tuple[bytes | None, bytes]


class ReloadFailed(Exception):
    """The reload failed. `untouched`: nothing was sent to the target (it still runs the
    previous file), so restoring the file needs no second reload."""

    def __init__(self, message: str, untouched: bool = False) -> None:
        super().__init__(message)
        self.untouched = untouched


class ReloadTarget(Protocol):
    """One thing a resource reloads. Resources whose targets have equal keys reload once."""

    def key(self) -> Hashable:
        """Resources whose reload is the same action share one reload per batch."""
        ...

    def reload(self, previous: bytes | None, content: bytes | None,
               siblings: Sequence[Sibling] = ()) -> ReloadResult:
        """Make the installed file live. `previous` is what the target ran (None: unknown) and
        `content` the file just installed (None: read it). `siblings`: the other files of this
        target that confsync writes (`haproxy -f a.cfg -f b.cfg`), those that changed with it
        and those that did not, so one reload can keep what the target knows of all of them.
        Raises ReloadFailed."""
        ...

    def probe(self, since: float | None, quick: bool = False, compare: bool = False) -> Probe:
        """Ask whether the target runs, sending it nothing that changes it (no reload, no
        runtime command). `since`: a `processes.boot_clock()` time at which the installed file
        was in place; STARTED_SINCE says the target started after it, so it read that file.
        `quick`: one look, no waiting out a busy socket (a DOWN may then be wrong). `compare`:
        the first look at a file found in place, also tell whether what runs is that file
        (STALE if surely not); may cost more than a look (HAProxy: `show servers state`), so
        the looks between applies, which only ask whether it runs, do not. Default: UNKNOWN
        (the caller then reloads where it needs to be sure)."""
        return UNKNOWN_PROBE

    def may_skip_check(self, previous: bytes, content: bytes, checked: bytes) -> bool:
        """True when `content` is proven valid without `check_cmd`: `checked` passed the check
        in this process and `previous` is the file installed after it. Default: never."""
        return False

    def gauges(self) -> tuple[TargetGauge, ...]:
        """What the target's last probe or reload measured, for /metrics (read every
        heartbeat: no I/O here). Default: nothing."""
        return ()

    def stop_asked(self) -> None:
        """SIGTERM or SIGINT arrived (called in the signal handler: set a flag, nothing more):
        a wait of the reload in flight that only spares a fallback, the target cuts short.
        Default: nothing."""
        return None

    def take_over(self, earlier: ReloadTarget) -> None:
        """Take what `earlier`, the target of this resource before its definition was edited
        (same dest), knows about the running service and nothing else can tell (HAProxy
        servers parked in maintenance). Default: nothing to take."""
        return None


# ---- plugins: a resource-file table of their own, and the target built from it


class TargetPlugin(Protocol):
    def parse(self, source: str, table: Mapping[str, Any], template: Mapping[str, Any],
              where: str) -> Hashable:
        """Validate the plugin's table (`where`: its name in errors, e.g. "haproxy").
        `template` holds the parsed `[template]` fields (reload_cmd, reload_signal, ...).
        Raise ConfigError naming file and key."""
        ...

    def target(self, resource: Resource) -> ReloadTarget:
        ...
