"""Resource files with a reload plugin's own table (`[haproxy]`), and the old spelling."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from confsync.errors import ConfigError
from confsync.haproxy.settings import HAProxySettings, Strategy
from confsync.reload import CommandReloader, has_reload_action, target_for
from confsync.resources import Resource, parse_resource


def parse(tmp_path: Path, extra: dict[str, object], template: dict[str, object] | None = None
          ) -> Resource:
    (tmp_path / "t.tmpl").write_text("x\n")
    table = {"src": "t.tmpl", "dest": str(tmp_path / "out"), "keys": ["/a"], **(template or {})}
    return parse_resource(tmp_path / "h.toml", {"template": table, **extra}, tmp_path)


def test_haproxy_table_selects_the_haproxy_target(tmp_path: Path) -> None:
    res = parse(tmp_path, {"haproxy": {"master_socket": "/run/m.sock",
                                       "reload_strategy": "runtime",
                                       "check_server_changes": False}})
    assert res.plugin is not None and res.plugin.table == "haproxy"
    assert res.plugin.settings == HAProxySettings(Path("/run/m.sock"), Strategy.RUNTIME, False)
    target = target_for(res)
    assert target is not None and target.key() == ("haproxy-master", Path("/run/m.sock"))
    assert has_reload_action(res)


def test_plain_resources_reload_by_command_or_not_at_all(tmp_path: Path) -> None:
    assert target_for(parse(tmp_path, {})) is None
    assert not has_reload_action(parse(tmp_path, {}))
    assert isinstance(target_for(parse(tmp_path, {}, {"reload_cmd": "true"})), CommandReloader)


def test_old_spelling_in_template_still_loads_with_a_warning(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        res = parse(tmp_path, {}, {"master_socket": "/run/m.sock", "reload_strategy": "runtime"})
    assert res.plugin is not None
    assert res.plugin.settings == HAProxySettings(Path("/run/m.sock"), Strategy.RUNTIME)
    assert "deprecated; move them to a [haproxy] table" in caplog.text


@pytest.mark.parametrize(("extra", "template", "key"), [
    ({"haproxy": {"reload_strategy": "runtime"}}, {}, "haproxy.reload_strategy"),
    ({"haproxy": {}}, {}, "haproxy.master_socket"),
    ({"haproxy": {"master_socket": "/m"}}, {"reload_cmd": "true"}, "haproxy.master_socket"),
    ({"haproxy": {"master_socket": "/m", "reload_strategy": "fast"}}, {},
     "haproxy.reload_strategy"),
    ({"haproxy": {"master_socket": "/m", "check_server_changes": "no"}}, {},
     "haproxy.check_server_changes"),
    ({"haproxy": {"master_socket": "/m", "bogus": 1}}, {}, "haproxy.bogus"),
    ({"haproxy": {"master_socket": "/m"}}, {"master_socket": "/n"}, "template.master_socket"),
    ({"nginx": {}}, {}, "nginx"),
], ids=["runtime-no-reload", "nothing-to-reload", "cmd-and-master", "strategy", "bool",
        "unknown", "both-spellings", "unknown-table"])
def test_bad_plugin_tables_name_file_and_key(tmp_path: Path, extra: dict[str, object],
                                             template: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse(tmp_path, extra, template)
    assert err.value.key == key and err.value.source == str(tmp_path / "h.toml")


def test_runtime_strategy_with_a_reload_signal_is_fine(tmp_path: Path) -> None:
    res = parse(tmp_path, {"haproxy": {"reload_strategy": "runtime"}},
                {"reload_signal": "SIGUSR2", "process": "haproxy"})
    target = target_for(res)
    assert target is not None and target.key() == CommandReloader(res).key()


def test_the_pipeline_imports_no_plugin() -> None:
    """The core knows the reload interface only; a plugin loads when a resource names its table."""
    import subprocess
    import sys

    code = ("import sys, confsync.daemon, confsync.oneshot, confsync.sync, confsync.resources; "
            "print(sorted(m for m in sys.modules if m.startswith('confsync.haproxy')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True)
    assert out.stdout.strip() == "[]"
