"""An owner's id is looked up again now and then, not kept for the daemon's life (pure loop
logic: the daemon fed its queue's events by hand, the name lookup given by the test).

A user deleted and made again (a package purged and installed again, a move to LDAP) has
another id; a `watch` of months went on writing its files with the old one, and after the
user was gone too, with /ready 200."""

from __future__ import annotations

import os
import pwd
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest

from confsync import owners
from confsync.daemon import Daemon
from confsync.errors import ResourceError
from confsync.outcome import Outcome
from confsync.resources import Resource
from confsync.watcher import StreamState
from tests.support.loop_daemon import one_key_daemon

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="chown to another id needs root")


@pytest.fixture
def ids(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """The system's users as the test sets them (name -> uid; a name missing: no such user)."""
    users: dict[str, int] = {}

    def getpwnam(name: str) -> SimpleNamespace:
        return SimpleNamespace(pw_uid=users[name])  # (KeyError: no such user)

    monkeypatch.setattr(owners, "_known", {})
    monkeypatch.setattr(pwd, "getpwnam", getpwnam)
    return users


def _daemon(tmp_path: Path) -> tuple[Daemon, Path]:
    daemon = one_key_daemon(tmp_path, 'owner = "svc"\n')
    daemon._handle(StreamState(True, 5))
    return daemon, tmp_path / "out"


def _heartbeats_until(daemon: Daemon, done: Callable[[], object], what: str) -> None:
    deadline = time.monotonic() + 20
    while not done():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        daemon._last_beat = 0.0  # (each iteration a heartbeat)
        daemon._iterate()


def test_an_owner_made_again_with_another_id_gets_its_file_without_a_change(
        tmp_path: Path, ids: dict[str, int], monkeypatch: pytest.MonkeyPatch) -> None:
    ids["svc"] = 47111
    daemon, dest = _daemon(tmp_path)
    try:
        assert dest.read_text() == "0\n" and dest.stat().st_uid == 47111
        ids["svc"] = 47112
        daemon._last_beat = 0.0
        daemon._iterate()  # a heartbeat
        assert dest.stat().st_uid == 47111  # (looked up again only after owners.REFRESH)
        monkeypatch.setattr(owners, "REFRESH", 0.0, raising=False)
        _heartbeats_until(daemon, lambda: dest.stat().st_uid == 47112, "the new id")
        assert dest.read_text() == "0\n"

        del ids["svc"]  # gone: failing, said, not chowned to an id nobody has
        failed: list[ResourceError] = []
        real_apply = daemon.apply

        def apply(resources: list[Resource]) -> list[Outcome]:
            outcomes = real_apply(resources)
            failed.extend(o.error for o in outcomes if o.error is not None)
            return outcomes

        monkeypatch.setattr(daemon, "apply", apply)
        _heartbeats_until(daemon, lambda: failed, "the failed apply")
        assert failed[0].step == "owner" and "no such user 'svc'" in str(failed[0])
        assert dest.stat().st_uid == 47112
    finally:
        daemon.store.close()
