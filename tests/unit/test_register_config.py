"""register.d parsing, rise/fall hysteresis and the state a registration publishes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from confsync.errors import ConfigError
from confsync.register.checks import Hysteresis, Result
from confsync.register.config import load_registrations, parse_registration
from confsync.register.state import ABSENT, InstanceState


def _parse(data: dict[str, Any], prefix: str = "/p") -> Any:
    return parse_registration(Path("/etc/confsync/register.d/web.toml"), data, prefix,
                              "node1.example", lambda: "10.0.0.5")


def test_defaults() -> None:
    r = _parse({"service": "web", "port": 8080})
    assert (r.name, r.instance_id, r.address, r.weight, r.ttl, r.drain, r.on_unhealthy) == (
        "web", "node1.example-8080", "10.0.0.5", 100, 10, 5.0, "delete")
    assert r.key == "/p/services/web/instances/node1.example-8080"
    assert r.value("ready", "node1.example") == {
        "address": "10.0.0.5", "port": 8080, "weight": 100, "state": "ready",
        "host": "node1.example"}


def test_checks_and_extra() -> None:
    r = _parse({"service": "web", "port": 8080, "address": "2001:db8::1", "ttl": "2500ms",
                "extra": {"zone": "eu-1"},
                "check": [{"type": "http", "path": "/healthz", "interval": "200ms"},
                          {"type": "tcp"},
                          {"type": "exec", "command": "check-web --quick 'a b'",
                           "rise": 1, "fall": 5, "timeout": "3s"}]})
    http, tcp, exe = r.checks
    assert http.url == "http://[2001:db8::1]:8080/healthz" and http.timeout == 0.2
    assert (tcp.host, tcp.port, tcp.rise, tcp.fall) == ("2001:db8::1", 8080, 2, 3)
    assert exe.command == ("check-web", "--quick", "a b") and (exe.rise, exe.fall) == (1, 5)
    assert r.ttl == 3  # whole seconds, rounded up
    assert r.value("drain", "h")["zone"] == "eu-1"


@pytest.mark.parametrize(("data", "key", "reason"), [
    ({"port": 80}, "service", "missing"),
    ({"service": "web"}, "port", "missing"),
    ({"service": "web", "port": 80, "colour": "red"}, "colour", "unknown key"),
    ({"service": "web x", "port": 80}, "service", "expected an identifier"),
    ({"service": "web", "port": 70000}, "port", "port number"),
    ({"service": "web", "port": 80, "address": "10.0.0.1\nserver x"}, "address",
     "expected an IP address"),
    ({"service": "web", "port": 80, "weight": -1}, "weight", "from 0 to 256"),
    ({"service": "web", "port": 80, "ttl": "500ms"}, "ttl", "at least 1s"),
    ({"service": "web", "port": 80, "on_unhealthy": "ignore"}, "on_unhealthy", "one of"),
    ({"service": "web", "port": 80, "key": "/services/web/instances/"}, "key", "absolute key"),
    ({"service": "web", "port": 80, "extra": {"host": "x"}}, "extra.host", "set by confsync"),
    ({"service": "web", "port": 80, "extra": {"a b": 1}}, "extra.a b", "identifier"),
    ({"service": "web", "port": 80, "extra": {"list": [1]}}, "extra.list", "a string, number"),
    ({"service": "web", "port": 80, "check": [{"type": "ping"}]}, "check[0].type", "one of"),
    ({"service": "web", "port": 80, "check": [{"type": "tcp", "url": "http://x/"}]},
     "check[0].url", "not a setting of a tcp check"),
    ({"service": "web", "port": 80, "check": [{"type": "http", "tls_skip_verify": True}]},
     "check[0].tls_skip_verify", "only for an https:// url"),
    ({"service": "web", "port": 80, "check": [{"type": "tcp", "tls_skip_verify": True}]},
     "check[0].tls_skip_verify", "not a setting of a tcp check"),
    ({"service": "web", "port": 80, "check": [{"type": "exec"}]}, "check[0].command",
     "missing"),
    ({"service": "web", "port": 80, "check": [{"type": "http", "rise": 0}]}, "check[0].rise",
     "at least 1"),
    # Found by fuzzing: each used to load, then fail every probe (never registered) with an
    # error that named no file or key, or publish what is no JSON, or mean "maintenance".
    ({"service": "web", "port": 80, "check": [{"type": "http", "url": "http://[::1/"}]},
     "check[0].url", "not a usable URL"),
    ({"service": "web", "port": 80, "check": [{"type": "http", "url": "https://h:99999/"}]},
     "check[0].url", "Port out of range"),
    ({"service": "web", "port": 80, "check": [{"type": "http", "url": "http://:80/"}]},
     "check[0].url", "expected a host"),
    ({"service": "web", "port": 80, "check": [{"type": "http", "path": "/health z"}]},
     "check[0].path", "spaces or control characters"),
    ({"service": "web", "port": 80, "check": [{"type": "http", "path": "/h\r\nX: y"}]},
     "check[0].path", "spaces or control characters"),
    ({"service": "web", "port": 80, "check": [{"type": "tcp", "host": ""}]}, "check[0].host",
     "non-empty"),
    ({"service": "web", "port": 80, "extra": {"load": float("nan")}}, "extra.load",
     "finite number"),
    ({"service": "web", "port": 80, "extra": {"load": float("inf")}}, "extra.load",
     "finite number"),
    ({"service": "web", "port": 80, "maintenance_file": ""}, "maintenance_file", "non-empty"),
])
def test_errors_name_file_and_key(data: dict[str, Any], key: str, reason: str) -> None:
    with pytest.raises(ConfigError) as err:
        _parse(data)
    text = str(err.value)
    assert text.startswith(f"/etc/confsync/register.d/web.toml: {key}: "), text
    assert reason in text, text


def test_load_refuses_two_files_for_one_key(tmp_path: Path) -> None:
    directory = tmp_path / "register.d"
    directory.mkdir()
    for name in ("a", "b"):
        (directory / f"{name}.toml").write_text('service = "web"\nport = 80\nid = "x"\n')
    with pytest.raises(ConfigError, match=r"b.toml: key: .* registered by .*a.toml too"):
        load_registrations(tmp_path, "", "h", lambda: "127.0.0.1")


def test_hysteresis_needs_rise_passes_and_fall_failures_in_a_row() -> None:
    h = Hysteresis(rise=2, fall=3)
    seen = [(h.observe(ok), h.up)[1] for ok in
            (True, False, True, True, False, False, True, False, False, False, True)]
    assert seen == [False, False, False, True, True, True, True, True, True, False, False]


def _result(ok: bool) -> Result:
    return Result("web", 0, ok, 0.01, "GET /: 200" if ok else "GET /: 500")


def test_state_precedence() -> None:
    r = _parse({"service": "web", "port": 80, "drain": "2s", "maintenance_file": "/m",
                "check": [{"type": "tcp", "rise": 1, "fall": 1}]})
    s = InstanceState(r)
    assert s.desired(0)[0] == ABSENT  # not proven healthy yet
    s.observe(_result(True))
    assert s.desired(0)[0] == "ready"
    s.maintenance = True
    assert s.desired(0)[0] == "maint"
    s.maintenance = False
    s.published = "ready"
    s.start_drain(10.0)
    assert s.desired(11.0)[0] == "drain"
    s.published = "drain"
    assert s.desired(12.0) == (ABSENT, "drained")
    gone = InstanceState(r)
    gone.child_gone = True
    assert gone.desired(0) == (ABSENT, "exec child exited")


def test_on_unhealthy_maint_is_absent_until_the_checks_have_been_up_once() -> None:
    """`maint` is for an instance that was healthy and failed; one that never passed its
    checks is not registered at all (it was published "maint" from the first tick)."""
    s = InstanceState(_parse({"service": "web", "port": 80, "on_unhealthy": "maint",
                              "maintenance_file": "/m",
                              "check": [{"type": "tcp", "rise": 2, "fall": 1}]}))
    assert s.desired(0)[0] == ABSENT
    s.observe(_result(False))
    s.observe(_result(True))  # one pass of two: still not up
    assert s.desired(0)[0] == ABSENT
    s.maintenance = True  # the operator's file wins whatever the checks say
    assert s.desired(0)[0] == "maint"
    s.maintenance = False
    s.observe(_result(True))
    assert s.desired(0)[0] == "ready"
    s.observe(_result(False))
    assert s.desired(0) == ("maint", "check 0 down: GET /: 500")


@pytest.mark.parametrize("address", ["", "10.0.0.1 extra", " "])
def test_a_bad_address_with_an_http_check_is_refused_naming_address_not_path(
        address: str) -> None:
    """An http check's url is built from `address`: its error blamed the check's `path`
    ("check[0].path: expected a host in the URL"), a key that was fine."""
    with pytest.raises(ConfigError) as caught:
        _parse({"service": "web", "port": 80, "address": address,
                "check": [{"type": "http", "path": "/healthz"}]})
    assert caught.value.key == "address", caught.value
    assert "expected an IP address" in str(caught.value)


def test_a_backend_other_than_etcd_is_refused_naming_the_setting_once() -> None:
    """`confsync register --backend file` is exit 2 with one readable line (it said
    `backend: backend: confsync register writes to etcd; ...`)."""
    from confsync.register.run import run_register
    from confsync.settings import Settings

    with pytest.raises(ConfigError) as caught:
        run_register(Settings(backend="file"))
    assert str(caught.value) == "backend: confsync register writes to etcd; backend is 'file'"


def test_a_check_ca_file_not_there_yet_loads() -> None:
    """cert-manager or vault-agent may write it after the registrar starts at boot: refused at
    load, that was exit 2, which the unit never restarts (the instance never registered). The
    check fails until the file can be read (test_register_https_check.py)."""
    r = _parse({"service": "web", "port": 80, "check": [
        {"type": "http", "url": "https://127.0.0.1/", "ca_file": "/nonexistent/ca.pem"}]})
    assert str(r.checks[0].ca_file) == "/nonexistent/ca.pem"


def test_register_help_says_its_confdir_holds_register_d(capsys: pytest.CaptureFixture[str]) -> None:
    """`register --help` said --confdir holds conf.d/ and templates/: register reads only
    register.d/ there, and a new user pointed it at the wrong directory."""
    from confsync.cli import build_parser

    for command, holds in (("register", "register.d/"), ("watch", "conf.d/ and templates/")):
        with pytest.raises(SystemExit):
            build_parser(command).parse_args([command, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        assert f"--confdir DIR directory holding {holds}" in text
