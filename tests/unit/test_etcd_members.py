"""Which members' URLs the etcd store learns (`EtcdStore.learn_members`), against a fake
MemberList: the configured endpoints first, never a list that does not name one in use."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from confsync.errors import EndpointNotNamed, StoreUnavailable
from confsync.settings import EtcdSettings
from confsync.stores.etcd import EtcdStore


@dataclass
class _Member:
    clientURLs: list[str]  # (etcd's protobuf field names)
    isLearner: bool = False


@dataclass
class _Stub:
    members: list[_Member] = field(default_factory=list)
    fail: bool = False

    def MemberList(self, *args: Any, **kwargs: Any) -> Any:
        if self.fail:
            raise ConnectionError("etcd down")
        return self


class _Client:
    timeout = 1.0
    call_credentials = None
    metadata = ()

    def __init__(self, *urls: str, learners: tuple[str, ...] = ()) -> None:
        self.clusterstub = _Stub([_Member([u]) for u in urls]
                                 + [_Member([u], isLearner=True) for u in learners])


def _store(*endpoints: str) -> EtcdStore:
    return EtcdStore(EtcdSettings(endpoints=endpoints))


A, B, C = "http://10.0.0.1:2379", "http://10.0.0.2:2379", "http://10.0.0.3:2379"


def test_members_are_tried_after_the_configured_endpoints() -> None:
    store = _store(A)
    store.learn_members(_Client(B, A, learners=(C,)), fresh=True)
    assert store.endpoint_urls() == (A, B)


def test_replaced_members_are_followed_through_learned_ones() -> None:
    store = _store(A)
    store.learn_members(_Client(A, B), fresh=True)
    store.learn_members(_Client(B, C), fresh=True)  # A removed; we talk to B, learned
    assert store.endpoint_urls() == (A, B, C)


def test_a_list_naming_no_endpoint_in_use_is_ignored() -> None:
    """A gRPC proxy that passes etcd's own member list on: its members are not ours to use."""
    store = _store("http://proxy:23790")
    store.learn_members(_Client(A, B), fresh=True)
    assert store.endpoint_urls() == ("http://proxy:23790",)


def test_only_the_configured_scheme_and_failures_change_nothing() -> None:
    store = _store("https://10.0.0.1:2379")
    store.learn_members(_Client("https://10.0.0.1:2379", B, "https://10.0.0.3:2379"),
                        fresh=True)
    assert store.endpoint_urls() == ("https://10.0.0.1:2379", "https://10.0.0.3:2379")
    broken = _Client()
    broken.clusterstub.fail = True
    store.learn_members(broken, fresh=True)
    assert store.endpoint_urls() == ("https://10.0.0.1:2379", "https://10.0.0.3:2379")


def test_asked_at_most_every_refresh_period_unless_fresh() -> None:
    store = _store(A)
    store.learn_members(_Client(A), fresh=True)
    store.learn_members(_Client(A, B))  # within the period: not asked
    assert store.endpoint_urls() == (A,)
    store.learn_members(_Client(A, B), fresh=True)
    assert store.endpoint_urls() == (A, B)


def test_not_with_srv_records() -> None:
    store = EtcdStore(EtcdSettings(srv_domain="example.com"))
    store.learn_members(_Client(A, B), fresh=True)
    assert store._members == ()


class _Records:
    """The SRV records' answer (`LastAnswer`): the URLs they name now, or a failed lookup."""

    def __init__(self, *urls: str) -> None:
        self.urls = urls

    def endpoints(self) -> tuple[str, ...]:
        if not self.urls:
            raise StoreUnavailable("DNS SRV lookup failed")
        return self.urls


class _InUse:
    def __init__(self, netloc: str) -> None:
        self.endpoint_in_use = type("E", (), {"netloc": netloc})()


def _srv_store(*urls: str) -> EtcdStore:
    store = EtcdStore(EtcdSettings(srv_domain="etcd.example"))
    store._srv_answer = _Records(*urls)  # type: ignore[assignment]
    return store


def test_records_that_moved_away_from_the_member_in_use_say_so() -> None:
    """Records moved to other members while the one in use still serves: a connection that
    never fails would follow it for good."""
    with pytest.raises(EndpointNotNamed, match="is no longer named by the DNS SRV records"):
        _srv_store(B, C).learn_members(_InUse("10.0.0.1:2379"))
    _srv_store(B, A).learn_members(_InUse("10.0.0.1:2379"))  # still named
    _srv_store(B).learn_members(_InUse("10.0.0.1:2379"), fresh=True)  # made from them just now
    _srv_store().learn_members(_InUse("10.0.0.1:2379"))  # DNS failing cuts no connection
