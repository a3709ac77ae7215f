"""Inputs found by fuzzing the loaders (confsync.toml, CONFSYNC_*, conf.d, register.d, file
backend data) that escaped as something other than a clean error: a traceback out of `once`,
`register` or the start of `watch`, a SIGHUP refused with "unexpected error", or a hang. Each is
now an error that names the file and the key, and the other resources go on."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from confsync.errors import ConfigError, StoreUnavailable
from confsync.haproxy.settings import HAProxySettings
from confsync.register.config import load_registrations
from confsync.resources import Resource, load_resources
from confsync.settings import load_settings
from confsync.stores.file import read_data_file

NO_USER = "~confsyncnosuchuser"  # a `~user` this system has no entry for


def _resources(tmp_path: Path, body: str, extra: str = "") -> tuple[list[str], tuple[str, ...]]:
    """Load conf.d with one file `bad.toml` ([template] + `body`, then `extra`) and a good one."""
    (tmp_path / "conf.d").mkdir()
    (tmp_path / "templates").mkdir()
    (tmp_path / "templates" / "t.tmpl").write_text("x\n")
    (tmp_path / "conf.d" / "bad.toml").write_text(
        f'[template]\nsrc = "t.tmpl"\ndest = "{tmp_path}/out"\nkeys = ["/a"]\n{body}\n{extra}')
    (tmp_path / "conf.d" / "good.toml").write_text(
        f'[template]\nsrc = "t.tmpl"\ndest = "{tmp_path}/good"\nkeys = ["/b"]\n')
    loaded = load_resources(tmp_path)
    return [r.name for r in loaded.resources], loaded.errors


def _haproxy(resource: Resource) -> HAProxySettings:
    assert resource.plugin is not None and isinstance(resource.plugin.settings, HAProxySettings)
    return resource.plugin.settings


def _register(tmp_path: Path, body: str) -> None:
    (tmp_path / "register.d").mkdir()
    (tmp_path / "register.d" / "web.toml").write_text(
        f'service = "web"\nport = 8080\naddress = "10.0.0.1"\n{body}\n')
    load_registrations(tmp_path, "", "h1", lambda: "10.0.0.1")


# -- `~user` of a user the system does not have ---------------------------------------------


@pytest.mark.parametrize("toml,env", [
    (f'confdir = "{NO_USER}/etc"', {}),
    ("", {"CONFSYNC_FILE_PATHS": f"/tmp/a.yaml,{NO_USER}/b.yaml"}),
])
def test_settings_with_an_unknown_users_home_load(tmp_path: Path, toml: str,
                                                  env: dict[str, str]) -> None:
    # Before: a RuntimeError traceback out of load_settings, then a ConfigError (exit 2,
    # never restarted). Now kept as written, for each use to expand (tests below).
    cfg = tmp_path / "confsync.toml"
    cfg.write_text(toml + "\n")
    settings = load_settings({"config": str(cfg)}, env)
    assert NO_USER in (str(settings.confdir) if toml else str(settings.file_paths[1]))


def test_a_confdir_under_a_user_not_known_yet_is_waited_for(tmp_path: Path) -> None:
    """`watch` and `register` wait for it as for a confdir not mounted yet; `once` exits 3."""
    from confsync.confdir_wait import not_there_yet

    cfg = tmp_path / "confsync.toml"
    cfg.write_text(f'confdir = "{NO_USER}/etc"\n')
    confdir = load_settings({"config": str(cfg)}, {}).confdir
    assert confdir == Path(f"{NO_USER}/etc")
    why = not_there_yet(confdir, "conf.d")
    assert why == f"confdir {NO_USER}/etc: cannot expand '{NO_USER}': no such user on this " \
                  "system (yet?)"


def test_a_data_file_under_a_user_not_known_yet_cannot_be_read_yet(tmp_path: Path) -> None:
    """As a data file not there yet: the store is unavailable (`watch` retries, `once` 3)."""
    from confsync.stores.file import FileStore

    with pytest.raises(StoreUnavailable, match=rf"cannot read {NO_USER}/b.yaml: cannot expand "
                                               rf"'{NO_USER}': no such user"):
        FileStore([Path(f"{NO_USER}/b.yaml")]).snapshot(["/"])


def test_haproxy_sockets_under_a_user_not_known_yet_are_sockets_not_there_yet(
        tmp_path: Path) -> None:
    # Before: that conf.d file failed to load (left out of `watch` until a SIGHUP).
    import errno

    from confsync.haproxy.control import find_master
    from confsync.haproxy.sockets import SocketUnavailable, query

    (tmp_path / "conf.d").mkdir()
    (tmp_path / "templates").mkdir()
    (tmp_path / "templates" / "t.tmpl").write_text("x\n")
    (tmp_path / "conf.d" / "h.toml").write_text(
        f'[template]\nsrc = "t.tmpl"\ndest = "{tmp_path}/out"\nkeys = ["/a"]\n'
        f'[haproxy]\nmaster_socket = "{NO_USER}/m.sock"\nruntime_socket = "{NO_USER}/s"\n')
    loaded = load_resources(tmp_path)
    assert loaded.errors == ()
    (resource,) = loaded.resources
    settings = _haproxy(resource)
    assert (settings.master_socket, settings.runtime_socket) == (
        Path(f"{NO_USER}/m.sock"), Path(f"{NO_USER}/s"))
    with pytest.raises(SocketUnavailable, match=rf"cannot expand '{NO_USER}'") as raised:
        query(settings.master_socket, "show proc", retry_for=0.0)
    assert raised.value.errno == errno.ENOENT
    assert find_master(settings.master_socket) is None


@pytest.mark.parametrize("key", ["master_socket", "runtime_socket"])
def test_haproxy_sockets_under_home_are_expanded_at_load(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, key: str) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    names, errors = _resources(tmp_path, "", f'[haproxy]\nmaster_socket = "/m.sock"\n'
                               f'{key} = "~/run/admin.sock"'
                               if key == "runtime_socket" else
                               f'[haproxy]\n{key} = "~/run/admin.sock"')
    assert names == ["bad", "good"] and errors == ()
    settings = _haproxy(load_resources(tmp_path).resources[0])
    assert getattr(settings, key) == tmp_path / "home/run/admin.sock"


def test_a_relative_haproxy_socket_stays_as_written(tmp_path: Path) -> None:
    """(Compared with the `-S` argument HAProxy was started with: not made absolute.)"""
    _resources(tmp_path, "", '[haproxy]\nmaster_socket = "run/m.sock"')
    assert _haproxy(load_resources(tmp_path).resources[0]).master_socket == Path("run/m.sock")


def test_files_read_to_reach_etcd_under_a_user_not_known_yet_are_read_late(
        tmp_path: Path) -> None:
    """A TLS or password file under `~user` for a user not known yet (created by a package
    after confsync started, served by LDAP once sssd is up): kept as written, and each read
    fails as a file not there yet (`watch` waits, `once` exits 3) until the user exists."""
    from confsync.errors import FileNotReadable
    from confsync.settings import read_password
    from confsync.stores.endpoints import read_tls_file

    cfg = tmp_path / "confsync.toml"
    cfg.write_text(f'[etcd]\nca_cert = "{NO_USER}/ca.pem"\npassword_file = "{NO_USER}/pw"\n'
                   'cert = "~root/c.pem"\nkey = "~root/k.pem"\n')
    etcd = load_settings({"config": str(cfg)}, {}).etcd
    assert etcd.ca_cert == Path(f"{NO_USER}/ca.pem")
    assert etcd.cert == Path("~root").expanduser() / "c.pem"  # a known user: expanded at load
    with pytest.raises(FileNotReadable, match=rf"cannot expand '{NO_USER}': no such user"):
        read_tls_file(etcd.ca_cert, "CA certificate")
    with pytest.raises(FileNotReadable, match=r"cannot read password: cannot expand"):
        read_password(etcd)


def test_a_pidfile_under_a_user_not_known_yet_is_no_target_until_it_is(
        tmp_path: Path) -> None:
    """It failed its conf.d file at load (left out of `watch` until a SIGHUP); now the
    resource runs and its target is not found (asked again) until the user exists."""
    from confsync.processes import pidfile_pid

    names, errors = _resources(tmp_path, f'reload_signal = "HUP"\npidfile = "{NO_USER}/a.pid"')
    assert names == ["bad", "good"] and errors == ()
    assert pidfile_pid(Path(f"{NO_USER}/a.pid"), None) is None


def test_a_maintenance_file_under_a_user_not_known_yet_cannot_be_told(
        tmp_path: Path) -> None:
    """Before: a configuration error (exit 2). Now the registration loads, and whether the file
    exists cannot be told until the user does, as for a directory that cannot be searched:
    the last known state is kept, and the registration's state says why."""
    from confsync.register.maintenance import MaintenanceLookup

    (tmp_path / "register.d").mkdir()
    (tmp_path / "register.d" / "web.toml").write_text(
        f'service = "web"\nport = 8080\naddress = "10.0.0.1"\nmaintenance_file = "{NO_USER}/m"\n')
    (registration,) = load_registrations(tmp_path, "", "h1", lambda: "10.0.0.1")
    assert registration.maintenance_file == Path(f"{NO_USER}/m")
    lookup = MaintenanceLookup(registration.maintenance_file).start()
    try:
        lookup.first(30)
        assert lookup.look(0.0) == (None, f"cannot expand '{NO_USER}': no such user on this "
                                          "system (yet?)")
    finally:
        lookup.stop()


# -- a path the OS refuses to look up (ENAMETOOLONG; EACCES alike for a non-root confsync) ----

LONG = "n" * 300  # over NAME_MAX (255): stat() fails with ENAMETOOLONG, not ENOENT


def test_a_template_name_too_long_fails_that_resource_only(tmp_path: Path) -> None:
    # Before: OSError "File name too long" out of load_resources (pathlib's is_file() passes on
    # only ENOENT-like errors): `once` a traceback with nothing rendered, a SIGHUP refused.
    (tmp_path / "conf.d").mkdir()
    (tmp_path / "templates").mkdir()
    (tmp_path / "templates" / "t.tmpl").write_text("x\n")
    (tmp_path / "conf.d" / "bad.toml").write_text(
        f'[template]\nsrc = "{LONG}"\ndest = "{tmp_path}/out"\nkeys = ["/a"]\n')
    (tmp_path / "conf.d" / "good.toml").write_text(
        f'[template]\nsrc = "t.tmpl"\ndest = "{tmp_path}/good"\nkeys = ["/b"]\n')
    loaded = load_resources(tmp_path)
    assert [r.name for r in loaded.resources] == ["good"]
    (error,) = loaded.errors
    assert "bad.toml: template.src: cannot look up template file" in error
    assert "File name too long" in error


@pytest.mark.parametrize("load,match", [
    (lambda d: load_settings({"config": f"{d}/{LONG}"}, {}),
     "cannot look up the config file: File name too long"),
    (lambda d: load_settings({}, {"CONFSYNC_CONFIG": f"{d}/{LONG}"}),
     "cannot look up the config file: File name too long"),
    (lambda d: load_resources(d / LONG), "conf.d: cannot look up the conf.d directory"),
    (lambda d: load_registrations(d / LONG, "", "h1", lambda: "10.0.0.1"),
     "register.d: cannot look it up: File name too long"),
])
def test_a_config_location_too_long_is_a_config_error(tmp_path: Path, load: Any,
                                                      match: str) -> None:
    # Before: OSError tracebacks out of load_settings / load_resources / load_registrations.
    with pytest.raises(ConfigError, match=match):
        load(tmp_path)


def test_a_check_ca_file_name_too_long_is_a_config_error(tmp_path: Path) -> None:
    # Before: OSError traceback out of `confsync register`.
    with pytest.raises(ConfigError, match=r"web\.toml: check\[0\]\.ca_file: .*cannot look it "
                                          r"up: File name too long"):
        _register(tmp_path, f'[[check]]\ntype = "http"\nurl = "https://h/"\n'
                            f'ca_file = "/{LONG}"')


# -- register.d: [extra] values that JSON has no form for -----------------------------------


@pytest.mark.parametrize("value,shown", [
    ("1979-05-27", "a date (1979-05-27)"),
    ("07:32:00", "a time (07:32:00)"),
    ("1979-05-27T07:32:00Z", "a datetime (1979-05-27 07:32:00+00:00)"),
    ("[1979-05-27]", "a list ([datetime.date(1979, 5, 27)])"),
    ('{ a = 1 }', '{"a": 1}'),  # JSON-able, as before
])
def test_an_extra_value_that_is_no_json_scalar_is_a_config_error(tmp_path: Path, value: str,
                                                                 shown: str) -> None:
    # Before: `when = 1979-05-27` under [extra] was "TypeError: Object of type date is not
    # JSON serializable" out of `confsync register` (while building the refusal's message).
    with pytest.raises(ConfigError, match=r"web\.toml: extra\.when: .*when: expected a string, "
                                          r"number, boolean or null, found ") as info:
        _register(tmp_path, f"[extra]\nwhen = {value}")
    assert str(info.value).endswith(shown)


# -- file backend: YAML aliases of values that make no key ----------------------------------


def _bomb(leaf: str) -> str:
    """Nine lines that expand to 10**8 copies of `leaf` (a null or an empty list or table)."""
    return f"a: &a [{', '.join([leaf] * 10)}]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 10)}]\n"
        for i in range(7))


@pytest.mark.parametrize("leaf", ["~", "[]"])
def test_aliases_of_nulls_or_empty_lists_cannot_hang_the_file_backend(tmp_path: Path,
                                                                      leaf: str) -> None:
    # Before: MAX_KEYS counted keys only, and these make none: read_data_file walked 10**8
    # values (minutes of CPU: `once` hung, and under `watch` the file watch's thread with it).
    data = tmp_path / "data.yaml"
    data.write_text(_bomb(leaf))
    with pytest.raises(StoreUnavailable, match=r"data\.yaml: .*more than 2000000 values"):
        read_data_file(data)


def test_many_nulls_and_empty_lists_below_the_limit_still_load(tmp_path: Path) -> None:
    data = tmp_path / "data.yaml"
    data.write_text("a: [~, [], {}]\nb: 1\n")
    assert read_data_file(data) == {"/b": b"1"}
