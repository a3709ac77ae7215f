"""Whether a runtime pass reached the worker HAProxy goes on serving with.

A reload by someone else (`systemctl reload`, a certificate renewal's hook) whose new worker
read the file before a runtime pass installed the next one runs the older pool, while the
pass's commands and their read-back went to the worker it replaces: HAProxy then served the
older pool until etcd changed that pool again, `/ready` 200 all along (measured on 2.6.12: an
instance added while a configuration loaded for 1-2 s was never served). A new worker that read
the file but not yet the server-state file saved for it serves a moved server at its old
address (2.6 lets the state file override the configuration's).

So when a pass ends, the worker answering on the admin socket must be the one that answered
when it began, and the master's current one (`show proc`), and the master must answer (2.6's
does not while it loads a reload; 3.1+ lists the loading worker as current). Otherwise the
caller reloads: a confirmed reload waits for the other one, and its worker reads the file and
the server state saved for it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from confsync.haproxy.master_cli import ReloadNotConfirmed, show_proc
from confsync.haproxy.runtime import AdminSocket, RuntimeApplyFailed, Worker, worker_identity
from confsync.haproxy.sockets import SocketUnavailable


def worker_left(admin: AdminSocket, before: Worker | None, master: Path | None,
                master_stopped: Callable[[], bool], timeout: float) -> str | None:
    """Why the pass that began with worker `before` on `admin` may not be what HAProxy
    serves; None when the same worker answers and is the master's current one.
    `master_stopped()`: the master is stopped (SIGSTOP): it reloads nothing, and its workers
    take runtime changes meanwhile (it is not asked then: it would not answer)."""
    try:
        after = worker_identity(admin)
    except RuntimeApplyFailed as exc:
        return f"the admin socket stopped answering after the runtime commands ({exc})"
    if before is None or after is None:
        return None  # (it does not say its pid: nothing to tell workers apart by)
    if after != before:  # (a pid that came back after a restart: another start time)
        return (f"HAProxy was reloaded during the runtime commands (worker {before.pid} took "
                f"them, worker {after.pid} answers now)")
    if master is None or master_stopped():
        return None
    try:
        status = show_proc(master, retry_for=0.0, timeout=timeout)
    except SocketUnavailable:
        if master_stopped():  # (stopped while asked)
            return None
        return "HAProxy is being reloaded (its master CLI does not answer)"
    except ReloadNotConfirmed:
        return None  # (something answers there, not as a master: the reload path says so)
    if status.worker is not None and status.worker != after.pid:
        return (f"HAProxy's master runs worker {status.worker}, not worker {after.pid} that took "
                "the runtime commands (a reload under way, or an admin socket of another "
                "HAProxy)")
    return None
