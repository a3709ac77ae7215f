"""confd's integration suite, in our own words: a confd confdir (same constructs and data shape as
confd's integration/etcdv3/test.sh) converted with `confsync convert`, data loaded into a real
etcd, `confsync once` run on the result, every file compared byte for byte with Go's output."""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path
from typing import Any

from tests.support.cli import confsync
from tests.support.etcd_client import client
from tests.support.etcd_server import EtcdMember

SUITE = Path(__file__).parents[1] / "fixtures" / "confd_suite"


def _confd_confdir(tmp_path: Path, endpoint: str, prefix: str) -> tuple[Path, Path]:
    old = tmp_path / "confd"
    shutil.copytree(SUITE, old, ignore=shutil.ignore_patterns("expect", "data.json"))
    out = tmp_path / "out"
    out.mkdir()
    for path in [old / "confd.toml", *(old / "conf.d").glob("*.toml")]:
        path.write_text(path.read_text().replace("@OUT@", str(out))
                        .replace("@ENDPOINT@", endpoint).replace("@PREFIX@", prefix))
    return old, out


def test_converted_confd_suite_renders_byte_identical_from_etcd(
        etcd: EtcdMember, tmp_path: Path) -> None:
    prefix = f"/confd-{uuid.uuid4().hex[:8]}"
    old, out = _confd_confdir(tmp_path, etcd.endpoint, prefix)
    c = client(etcd.endpoint)
    for key, value in json.loads((SUITE / "data.json").read_text()).items():
        c.put(prefix + key, value)

    new = tmp_path / "confsync"
    converted = confsync("convert", str(old), str(new))
    assert converted.returncode == 0, converted.stderr
    assert "converted templates/pool.conf.tmpl" in converted.stdout
    # what has no counterpart is reported, not silently dropped
    assert "confd.toml: interval" in converted.stdout
    assert "confd.toml: watch" in converted.stdout
    main = (new / "confsync.toml").read_text()
    assert f'endpoints = ["{etcd.endpoint}"]' in main and f'prefix = "{prefix}"' in main

    once = confsync("once", "--config", str(new / "confsync.toml"),
                    env={"HOSTNAME": "localhost"})
    assert once.returncode == 0, once.stderr
    expected = {p.name: p.read_bytes() for p in (SUITE / "expect").iterdir()}
    assert {p.name: p.read_bytes() for p in out.iterdir()} == expected


def test_convert_refuses_and_writes_nothing(tmp_path: Path) -> None:
    old, _ = _confd_confdir(tmp_path, "http://127.0.0.1:1", "/p")
    (old / "templates" / "pool.conf.tmpl").write_text(
        'upstream {\n  {{ range gets "/u/*" }}{{ call .Value }}{{ end }}\n}\n')
    new = tmp_path / "confsync"
    done = confsync("convert", str(old), str(new))
    assert done.returncode == 2
    assert "pool.conf.tmpl:2:29: call (refused" in done.stderr
    assert not new.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".confsync")] == []


def test_check_compares_with_confds_output(tmp_path: Path) -> None:
    old, _ = _confd_confdir(tmp_path, "http://127.0.0.1:1", "")
    # the data as nested YAML-style mappings, the shape confd's file backend reads too
    nested: dict[str, Any] = {}
    for key, value in json.loads((SUITE / "data.json").read_text()).items():
        *parents, leaf = key.strip("/").split("/")
        node = nested
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    data = tmp_path / "data.json"
    data.write_text(json.dumps(nested))
    expect = tmp_path / "expect"
    shutil.copytree(SUITE / "expect", expect)
    new = tmp_path / "confsync"
    same = confsync("convert", str(old), str(new), "--check", "--data", str(data),
                    "--expect", str(expect), env={"HOSTNAME": "localhost"})
    assert same.returncode == 0, same.stdout + same.stderr
    assert "same pool: byte-identical" in same.stdout
    (expect / "pool.conf").write_text("upstream backend_pool {\n}\n")
    shutil.rmtree(new)
    differs = confsync("convert", str(old), str(new), "--check", "--data", str(data),
                       "--expect", str(expect), env={"HOSTNAME": "localhost"})
    assert differs.returncode == 1
    assert "DIFF pool" in differs.stdout and "+    server 10.0.1.10:8080 max_fails=3;" in differs.stdout


def test_a_resource_without_keys_converts_and_renders_from_etcd(
        etcd: EtcdMember, tmp_path: Path) -> None:
    """confd's own Tomcat sample has a resource with no `keys` (its template reads only
    getenv). confd renders it; the converted file had no keys, so `check` and `once` refused
    it (exit 2), and keys = [] was refused too. It converts to keys = [] and renders, over a
    file that differs (no empty-pool guard: there is no pool)."""
    old = tmp_path / "confd"
    (old / "conf.d").mkdir(parents=True)
    (old / "templates").mkdir()
    (old / "templates" / "server.xml.tmpl").write_text(
        '<Engine name="Catalina" jvmRoute="{{getenv "JVM_ROUTE"}}">\n')
    dest = tmp_path / "server.xml"
    dest.write_text('<Engine name="Catalina" jvmRoute="old">\n')
    (old / "conf.d" / "server.xml.toml").write_text(
        f'[template]\nsrc = "server.xml.tmpl"\ndest = "{dest}"\n')
    (old / "confd.toml").write_text(f'backend = "etcdv3"\nnodes = ["{etcd.endpoint}"]\n')
    new = tmp_path / "confsync"
    converted = confsync("convert", str(old), str(new))
    assert converted.returncode == 0, converted.stderr
    assert "server.xml.toml: no keys: written as keys = []" in converted.stdout
    once = confsync("once", "--config", str(new / "confsync.toml"), env={"JVM_ROUTE": "node7"})
    assert once.returncode == 0, once.stdout + once.stderr
    assert dest.read_text() == '<Engine name="Catalina" jvmRoute="node7">\n'
