"""confd's template functions under confd's names, with Go's semantics, in ordinary templates."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from confsync import confd_funcs as f
from confsync.errors import ResourceError
from tests.support.gorender import render_jinja


def test_integer_arithmetic_is_gos() -> None:
    assert (f.div(-7, 2), f.mod(-7, 2), f.div(7, -2), f.mod(7, -2)) == (-3, -1, -3, 1)
    assert (f.add(2, 3), f.sub(2, 3), f.mul(2, 3)) == (5, -1, 6)
    assert f.seq(3, 5) == [3, 4, 5] and f.seq(5, 3) == []
    with pytest.raises(f.TemplateFunctionError, match="divide by zero"):
        f.div(1, 0)
    with pytest.raises(f.TemplateFunctionError, match="expected an integer"):
        f.add("1", 2)  # type: ignore[arg-type]


@pytest.mark.parametrize("text, value", [("42", 42), ("-7", -7), ("+3", 3), ("007", 7)])
def test_atoi_accepts_what_go_accepts(text: str, value: int) -> None:
    assert f.atoi(text) == value


@pytest.mark.parametrize("text", ["", " 1", "1_000", "1.5", "0x10", "\u0661"])
def test_atoi_refuses_what_go_refuses(text: str) -> None:
    with pytest.raises(f.TemplateFunctionError, match="invalid syntax"):
        f.atoi(text)


@pytest.mark.parametrize("text", ["9223372036854775808", "-9223372036854775809", "9" * 5000])
def test_atoi_refuses_what_does_not_fit_gos_int(text: str) -> None:
    # Found by fuzzing: 5,000 digits from the store were "ValueError: Exceeds the limit (4300
    # digits) ... use sys.set_int_max_str_digits()"; 20 digits were taken (Go refuses them).
    with pytest.raises(f.TemplateFunctionError, match="value out of range"):
        f.atoi(text)
    assert f.atoi("-9223372036854775808") == -(2**63) and f.atoi("+0009") == 9


def test_seq_from_store_bounds_cannot_take_the_machine() -> None:
    # Found by fuzzing: seq(1, 10**30) was an OverflowError; seq(1, 10**9) builds a list of
    # a billion ints in one C call that render_timeout cannot stop.
    with pytest.raises(f.TemplateFunctionError, match=r"more than 1,000,000 numbers"):
        f.seq(1, 10**9)
    with pytest.raises(f.TemplateFunctionError, match=r"more than 1,000,000 numbers"):
        f.seq(0, 10**30)
    assert len(f.seq(1, 1_000_000)) == 1_000_000


def test_parse_bool_spellings() -> None:
    assert all(f.parse_bool(t) for t in ("1", "t", "T", "TRUE", "true", "True"))
    assert not any(f.parse_bool(t) for t in ("0", "f", "F", "FALSE", "false", "False"))
    with pytest.raises(f.TemplateFunctionError):
        f.parse_bool("yes")


@pytest.mark.parametrize(("text", "reason"), [
    ("[1, 2", "not valid JSON"), ('{"a": 1}', "expected a JSON array"),
    ("[" * 100_000 + "]" * 100_000, "nested too deeply")])
def test_json_array_refuses_with_a_template_error(text: str, reason: str) -> None:
    with pytest.raises(f.TemplateFunctionError, match=reason):
        f.json_array(text)


def test_strings_and_paths() -> None:
    assert f.split("a,b,,c", ",") == ["a", "b", "", "c"] and f.split("ab", "") == ["a", "b"]
    assert f.split("", ",") == [""]
    assert f.replace("a-b-c", "-", "_", 1) == "a_b-c" and f.replace("a-b", "-", "", -1) == "ab"
    assert (f.base("/a/b/"), f.base(""), f.base("/")) == ("b", ".", "/")
    assert (f.dir_("/a/b/c"), f.dir_("c"), f.dir_("/a//b/../c/")) == ("/a/b", ".", "/a/c")
    assert f.base64_decode(f.base64_encode("hé")) == "hé"
    with pytest.raises(f.TemplateFunctionError):
        f.base64_decode("!!!")
    assert f.create_map("a", 1)["missing"] is None  # Go's map: a missing key reads as nil
    with pytest.raises(f.TemplateFunctionError, match="invalid map call"):
        f.create_map("a")


def test_sorts_and_reverse_work_in_place_like_confd() -> None:
    items = ["ccc", "a", "bb"]
    assert f.sort_by_length(items) is items and items == ["a", "bb", "ccc"]
    assert f.reverse(items) is items and items == ["ccc", "bb", "a"]


def test_getenv_default_when_unset_or_empty(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONFSYNC_T_EMPTY", "")
    monkeypatch.delenv("CONFSYNC_T_UNSET", raising=False)
    assert f.getenv("CONFSYNC_T_EMPTY", "d") == "d" and f.getenv("CONFSYNC_T_UNSET") == ""


def test_lookups_and_file_exists(tmp_path: Path) -> None:
    assert f.lookup_ip("localhost")  # /etc/hosts
    assert all("." in ip for ip in f.lookup_ipv4("localhost"))
    assert f.lookup_iface_ipv4("lo") == "127.0.0.1" and f.lookup_iface_ipv4("nope0") == ""
    assert f.file_exists(str(tmp_path)) and not f.file_exists(str(tmp_path / "nope"))


def test_a_name_without_addresses_is_none_and_a_failed_lookup_is_no_answer(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """confd returns [] for both; a resolver failure (EAI_AGAIN: a timeout, SERVFAIL) raises
    instead, so a render during a resolver hiccup does not drop every resolved server."""
    import socket

    def answer(errno: int) -> object:
        def getaddrinfo(*args: object, **kwargs: object) -> object:
            raise socket.gaierror(errno, "from the test")
        return getaddrinfo

    for no_address in (socket.EAI_NONAME, getattr(socket, "EAI_NODATA", socket.EAI_NONAME)):
        monkeypatch.setattr(socket, "getaddrinfo", answer(no_address))
        assert f.lookup_ip("db.example") == [] and f.lookup_ipv4("db.example") == []
    for failed in (socket.EAI_AGAIN, socket.EAI_FAIL):
        monkeypatch.setattr(socket, "getaddrinfo", answer(failed))
        with pytest.raises(f.LookupUnavailable, match="DNS lookup failed for now"):
            f.lookup_ip("db.example")


def test_lookup_srv_tells_no_records_from_no_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    import dns.exception
    import dns.resolver

    def raising(exc: Exception) -> object:
        def resolve(*args: object, **kwargs: object) -> object:
            raise exc
        return resolve

    for none in (dns.resolver.NXDOMAIN(), dns.resolver.NoAnswer()):
        monkeypatch.setattr(dns.resolver, "resolve", raising(none))
        assert f.lookup_srv("etcd", "tcp", "example.com") == []
    for failed in (dns.resolver.NoNameservers(), dns.exception.Timeout()):
        monkeypatch.setattr(dns.resolver, "resolve", raising(failed))
        with pytest.raises(f.LookupUnavailable):
            f.lookup_srv("etcd", "tcp", "example.com")


def test_datetime_formats_with_go_layouts() -> None:
    now = f.datetime()
    assert len(now.Format("2006-01-02T15:04:05")) == 19
    assert now.UTC().Format("Z07:00") == "Z"


def test_functions_are_globals_and_filters_in_ordinary_templates() -> None:
    text = ('{{ join(split(getv("/csv"), ","), "+") }} {{ getv("/csv") | split(",") | length }} '
            '{{ add(atoi(getv("/n")), 1) }} {{ "x" | toUpper }} {{ map("k", "v").k }}\n')
    assert render_jinja(text, {"/csv": "a,b,c", "/n": "41"}) == "a+b+c 3 42 X v\n"


def test_io_functions_still_go_through_the_line_break_check() -> None:
    os.environ["CONFSYNC_T_NL"] = "ok\nbind :22"
    try:
        with pytest.raises(ResourceError, match="line break"):
            render_jinja('{{ getenv("CONFSYNC_T_NL") }}\n', {})
        with pytest.raises(ResourceError, match="line break"):
            render_jinja('{{ base64Decode(getv("/b")) }}\n', {"/b": f.base64_encode("a\nb")})
    finally:
        del os.environ["CONFSYNC_T_NL"]
