"""Hostile input found by fuzzing every input surface: each one used to end in a traceback, a
hang, or a setting that failed far from where it was written. Now each is a clear error that
names the file and key, and the other resources go on."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from confsync.durations import parse_duration
from confsync.errors import ConfigError, StoreUnavailable
from confsync.resources import load_resources
from confsync.settings import load_settings
from confsync.stores.file import read_data_file

# -- durations, numbers (confsync.toml, CONFSYNC_*, resource files) -------------------------


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), "nan", "inf", "1e400", 1e10,
                                 10**400, "99999999999999h", "8761h"])
def test_durations_that_no_clock_can_wait_are_refused(bad: object) -> None:
    # Before: accepted; `watch.interval = 1e10` was an OverflowError in the loop at every tick
    # (exit 70 after five), `wait_min = nan` never applied a change, 10**400 an OverflowError.
    with pytest.raises(ValueError, match="duration"):
        parse_duration(bad)


def test_a_year_is_still_a_duration() -> None:
    assert parse_duration("8760h") == 365 * 24 * 3600.0


@pytest.mark.parametrize("line", ["interval = 1e10", "wait_min = nan", 'wait_max = "inf"'])
def test_huge_or_nan_watch_durations_name_the_file_and_key(tmp_path: Path, line: str) -> None:
    cfg = tmp_path / "confsync.toml"
    cfg.write_text(f"[watch]\n{line}\n")
    key = line.split(" ")[0]
    with pytest.raises(ConfigError, match=rf"confsync\.toml: watch\.{key}: .*duration"):
        load_settings({"config": str(cfg)}, {})


@pytest.mark.parametrize("value", ["inf", "-inf", "2.5"])
def test_crash_limit_that_is_no_whole_number_is_refused(tmp_path: Path, value: str) -> None:
    # Before: inf was an OverflowError traceback, 2.5 silently became 2.
    cfg = tmp_path / "confsync.toml"
    cfg.write_text(f"[exec]\ncrash_limit = {value}\n")
    with pytest.raises(ConfigError, match=r"exec\.crash_limit: expected a whole number"):
        load_settings({"config": str(cfg)}, {})


# -- NUL characters in paths and commands ------------------------------------------------


def test_a_nul_in_a_data_file_path_is_a_config_error(tmp_path: Path) -> None:
    # Before: accepted, then `once` died with "ValueError: embedded null byte".
    cfg = tmp_path / "confsync.toml"
    cfg.write_text('backend = "file"\n[file]\npaths = ["/tmp/a\\u0000b"]\n')
    with pytest.raises(ConfigError, match=r"file\.paths: a path cannot contain a NUL"):
        load_settings({"config": str(cfg)}, {})


def _load(tmp_path: Path, body: str, bad_file: bytes | None = None) -> tuple[list[str],
                                                                            tuple[str, ...]]:
    (tmp_path / "conf.d").mkdir()
    (tmp_path / "templates").mkdir()
    (tmp_path / "templates" / "t.tmpl").write_text("x\n")
    (tmp_path / "conf.d" / "bad.toml").write_bytes(bad_file if bad_file is not None else (
        f'[template]\nsrc = "t.tmpl"\ndest = "{tmp_path}/out"\nkeys = ["/a"]\n{body}\n'
    ).encode())
    (tmp_path / "conf.d" / "good.toml").write_text(
        f'[template]\nsrc = "t.tmpl"\ndest = "{tmp_path}/good"\nkeys = ["/b"]\n')
    loaded = load_resources(tmp_path)
    return [r.name for r in loaded.resources], loaded.errors


@pytest.mark.parametrize("body,key,what", [
    ('owner = "root\\u0000"', "template.owner", "no such user"),
    ('group = "a\\u0000b"', "template.group", "no such group"),
    ('uid = "\\u0000"', "template.uid", "no such user"),
    ('gid = "\\u0000"', "template.gid", "no such group"),
    ('check_cmd = "true\\u0000"', "template.check_cmd", "cannot contain a NUL"),
    ('reload_cmd = ["kill", "\\u0000"]', "template.reload_cmd", "cannot contain a NUL"),
    ('check_cmd = [""]', "template.check_cmd", "expected a program to run"),
    ('reload_cmd = ["", "x"]', "template.reload_cmd", "expected a program to run"),
])
def test_nul_names_and_commands_are_refused_at_load(tmp_path: Path, body: str, key: str,
                                                    what: str) -> None:
    # Before: a NUL in owner/group was a ValueError out of load_resources (a traceback, and
    # no resource rendered at all); in a command it failed every apply with "ValueError:
    # embedded null byte", and an empty program with "cannot run ``", retried for ever.
    names, errors = _load(tmp_path, body)
    assert names == ["good"]
    (error,) = errors
    assert "bad.toml" in error and key in error and what in error, error


def test_a_nul_in_dest_is_refused_at_load(tmp_path: Path) -> None:
    (tmp_path / "conf.d").mkdir()
    (tmp_path / "templates").mkdir()
    (tmp_path / "templates" / "t.tmpl").write_text("x\n")
    (tmp_path / "conf.d" / "bad.toml").write_text(
        '[template]\nsrc = "t.tmpl"\ndest = "/tmp/x\\u0000y"\nkeys = ["/a"]\n')
    (error,) = load_resources(tmp_path).errors
    assert "bad.toml: template.dest: a path cannot contain a NUL" in error, error


# -- TOML files that tomllib cannot parse its usual way ----------------------------------


@pytest.mark.parametrize("raw,what", [
    (b"a = " + b"[" * 3000 + b"]" * 3000 + b"\n", "nested too deeply"),
    (b"a = " + b"{b=" * 3000 + b"1" + b"}" * 3000 + b"\n", "nested too deeply"),
    (b"[template]\nmode = " + b"7" * 5000 + b"\n", "4300 digits"),
])
def test_toml_that_used_to_escape_as_a_traceback_is_one_bad_file(tmp_path: Path, raw: bytes,
                                                                 what: str) -> None:
    # Before: RecursionError / ValueError out of load_resources: no resource rendered.
    names, errors = _load(tmp_path, "", bad_file=raw)
    assert names == ["good"]
    (error,) = errors
    assert "bad.toml: not valid TOML" in error and what in error, error


def test_a_fifo_in_conf_d_is_refused_not_waited_on(tmp_path: Path) -> None:
    # Before: open() of the FIFO blocked for ever: `once` and a SIGHUP hung.
    (tmp_path / "conf.d").mkdir()
    os.mkfifo(tmp_path / "conf.d" / "fifo.toml")
    with pytest.raises(ConfigError, match=r"fifo\.toml: cannot read: not a regular file"):
        load_settings({"config": str(tmp_path / "conf.d" / "fifo.toml")}, {})
    (error,) = load_resources(tmp_path).errors
    assert "fifo.toml: cannot read: not a regular file" in error


# -- file backend data ---------------------------------------------------------------------


@pytest.mark.parametrize("text,what", [
    ("app: &a\n  - *a\n", "nested more than 200 levels"),  # an alias inside itself
    ('a: &a ["x","x","x","x","x","x","x","x","x","x"]\n'  # 10**7 keys from six lines
     + "".join(f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 10)}]\n"
               for i in range(6)), "more than 1000000 keys"),
])
def test_yaml_aliases_cannot_hang_or_crash_the_file_backend(tmp_path: Path, text: str,
                                                            what: str) -> None:
    # Before: RecursionError traceback / a hang expanding 10**7 keys.
    data = tmp_path / "data.yaml"
    data.write_text(text)
    with pytest.raises(StoreUnavailable, match=f"data.yaml: .*{what}"):
        read_data_file(data)


def test_a_yaml_binary_value_is_its_bytes_not_their_python_repr(tmp_path: Path) -> None:
    """`!!binary` used to render as b'...' (the Python repr of the bytes)."""
    data = tmp_path / "data.yaml"
    data.write_text("cert: !!binary aGVsbG8K\nraw: !!binary //4=\n")
    assert read_data_file(data) == {"/cert": b"hello\n", "/raw": b"\xff\xfe"}


def test_dev_null_is_an_empty_config_file_and_other_devices_are_refused(tmp_path: Path) -> None:
    """`--config /dev/null` (no config file) must keep working; /dev/zero would never end."""
    from confsync.tomlvalues import read_toml

    assert read_toml(Path("/dev/null")) == {}
    with pytest.raises(ConfigError, match="not a regular file"):
        read_toml(Path("/dev/zero"))
    settings = load_settings({"config": "/dev/null"}, environ={})
    assert settings.backend == "etcd"
