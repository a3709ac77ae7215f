from __future__ import annotations

import pytest

from confsync import filters
from confsync.filters import VALIDATING_FILTERS, InvalidValue


@pytest.mark.parametrize("fn,value,expected", [
    (filters.ipaddr, "10.0.0.1", "10.0.0.1"),
    (filters.ipaddr, "2001:DB8:0::1", "2001:db8::1"),
    (filters.port, "8080", 8080),
    (filters.port, 443, 443),
    (filters.addrport, ("2001:db8::1", 80), "[2001:db8::1]:80"),
    (filters.hostport, "[::1]:80", "[::1]:80"),
    (filters.hostport, "api.example.com:443", "api.example.com:443"),
    (filters.identifier, "web-1.a_b:c", "web-1.a_b:c"),
    (filters.urlpath, "/healthz?x=1", None),
    (filters.integer, "42", 42),
])
def test_valid(fn, value, expected) -> None:  # type: ignore[no-untyped-def]
    result = fn(*value) if isinstance(value, tuple) else fn(value)
    assert result == (value if expected is None else expected)


HOSTILE = ["10.0.0.1\nserver x 1.2.3.4:80", "10.0.0.1 backup", "10.0.0.1#x", "", " 80",
           "x" * 10_000, "-rf", "a;b", "../etc", "80\n", "fe80::1%eth0", "fe80::1%x;y #z",
           "[fe80::1%lo]:80", "127.0.0.\u0661", "1\u0662.0.0.1"]


@pytest.mark.parametrize("fn", [filters.ipaddr, filters.port, filters.identifier,
                                filters.hostport, filters.urlpath, filters.filepath])
@pytest.mark.parametrize("value", HOSTILE)
def test_hostile_values_rejected(fn, value: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidValue, match="expected"):
        fn(value)


def test_an_ipv6_zone_is_refused_saying_so() -> None:
    """Python's ipaddress keeps a zone (any text but `%`, spaces and `;` too) as part of the
    address; HAProxy 2.6 cannot load one, so one registration failed the whole file."""
    for fn in (filters.ipaddr, lambda v: filters.addrport(v, 80)):
        with pytest.raises(InvalidValue, match="without an IPv6 zone"):
            fn("fe80::1%eth0")
    assert filters.ipaddr("fe80::1") == "fe80::1"


def test_port_range_and_bounds() -> None:
    for bad in ("0", "65536", "+1", "1e3", "٣"):
        with pytest.raises(InvalidValue):
            filters.port(bad)
    with pytest.raises(InvalidValue, match="from 0 to 256"):
        filters.integer("300", 0, 256)
    with pytest.raises(InvalidValue, match="one of"):
        filters.oneof("evil", "roundrobin", "leastconn")


def test_array_takes_lists_and_refuses_everything_else() -> None:
    array = filters.array
    assert array(["a", "b"]) == ["a", "b"] and array(("a",)) == ["a"]
    for value in ("a.example.com", None, 3, {"a": 1}):
        with pytest.raises(InvalidValue, match="expected a list"):
            array(value)


def test_remembered_answers_follow_the_values_in_use(monkeypatch: pytest.MonkeyPatch) -> None:
    """Validators remember good answers, for re-renders. Instance addresses and ids that come
    and go over months must be forgotten once no render asks about them: a fixed-size cache
    per validator kept the last 65,536 of each for good (about 80 MB once full)."""
    import gc
    import time
    import tracemalloc

    from confsync import filters

    now = [time.monotonic()]
    monkeypatch.setattr(filters, "_clock", lambda: now[0], raising=False)
    hostport = filters.VALIDATING_FILTERS["hostport"]
    current = [f"10.9.0.{i}:8080" for i in range(5)]
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(20000):  # months of pods: each address seen for a while, then gone
            hostport(f"10.{i >> 16}.{(i >> 8) & 255}.{i & 255}:{8000 + i % 1000}")
        for step in range(3):  # later renders ask about the pool as it is now, as it changes
            now[0] += 601.0
            current.append(f"10.9.1.{step}:8080")
            for value in current:
                assert hostport(value) == value
        gc.collect()
        retained = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert retained < 100_000, f"{retained} bytes still held for 20,000 departed values"


def test_an_answer_for_1_is_never_taken_for_true() -> None:
    """JSON `true` where a port or a number belongs is refused, even right after the same
    address with port 1 (or the number 1) was accepted and remembered."""
    addrport = VALIDATING_FILTERS["addrport"]
    integer = VALIDATING_FILTERS["integer"]
    port = VALIDATING_FILTERS["port"]
    assert addrport("10.0.0.1", 1) == "10.0.0.1:1"
    assert integer(1, 0, 10) == 1
    assert port(1) == 1
    for call in (lambda: addrport("10.0.0.1", True), lambda: integer(True, 0, 10),
                 lambda: port(True)):
        with pytest.raises(InvalidValue):
            call()


def test_a_host_port_with_a_line_break_is_named_as_such() -> None:
    """Not "expected [IPv6]:port with brackets" for an injection attempt: the host is bad."""
    with pytest.raises(filters.InvalidValue, match=r"expected a host name or IP address.*\\n"):
        filters.hostport("10.0.0.9:80\nbackdoor 1.2.3.4:1")
    with pytest.raises(filters.InvalidValue, match=r"\[IPv6\]:port with brackets"):
        filters.hostport("2001:db8::1:80")
