"""The registrar's thread against a fake etcd client: it never stays dead."""

from __future__ import annotations

import itertools
import threading
import time
from typing import Any

import pytest

from confsync.register.registrar import Registrar, RegistrarEvent


class _Client:
    """Enough of the etcd3 client for a registrar with nothing to publish."""

    def __init__(self, up: threading.Event) -> None:
        self._up = up

    def status(self) -> object:
        if not self._up.is_set():
            raise ConnectionError("etcd down")
        return object()

    def close(self) -> None:
        pass


def _wait(predicate: Any, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return False


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_thread_killed_by_a_bug_is_started_again_by_revive() -> None:
    up = threading.Event()
    events: list[RegistrarEvent] = []

    def report(event: RegistrarEvent) -> None:
        events.append(event)
        if event.kind == "lost" and len([e for e in events if e.kind == "lost"]) == 1:
            raise RuntimeError("a bug in an event handler")

    def new_client() -> _Client:
        if not up.is_set():
            raise ConnectionError("etcd down")
        return _Client(up)

    registrar = Registrar(new_client, "node-a", 3, report)
    registrar.connected = True  # so the first failure reports "lost" (and the bug fires)
    registrar.start()
    try:
        assert _wait(lambda: not registrar._thread.is_alive()), "the bug kills the thread"
        up.set()
        registrar.revive()
        assert _wait(lambda: registrar.connected), "revived: connected again"
        assert any(e.kind == "connected" for e in events)
    finally:
        registrar.close(timeout=2)
    registrar.revive()  # closing: nothing is started again
    assert not registrar._thread.is_alive()


def test_registrars_retry_an_unreachable_etcd_out_of_step() -> None:
    """A fleet that lost etcd together must not hammer it together when it is back: the
    retry delays are jittered (they used to double exactly, in lockstep across nodes)."""
    calls: list[list[float]] = [[], []]

    def unreachable(log: list[float]) -> Any:
        def new_client() -> Any:
            log.append(time.monotonic())
            raise ConnectionError("etcd down")
        return new_client

    registrars = [Registrar(unreachable(log), "node-a", 9, lambda event: None)
                  for log in calls]
    for r in registrars:
        r.start()
    try:
        assert _wait(lambda: min(len(c) for c in calls) >= 5, timeout=10)
    finally:
        for r in registrars:
            r.close(timeout=2)
    gaps = [[b - a for a, b in itertools.pairwise(c)][:4] for c in calls]
    assert all(g <= 3.0 + 0.1 for g in gaps[0] + gaps[1]), "capped at ttl/3"
    assert max(abs(a - b) for a, b in zip(gaps[0], gaps[1], strict=True)) > 0.01, gaps


def test_reconnect_drops_the_client_and_makes_a_new_one_at_once() -> None:
    """After an address change the connection made from the old address may hang without a
    word: `reconnect` makes the next call on a new client instead of after a timeout."""
    up = threading.Event()
    up.set()
    made: list[_Client] = []
    closed: list[_Client] = []

    class Client(_Client):
        def close(self) -> None:
            closed.append(self)

    def new_client() -> _Client:
        made.append(Client(up))
        return made[-1]

    registrar = Registrar(new_client, "node-a", 30, lambda event: None)
    registrar.start()
    try:
        assert _wait(lambda: registrar.connected)
        assert len(made) == 1
        registrar.reconnect()
        assert _wait(lambda: len(made) == 2, timeout=0.5), "not after the idle wait (1 s)"
        assert closed == [made[0]]
    finally:
        registrar.close(timeout=2)


class _Meta:
    def __init__(self, lease: int) -> None:
        self.lease_id = lease


class _Leases:
    """get_lease_info of a fake etcd: the TTL left of each lease (-1: gone)."""

    def __init__(self, ttls: dict[int, int]) -> None:
        self.ttls = ttls

    def get_lease_info(self, lease: int) -> Any:
        return type("Info", (), {"TTL": self.ttls.get(lease, -1)})()


@pytest.mark.parametrize(("lease", "held", "value", "left", "conflict"), [
    (0, True, b"v", False, False),     # no lease: taken back (a restored backup, a hand edit)
    (7, True, b"v", False, False),     # our own lease
    (8, True, b"v", False, False),     # a lease of ours given up (still etcd's)
    (9, False, b"v", False, False),    # first write: an earlier run of this host, taken over
    (9, True, b"v", True, True),       # written before: a clone's live lease, left
    (9, True, None, True, True),       # ... and never deleted
    (9, False, None, True, False),     # an earlier run's key is left to its lease, no conflict
    (10, True, b"v", False, False),    # a lapsed lease: its key goes (or went) with it
])
def test_a_value_of_our_host_on_another_live_lease_is_left_once_the_key_was_written(
        lease: int, held: bool, value: bytes | None, left: bool, conflict: bool) -> None:
    """Two hosts with one host name (a cloned image): each took the key back from the other at
    every read-back, so the published value flipped every ttl/3 forever."""
    events: list[RegistrarEvent] = []
    registrar = Registrar(lambda: None, "node-a", 3, events.append)
    registrar._client = _Leases({7: 3, 8: 3, 9: 3, 10: -1})
    registrar._lease = 8
    registrar._forget_lease()  # 8: given up by our count
    registrar._lease = 7
    if held:
        registrar._held.add("/k")
    assert registrar._other_registrar("/k", _Meta(lease), value) is left
    conflicts = [e for e in events if e.kind == "conflict"]
    assert bool(conflicts) is conflict
    if conflict:
        assert conflicts[0].lease == 9 and "host name 'node-a' on lease 9" in conflicts[0].detail


class _Denied(Exception):
    """etcd's answer to a write the role may not make, as describe_error words it."""

    def code(self) -> Any:
        return type("Status", (), {"name": "PERMISSION_DENIED"})()

    def details(self) -> str:
        return "etcdserver: permission denied"


class _ReadOnlyClient(_Client):
    """An etcd that answers everything but refuses every write (a role with read only)."""

    transactions = type("T", (), {"version": staticmethod(lambda key: _Compare()),
                                  "put": staticmethod(lambda *a, **k: None),
                                  "get": staticmethod(lambda key: None)})()

    def lease(self, ttl: int) -> Any:
        return type("Lease", (), {"id": 7, "ttl": ttl})()

    def refresh_lease(self, lease: int) -> Any:
        return [type("Answer", (), {"TTL": 30})()]

    def transaction(self, **kwargs: Any) -> Any:
        raise _Denied()


class _Compare:
    def __eq__(self, other: object) -> Any:  # (builds a compare, as the library's does)
        return self

    __hash__ = object.__hash__


def test_writes_refused_for_permission_are_reported_as_such_not_as_etcd_unreachable() -> None:
    """etcd answers and refuses the write: the registrar is connected and says which key is
    refused and why. It reported "lost" (etcd unreachable, /ready "etcd not connected")."""
    up = threading.Event()
    up.set()
    events: list[RegistrarEvent] = []
    registrar = Registrar(lambda: _ReadOnlyClient(up), "node-a", 30, events.append)
    registrar.want("/reg/web-1", {"state": "ready"})
    registrar.start()
    try:
        assert _wait(lambda: any(e.kind == "refused" for e in events)), events
        refused = next(e for e in events if e.kind == "refused")
        assert refused.key == "/reg/web-1"
        assert refused.detail == "PERMISSION_DENIED: etcdserver: permission denied"
        assert registrar.connected and registrar.writes_refused
        assert not any(e.kind == "lost" for e in events), events
    finally:
        registrar.close(timeout=2)


def test_no_endpoint_left_is_said_in_words() -> None:
    """/ready said "NoServerAvailableError: No endpoint available and not failed" after a lease
    lapsed with etcd away."""
    import pyetcd.exceptions

    from confsync.errors import describe_error

    error = pyetcd.exceptions.NoServerAvailableError("No endpoint available and not failed")
    assert describe_error(error) == "no etcd endpoint answers: each one failed at its last try"


class _Recording:
    """An etcd holding our keys on lease 7; records each call. `on_read` runs at each read."""

    def __init__(self, values: dict[str, bytes], on_read: Any) -> None:
        self.values = values
        self.on_read = on_read
        self.calls: list[str] = []
        builders = {name: staticmethod(lambda *a, **k: _Compare())
                    for name in ("mod", "value", "version")}
        builders["delete"] = staticmethod(lambda key: ("delete", key))
        builders["get"] = staticmethod(lambda key: ("get", key))
        self.transactions = type("T", (), builders)()

    def get(self, key: str, serializable: bool = True) -> Any:
        self.calls.append(f"read {key}")
        self.on_read(len([c for c in self.calls if c.startswith("read")]))
        return self.values.get(key), type("Meta", (), {"lease_id": 7, "mod_revision": 1})()

    def transaction(self, compare: Any, success: Any, failure: Any) -> Any:
        self.calls.append(f"{success[0][0]} {success[0][1]}")
        header = type("H", (), {"revision": 2})()
        answer = type("R", (), {"response_delete_range": type("D", (), {"header": header})()})
        return True, [answer]


def test_a_change_asked_for_during_a_read_back_is_written_before_its_end() -> None:
    """A read-back goes one key at a time (60 keys over a 50 ms link: 4.5 s); a check that
    went down meanwhile waited for its end, its key "ready" in etcd all that time."""
    keys = [f"/k{i}" for i in range(6)]
    value = b'{"host": "node-a"}'
    registrar = Registrar(lambda: None, "node-a", 30, lambda event: None)
    registrar._lease = 7
    registrar._next_keepalive = float("inf")
    for key in keys:
        registrar._wanted[key] = registrar._written[key] = value
        registrar._revision[key] = (1, value)

    def on_read(count: int) -> None:
        if count == 2:
            registrar.want(keys[-1], None)  # the loop, on a check gone down

    client = _Recording(dict.fromkeys(keys, value), on_read)
    registrar._client = client
    registrar._verify()
    assert f"delete {keys[-1]}" in client.calls, client.calls
    assert client.calls.index(f"delete {keys[-1]}") < client.calls.index(f"read {keys[2]}"), \
        client.calls
