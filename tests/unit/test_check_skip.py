"""`check_server_changes = false`: server-only changes skip the check only after a checked file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from confsync.haproxy import control
from confsync.haproxy.settings import HAProxySettings, Strategy
from confsync.mirror import Mirror
from confsync.outcome import UPDATED
from confsync.plugins import PluginConfig
from confsync.renderer import Renderer
from confsync.resources import Resource
from confsync.stores import Change, ChangeBatch, Snapshot
from confsync.sync import Syncer
from tests.support.etcd_server import free_port

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = REPO / "templates/haproxy/templates/haproxy.cfg.tmpl"


def server(weight: int) -> bytes:
    return json.dumps({"address": "10.0.0.1", "port": 80, "weight": weight}).encode()


def setup(tmp_path: Path, opt_out: bool) -> tuple[Syncer, Resource, Path]:
    count = tmp_path / "checks"
    res = Resource(name="h", source=tmp_path / "h.toml", src=TEMPLATE, dest=tmp_path / "h.cfg",
                   keys=("/services", "/haproxy"), prefix="",
                   plugin=PluginConfig("haproxy", HAProxySettings(
                       strategy=Strategy.RUNTIME, runtime_socket=tmp_path / "no-admin.sock",
                       check_server_changes=not opt_out)), reload_cmd=("true",),
                   check_cmd=("sh", "-c", f"echo c >> {count}"))
    mirror = Mirror()
    mirror.load(Snapshot(1, {"/services/web/instances/a": server(10),
                             # (a free port: the reload step refuses a bind another
                             # process holds, and this machine may run anything on 8080)
                             "/haproxy/frontends/main": json.dumps(
                                 {"bind": [f"127.0.0.1:{free_port()}"]}).encode()}))
    return Syncer(Renderer(TEMPLATE.parent), mirror), res, count


def checks(count: Path) -> int:
    return count.read_text().count("c") if count.exists() else 0


def change(syncer: Syncer, rev: int, key: str, value: bytes) -> None:
    syncer.mirror.apply(ChangeBatch(rev, (Change(key, value),)))


def test_server_only_changes_skip_the_check_when_opted_out(tmp_path: Path) -> None:
    syncer, res, count = setup(tmp_path, opt_out=True)
    assert syncer.apply([res])[0].status == UPDATED
    assert checks(count) == 1  # a file this process has not checked: always checked
    change(syncer, 2, "/services/web/instances/a", server(20))
    assert syncer.apply([res])[0].status == UPDATED
    assert checks(count) == 1  # weight only: proven equivalent, no check
    change(syncer, 3, "/haproxy/frontends/other", b'{"bind": ["127.0.0.1:8081"]}')
    syncer.apply([res])
    assert checks(count) == 2  # structural: checked
    res.dest.write_text(res.dest.read_text() + "# edited by hand\n")
    change(syncer, 4, "/services/web/instances/a", server(30))
    syncer.apply([res])
    assert checks(count) == 3  # the file being replaced is not ours: checked


def test_default_checks_every_change(tmp_path: Path) -> None:
    syncer, res, count = setup(tmp_path, opt_out=False)
    syncer.apply([res])
    change(syncer, 2, "/services/web/instances/a", server(20))
    syncer.apply([res])
    assert checks(count) == 2


def test_proofs_are_anchored_on_the_last_checked_file(tmp_path: Path) -> None:
    """A file installed by a proof is never the base of the next proof."""
    syncer, res, count = setup(tmp_path, opt_out=True)
    syncer.apply([res])
    anchor = res.dest.read_bytes()
    change(syncer, 2, "/services/web/instances/a", server(20))
    syncer.apply([res])
    assert checks(count) == 1 and res.dest.read_bytes() != anchor  # skipped by a proof
    assert syncer.checked[res.dest] == anchor  # ... and not recorded as checked
    change(syncer, 3, "/services/web/instances/b", server(5))
    syncer.apply([res])
    assert checks(count) == 1  # proven against the anchor again
    assert syncer.checked[res.dest] == anchor


def test_a_server_change_is_proven_and_reloaded_without_parsing_a_whole_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A proof parsed the whole new file (and the checked one, until it was kept), then the
    reload step parsed the new and the replaced file again (5,000 servers: ~30 ms of CPU
    each, on the loop's thread). Now a server-only change is proven from the lines that
    changed, against the model of the file it replaces, and the reload step reads the models
    the proofs made: no whole file is parsed (before: 5, 4, 4, 4 parses)."""
    syncer, res, count = setup(tmp_path, opt_out=True)
    assert syncer.apply([res])[0].status == UPDATED
    parsed: list[str] = []
    real = control.parse
    monkeypatch.setattr(control, "parse", lambda text: parsed.append(text) or real(text))
    times: list[int] = []
    for rev, weight in enumerate((20, 30, 40, 50), start=2):
        change(syncer, rev, "/services/web/instances/a", server(weight))
        assert syncer.apply([res])[0].status == UPDATED
        times.append(len(parsed))
        parsed.clear()
    assert checks(count) == 1  # every one proven from the first file
    assert times == [0, 0, 0, 0]
    assert "weight 50 " in res.dest.read_text()
