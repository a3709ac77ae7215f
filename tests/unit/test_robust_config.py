"""Issue 13, items 3 and 14: resource files that used to crash or mislead are refused at load,
naming the file and the key."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from confsync.resources import load_resources


def _load(tmp_path: Path, body: str) -> tuple[list[str], tuple[str, ...]]:
    (tmp_path / "conf.d").mkdir()
    (tmp_path / "templates").mkdir()
    (tmp_path / "templates" / "t.tmpl").write_text("x\n")
    (tmp_path / "conf.d" / "bad.toml").write_text(
        f'[template]\nsrc = "t.tmpl"\ndest = "{tmp_path}/out"\nkeys = ["/a"]\n{body}\n')
    (tmp_path / "conf.d" / "good.toml").write_text(
        f'[template]\nsrc = "t.tmpl"\ndest = "{tmp_path}/good"\nkeys = ["/b"]\n')
    loaded = load_resources(tmp_path)
    return [r.name for r in loaded.resources], loaded.errors


@pytest.mark.parametrize("body,key", [
    ("uid = 99999999999", "template.uid"),
    ("uid = -1", "template.uid"),
    ("uid = 4294967295", "template.uid"),  # (uid_t)-1: chown's "leave unchanged"
    ("gid = 4294967296", "template.gid"),
    ("gid = -5", "template.gid"),
    ("owner = 99999999999", "template.owner"),
    ("group = -2", "template.group"),
])
def test_out_of_range_ids_are_config_errors(tmp_path: Path, body: str, key: str) -> None:
    names, errors = _load(tmp_path, body)
    assert names == ["good"]
    (error,) = errors
    assert "bad.toml" in error and key in error and "numeric id from 0 to" in error, error


def test_ids_in_range_still_load(tmp_path: Path) -> None:
    names, errors = _load(tmp_path, "uid = 4294967294\ngid = 0")
    assert errors == () and names == ["bad", "good"]


@pytest.mark.parametrize("command,operator", [
    ("systemctl reload x && echo ok", "&&"),
    ("systemctl reload x || true", "||"),
    ("reload-x; echo done", ";"),
    ("reload-x|logger", "|"),
    ("reload-x > /tmp/log", ">"),
    ("reload-x >> /tmp/log", ">>"),
    ("reload-x 2>&1", ">&"),
    ("reload-x < /dev/null", "<"),
    ("kill -HUP $(cat /run/x.pid)", "("),
    ("kill -HUP `cat /run/x.pid`", "`"),
    ("reload-x &", "&"),
])
@pytest.mark.parametrize("key", ["check_cmd", "reload_cmd"])
def test_unquoted_shell_operators_are_refused(tmp_path: Path, command: str, operator: str,
                                              key: str) -> None:
    toml_value = "'" + command + "'"
    names, errors = _load(tmp_path, f"{key} = {toml_value}")
    assert names == ["good"]
    (error,) = errors
    assert "bad.toml" in error and f"template.{key}" in error, error
    assert re.search(rf"{re.escape(repr(operator))} is shell syntax", error), error
    assert "sh -c '...'" in error


@pytest.mark.parametrize("command,argv", [
    ("sh -c 'systemctl reload x && echo ok'", ("sh", "-c", "systemctl reload x && echo ok")),
    ('sh -c "a; b | c > d 2>&1 && $(e)"', ("sh", "-c", "a; b | c > d 2>&1 && $(e)")),
    ("tool --opt='a;b' {{src}}", ("tool", "--opt=a;b", "{{src}}")),
    ("haproxy -c -q -f {{src}}", ("haproxy", "-c", "-q", "-f", "{{src}}")),
    ("tool a\\;b", ("tool", "a;b")),
])
def test_quoted_operators_and_plain_commands_stay_legal(tmp_path: Path, command: str,
                                                        argv: tuple[str, ...]) -> None:
    (tmp_path / "conf.d").mkdir()
    (tmp_path / "templates").mkdir()
    (tmp_path / "templates" / "t.tmpl").write_text("x\n")
    (tmp_path / "conf.d" / "ok.toml").write_text(
        f'[template]\nsrc = "t.tmpl"\ndest = "{tmp_path}/out"\nkeys = ["/a"]\n'
        f"reload_cmd = {json.dumps(command)}\n")  # a JSON string is a TOML basic string
    loaded = load_resources(tmp_path)
    assert loaded.errors == ()
    assert loaded.resources[0].reload_cmd == argv


def test_a_list_is_argv_as_given(tmp_path: Path) -> None:
    names, errors = _load(tmp_path, 'reload_cmd = ["find", "/x", "-exec", "touch", "{}", ";"]')
    assert errors == () and names == ["bad", "good"]


def test_a_resource_file_that_is_not_utf8_is_one_bad_file(tmp_path: Path) -> None:
    """tomllib decodes before it parses, so such a file raised UnicodeDecodeError (not a
    TOMLDecodeError) through load_resources: a traceback at start, a loop error at SIGHUP."""
    _load(tmp_path, "")
    (tmp_path / "conf.d" / "bad.toml").write_bytes(b"\xff\xfe[template]\n")
    loaded = load_resources(tmp_path)
    assert [r.name for r in loaded.resources] == ["good"]
    assert len(loaded.errors) == 1 and "bad.toml: not valid TOML: not UTF-8" in loaded.errors[0]
