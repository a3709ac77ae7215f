"""A user lookup that does not return (LDAP or sssd down) must not hold the watch loop.

getpwnam() ran on the loop's thread: one hung lookup stopped every resource, the heartbeat,
/health and systemd's watchdog ping, at the first write naming the user and at each 10-minute
look again. The system's lookup is given by the test here (a name that hangs until released);
the real daemon with a hung /etc/passwd is tests/integration/test_owner_lookup_hangs.py.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from confsync import owners
from confsync.errors import ResourceError
from confsync.handoff import BatchReceived
from confsync.outcome import Outcome, Status
from confsync.resources import Resource
from confsync.stores import Change, ChangeBatch
from confsync.watcher import StreamState
from tests.support.loop_daemon import iterate_until, one_key_daemon

# How long the fake lookup hangs at most: the old code, which waited for it, gets its answer
# after that (and so writes the file, where the test expects a failure) instead of hanging.
HANG_LIMIT = 15.0


class FakeUsers:
    """The system's users as the test sets them; a name in `hanging` blocks its lookup until
    `release()` (at most HANG_LIMIT)."""

    def __init__(self) -> None:
        self.ids: dict[str, int] = {}
        self.hanging: set[str] = set()
        self.released = threading.Event()
        self.calls: list[str] = []

    def getpwnam(self, name: str) -> SimpleNamespace:
        self.calls.append(name)
        if name in self.hanging:
            self.released.wait(HANG_LIMIT)
        return SimpleNamespace(pw_uid=self.ids[name])  # (KeyError: no such user)

    def release(self) -> None:
        self.released.set()


@pytest.fixture
def users(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeUsers]:
    fake = FakeUsers()
    monkeypatch.setattr(owners, "_known", {})
    monkeypatch.setattr(owners, "_asked", {}, raising=False)
    monkeypatch.setattr(owners, "_refreshing", {}, raising=False)
    monkeypatch.setattr(owners, "LOOKUP_PATIENCE", 0.5, raising=False)
    monkeypatch.setattr(owners, "_bounded", True, raising=False)  # (as `watch` sets it)
    monkeypatch.setattr(owners.pwd, "getpwnam", fake.getpwnam)
    yield fake
    fake.release()  # the lookup threads left hanging end, before the next test's names
    for thread in threading.enumerate():
        if thread.name in ("confsync-user-lookup", "confsync-group-lookup"):
            thread.join(5)


def _wait(condition: object, what: str) -> None:
    event = threading.Event()
    for _ in range(200):
        if callable(condition) and condition():
            return
        event.wait(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_a_hung_lookup_fails_in_time_and_starts_no_second_one(users: FakeUsers) -> None:
    users.ids["svc"] = 4711
    users.hanging.add("svc")
    with pytest.raises(LookupError) as raised:
        owners.user_id("svc")
    assert "looking up user 'svc' has not returned after 0.5s" in str(raised.value)
    for _ in range(5):  # each try while it hangs: no new lookup, no new thread
        with pytest.raises(LookupError, match="has not returned"):
            owners.user_id("svc")
    assert users.calls == ["svc"]
    assert [t.name for t in threading.enumerate()].count("confsync-user-lookup") == 1
    users.release()
    _wait(lambda: owners._known.get(("user", "svc")) is not None, "the late answer kept")
    assert owners.user_id("svc") == 4711 and users.calls == ["svc"]


def test_a_name_asked_while_another_hangs_waits_less(
        users: FakeUsers, monkeypatch: pytest.MonkeyPatch) -> None:
    """The directory service is hung for every name: the second name's lookup is given
    STUCK_PATIENCE, not the whole patience again (twenty names held the loop 20 times)."""
    users.ids.update(a=1, b=2)
    users.hanging.update({"a", "b"})
    with pytest.raises(LookupError, match=r"after 0\.5s"):
        owners.user_id("a")
    with pytest.raises(LookupError, match=r"after 0\.2s"):
        owners.user_id("b")


def test_the_look_again_waits_for_no_lookup(
        users: FakeUsers, monkeypatch: pytest.MonkeyPatch) -> None:
    users.ids["svc"] = 4711
    assert owners.user_id("svc") == 4711
    monkeypatch.setattr(owners, "REFRESH", 0.0)
    users.hanging.add("svc")
    users.ids["svc"] = 4712
    for _ in range(5):  # heartbeats while its lookup hangs: nothing moved, one lookup
        assert owners.changed() == {}
        assert owners.user_id("svc") == 4711  # (the id known meanwhile)
    assert users.calls == ["svc", "svc"]
    users.release()
    moved: dict[tuple[str, str], str] = {}
    _wait(lambda: moved.update(owners.changed()) or moved, "the answer at a heartbeat")
    assert moved == {("user", "svc"): "user 'svc' is now id 4712 (it was 4711)"}


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another id needs root")
def test_the_loop_goes_on_while_an_owner_lookup_hangs(users: FakeUsers, tmp_path: Path) -> None:
    """Through the daemon's loop: the resource naming the hung user fails at step `owner`,
    saying which name and how long; its dest is left as it was; another resource is written
    meanwhile, at a data change; once the lookup answers, the retry writes it."""
    users.ids["svc"] = 47113
    daemon = one_key_daemon(tmp_path)
    other, dest = tmp_path / "out", tmp_path / "svc.out"
    dest.write_text("before\n")
    (tmp_path / "cd" / "conf.d" / "svc.toml").write_text(
        f'[template]\nsrc = "a.tmpl"\ndest = "{dest}"\nkeys = ["/a"]\nowner = "svc"\n')
    users.hanging.add("svc")
    failed: list[ResourceError] = []
    real_apply = daemon.apply

    def apply(resources: list[Resource]) -> list[Outcome]:
        outcomes = real_apply(resources)
        failed.extend(o.error for o in outcomes if o.status is Status.FAILED and o.error)
        return outcomes

    daemon.apply = apply  # type: ignore[method-assign]
    try:
        daemon.reload_config()
        daemon._handle(StreamState(True, 5))
        iterate_until(daemon, lambda: failed, "the failed apply")
        assert [(e.resource, e.step) for e in failed] == [("svc", "owner")]
        assert "looking up user 'svc' has not returned after" in str(failed[0])
        assert dest.read_text() == "before\n"
        daemon._handle(BatchReceived(ChangeBatch(6, (Change("/a/n", b"1"),), "/a")))
        iterate_until(daemon, lambda: other.read_text() == "1\n", "the other resource")
        assert not users.released.is_set()  # (the failures were not its late answer)
        assert dest.read_text() == "before\n" and users.calls == ["svc"]
        users.release()
        iterate_until(daemon, lambda: dest.read_text() == "1\n", "the retry, answered")
        assert dest.stat().st_uid == 47113 and users.calls == ["svc"]
    finally:
        daemon.store.close()
