"""Which endpoint a new etcd client uses (`EtcdStore._first_up`), against fake connection
states: the first that connects from the rotation's, refused and silent ones passed in one
go, and those that did not connect tried after the others while they stay down."""

from __future__ import annotations

import time

import pytest

from confsync.settings import EtcdSettings
from confsync.stores import etcd
from confsync.stores.etcd import EtcdStore

A, B, C, D = (f"http://10.0.0.{i}:2379" for i in range(1, 5))
URLS = (A, B, C, D)
REFUSED, SILENT, UP = etcd._TRANSIENT_FAILURE, etcd._CONNECTING, etcd._READY


class _Endpoint:
    def __init__(self, url: str) -> None:
        self.channel = url  # (what the fake `_connection` is asked about)
        self.last_failed = 0.0
        self.idled = False
        self.fallback: tuple[str, float] | None = None

    def idle_again(self) -> None:
        self.idled = True

    def fail(self) -> None:
        self.last_failed = time.time()


@pytest.fixture
def states(monkeypatch: pytest.MonkeyPatch) -> tuple[dict[str, int], list[str]]:
    """Each endpoint's connection state, and the endpoints asked in order."""
    state = dict.fromkeys(URLS, UP)
    asked: list[str] = []

    def connection(channel: str, wait: float, stop: object = None) -> int:
        asked.append(channel)
        return state[channel]

    monkeypatch.setattr(etcd, "_connection", connection)
    return state, asked


def _store() -> tuple[EtcdStore, list[_Endpoint]]:
    store = EtcdStore(EtcdSettings(endpoints=URLS))
    store._last_urls = URLS  # (what new_client records)
    return store, [_Endpoint(u) for u in URLS]


def test_dead_and_silent_endpoints_are_passed_in_one_go_and_tried_last_after(
        states: tuple[dict[str, int], list[str]]) -> None:
    state, asked = states
    state[A], state[B] = REFUSED, SILENT
    store, endpoints = _store()
    assert store._first_up(endpoints, URLS, 1.0) is endpoints[2]
    assert asked == [A, B, C]
    assert endpoints[0].last_failed and endpoints[1].last_failed  # (the client skips them)
    asked.clear()
    assert store._first_up(endpoints, URLS, 1.0) is endpoints[2]  # (the one in use)
    assert asked == [C]
    asked.clear()
    store.endpoint_failed()  # C failed a call: the next client starts at D
    state[D] = REFUSED
    assert store._first_up(endpoints, URLS, 1.0) is endpoints[2]
    assert asked == [D, C]  # (A and B, down a moment ago, come after C: not waited for)
    assert not store._all_down()


def test_when_none_connects_the_first_still_connecting_is_used_else_the_first(
        states: tuple[dict[str, int], list[str]]) -> None:
    state, _ = states
    state.update({A: REFUSED, B: SILENT, C: REFUSED, D: SILENT})
    store, endpoints = _store()
    chosen = store._first_up(endpoints, URLS, 1.0)
    assert chosen is endpoints[1] and chosen.last_failed == 0  # (a slow link may finish it)
    assert store._all_down()  # (the watch and the snapshot stop: the backoff is next)
    state.update({B: REFUSED, D: REFUSED})
    store, endpoints = _store()
    chosen = store._first_up(endpoints, URLS, 1.0)
    assert chosen is endpoints[0] and chosen.last_failed == 0  # (its calls say why)
    assert store._all_down()


def test_an_endpoint_found_silent_is_no_fallback_a_refused_one_is(
        states: tuple[dict[str, int], list[str]]) -> None:
    """Found silent (its connection not up within etcd.timeout when its client closed): a
    call on it only times out. The first refused one is used (it fails at once, saying
    why); with none, the client is not made; once it connects it is no longer silent."""
    state, _ = states
    state.update({A: SILENT, B: REFUSED, C: SILENT, D: REFUSED})
    store, endpoints = _store()
    store._silent = {A: time.monotonic()}
    chosen = store._first_up(endpoints, URLS, 1.0)
    assert chosen is endpoints[2] and chosen.fallback == (C, pytest.approx(time.monotonic(),
                                                                           abs=1))
    store._silent[C] = time.monotonic()
    store._use(0)
    assert store._first_up(endpoints, URLS, 1.0) is endpoints[1]  # (refused: fails at once)
    state.update({B: SILENT, D: SILENT})
    store._silent.update(dict.fromkeys((B, D), time.monotonic()))
    with pytest.raises(etcd._AllSilent):
        store._first_up(endpoints, URLS, 1.0)
    state[C] = UP
    assert store._first_up(endpoints, URLS, 1.0) is endpoints[2]
    assert C not in store._silent_now()


def test_an_endpoint_that_connects_again_is_no_longer_down(
        states: tuple[dict[str, int], list[str]]) -> None:
    state, asked = states
    state[A] = REFUSED
    store, endpoints = _store()
    assert store._first_up(endpoints, URLS, 1.0) is endpoints[1]
    state[A] = UP
    store._use(0)
    asked.clear()
    assert store._first_up(endpoints, URLS, 1.0) is endpoints[1]  # (A down: tried last)
    assert asked == [B]
    store._down.clear()  # (DOWN_SECONDS later)
    asked.clear()
    store._use(0)
    assert store._first_up(endpoints, URLS, 1.0) is endpoints[0]
    assert asked == [A]
    assert A not in store._down_now()



def test_silent_endpoints_listed_first_cost_the_connect_wait_once_not_once_each(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Two silent endpoints before a live one, waited for in turn, cost a registrar with a
    3 s lease (its calls, connect wait included, limited to 1 s) 2 s, and its lease lapsed.
    The first one's connection gets a head start; then every other one's is begun too, and
    the wait is shared. Those not used are made idle again (one connection a client)."""
    state = {A: SILENT, B: SILENT, C: UP, D: UP}
    begun: list[str] = []
    waits: list[float] = []

    def connection(channel: str, wait: float, stop: object = None) -> int:
        waits.append(wait)
        if state[channel] == SILENT:
            time.sleep(wait)  # (what a silent one costs: the whole wait)
        return state[channel]

    monkeypatch.setattr(etcd, "_connection", connection)
    monkeypatch.setattr(etcd, "_begin_connection", begun.append, raising=False)
    store, endpoints = _store()
    started = time.monotonic()
    assert store._first_up(endpoints, URLS, 0.5) is endpoints[2]
    spent = time.monotonic() - started
    assert sum(waits) <= 0.5 + 0.01 and spent < 0.8, (waits, spent)
    assert begun == [B, C, D]
    assert [e.idled for e in endpoints] == [True, True, False, True]


def test_a_first_endpoint_that_connects_is_the_only_connection_made(
        states: tuple[dict[str, int], list[str]], monkeypatch: pytest.MonkeyPatch) -> None:
    _, asked = states
    begun: list[str] = []
    monkeypatch.setattr(etcd, "_begin_connection", begun.append, raising=False)
    store, endpoints = _store()
    assert store._first_up(endpoints, URLS, 1.0) is endpoints[0]
    assert asked == [A] and begun == [] and not any(e.idled for e in endpoints)


class _Channel:
    """A gRPC channel's core, as `_judge_fallbacks` reads it."""

    def __init__(self, state: int) -> None:
        self._channel = self
        self.state = state

    def check_connectivity_state(self, try_to_connect: bool) -> int:
        return self.state


def test_a_fallback_is_silent_only_when_still_connecting_after_the_connect_budget() -> None:
    """A registrar's calls time out at ttl/3 (its store's etcd.timeout), and it keeps a
    connecting client for the configured etcd.timeout: a link slower than ttl/3 to connect
    is slow, not silent, until that budget has passed."""
    store = EtcdStore(EtcdSettings(endpoints=URLS, timeout=0.7), connect_budget=5.0)
    endpoint = _Endpoint(A)
    endpoint.channel = _Channel(SILENT)  # type: ignore[assignment]
    endpoint.fallback = (A, time.monotonic() - 2.0)
    store._judge_fallbacks([endpoint])
    assert not store._silent_now()  # (2 s: more than its calls' 0.7 s, within 5 s)
    endpoint.channel.state = UP  # type: ignore[attr-defined]
    endpoint.fallback = (A, time.monotonic() - 6.0)
    store._judge_fallbacks([endpoint])
    assert not store._silent_now()  # (it came up: slow)
    endpoint.channel.state = SILENT  # type: ignore[attr-defined]
    store._judge_fallbacks([endpoint])
    assert store._silent_now() == {A}
