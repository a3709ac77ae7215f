"""`confsync register`: the loop that turns check results, a maintenance file, signals and the
exec child's life into what each registration publishes.

One thread (this one) owns all state. Check threads, the registrar's etcd thread, the child
watcher and signal handlers only put items on a SimpleQueue (safe from a signal handler), so a
decision never races another (a stop signal during the final revoke also sets the registrar's
`hurry` flag: the loop reads no queue then). Exit: 0 after a drained stop, 3 when no etcd
member removed our keys at the stop, 2 for a bad registration or a key another host holds at
start, the child's status in exec mode (3 in place of its 0, or of its death by the stop
signal we sent, when our keys stayed).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import os
import queue
import select
import signal
import socket
import threading

from confsync import children, confdir_lock
from confsync.commands import cannot_run
from confsync.confdir_wait import wait_until_filled
from confsync.errors import (
    EXIT_CANNOT_RUN,
    EXIT_OK,
    EXIT_STORE_UNAVAILABLE,
    ConfigError,
    StoreUnavailable,
)
from confsync.instances import validate_instance
from confsync.logs import log_thread_death
from confsync.ops import held_signals
from confsync.ops.http import MetricsServer
from confsync.ops.sdnotify import Notifier, watchdog_interval
from confsync.ops.supervisor import Supervisor, policy_from_settings
from confsync.register import lease_clock
from confsync.register.address import (
    AddressChanged,
    AddressFollower,
    StoppedWaiting,
    default_address,
    detect_address,
    warn_if_loopback,
)
from confsync.register.checks import CheckRunner, Result
from confsync.register.config import Registration, load_registrations
from confsync.register.maintenance import STUCK, MaintenanceLookup
from confsync.register.metrics import RegisterMetrics
from confsync.register.registrar import CLONE_REMEDY, Registrar, RegistrarEvent
from confsync.register.state import ABSENT, InstanceState
from confsync.settings import REGISTER_HOSTNAME_ENV, Settings
from confsync.stores.etcd import EtcdStore, token_expired

log = logging.getLogger("confsync.register")

TICK = 0.1  # maintenance file and child polls; check results and signals wake the loop at once
STOP_GRACE = 5.0  # after the drain, how long deregistering may take before exiting anyway
# After the drain, how long the deletes may take before the lease is revoked (which takes the
# keys too) through any member: a delete stuck on a member that hangs is not waited out.
SETTLE_WAIT = 1.0
HURRY = 1.0  # a second stop signal: deregistering gets at most this long from then
# The loop polls every TICK; a gap this long means the process was not running (SIGSTOP, a VM
# paused for live migration, a debugger): every thread was stopped, the probes included.
PAUSE_GAP = 1.0


def _watch_child(pid: int, events: queue.SimpleQueue[object]) -> None:
    """Wakes the loop the moment the child exits (pidfd readable), so its key goes at once."""
    try:
        fd = os.pidfd_open(pid)
    except OSError:
        return  # no pidfd (old kernel): the loop's tick notices within TICK
    try:
        # poll, not select: select refuses a descriptor numbered 1024 or more, and the
        # open-file limit is raised at start (fdlimit), so a child restarted while many checks
        # hold descriptors gets such a number.
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        poller.poll()
    finally:
        os.close(fd)
    events.put(("child",))


class RegisterLoop:
    def __init__(self, settings: Settings, registrations: list[Registration], host: str,
                 metrics: RegisterMetrics, supervisor: Supervisor | None,
                 notifier: Notifier | None, watchdog: float | None = None) -> None:
        """`watchdog`: seconds between WATCHDOG=1 pings (`watchdog_interval()`, read before
        `Notifier.from_environ` unsets WATCHDOG_USEC)."""
        self.settings = settings
        self.host = host
        self.instances = {r.name: InstanceState(r) for r in registrations}
        self.by_key = {r.key: self.instances[r.name] for r in registrations}
        self.metrics = metrics
        self.supervisor = supervisor
        self.notifier = notifier
        self.watchdog = watchdog if notifier is not None else None
        self.events: queue.SimpleQueue[object] = queue.SimpleQueue()
        ttl = min(r.ttl for r in registrations)
        # Calls must give up well within the lease's keepalive period.
        etcd = settings.etcd._replace(timeout=min(settings.etcd.timeout, max(ttl / 3, 0.5)))
        self.store = EtcdStore(etcd, connect_budget=settings.etcd.timeout)
        self.registrar = Registrar(
            self.store.new_client, host, ttl, self.events.put,
            endpoint_failed=self.store.endpoint_failed, token_expired=token_expired,
            keepalive_client=functools.partial(self.store.new_client, authenticate=False),
            learn_members=self.store.learn_members,
            stop_client=lambda timeout: self.store.new_client(timeout=timeout),
            endpoint_count=self._endpoint_count,
            still_connecting=self.store.still_connecting, connect_budget=settings.etcd.timeout)
        # Every key is wanted absent until its checks pass: a value of this host's left there
        # on no lease is deleted by the registrar's read-back (see Registrar._verify_absent).
        for key in self.by_key:
            self.registrar.want(key, None)
        self.runners = [CheckRunner(r.name, i, spec, self.events.put)
                        for r in registrations for i, spec in enumerate(r.checks)]
        # Looked up off the loop: on a hung mount, a stat held the loop (see maintenance.py).
        self.maintenance = {r.name: MaintenanceLookup(r.maintenance_file)
                            for r in registrations if r.maintenance_file is not None}
        # Registrations that name no address publish this host's, and follow it.
        detected = [r.address for r in registrations if r.address_detected]
        self.address: AddressFollower | None = None
        if detected:
            self.address = AddressFollower(functools.partial(detect_address, settings.etcd),
                                           detected[0], self.events.put)
        self._stall_reported: dict[CheckRunner, float] = {}
        self._init = children.is_init()
        self.stopping = False
        self._stop_deadline = 0.0
        self._absent_since: float | None = None  # stopping: when every key was let go
        self._deregistering = False  # in `_finish`: the lease revoke under way
        self._stop_signal: int | None = None  # the first stop signal
        self._last_ping = 0.0
        self._last_poll = lease_clock.now()
        self._status = ""
        # A shared lock on register.d (never refused): how a registrar tells that another one on
        # this host reads the same registrations, and names it (confdir_lock.py). -1: none.
        self.register_d = -1

    # ---- start

    def listen_for_stop(self) -> None:
        """Stop signals are the loop's from before the start's checks, which may wait out
        another host's lease for its whole TTL: without a handler, a SIGTERM then killed the
        process, and as PID 1 (a container without an init, which ignores what it does not
        handle) it was lost: the registrar registered once that lease lapsed, though told to
        stop, until the SIGKILL."""
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda s, f: self._on_stop_signal(s))
        for held in held_signals.take(held_signals.STOP):  # a SIGTERM during start-up
            self._on_stop_signal(held)

    def refuse_conflicts(self) -> None:
        """A key another host holds is exit 2 at start (never a silent overwrite), once it is
        clear that host is alive: a key on a lease is given one lease TTL (plus a second) to go
        by itself, since a host that died or was replaced leaves its key until then, and a
        refusal here is not retried (exit 2 is not restarted by the unit)."""
        try:
            # /health beats through the wait (a lease TTL, maybe long): it once went 503
            # after 10 s, and a liveness probe restarted a registrar that was only waiting.
            conflicts = self.registrar.conflicts(
                list(self.by_key), wait_out_leases=True, waiting=self.metrics.beat,
                stopped=lambda: self._stop_signal is not None)
        except (StoreUnavailable, ConfigError) as exc:
            # ConfigError: a TLS or password file not there (yet) at boot; each connection
            # reads them again (exit 2 here would never be restarted by the unit).
            if self._stop_signal is not None:
                return
            log.warning("register: etcd unreachable at start (%s); registering when it is "
                        "back", exc)
            return
        if conflicts and self._stop_signal is None:
            c = conflicts[0]
            source = self.by_key[c.key].registration.source
            raise ConfigError(str(source), f"{c.key} is registered by host {c.owner!r} (this "
                              f"host is {self.host!r}); refusing to take over another host's "
                              "live registration: remove it there, or pick another id", "key")

    def start(self) -> None:
        if self.supervisor is not None:
            # Relays first: a forward signal (SIGUSR1/2) between the child's start and these
            # took its default action on confsync, which died and left the child orphaned.
            self.supervisor.install_signal_handlers()
            self.supervisor.start()
            assert self.supervisor.pid is not None
            threading.Thread(target=_watch_child, args=(self.supervisor.pid, self.events),
                             daemon=True, name="child-watch").start()
        for runner in self.runners:
            runner.start()
        for lookup in self.maintenance.values():
            lookup.start()
        deadline = lease_clock.now() + STUCK
        for lookup in self.maintenance.values():
            lookup.first(max(0.0, deadline - lease_clock.now()))
        self.registrar.start()
        if self.address is not None:
            warn_if_loopback(self.address.current, self._detected_keys())
            self.address.start()
        self.listen_for_stop()
        signal.signal(signal.SIGHUP, lambda s, f: self.events.put(("hup", s)))
        for held in held_signals.take():  # a SIGHUP while confsync was starting
            self.events.put(("hup", held))
        self._notify("READY=1")
        # The pause detector counts from here: the start's wait for etcd (refuse_conflicts:
        # a timeout, or a lease TTL) was taken for a stop of the process, with a WARNING
        # "did not run for 1.0s (stopped: SIGSTOP...)" whenever etcd was away at start.
        self._last_poll = lease_clock.now()
        log.info("register: %d registration(s) for host %s: %s", len(self.instances), self.host,
                 ", ".join(f"{i.registration.key}" for i in self.instances.values()))

    def _on_stop_signal(self, signum: int) -> None:
        """In the signal handler: the loop is told; and while it waits for the lease's revoke
        (reading no event then) a second one ends that wait."""
        if self._deregistering:
            self.registrar.hurry()
        if self._stop_signal is None:
            self._stop_signal = signum
        elif self.supervisor is not None:  # a second one: the child's stop_timeout is cut too
            self.supervisor.hurry()
        self.events.put(("signal", signum))

    def _endpoint_count(self) -> int:
        try:
            return len(self.store.endpoint_urls())
        except Exception:  # (SRV records that cannot be read now: one try at a time)
            return 1

    # ---- loop

    def run(self) -> int:
        if self._stop_signal is not None:  # (nothing is started yet: no child, no thread)
            log.info("register: %s while starting: nothing registered; exiting",
                     signal.Signals(self._stop_signal).name)
            return EXIT_OK
        self.start()
        while True:
            try:
                item: object | None = self.events.get(timeout=TICK)
            except queue.Empty:
                item = None
            while item is not None:
                self._handle(item)
                try:
                    item = self.events.get_nowait()
                except queue.Empty:
                    item = None
            self._poll()
            self._publish()
            self._beat()
            if self.stopping and self._stopped():
                break
        return self._finish()

    def _handle(self, item: object) -> None:
        if isinstance(item, Result):
            state = self.instances[item.registration]
            proven = state.proven
            changed = state.observe(item)
            up = state.checks[item.index].up
            self.metrics.check(item.registration, item.index, item.ok, item.seconds, up)
            if changed:
                log.log(logging.INFO if up else logging.WARNING,
                        "register: %s check %d %s: %s", item.registration, item.index,
                        "up" if up else "down", item.detail)
            if state.proven and not proven and state.registration.on_unhealthy == "maint":
                log.info("register: %s: every check is up for the first time; from now on a "
                         "check down publishes maint (on_unhealthy)", item.registration)
        elif isinstance(item, RegistrarEvent):
            self._registrar_event(item)
        elif isinstance(item, AddressChanged):
            self._address_changed(item)
        elif isinstance(item, tuple) and item[0] == "signal":
            if self.stopping:
                log.info("register: second stop signal: deregistering now, no more drain; "
                         "exiting within %.0fs whatever etcd does", HURRY)
                for state in self.instances.values():
                    state.drain_until = 0.0
                self._stop_deadline = min(self._stop_deadline, lease_clock.now() + HURRY)
            else:
                self._stop(f"{signal.Signals(item[1]).name}")
        elif isinstance(item, tuple) and item[0] == "hup":
            if self.supervisor is not None and signal.SIGHUP in \
                    self.supervisor.policy.forward_signals:
                self.supervisor.forward(signal.SIGHUP)
            else:
                log.info("register: SIGHUP ignored; restart to apply register.d changes")

    def _registrar_event(self, event: RegistrarEvent) -> None:
        state = self.by_key.get(event.key)
        name = state.registration.name if state is not None else ""
        if event.kind == "connected":
            self.metrics.etcd(True)
            log.info("register: etcd connected")
        elif event.kind == "lost":
            self.metrics.etcd(False, event.detail)
            self.metrics.refused("", "", verb="")
            log.warning("register: etcd unreachable (%s); checks go on, registering again when "
                        "it is back", event.detail)
        elif event.kind == "refused" and event.verb == "reading":
            self.metrics.refused(event.key, event.detail, event.verb)
            log.error("register: etcd refuses reading %s for lack of permission (%s); the "
                      "role may write there but not read: a key deleted or changed under us "
                      "goes unnoticed, and a change cannot be written (its transaction "
                      "compares). Retrying", event.key, event.detail, extra={"key": event.key})
        elif event.kind == "refused" and event.nospace:
            self.metrics.refused(event.key, event.detail, label="etcd's NOSPACE alarm")
            log.error("register: etcd refuses writing %s: its NOSPACE alarm is raised (%s); "
                      "its space quota is full until an operator compacts, defragments and "
                      "disarms it. Checks go on, retrying; a key whose change cannot be "
                      "written goes with the lease", event.key, event.detail,
                      extra={"key": event.key})
        elif event.kind == "refused":
            self.metrics.refused(event.key, event.detail)
            log.error("register: etcd refuses writing %s for lack of permission (%s); the "
                      "role may not write there. Checks go on, retrying", event.key,
                      event.detail, extra={"key": event.key})
        elif event.kind == "accepted":
            self.metrics.refused("", "", event.verb)
            log.info("register: etcd accepts our %s again",
                     "reads" if event.verb == "reading" else "writes")
        elif event.kind == "lease_granted":
            self.metrics.leases.inc()
            log.info("register: %s", event.detail)
        elif event.kind == "keepalive_failed":
            self.metrics.keepalive_failures.inc()
        elif event.kind == "conflict" and state is not None and event.lease:
            self._clone(name, event)
        elif event.kind == "conflict" and state is not None:
            self.metrics.conflict(name, event.detail)
            log.error("register: %s: %s is registered by host %r (this host is %r); not "
                      "overwriting it, retrying", state.registration.source, event.key,
                      event.detail, self.host,
                      extra={"key": event.key, "owner": event.detail})
        elif event.kind == "written" and state is not None:
            self.metrics.conflict(name, None)
            log.debug("register: %s %s", "wrote" if event.value else "deleted", event.key)

    def _clone(self, name: str, event: RegistrarEvent) -> None:
        """Another live registrar publishes our key under our host name: a configuration
        error only an operator can fix (the registrar leaves the key to it, retrying every
        ttl/3), so /ready says so (503) along with what to do, and the log once. When that
        is a registrar on this host reading the same register.d (a second `register` started
        by hand), it is named: "a cloned image?" sent the operator looking elsewhere."""
        remedy = CLONE_REMEDY
        here = self.other_registrars()
        if here:
            remedy = (f"it is another `confsync register` on this host reading the same "
                      f"register.d ({here}); this one leaves the key to it until it stops: "
                      f"stop one of them")
        self.metrics.conflict(name, f"{event.detail}: {remedy}")
        log.error("register: another registrar with host name %r publishes %s on lease %x: %s",
                  self.host, event.key, event.lease, remedy,
                  extra={"key": event.key, "owner": self.host, "lease": f"{event.lease:x}"})

    def hold_register_d(self) -> None:
        """Take the shared lock on register.d; say so when another registrar here has it (this
        one takes their common keys over, and that one backs off)."""
        with contextlib.suppress(OSError, confdir_lock.Held):  # (shared: never held off)
            self.register_d = confdir_lock.try_lock(self.settings.confdir / "register.d",
                                                    exclusive=False)
        here = self.other_registrars()
        if here:
            log.warning("register: another `confsync register` on this host reads the same "
                        "register.d (%s); this one takes over the keys both publish, and that "
                        "one leaves them to it until this one stops", here)

    def other_registrars(self) -> str:
        """The other processes of this host holding register.d's lock ("" none)."""
        if self.register_d < 0:
            return ""
        try:
            holders = confdir_lock.holders_of(self.register_d)
        except OSError:
            return ""
        return ", ".join(h.describe() for h in holders if h.pid != os.getpid())

    def _detected_keys(self) -> list[str]:
        return [s.registration.key for s in self.instances.values()
                if s.registration.address_detected]

    def _address_changed(self, change: AddressChanged) -> None:
        """This host's address is another one: the registrations that name none publish the new
        one at once (a key absent now stays absent), and their checks derived from the address
        probe it; the checks keep their up/down state."""
        moved = [s for s in self.instances.values()
                 if s.registration.address_detected and s.registration.address != change.new]
        if not moved:
            return
        try:
            validate_instance(moved[0].registration.key,
                              moved[0].registration.with_address(change.new).value("ready",
                                                                                   self.host))
        except ValueError as exc:
            log.warning("register: this host's address is now %s, which cannot be published "
                        "(%s); still publishing %s", change.new, exc, change.old)
            return
        keys = [s.registration.key for s in moved]
        log.warning("register: this host's address changed from %s to %s; publishing %s for %s",
                    change.old, change.new, change.new, ", ".join(keys),
                    extra={"event": "register_address", "from": change.old, "to": change.new,
                           "keys": keys})
        self.registrar.reconnect()
        for state in moved:
            reg = state.registration = state.registration.with_address(change.new)
            for runner in self.runners:
                if runner.registration == reg.name and runner.spec.follows_address:
                    runner.spec = reg.checks[runner.index]  # read by its thread per probe
                    log.info("register: %s check %d now probes %s", reg.name, runner.index,
                             runner.spec.target)
            if state.published != ABSENT:
                self.registrar.want(reg.key, reg.value(state.published, self.host))
        warn_if_loopback(change.new, keys)

    def _stop(self, why: str) -> None:
        self.stopping = True
        self.metrics.stopping()
        self._notify("STOPPING=1")
        now = lease_clock.now()
        for state in self.instances.values():
            state.start_drain(now)
        # An instance whose exec child is gone leaves at once (nothing serves to drain).
        longest = max(((s.drain_until or now) - now for s in self.instances.values()
                       if not s.child_gone), default=0.0)
        self._stop_deadline = now + longest + STOP_GRACE
        if longest > 0:
            log.info("register: %s: draining for %.1fs, then deregistering", why, longest)
        else:
            log.info("register: %s: deregistering now", why)

    def _poll(self) -> None:
        now = lease_clock.now()
        self._paused(now)
        if self._init:
            children.reap_orphans()  # PID 1 of a container inherits every orphan
        for runner in self.runners:
            runner.revive()
            stalled = runner.stalled(now)
            if stalled is None:
                self._stall_reported.pop(runner, None)
            elif now - self._stall_reported.get(runner, 0.0) >= runner.spec.interval:
                # A failure per interval while it stays silent: `fall` of them take it down.
                self._stall_reported[runner] = now
                self._handle(stalled)
        self.registrar.revive()
        self.metrics.lease_until(self.registrar.lease_until())
        if self.address is not None:
            self.address.revive()
        for name, lookup in self.maintenance.items():
            lookup.revive()
            self._look_for_maintenance(self.instances[name], lookup, now)
        sup = self.supervisor
        if sup is not None:
            sup.poll()
            if sup.exited and not any(s.child_gone for s in self.instances.values()):
                for state in self.instances.values():
                    state.child_gone = True
                if not self.stopping:
                    self._stop("exec child exited")

    @staticmethod
    def _look_for_maintenance(state: InstanceState, lookup: MaintenanceLookup,
                              now: float) -> None:
        """A maintenance file that cannot be looked up (its directory made unreadable to us:
        the shipped unit runs without CAP_DAC_OVERRIDE; a hung mount) keeps the last known
        state, said once. The stat's error went out of the loop: the registrar died at every
        start and the healthy instance fell out of the pool over a directory's mode."""
        path = lookup.path
        exists, error = lookup.look(now)
        if exists is not None:
            state.maintenance = exists
        if error == state.maintenance_error:
            return
        if error is not None:
            log.warning("register: %s: cannot tell whether the maintenance file %s exists (%s); "
                        "keeping %s", state.registration.name, path, error,
                        "maintenance" if state.maintenance else "no maintenance")
        else:
            log.info("register: %s: the maintenance file %s can be looked up again",
                     state.registration.name, path)
        state.maintenance_error = error

    def _paused(self, now: float) -> None:
        """After a stop of the whole process, a check's silence is not a stuck probe.

        The registrar's clock (`lease_clock`) runs on while the process is stopped or the host
        suspended, so on SIGCONT or a resume every check looked silent for the whole stop, and
        the loop (usually first to wake) reported each as stuck before its thread could probe:
        with `fall = 1` a healthy instance was deleted and written again, a flap every
        consumer saw, though its lease was alive."""
        gap, self._last_poll = now - self._last_poll, now
        if gap < PAUSE_GAP:
            return
        log.warning("register: this process did not run for %.1fs (stopped: SIGSTOP, a paused "
                    "VM?); the checks' silence meanwhile does not count against them", gap,
                    extra={"event": "register_paused", "seconds": round(gap, 1)})
        for runner in self.runners:
            runner.excuse(now)

    def _publish(self) -> None:
        now = lease_clock.now()
        for state in self.instances.values():
            target, why = state.desired(now)
            self.metrics.explain(state.registration.name, why)
            if target == state.published:
                continue
            reg = state.registration
            log.info("register: %s %s: %s -> %s (%s)", reg.service, reg.instance_id,
                     state.published, target, why,
                     extra={"event": "register_state", "service": reg.service,
                            "id": reg.instance_id, "key": reg.key, "from": state.published,
                            "to": target, "reason": why})
            state.published = target
            self.metrics.published(reg, target)
            self.registrar.want(reg.key, None if target == ABSENT else reg.value(target,
                                                                                   self.host))
        self._update_status()

    def _stopped(self) -> bool:
        if any(s.published != ABSENT for s in self.instances.values()):
            return False
        now = lease_clock.now()
        if self._absent_since is None:
            self._absent_since = now
        # (writes refused: waiting for the deadline cannot help, as with etcd unreachable)
        if self.registrar.settled() or not self.registrar.connected \
                or self.registrar.writes_refused:
            return True
        return now >= min(self._stop_deadline, self._absent_since + SETTLE_WAIT)

    def _finish(self) -> int:
        """Deregistered first (the lease revoked through any member, within the stop's
        deadline), then the child stopped. Exit status: the child's, else 3 when etcd may
        still hold a key of ours (until the lease's TTL), else 0."""
        self._deregistering = True
        removed = self.registrar.close(timeout=max(0.0, self._stop_deadline - lease_clock.now()))
        status = 0
        if self.supervisor is not None:
            status = self.supervisor.stop()
            log.info("exec: child exited with status %d", status, extra={"status": status})
            if status == 128 + self.supervisor.policy.stop_signal and not removed:
                # Ended by the stop we sent it: its status says nothing, and the unit counts
                # it a success (SuccessExitStatus=143), so a stop that left our keys in etcd
                # until their TTL looked clean. Said as without --exec: 3.
                status = 0
        for runner in self.runners:
            runner.stop()
        for lookup in self.maintenance.values():
            lookup.stop()
        if self.address is not None:
            self.address.stop()
        return status or (EXIT_OK if removed else EXIT_STORE_UNAVAILABLE)

    # ---- sd_notify

    def _notify(self, *fields: str) -> None:
        if self.notifier is not None:
            self.notifier.send(*fields)

    def _beat(self) -> None:
        self.metrics.beat()
        if self.notifier is not None:
            self.notifier.flush()  # a READY=1 a full socket refused goes as soon as it can
        now = lease_clock.now()
        if self.watchdog is not None and now - self._last_ping >= self.watchdog:
            self._notify("WATCHDOG=1")
            self._last_ping = now

    def _update_status(self) -> None:
        parts = [f"{s.registration.name}={s.published}" for s in self.instances.values()]
        text = ("stopping; " if self.stopping else "") + " ".join(parts) + (
            "" if self.registrar.connected else "; etcd unreachable")
        if text != self._status:
            self._status = text
            self._notify(f"STATUS={text}")


def run_register(settings: Settings, hostname: str | None = None) -> int:
    if settings.backend != "etcd":
        raise ConfigError("backend", f"confsync register writes to etcd; backend is "
                          f"{settings.backend!r}")
    if not wait_until_filled(settings.confdir, "register.d", held_signals.stop_held):
        return EXIT_OK  # (stopped while waiting: nothing registered)
    host = hostname or os.environ.get(REGISTER_HOSTNAME_ENV) or socket.gethostname()
    # Asked once for every file that names no address: they all publish the same one.
    try:
        registrations = load_registrations(
            settings.confdir, settings.prefix, host, functools.cache(
                lambda: default_address(settings.etcd, held_signals.stop_held)))
    except StoppedWaiting:
        log.info("register: stopped while waiting to tell the local address; nothing was "
                 "registered")
        return EXIT_OK
    # Read before from_environ() unsets WATCHDOG_USEC: read after, it was always unset, so no
    # WATCHDOG=1 was ever sent: systemd killed the registrar (and an --exec child with it)
    # every WatchdogSec, 30 s in the shipped unit.
    watchdog = watchdog_interval()
    notifier = Notifier.from_environ()  # before the child starts: it must not inherit it
    metrics = RegisterMetrics(registrations)
    server = None
    if settings.metrics_address:
        server = MetricsServer.listen(metrics, settings.metrics_address)
    supervisor = None
    if settings.exec.command:
        policy = dataclasses.replace(policy_from_settings(settings.exec), restart=False)
        supervisor = Supervisor(policy)
    loop = RegisterLoop(settings, registrations, host, metrics, supervisor, notifier, watchdog)
    previous_hook, threading.excepthook = threading.excepthook, log_thread_death
    try:
        loop.listen_for_stop()
        loop.hold_register_d()
        loop.refuse_conflicts()
        try:
            return loop.run()
        except OSError as exc:
            if supervisor is not None and supervisor.pid is None:
                # Nothing registered. Not exit 2 ("fix the configuration"), which the unit
                # never restarts: a program not installed yet (a package still to come at
                # boot, a volume not mounted) is there at a later start. 127 as `watch
                # --exec` and a shell exit with; the unit starts it again.
                log.error("exec: %s; nothing registered",
                          cannot_run(settings.exec.command[0], exc))
                return EXIT_CANNOT_RUN
            raise
    finally:
        if supervisor is not None and supervisor.running:
            supervisor.stop()
        if server is not None:
            server.close()
        if notifier is not None:
            notifier.close()
        with contextlib.suppress(Exception):
            loop.store.close()
        threading.excepthook = previous_hook
