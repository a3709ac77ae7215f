from __future__ import annotations

import pytest

from confsync import filters
from confsync.filters import InvalidValue


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
           "x" * 10_000, "-rf", "a;b", "../etc", "80\n"]


@pytest.mark.parametrize("fn", [filters.ipaddr, filters.port, filters.identifier,
                                filters.hostport, filters.urlpath, filters.filepath])
@pytest.mark.parametrize("value", HOSTILE)
def test_hostile_values_rejected(fn, value: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidValue, match="expected"):
        fn(value)


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
