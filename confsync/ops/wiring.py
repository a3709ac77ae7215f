"""The operational extras of `confsync watch`, built from settings in one place.

    ops = Ops.from_settings(settings)          # before anything forks: reads NOTIFY_SOCKET
    with ops:
        code = run_daemon(settings, cli_values, ops.observers)
        return ops.exit_code(code)             # exec mode: the child's status

Observer order matters: the exec child starts on `ready` before sd_notify says READY=1, and
metrics see an event after the state it describes.
"""

from __future__ import annotations

import logging
import os
import signal
from types import TracebackType

from confsync.ops.events import Observer
from confsync.ops.http import MetricsServer
from confsync.ops.metrics import Metrics
from confsync.ops.sdnotify import SystemdNotify
from confsync.ops.supervisor import Supervisor, policy_from_settings
from confsync.settings import Settings

log = logging.getLogger(__name__)


class Ops:
    def __init__(self, notify: SystemdNotify | None, metrics: Metrics | None,
                 server: MetricsServer | None, supervisor: Supervisor | None) -> None:
        self.notify = notify
        self.metrics = metrics
        self.server = server
        self.supervisor = supervisor

    @classmethod
    def from_settings(cls, settings: Settings) -> Ops:
        """sd_notify if systemd asked for it, metrics if `metrics_address` is set, and the
        supervisor if `exec.command` is. A metrics address that cannot be bound is a ConfigError
        (exit 2): better to fail at start than to run unobserved."""
        notify = SystemdNotify.from_environ()
        metrics = server = None
        if settings.metrics_address:
            metrics = Metrics()
            server = MetricsServer.listen(metrics, settings.metrics_address)
        supervisor = None
        if settings.exec.command:
            supervisor = Supervisor(policy_from_settings(settings.exec),
                                    on_give_up=lambda _why: os.kill(os.getpid(), signal.SIGTERM))
            supervisor.install_signal_handlers()
            if metrics is not None:
                metrics.track_exec(supervisor)
            if notify is not None:
                notify.track_exec(supervisor)
        return cls(notify, metrics, server, supervisor)

    @property
    def observers(self) -> list[Observer]:
        ordered: list[Observer | None] = [self.supervisor, self.notify, self.metrics]
        return [o for o in ordered if o is not None]

    def exit_code(self, daemon_code: int) -> int:
        """In exec mode confsync exits with the child's status (after stopping it)."""
        if self.supervisor is None:
            return daemon_code
        status = self.supervisor.stop()
        log.info("exec: child exited with status %d", status, extra={"status": status})
        return status if daemon_code == 0 else daemon_code

    def close(self) -> None:
        if self.supervisor is not None and self.supervisor.running:
            self.supervisor.stop()
        if self.server is not None:
            self.server.close()
        if self.notify is not None:
            self.notify.notifier.close()

    def __enter__(self) -> Ops:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
