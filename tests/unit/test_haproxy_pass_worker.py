"""When a runtime pass may not be what HAProxy serves (pure logic: HAProxy's answers faked;
the real race is in tests/integration/test_haproxy_reload_race.py)."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from confsync.haproxy import pass_worker
from confsync.haproxy.master_cli import MasterStatus
from confsync.haproxy.runtime import AdminSocket, RuntimeApplyFailed, Worker
from confsync.haproxy.sockets import SocketUnavailable

ADMIN = AdminSocket(Path("/nonexistent/admin.sock"))
MASTER = Path("/nonexistent/master.sock")


def _haproxy(monkeypatch: pytest.MonkeyPatch, admin: int | Exception,
             master: MasterStatus | Exception, started: int = 100) -> None:
    """`admin`: the pid of the worker answering there (started at `started`), or its error."""
    def answer(value: object) -> object:
        if isinstance(value, Exception):
            raise value
        return value

    monkeypatch.setattr(pass_worker, "worker_identity", lambda _: answer(
        admin if isinstance(admin, Exception) else Worker(admin, started)))
    monkeypatch.setattr(pass_worker, "show_proc", lambda *_, **__: answer(master))


@pytest.mark.parametrize("admin,master,said", [
    (7, MasterStatus(1, 3, 0, worker=7), None),
    (8, MasterStatus(1, 4, 0, worker=8), "worker 7 took them, worker 8 answers now"),
    (7, MasterStatus(1, 4, 0, worker=9, old_workers=(7,)), "master runs worker 9, not"),
    (7, SocketUnavailable(errno.ECONNREFUSED, "refused"), "master CLI does not answer"),
    (RuntimeApplyFailed("refused"), MasterStatus(1, 3, 0, worker=7), "stopped answering"),
], ids=["same", "reloaded", "loading-3.x", "loading-2.6", "admin-gone"])
def test_the_pass_must_end_on_the_worker_it_began_on_and_the_masters(
        monkeypatch: pytest.MonkeyPatch, admin: int | Exception,
        master: MasterStatus | Exception, said: str | None) -> None:
    _haproxy(monkeypatch, admin, master)
    left = pass_worker.worker_left(ADMIN, Worker(7, 100), MASTER, lambda: False, 1.0)
    assert (left is None) if said is None else (left is not None and said in left), left


def test_a_worker_of_the_same_pid_started_later_is_another_worker(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """HAProxy restarted during the pass, its worker given the old pid again (a container's
    pid namespace does so every time): the start time tells them apart."""
    _haproxy(monkeypatch, 7, MasterStatus(1, 0, 0, worker=7), started=160)
    left = pass_worker.worker_left(ADMIN, Worker(7, 100), MASTER, lambda: False, 1.0)
    assert left is not None and "reloaded during the runtime commands" in left, left


def test_a_stopped_master_is_not_asked_and_its_workers_take_the_pass(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A master stopped (SIGSTOP) accepts the connection and never answers: asked, each
    pass would wait a second and then reload into a master that cannot."""
    _haproxy(monkeypatch, 7, AssertionError("a stopped master was asked"))
    assert pass_worker.worker_left(ADMIN, Worker(7, 100), MASTER, lambda: True, 1.0) is None
    assert pass_worker.worker_left(ADMIN, Worker(7, 100), None, lambda: False, 1.0) is None
