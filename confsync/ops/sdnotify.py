"""sd_notify spoken directly: one datagram per state change to $NOTIFY_SOCKET, no libsystemd.

The protocol is newline-separated KEY=VALUE pairs in one AF_UNIX datagram (sd_notify(3)). A
leading '@' in the address means the Linux abstract namespace. Every send is best effort: a
missing or full socket must never stop the watch loop, so errors are logged, not raised, and a
send never waits. A datagram socket's queue is short (net.unix.max_dgram_qlen: 10, or 512 where
systemd sets it), and PID 1 busy in a long daemon-reload or a container runtime's notify proxy
that hangs stops reading: a blocking sendto held the loop there, files stale and /health 503,
for as long as nobody read. What a full socket refuses is dropped, except the messages that
change the service's state (READY=1, RELOADING=1, STOPPING=1): those are owed, and sent in
order before anything else once the socket takes datagrams again.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections import deque
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from typing import TYPE_CHECKING

from confsync.ops.events import Observer

if TYPE_CHECKING:
    from confsync.ops.supervisor import Supervisor
    from confsync.outcome import Outcome
    from confsync.resources import Resource

log = logging.getLogger(__name__)

# What systemd hands the main process; children (exec mode) must not inherit them, or their
# own sd_notify would talk for us (NotifyAccess=main drops that, but it is noise in the journal).
NOTIFY_ENV = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")
# Messages that change the unit's state in systemd: refused by a full socket, they are sent
# again later (a lost READY=1 fails the start, or leaves a reload that never ends).
STATE_FIELDS = ("READY=", "RELOADING=", "STOPPING=")
OWED_LIMIT = 32  # state messages kept while nobody reads (a SIGHUP a minute for half an hour)


def _address(raw: str) -> str | bytes | None:
    if raw.startswith("@"):
        return b"\0" + raw[1:].encode()
    if raw.startswith("/"):
        return raw
    return None  # vsock:... and other forms are not used for services; ignore them


class Notifier:
    """A connectionless sender to one notify socket; `send()` returns whether it went out."""

    def __init__(self, address: str) -> None:
        self.address = address
        self._target = _address(address)
        self._sock: socket.socket | None = None
        self._owed: deque[bytes] = deque(maxlen=OWED_LIMIT)
        if self._target is None:
            log.warning("NOTIFY_SOCKET=%r is not a unix socket path; sd_notify disabled", address)

    @classmethod
    def from_environ(cls, environ: MutableMapping[str, str] | None = None,
                     unset: bool = True) -> Notifier | None:
        """The notifier systemd asked for, or None when not run as a Type=notify service."""
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        if unset:
            for name in NOTIFY_ENV:
                env.pop(name, None)
        return cls(address) if address else None

    def send(self, *fields: str) -> bool:
        """Send now, without waiting; False when it did not go out (a state message is then
        owed: see `flush`)."""
        if self._target is None:
            return False
        message = "\n".join(fields).encode()
        if self.flush() and self._send(message):
            return True
        if any(field.startswith(STATE_FIELDS) for field in fields):
            self._owed.append(message)
        return False

    def flush(self) -> bool:
        """Send the state messages a full socket refused, oldest first; True when none is
        left. Every send calls it first, so systemd sees the states in their order."""
        while self._owed:
            if not self._send(self._owed[0]):
                return False
            self._owed.popleft()
        return True

    def _send(self, message: bytes) -> bool:
        if self._target is None:
            return False
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            # MSG_DONTWAIT: a full queue is EAGAIN, never a wait (see the module docstring).
            self._sock.sendto(message, socket.MSG_DONTWAIT, self._target)
        except OSError as exc:
            log.debug("sd_notify %r to %s failed: %s", message, self.address, exc)
            return False
        return True

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def watchdog_interval(environ: Mapping[str, str] | None = None,
                      pid: int | None = None) -> float | None:
    """Seconds between WATCHDOG=1 pings: half of WATCHDOG_USEC, as sd_watchdog_enabled(3) advises.

    None when no watchdog is set, or when WATCHDOG_PID names another process (we were forked).
    """
    env = os.environ if environ is None else environ
    try:
        usec = int(env.get("WATCHDOG_USEC", "0"))
    except ValueError:
        return None
    if usec <= 0:
        return None
    owner = env.get("WATCHDOG_PID")
    if owner and owner.isdigit() and int(owner) != (os.getpid() if pid is None else pid):
        return None
    return usec / 2_000_000


class SystemdNotify(Observer):
    """Turns daemon events into READY / WATCHDOG / RELOADING / STOPPING / STATUS messages."""

    def __init__(self, notifier: Notifier, watchdog_seconds: float | None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.notifier = notifier
        self.watchdog_seconds = watchdog_seconds
        self._clock = clock
        self._last_ping: float | None = None
        self._revision = 0
        self._degraded = ""
        self._failed: set[str] = set()
        self._status = ""
        self._ready = False
        self._exec: Supervisor | None = None  # exec mode: the child's state is in STATUS

    @classmethod
    def from_environ(cls, environ: MutableMapping[str, str] | None = None) -> SystemdNotify | None:
        """Call once at start-up, before spawning any child: it reads and unsets NOTIFY_*."""
        env = os.environ if environ is None else environ
        interval = watchdog_interval(env)
        notifier = Notifier.from_environ(env, unset=True)
        return cls(notifier, interval) if notifier is not None else None

    def track_exec(self, supervisor: Supervisor) -> None:
        """Exec mode: `systemctl status` says when the child is down or being restarted
        (it said "watching" while HAProxy crash-looped), as /ready does."""
        self._exec = supervisor

    # ---- helpers

    def _status_text(self) -> str:
        state = f"degraded: {self._degraded}" if self._degraded else (
            "watching" if self._ready else "starting")
        text = f"{state}; revision {self._revision}"
        child = self._exec
        if child is not None and self._ready:
            if child.gave_up is not None:
                text += f"; exec child given up: {child.gave_up}"
            elif not child.alive:
                text += "; exec child not running (restarting)"
        if self._failed:
            names = sorted(self._failed)
            shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
            text += f"; {len(names)} failing: {shown}"
        return text

    def _update_status(self, *extra: str) -> None:
        status = self._status_text()
        if extra or status != self._status:
            self._status = status
            self.notifier.send(*extra, f"STATUS={status}")

    # ---- observer

    def started(self, resources: Sequence[Resource]) -> None:
        names = {r.name for r in resources}
        self._failed &= names
        self._update_status()

    def snapshot_loaded(self, revision: int, keys: int) -> None:
        self._revision = max(self._revision, revision)
        self._update_status()

    def watch_connected(self, revision: int) -> None:
        self._degraded = ""
        self._update_status()

    def watch_lost(self, reason: str) -> None:
        self._degraded = f"watch lost ({reason})"
        self._update_status()

    def batch_applied(self, revision: int, changed_keys: Sequence[str],
                      outcomes: Sequence[Outcome]) -> None:
        self._revision = max(self._revision, revision)
        for outcome in outcomes:
            if outcome.status == "failed":
                self._failed.add(outcome.resource.name)
            else:
                self._failed.discard(outcome.resource.name)
        self._update_status()

    def ready(self, revision: int) -> None:
        self._revision = max(self._revision, revision)
        self._ready = True
        self._update_status("READY=1")

    def heartbeat(self) -> None:
        self.notifier.flush()  # a READY=1 a full socket refused goes as soon as it can
        if self._exec is not None:
            self._update_status()  # (sent only when the text changed)
        if self.watchdog_seconds is None:
            return
        now = self._clock()
        due = self._last_ping is None or now - self._last_ping >= self.watchdog_seconds
        if due and self.notifier.send("WATCHDOG=1"):
            self._last_ping = now

    def reloading_config(self) -> None:
        if not self._ready:
            # Still starting (a SIGHUP or a conf.d edit before the first render): no reload
            # to bracket for systemd, whose start ends only with the first render's READY=1.
            self.notifier.send("STATUS=reloading configuration")
            self._status = ""
            return
        # MONOTONIC_USEC lets systemd (253+) match this RELOADING=1 to the reload it started.
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.notifier.send("RELOADING=1", f"MONOTONIC_USEC={usec}",
                           "STATUS=reloading configuration")
        self._status = ""

    def config_reloaded(self, ok: bool, message: str) -> None:
        # READY=1 ends the reload either way: a refused config leaves the old one running.
        # Not before the first render: READY=1 would end a Type=notify start there, and the
        # units ordered after confsync would start on files it has not written yet.
        ready = ("READY=1",) if self._ready else ()
        extra = () if ok else (f"STATUS=config reload refused: {message}"[:200],)
        if extra:
            self.notifier.send(*ready, *extra)
            self._status = extra[0][len("STATUS="):]
        else:
            self._update_status(*ready)

    def stopping(self) -> None:
        self.notifier.send("STOPPING=1", "STATUS=stopping")
