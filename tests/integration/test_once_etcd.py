"""`confsync once` end to end against a real etcd server."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest

from confsync.settings import EtcdSettings
from confsync.stores.etcd import EtcdStore
from tests.support.cli import REPO, confsync, write_resource
from tests.support.etcd_client import client
from tests.support.etcd_server import EtcdMember, free_port


def test_three_resources_one_failing_check(etcd: EtcdMember, tmp_path: Path, prefix: str) -> None:
    c = client(etcd.endpoint)
    for key, value in {"/a/name": "alpha", "/b/name": "beta", "/c/name": "gamma"}.items():
        c.put(prefix + key, value)
    out = tmp_path / "out"
    out.mkdir()
    reload_log = tmp_path / "reloads.log"
    reload_cmd = f'["sh", "-c", "echo reloaded >> {reload_log}"]'
    failing = tmp_path / "fail-check.sh"
    failing.write_text("echo \"$1: line 3: unknown directive\" >&2\nexit 1\n")
    for name in "abc":
        check = f"sh {failing} {{{{src}}}}" if name == "b" else "test -s {{src}}"
        write_resource(tmp_path, name, f"name = {{{{ getv('/{name}/name') }}}}\n",
                       f'dest = "{out}/{name}.conf"\nkeys = ["/{name}"]\n'
                       f"check_cmd = '{check}'\nreload_cmd = {reload_cmd}\n")
    (out / "b.conf").write_bytes(b"previous b\n")
    os.utime(out / "b.conf", (1_000_000, 1_000_000))

    args = ["once", "--confdir", str(tmp_path), "--endpoints", etcd.endpoint, "--prefix", prefix]
    first = confsync(*args)
    assert first.returncode == 1, first.stderr
    assert (out / "a.conf").read_text() == "name = alpha\n"
    assert (out / "c.conf").read_text() == "name = gamma\n"
    assert (out / "b.conf").read_bytes() == b"previous b\n"
    assert os.stat(out / "b.conf").st_mtime == 1_000_000
    assert "resource b: check failed" in first.stderr
    assert "line 3: unknown directive" in first.stderr
    assert not list(out.glob(".*confsync"))  # no staged leftovers
    # a and c share one reload action: one reload for the batch
    assert reload_log.read_text().count("reloaded") == 1

    mtimes = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    second = confsync(*args)
    assert second.returncode == 1
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == mtimes
    assert reload_log.read_text().count("reloaded") == 1  # nothing changed: no reload


def test_all_ok_exit_0_and_owner_group_mode(etcd: EtcdMember, tmp_path: Path,
                                           prefix: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("chown to another user needs root")
    client(etcd.endpoint).put(prefix + "/app/port", "8080")
    dest = tmp_path / "app.conf"
    write_resource(tmp_path, "app", "port {{ getv('/app/port') | port }}\n",
                   f'dest = "{dest}"\nkeys = ["/app"]\nmode = "0640"\nowner = "nobody"\n'
                   f'group = "nogroup"')
    result = confsync("once", "--confdir", str(tmp_path), "--endpoints", etcd.endpoint,
                      "--prefix", prefix)
    assert result.returncode == 0, result.stderr
    st = dest.stat()
    assert (st.st_mode & 0o7777, st.st_uid) == (0o640, 65534)
    import grp

    assert st.st_gid == grp.getgrnam("nogroup").gr_gid
    assert dest.read_text() == "port 8080\n"


def test_template_syntax_error_reports_file_and_line(etcd: EtcdMember, tmp_path: Path,
                                                     prefix: str) -> None:
    write_resource(tmp_path, "broken", "ok\n{% if %}\n", f'dest = "{tmp_path}/x"\nkeys = ["/x"]')
    write_resource(tmp_path, "fine", "fine\n", f'dest = "{tmp_path}/y"\nkeys = ["/y"]')
    result = confsync("once", "--confdir", str(tmp_path), "--endpoints", etcd.endpoint,
                      "--prefix", prefix)
    assert result.returncode == 1
    assert "broken.tmpl:2: template syntax error" in result.stderr
    assert not (tmp_path / "x").exists()
    assert (tmp_path / "y").read_text() == "fine\n"


def _haproxy_confdir(tmp_path: Path, dest: Path) -> Path:
    confdir = tmp_path / "confdir"
    (confdir / "conf.d").mkdir(parents=True)
    (confdir / "conf.d" / "haproxy.toml").write_text(
        f'[template]\nsrc = "{REPO}/templates/haproxy/templates/haproxy.cfg.tmpl"\n'
        f'dest = "{dest}"\nkeys = ["/services", "/haproxy"]\nmin_keys = 1\n')
    return confdir


@pytest.mark.parametrize("field,value", [
    ("address", "10.0.0.1\n    server evil 6.6.6.6:80"),
    ("address", "10.0.0.1 backup"),
    ("port", "80 # x"),
    ("weight", "10\nlisten x"),
])
def test_hostile_value_cannot_inject_into_shipped_haproxy_template(
        etcd: EtcdMember, tmp_path: Path, prefix: str, field: str, value: str) -> None:
    c = client(etcd.endpoint)
    good = {"address": "10.0.0.1", "port": 8080, "weight": 10}
    c.put(f"{prefix}/services/web/instances/w1", json.dumps(good))
    dest = tmp_path / "haproxy.cfg"
    confdir = _haproxy_confdir(tmp_path, dest)
    args = ["once", "--confdir", str(confdir), "--endpoints", etcd.endpoint, "--prefix", prefix]
    assert confsync(*args).returncode == 0
    before = dest.read_bytes()
    assert b"server w1 10.0.0.1:8080 weight 10 check" in before

    c.put(f"{prefix}/services/web/instances/w2", json.dumps({**good, field: value}))
    result = confsync(*args)
    # The bad instance is left out and reported; the rest of the file is what it was.
    assert result.returncode == 0, result.stderr
    assert dest.read_bytes() == before
    assert f"key {prefix}/services/web/instances/w2: expected" in result.stderr
    assert "; left out" in result.stderr


def test_unreachable_etcd_exits_3_fast(tmp_path: Path) -> None:
    write_resource(tmp_path, "a", "x\n", f'dest = "{tmp_path}/a"\nkeys = ["/a"]')
    start = time.monotonic()
    result = confsync("once", "--confdir", str(tmp_path), "--endpoints",
                      f"http://127.0.0.1:{free_port()}", env={"CONFSYNC_ETCD_TIMEOUT": "1s"})
    assert result.returncode == 3, result.stderr
    assert "store unavailable" in result.stderr
    assert time.monotonic() - start < 10
    assert not (tmp_path / "a").exists()


def test_bad_config_exits_2(tmp_path: Path) -> None:
    write_resource(tmp_path, "a", "x\n", f'dest = "{tmp_path}/a"\nkeys = ["/a"]\nmdoe = "0644"')
    result = confsync("once", "--confdir", str(tmp_path), "--backend", "env")
    assert result.returncode == 2
    assert "template.mdoe: unknown key" in result.stderr


def test_snapshot_reads_all_prefixes_at_one_revision(etcd: EtcdMember, prefix: str) -> None:
    """A writer keeps /p1/x and /p2/x equal in one transaction: no snapshot may see them differ."""
    c = client(etcd.endpoint)
    stop = threading.Event()

    def writer() -> None:
        n = 0
        while not stop.is_set() and n < 5000:
            n += 1
            c.transaction(compare=[], success=[c.transactions.put(f"{prefix}/p1/x", str(n)),
                                               c.transactions.put(f"{prefix}/p2/x", str(n))],
                          failure=[])

    c.transaction(compare=[], success=[c.transactions.put(f"{prefix}/p1/x", "0"),
                                       c.transactions.put(f"{prefix}/p2/x", "0")], failure=[])
    thread = threading.Thread(target=writer)
    thread.start()
    store = EtcdStore(EtcdSettings(endpoints=(etcd.endpoint,)))
    try:
        seen = set()
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and len(seen) < 50:
            snap = store.snapshot([f"{prefix}/p1", f"{prefix}/p2"])
            assert snap.values[f"{prefix}/p1/x"] == snap.values[f"{prefix}/p2/x"]
            seen.add(snap.revision)
        assert len(seen) > 5  # the writer really was writing between snapshots
    finally:
        stop.set()
        thread.join()
        store.close()


def test_check_shows_diff_and_writes_nothing(etcd: EtcdMember, tmp_path: Path,
                                             prefix: str) -> None:
    client(etcd.endpoint).put(prefix + "/app/port", "9090")
    dest = tmp_path / "app.conf"
    dest.write_text("port 8080\n")
    reload_log = tmp_path / "r.log"
    write_resource(tmp_path, "app", "port {{ getv('/app/port') }}\n",
                   f'dest = "{dest}"\nkeys = ["/app"]\n'
                   f'reload_cmd = ["sh", "-c", "echo r >> {reload_log}"]')
    result = confsync("check", "--confdir", str(tmp_path), "--endpoints", etcd.endpoint,
                      "--prefix", prefix)
    assert result.returncode == 4, result.stderr  # would change
    assert "-port 8080\n+port 9090" in result.stdout
    assert dest.read_text() == "port 8080\n"
    assert not reload_log.exists()
