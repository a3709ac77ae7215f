"""Exec mode: confsync runs the service it configures (`confsync watch --exec "haproxy -W ..."`).

The daemon drives one `Supervisor` from its loop thread:
`start()` after the first full render, `reload()` when a batch changed files, `poll()` on every
tick (reaps, restarts after backoff, detects a crash loop), `forward(sig)` for signals meant for
the child, and `stop(timeout)` on shutdown, whose return value is confsync's exit status.

Why the loop thread only, and no SIGCHLD handler: `poll()` reaps its child with waitpid(), and a
Python signal handler runs on the main thread between any two bytecodes, so one that takes a lock
(an Event, a Queue, logging) can deadlock against the code it interrupted. The loop ticks at least
once a second, so a dead child is noticed within a tick. Orphans that PID 1 inherits are reaped
by the loops too (confsync.children), never with a blanket waitpid(-1), which would steal the
status of a command another thread waits for.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from confsync import children
from confsync.backoff import Backoff
from confsync.commands import cannot_run
from confsync.ops import procgroup, strays
from confsync.ops.events import Observer
from confsync.ops.sdnotify import NOTIFY_ENV
from confsync.outcome import Status
from confsync.reload import has_reload_action

if TYPE_CHECKING:
    from confsync.outcome import Outcome
    from confsync.settings import ExecSettings

log = logging.getLogger(__name__)

EXIT_CRASH_LOOP = 1  # confsync's status when it gives up on a crash-looping child
# Signals whose default action leaves a process alive: safe to send before it has a handler.
_HARMLESS_BY_DEFAULT = frozenset({signal.SIGCHLD, signal.SIGCONT, signal.SIGURG, signal.SIGWINCH})


def handles(pid: int, signum: int) -> bool:
    """Whether `pid` catches `signum` now (/proc/PID/status SigCgt): whether a signal sent now
    reaches a handler.

    A process that is still starting (HAProxy parsing its configuration, an interpreter before
    its first line, a shell before its `exec`) has the default action, which for SIGHUP, SIGUSR1
    and SIGUSR2 is to terminate. An ignored signal (SigIgn) is not handled either: it is
    dropped, and HAProxy's master ignores its reload signals for the end of each reload (on
    2.6, after re-executing blocked, which also discards one that was pending): a reload sent
    then was lost, and HAProxy served the previous file until the next change. True when it
    cannot be told (no /proc): sent as before.
    """
    if signum in _HARMLESS_BY_DEFAULT:
        return True
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as f:
            fields = dict(line.split(":", 1) for line in f if ":" in line)
        mask = int(fields["SigCgt"], 16)
    except (OSError, KeyError, ValueError):
        return True
    return bool(mask >> (signum - 1) & 1)


@dataclass(frozen=True)
class ExecPolicy:
    """How the child is treated; defaults suit HAProxy's master-worker mode (-W)."""

    argv: tuple[str, ...]
    reload_signal: signal.Signals = signal.SIGHUP
    stop_signal: signal.Signals = signal.SIGTERM
    forward_signals: tuple[signal.Signals, ...] = (signal.SIGUSR1, signal.SIGUSR2)
    stop_timeout: float = 10.0
    restart_delay: float = 1.0  # first backoff; doubles per quick death
    restart_delay_max: float = 30.0
    crash_limit: int = 5  # this many deaths ...
    crash_window: float = 60.0  # ... within this many seconds: give up
    stable_after: float = 10.0  # a child that lived this long resets the backoff
    restart: bool = True  # False: a dead child stays dead (`exited`); `confsync register` exits


def policy_from_settings(settings: ExecSettings) -> ExecPolicy:
    return ExecPolicy(
        argv=settings.command, reload_signal=settings.reload_signal,
        stop_signal=settings.stop_signal, forward_signals=settings.forward_signals,
        stop_timeout=settings.stop_timeout, restart_delay=settings.restart_delay,
        restart_delay_max=settings.restart_delay_max, crash_limit=settings.crash_limit,
        crash_window=settings.crash_window)


def exit_status(returncode: int) -> int:
    """Popen's returncode as a shell reports it: 128+N for death by signal N."""
    return 128 - returncode if returncode < 0 else returncode


class Supervisor(Observer):
    """One child process, kept running. Not thread-safe: call from the daemon's loop thread."""

    def __init__(self, policy: ExecPolicy, env: Mapping[str, str] | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 on_give_up: Callable[[str], None] | None = None) -> None:
        if not policy.argv:
            raise ValueError("exec mode needs a command")
        self.policy = policy
        base = dict(os.environ if env is None else env)
        self._env = {k: v for k, v in base.items() if k not in NOTIFY_ENV}
        # What the child starts inherits it, also out of its process group (ops/strays.py).
        self._mark = strays.new_mark()
        self._env[strays.MARK] = strays.joined(self._env.get(strays.MARK), self._mark)
        # From now on, not at the child's start: a check command of the first render (before
        # it) would leave a background child to init, and another one later to confsync.
        if not children.become_subreaper():
            log.debug("exec: cannot become a child subreaper; what the child's descendants "
                      "start out of its process group escapes its stop once orphaned")
        self._clock = clock
        self.proc: subprocess.Popen[bytes] | None = None
        self._started_at = 0.0
        self._deaths: deque[float] = deque()
        # Restart delays: restart_delay, doubling per quick death up to restart_delay_max.
        self._backoff = Backoff(policy.restart_delay, policy.restart_delay_max, jitter=False)
        self._restart_at: float | None = None
        self._stopping = False
        self._stop_sent: tuple[int, float] | None = None  # (pid, when) of the stop signal
        self._hurried = False  # a second stop signal: SIGKILL without waiting out stop_timeout
        # When a child that died on its own was found to leave processes in its group (or
        # out of it: strays), and the strays sent stop_signal since.
        self._leftovers_since: float | None = None
        self._strays_signalled: set[int] = set()
        self.last_status: int | None = None
        self.gave_up: str | None = None  # set when the crash-loop limit was hit
        self.exited = False  # the child died and policy.restart is off
        self.restarts = 0
        # Forward signals that came while the child was being started (see start()).
        self._starting = False
        self._pending: list[int] = []
        # A reload due while the child could not take it yet (starting, or reloading): sent
        # by poll() once it handles the signal; dropped if it dies (its successor reads the
        # files). `_held_since`: when it was first held (the clock's time).
        self.reload_held = False
        self._held_since = 0.0
        # Called once when the crash-loop limit is hit (or the command cannot start): the
        # daemon should stop. `ops` sends confsync itself SIGTERM, which the loop handles.
        self.on_give_up = on_give_up

    # ---- lifecycle

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def running(self) -> bool:
        """Alive: not reaped, and not an exited child kept unreaped while its group is
        cleaned up (see _reap)."""
        proc = self.proc
        return proc is not None and proc.returncode is None and not (
            self._leftovers_since is not None and children.exited(proc.pid))

    @property
    def alive(self) -> bool:
        """The child runs now, as /ready, the metrics and the status line must say (any
        thread): `running`, and not exited. The loop reaps a dead child at its next tick only,
        which a long render, check or reload puts off: /ready said 200 for as long as a 4 s
        check_cmd ran after the child had died."""
        proc = self.proc
        return self.running and proc is not None and not children.exited(proc.pid)

    def start(self) -> None:
        """Start the child (a no-op if one is not reaped yet: alive, or dead with its group
        being cleaned up). Raises OSError if it cannot be executed."""
        proc = self.proc
        if (proc is not None and proc.returncode is None) or self.gave_up is not None:
            return
        # Own process group: a terminal's ^C reaches confsync once, and we decide what the
        # child gets. stdin closed; stdout/stderr shared with confsync (the journal, docker logs).
        self._starting = True
        try:
            self.proc = children.start(self.policy.argv, own_fd_limit=True, env=self._env,
                                       stdin=subprocess.DEVNULL, process_group=0)
        finally:
            self._starting = False
            pending, self._pending = self._pending, []  # (a start that failed: no child)
        self._started_at = self._clock()
        self._restart_at = None
        log.info("exec: started `%s` as pid %d", " ".join(self.policy.argv), self.proc.pid,
                 extra={"pid": self.proc.pid})
        for signum in pending:
            self.forward(signum)

    def _cannot_run(self, exc: OSError) -> str:
        # (Popen looks the program up in the child's PATH: the environment it is given.)
        return cannot_run(self.policy.argv[0], exc, self._env.get("PATH", os.defpath))

    def reload(self) -> bool:
        """Send the reload signal; False when no child runs (it will read the new files).

        A child that does not handle the signal now is starting (the signal would kill it:
        the default action) or reloading (HAProxy's master ignores it meanwhile: it would be
        lost), so the reload is held until it does (see poll()).
        """
        if self.running and self.proc is not None and \
                not handles(self.proc.pid, self.policy.reload_signal):
            if not self.reload_held:
                log.info("exec: pid %d does not handle %s now (starting or reloading); reload "
                         "held until it does", self.proc.pid, self.policy.reload_signal.name)
                self._held_since = self._clock()
            self.reload_held = True
            return True
        self.reload_held = False
        return self.forward(self.policy.reload_signal)

    def forward(self, signum: int) -> bool:
        if not self.running or self.proc is None:
            return False
        try:
            os.kill(self.proc.pid, signum)
        except ProcessLookupError:
            return False
        log.info("exec: sent %s to pid %d", signal.Signals(signum).name, self.proc.pid)
        return True

    def _relay(self, signum: int, frame: object) -> None:
        """Signal handler: os.kill only; no locks, no logging (see the module docstring).

        One that comes while the child is being started is kept for start() to send: the
        child runs (and may signal confsync itself) before Popen has returned its pid, and
        such a signal was dropped (no child yet), or went to the dead previous one."""
        if self._starting:
            self._pending.append(signum)
            return
        proc = self.proc
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signum)

    def install_signal_handlers(self) -> None:
        """Relay the configured forward signals to the child as they arrive.

        The daemon keeps its own SIGTERM/SIGINT (stop) and SIGHUP (config reload); a SIGHUP listed
        in forward_signals is passed on from `reloading_config`.
        """
        for signum in self.policy.forward_signals:
            if signum not in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD):
                signal.signal(signum, self._relay)

    def poll(self) -> None:
        """Reap, notice a dead child, restart it when its backoff has passed."""
        if children.adopts() and not children.is_init():
            children.reap_orphans()  # a subreaper (as PID 1, the daemons' loops reap)
        self._reap()
        if self.proc is not None and self.proc.returncode is not None and not self._stopping:
            self._died(self.proc.returncode)
        self._send_held_reload()
        if (self.proc is None and self._restart_at is not None and not self._stopping
                and self._clock() >= self._restart_at and self.gave_up is None):
            self.restarts += 1
            try:
                self.start()
            except OSError as exc:
                # It lived 0 s, not since the last start: a child that ran for days then cannot
                # be started again (fork's EAGAIN, its binary mid-upgrade) backs off as a quick
                # death does, instead of a reset backoff per attempt.
                self._started_at = self._clock()
                self._died(127, f"cannot start: {self._cannot_run(exc)}")

    def _reap(self) -> None:
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return
        if not self._stopping and children.exited(proc.pid) and not self._group_gone(proc.pid):
            return  # reaped once what it left in its group is gone
        proc.poll()  # waitpid(child, WNOHANG)
        if proc.returncode is not None:
            children.done(proc)

    def _group_gone(self, pid: int) -> bool:
        """The child died on its own: what it started in its group (a wrapper's service, helpers)
        goes before it is reaped and restarted, or they keep its ports and every restart fails
        to bind (a crash loop, and confsync gave up); so do its descendants that left the group
        (ops/strays.py). Meanwhile the dead child stays unreaped, so its pid still names its
        group and cannot be anyone else's: stop_signal at once (a stray found later: then),
        SIGKILL after stop_timeout, checked on every poll without waiting."""
        left = procgroup.members(pid, pid)
        out = strays.find(self._mark, pid)
        now = self._clock()
        if not left and not out:
            self._leftovers_since = None
            self._strays_signalled.clear()
            return True
        if self._leftovers_since is None:
            self._leftovers_since = now
            log.warning("exec: pid %d exited leaving %d process(es) of its group (%s) and %d "
                        "that left it (%s); sending them %s before it is restarted", pid,
                        len(left), " ".join(map(str, left)) or "-", len(out),
                        " ".join(map(str, out)) or "-", self.policy.stop_signal.name)
            if left:
                children.killpg(pid, self.policy.stop_signal)
        if now - self._leftovers_since >= self.policy.stop_timeout:
            children.killpg(pid, signal.SIGKILL)
            procgroup.send(out, signal.SIGKILL)
        else:
            procgroup.send([p for p in out if p not in self._strays_signalled],
                           self.policy.stop_signal)
            self._strays_signalled.update(out)
        if children.adopts():
            children.reap_orphans()  # as PID 1 or a subreaper the leftovers are ours to reap
        return False

    def _send_held_reload(self) -> None:
        """A held reload goes out once the child handles the signal, or once it has been held
        for stable_after: then the child never will, and the signal ends it as it always did,
        to be restarted on the new files (held for good, the new files never went live: a
        service that takes no reload signal was never told). Counted from the hold, not from
        the child's start: a child that ran for days and is mid-reload (HAProxy's master
        re-executing) got it at once, and lost it."""
        if not self.reload_held or not self.running or self.proc is None:
            return
        if handles(self.proc.pid, self.policy.reload_signal):
            self.reload()
        elif self._clock() - self._held_since >= self.policy.stable_after:
            log.warning("exec: pid %d still does not handle %s after %.0fs; sending it anyway "
                        "(a child without a handler ends, and is restarted on the new files)",
                        self.proc.pid, self.policy.reload_signal.name,
                        self._clock() - self._held_since)
            self.reload_held = False
            self.forward(self.policy.reload_signal)

    def _died(self, returncode: int, why: str = "") -> None:
        now = self._clock()
        uptime = now - self._started_at
        self.last_status = exit_status(returncode)
        self.proc = None
        self.reload_held = False  # the next child reads the files at start
        self._deaths.append(now)
        while self._deaths and now - self._deaths[0] > self.policy.crash_window:
            self._deaths.popleft()
        if uptime >= self.policy.stable_after:
            self._backoff.reset()  # a child that ran a while starts a fresh backoff
        reason = why or (f"killed by {signal.Signals(-returncode).name}" if returncode < 0
                         else f"exited {returncode}")
        if not self.policy.restart:
            self.exited = True
            log.warning("exec: child %s after %.1fs", reason, uptime)
            return
        if len(self._deaths) >= self.policy.crash_limit:
            self._give_up(f"child {reason}; {len(self._deaths)} deaths within "
                          f"{self.policy.crash_window:g}s: crash loop, giving up")
            return
        delay = self._backoff.next()
        self._restart_at = now + delay
        log.warning("exec: child %s after %.1fs; restarting in %.1fs", reason, uptime, delay)

    def _give_up(self, why: str) -> None:
        self.gave_up = why
        log.error("exec: %s", why)
        if self.on_give_up is not None:
            self.on_give_up(why)

    def stop(self, timeout: float | None = None, signum: int | None = None) -> int:
        """Stop the child (stop_signal, then SIGKILL after `timeout`); return the exit status.

        What the child started goes too (its process group, confsync.ops.procgroup): SIGKILL
        reaches the whole group, and processes a child that exited in time left behind get
        stop_signal, then SIGKILL at the same deadline.

        The status is the child's own (128+N if a signal killed it), so `docker stop` and
        systemd see what the service said. After a crash loop it is EXIT_CRASH_LOOP at least.
        """
        self._stopping = True
        timeout = self.policy.stop_timeout if timeout is None else timeout
        proc = self.proc
        if proc is not None and proc.returncode is None:
            signum = signum or self.policy.stop_signal
            sent_at = self._send_stop(signum)
            deadline = sent_at + timeout
            # Waited for without reaping: until reaped, its pid names its process group.
            if procgroup.wait_exited(proc.pid, deadline, self._is_hurried):
                left = procgroup.stop_leftovers(
                    proc.pid, signum, deadline, self._is_hurried,
                    lambda: strays.find(self._mark, proc.pid))
                if left:
                    log.warning("exec: pid %d exited leaving %d process(es) in or out of its "
                                "group (%s); sent them %s, SIGKILL after the stop timeout",
                                proc.pid, len(left), " ".join(map(str, left)),
                                signal.Signals(signum).name)
            else:
                if self._hurried:
                    log.warning("exec: a second stop signal; SIGKILL to pid %d's process "
                                "group now (%.1fs of its %.0fs stop timeout used)", proc.pid,
                                time.monotonic() - sent_at, timeout)
                else:
                    log.warning("exec: pid %d still running after %.0fs; SIGKILL to its "
                                "process group", proc.pid, timeout)
                children.killpg(proc.pid, signal.SIGKILL)
                strays.kill(self._mark, proc.pid)
                proc.kill()  # in case it left its group
            proc.wait()
        if proc is not None and proc.returncode is not None:
            self.last_status = exit_status(proc.returncode)
            children.done(proc)
        self.proc = None
        status = self.last_status if self.last_status is not None else 0
        if self.gave_up is not None:
            return status or EXIT_CRASH_LOOP
        return status

    def _send_stop(self, signum: int) -> float:
        """Send the stop signal once per child; return when it was sent."""
        self._stopping = True
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return time.monotonic()
        if self._stop_sent is None or self._stop_sent[0] != proc.pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signum)
            self._stop_sent = (proc.pid, time.monotonic())
            log.info("exec: sent %s to pid %d; SIGKILL after %gs (or at a second stop signal)",
                     signal.Signals(signum).name, proc.pid, self.policy.stop_timeout)
        return self._stop_sent[1]

    # ---- observer: the daemon can simply add the supervisor to its observers

    def stopping(self) -> None:
        """confsync is stopping: the child gets its stop signal now, and its stop_timeout
        counts from here. Sent by stop() after the daemon's own shutdown (a store follower's
        join alone may take 5 s against an unanswering etcd), it came that much later, and
        `docker stop`'s 10 s grace ran out before the child's own."""
        self._send_stop(self.policy.stop_signal)

    def hurry(self) -> None:
        """A stop signal while the child is being stopped (an operator's second ^C, `kill`
        again): SIGKILL now instead of waiting out stop_timeout. Not before the child had its
        own stop signal (`register`'s second one ends the drain, and the child still gets its
        chance). In the signal handler: a flag only; stop() acts on it."""
        if self._stop_sent is not None:
            self._hurried = True

    def _is_hurried(self) -> bool:
        return self._hurried

    def ready(self, revision: int) -> None:
        """The first full render of a set: start the child. Not one that died and waits out
        its restart backoff (poll() restarts it), nor one that may not restart: a SIGHUP that
        changes prefixes renders a set again, and started it at once, uncounted, so a crash
        loop met no backoff and no crash_limit."""
        if self._restart_at is not None or self.exited:
            return
        try:
            self.start()
        except OSError as exc:  # a missing binary is a configuration error: fail fast
            self.last_status = 127
            self._give_up(f"cannot start: {self._cannot_run(exc)}")

    def batch_applied(self, revision: int, changed_keys: Sequence[str],
                      outcomes: Sequence[Outcome]) -> None:
        """Reload once per batch when a file that has no reload action of its own changed.

        A resource with its own action (reload_cmd, reload_signal, or a plugin table such as
        [haproxy] with a master socket) was reloaded or updated by it already: a signal on top
        would be a second, unconfirmed reload.
        """
        if any(o.status is Status.UPDATED and not has_reload_action(o.resource)
               for o in outcomes):
            self.reload()

    def heartbeat(self) -> None:
        self.poll()

    def reloading_config(self) -> None:
        """SIGHUP reaches the daemon (it reloads its own config); pass it on when configured."""
        if signal.SIGHUP in self.policy.forward_signals:
            self.forward(signal.SIGHUP)
