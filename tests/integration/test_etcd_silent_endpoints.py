"""When no endpoint is up, one found silent is not waited on again (for DOWN_SECONDS).

A new client whose endpoints all failed to come up within the connect wait used the first
still connecting (a slow link's connection comes up within its calls' timeout), and each
attempt waited that timeout on a silent one on top of the wait: 1 s + etcd.timeout a try,
while a refused endpoint fails at once. One whose connection had still not come up when its
client was closed, etcd.timeout after it began, is silent, not slow: the next attempts use a
refused one, or, with none, fail after the connect wait. Real gRPC, a real etcd member killed
(refused) and restarted, and black holes (they accept and never answer)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from confsync.errors import StoreUnavailable
from confsync.settings import EtcdSettings
from confsync.stores.etcd import EtcdStore
from tests.support.black_hole import black_holes
from tests.support.etcd_client import client
from tests.support.etcd_server import EtcdMember
from tests.support.tcp_proxy import TcpProxy

pytestmark = [pytest.mark.etcd]

TIMEOUT = 3.0  # etcd.timeout: a try waited 1 s + this on a silent endpoint
# A try once the silent one is known: the 1 s connect wait; generous for a loaded machine,
# well short of the 4 s the old code took.
KNOWN_SILENT_MAX = 2.5


def _failed_try(store: EtcdStore) -> tuple[float, str]:
    """One snapshot that fails: (its duration, its error)."""
    started = time.monotonic()
    with pytest.raises(StoreUnavailable) as failed:
        store.snapshot(["/silent/"])
    return time.monotonic() - started, str(failed.value)


def _serves_within(endpoint: str, seconds: float) -> float:
    """Seconds until a plain client of its own reads from `endpoint`."""
    started = time.monotonic()
    while True:
        try:
            client(endpoint, timeout=2.0).get("/silent/x")
            return time.monotonic() - started
        except Exception:
            if time.monotonic() - started >= seconds:
                raise
            time.sleep(0.2)


def _snapshot_within(store: EtcdStore, seconds: float) -> int:
    """The revision of the first snapshot read within `seconds` (StoreUnavailable if none)."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            return store.snapshot(["/silent/"]).revision
        except StoreUnavailable:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.1)


def test_a_silent_endpoint_costs_its_timeout_once_while_the_others_refuse(
        etcd_private: EtcdMember, tmp_path: Path) -> None:
    # Serving first: the fixture returns once the port is open, and an etcd killed before it
    # had bootstrapped its new data directory came back taking connections and answering
    # none, for good (at load 4; CI failed twice on it).
    _serves_within(etcd_private.endpoint, 30.0)
    etcd_private.kill()  # (refused: nothing listens)
    with black_holes(1) as silent:
        store = EtcdStore(EtcdSettings(endpoints=(*silent, etcd_private.endpoint),
                                       timeout=TIMEOUT))
        try:
            first, _ = _failed_try(store)  # (a slow link would have come up in this)
            tries = [_failed_try(store) for _ in range(2)]
            print(f"tries while down: {first:.2f}s, then "
                  f"{', '.join(f'{took:.2f}s' for took, _ in tries)}")
            assert first >= TIMEOUT, first
            for took, error in tries:
                assert took < KNOWN_SILENT_MAX, f"a try took {took:.2f}s: {error}"
                assert "refused" in error.lower() or "failed to connect" in error, error
            etcd_private.start()
            # Back once etcd serves again (its port opens before it has elected itself), not
            # after the silent one's 60 s.
            served = _serves_within(etcd_private.endpoint, 30.0)
            print(f"etcd served again {served:.1f}s after its restart")
            assert _snapshot_within(store, 20.0) >= 1
        finally:
            store.close()


def test_when_every_endpoint_is_silent_a_try_ends_after_the_connect_wait(
        tmp_path: Path) -> None:
    with black_holes(2) as silent:
        store = EtcdStore(EtcdSettings(endpoints=tuple(silent), timeout=TIMEOUT))
        try:
            # (The first try marks the first one silent, the second the other one.)
            first, second = _failed_try(store), _failed_try(store)
            took, error = _failed_try(store)
            print(f"tries: {first[0]:.2f}s, {second[0]:.2f}s, then {took:.2f}s")
            assert took < KNOWN_SILENT_MAX, f"a try took {took:.2f}s: {error}"
            assert "silent" in error, error
        finally:
            store.close()


def test_a_link_slower_than_the_connect_wait_is_not_taken_for_a_silent_one(
        etcd: EtcdMember) -> None:
    """A round trip of 1.2 s: the connection comes up after the 1 s connect wait, within
    the calls' timeout. Its client, closed after etcd.timeout, finds it up: not silent, and
    every new client uses it again (one found silent alone would fail after the wait)."""
    timeout = 4.0
    proxy = TcpProxy(etcd.client_port, latency=0.6)
    store = EtcdStore(EtcdSettings(endpoints=(proxy.endpoint,), timeout=timeout))
    try:
        for _ in range(2):
            made = time.monotonic()
            client = store.new_client()
            try:
                while time.monotonic() - made <= timeout:  # (judged when closed: old enough)
                    assert client.status().version
            finally:
                client.close()
    finally:
        store.close()
        proxy.close()
