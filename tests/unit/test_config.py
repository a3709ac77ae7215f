"""Main config precedence, durations, and resource-file validation."""

from __future__ import annotations

from pathlib import Path

import pytest

from confsync.durations import parse_duration
from confsync.errors import ConfigError
from confsync.resources import load_resources, normalise_prefix
from confsync.settings import load_settings, unknown_environment


@pytest.mark.parametrize("text,seconds", [("250ms", 0.25), ("2s", 2.0), ("1m30s", 90.0),
                                          ("1.5", 1.5), (3, 3.0), ("1h", 3600.0)])
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("bad", ["", "2x", "s", "-1s", "2s3", True, [1]])
def test_bad_durations_say_what_is_expected(bad: object) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(bad)


def test_precedence_cli_over_env_over_file_over_defaults(tmp_path: Path) -> None:
    cfg = tmp_path / "confsync.toml"
    cfg.write_text('backend = "env"\nprefix = "/file"\n[etcd]\nendpoints = ["http://f:1"]\n'
                   'timeout = "3s"\n[watch]\nwait_min = "50ms"\n')
    env = {"CONFSYNC_PREFIX": "/env", "CONFSYNC_ETCD_ENDPOINTS": "http://e:1,http://e:2"}
    s = load_settings({"config": str(cfg), "prefix": "/cli"}, env)
    assert s.prefix == "/cli"
    assert s.etcd.endpoints == ("http://e:1", "http://e:2")
    assert s.etcd.timeout == 3.0
    assert s.backend == "env"
    assert s.watch.wait_min == 0.05
    assert s.watch.wait_max == 2.0  # default
    assert load_settings({"config": str(cfg)}, {}).prefix == "/file"


def test_unknown_main_config_key_is_named(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("[etcd]\nendpoint = 'x'\n")
    with pytest.raises(ConfigError, match=r"c\.toml: etcd\.endpoint: unknown key"):
        load_settings({"config": str(cfg)}, {})


def test_bad_env_value_names_variable() -> None:
    with pytest.raises(ConfigError, match=r"CONFSYNC_WATCH_WAIT_MIN.*duration"):
        load_settings({}, {"CONFSYNC_WATCH_WAIT_MIN": "soon"})


def test_endpoints_with_srv_domain_is_an_error_not_a_silent_choice(tmp_path: Path) -> None:
    """SRV records replace endpoints: an --endpoints given to point at another cluster was
    ignored while the file's srv_domain won."""
    cfg = tmp_path / "c.toml"
    cfg.write_text('[etcd]\nsrv_domain = "example.com"\n')
    with pytest.raises(ConfigError, match=r"etcd: srv_domain: endpoints and srv_domain are both"):
        load_settings({"config": str(cfg), "etcd.endpoints": "http://10.0.0.9:2379"}, {})
    assert load_settings({"config": str(cfg)}, {}).etcd.srv_domain == "example.com"
    assert load_settings({"etcd.endpoints": "http://10.0.0.9:2379"},
                         {"CONFSYNC_ETCD_SRV_DOMAIN": ""}).etcd.endpoints == ("http://10.0.0.9:2379",)


def test_missing_explicit_config_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings({"config": str(tmp_path / "nope.toml")}, {})


def _confdir(tmp_path: Path, files: dict[str, str]) -> Path:
    (tmp_path / "conf.d").mkdir()
    (tmp_path / "templates").mkdir()
    (tmp_path / "templates" / "t.tmpl").write_text("x\n")
    for name, text in files.items():
        (tmp_path / "conf.d" / name).write_text(text)
    return tmp_path


def test_resource_fields_and_octal_mode(tmp_path: Path) -> None:
    confdir = _confdir(tmp_path, {"app.toml": """
[template]
src = "t.tmpl"
dest = "/tmp/out.conf"
keys = ["/app", "db"]
prefix = "prod"
mode = "644"
uid = 0
check_cmd = "tool -c {{src}}"
reload_cmd = ["systemctl", "reload", "app"]
wait_min = "20ms"
"""})
    (res,) = load_resources(confdir, "/global").resources
    assert res.name == "app"
    assert res.mode == 0o644
    assert res.prefix == "/global/prod"
    assert res.watched_prefixes == ("/global/prod/app", "/global/prod/db")
    assert res.check_cmd == ("tool", "-c", "{{src}}")
    assert res.reload_cmd == ("systemctl", "reload", "app")
    assert res.wait_min == 0.02


@pytest.mark.parametrize("body,message", [
    ('src = "t.tmpl"\ndest = "/x"\nkeys = ["/a"]\ncheck_command = "x"', r"template\.check_command: unknown key"),
    ('src = "t.tmpl"\ndest = "/x"', r"template\.keys: required key is missing"),
    ('src = "t.tmpl"\ndest = "/x"\nkeys = ["/a"]\nmode = "0999"', r"template\.mode: expected an octal mode"),
    ('src = "t.tmpl"\ndest = "/x"\nkeys = ["/a"]\nowner = ""', r"template\.owner"),
    ('src = "t.tmpl"\ndest = "/x"\nkeys = ["/a"]\nreload_signal = "SIGHUP"', r"needs pidfile or process"),
    ('src = "t.tmpl"\ndest = "/x"\nkeys = ["/a"]\ncheck_cmd = "a \'b"', r"cannot split command"),
])
def test_resource_errors_name_file_and_key(tmp_path: Path, body: str, message: str) -> None:
    confdir = _confdir(tmp_path, {"bad.toml": "[template]\n" + body + "\n",
                                  "good.toml": '[template]\nsrc="t.tmpl"\ndest="/y"\nkeys=["/b"]\n'})
    loaded = load_resources(confdir)
    assert [r.name for r in loaded.resources] == ["good"]  # the good one still loads
    (error,) = loaded.errors
    assert "bad.toml" in error
    assert pytest.importorskip("re").search(message, error), error


def test_not_toml_and_duplicate_dest(tmp_path: Path) -> None:
    confdir = _confdir(tmp_path, {
        "a.toml": '[template]\nsrc="t.tmpl"\ndest="/same"\nkeys=["/a"]\n',
        "b.toml": '[template]\nsrc="t.tmpl"\ndest="/same"\nkeys=["/b"]\n',
        "c.toml": "[template\n"})
    loaded = load_resources(confdir)
    assert [r.name for r in loaded.resources] == ["a"]
    assert any("b.toml" in e and "also written by resource a" in e for e in loaded.errors)
    assert any("c.toml: not valid TOML" in e for e in loaded.errors)


def test_normalise_prefix() -> None:
    assert normalise_prefix("/a/b/") == "/a/b"
    assert normalise_prefix("a//b") == "/a/b"
    assert normalise_prefix("/") == ""


def test_a_misspelt_environment_variable_is_reported_with_the_likely_one() -> None:
    env = {"CONFSYNC_ETCD_ENDPOINT": "http://10.0.0.1:2379", "CONFSYNC_PREFIX": "/p",
           "CONFSYNC_CONFIG": "/x", "CONFSYNC_SOMETHING_ELSE": "1", "HOME": "/root"}
    assert unknown_environment(env) == [("CONFSYNC_ETCD_ENDPOINT", "CONFSYNC_ETCD_ENDPOINTS"),
                                        ("CONFSYNC_SOMETHING_ELSE", None)]
    assert unknown_environment({"CONFSYNC_PREFIX": "/p"}) == []
    # set by `watch --exec` in its child's environment: a confsync the child runs has it
    assert unknown_environment({"CONFSYNC_EXEC_ID": "5f0c9e3a1b2d4c6e"}) == []


def test_the_cli_warns_of_a_misspelt_variable(tmp_path: Path) -> None:
    from tests.support.cli import confsync, write_resource

    write_resource(tmp_path / "cd", "app", "x\n", f'dest = "{tmp_path}/out"\nkeys = ["/x"]')
    result = confsync("once", "--confdir", str(tmp_path / "cd"), "--backend", "env",
                      env={"CONFSYNC_ETCD_ENDPOINT": "http://10.0.0.1:2379"})
    assert result.returncode == 0, result.stderr
    assert ("CONFSYNC_ETCD_ENDPOINT is not a confsync setting, ignored (did you mean "
            "CONFSYNC_ETCD_ENDPOINTS?)") in result.stderr
