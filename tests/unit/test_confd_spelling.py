"""confd's resource spelling: `{{.src}}`/`{{.dest}}` in commands; other `{{...}}` refused at load."""

from __future__ import annotations

from pathlib import Path

import pytest

from confsync.placeholders import substitute
from confsync.resources import load_resources


def _confdir(tmp_path: Path, command_line: str) -> Path:
    (tmp_path / "conf.d").mkdir()
    (tmp_path / "templates").mkdir()
    (tmp_path / "templates" / "a.tmpl").write_text("x\n")
    (tmp_path / "conf.d" / "a.toml").write_text(
        f'[template]\nsrc = "a.tmpl"\ndest = "{tmp_path}/a.conf"\nkeys = ["/a"]\n{command_line}\n')
    return tmp_path


@pytest.mark.parametrize("spelling", ["{{.src}}", "{{ .src }}", "{{src}}", "{{ src }}"])
def test_confd_and_confsync_spellings_substitute(spelling: str) -> None:
    argv = substitute(["haproxy", "-c", "-f", spelling], Path("/stage/x"), Path("/etc/x"))
    assert argv == ["haproxy", "-c", "-f", "/stage/x"]
    assert substitute(["--dest={{.dest}}"], Path("/s"), Path("/d")) == ["--dest=/d"]


def test_confd_resource_loads_and_keeps_the_placeholder(tmp_path: Path) -> None:
    loaded = load_resources(_confdir(tmp_path, "check_cmd = 'haproxy -c -f {{.src}}'"))
    assert loaded.errors == ()
    (res,) = loaded.resources
    assert substitute(res.check_cmd, Path("/s"), Path("/d")) == ["haproxy", "-c", "-f", "/s"]


@pytest.mark.parametrize("command, bad", [
    ("check_cmd = 'nginx -t -c {{.Src}}'", "{{.Src}}"),
    ("reload_cmd = 'kill -HUP {{getv \"/pid\"}}'", '{{getv "/pid"}}'),
    ("check_cmd = ['app', '--cfg={{ .source }}']", "{{ .source }}"),
])
def test_other_placeholders_are_load_errors_naming_file_and_key(
        tmp_path: Path, command: str, bad: str) -> None:
    loaded = load_resources(_confdir(tmp_path, command))
    assert loaded.resources == ()
    (error,) = loaded.errors
    key = command.split()[0]
    assert f"a.toml: template.{key}" in error
    assert bad in error and "not substituted" in error
