"""The shipped HAProxy template: valid output, and hostile values in any field fail the render.

Rendered in-process (Renderer + Mirror + Syncer, the code `confsync once` runs) so each hostile
value costs milliseconds; the end-to-end version runs against a real HAProxy in
tests/integration/test_haproxy_pools.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from confsync.mirror import Mirror
from confsync.outcome import FAILED, UPDATED
from confsync.renderer import Renderer
from confsync.resources import parse_resource
from confsync.stores import Snapshot
from confsync.sync import Syncer

REPO = Path(__file__).resolve().parents[2]
TEMPLATES = REPO / "templates" / "haproxy" / "templates"

GOOD: dict[str, Any] = {
    "/haproxy/global": {"maxconn": 1000, "admin_socket": "/tmp/a.sock",
                        "state_file": "/tmp/state"},
    "/haproxy/frontends/main": {"bind": ["127.0.0.1:8080"], "default_service": "web"},
    "/services/web/config": {"balance": "roundrobin", "check_path": "/healthz"},
    "/services/web/instances/web-1": {"address": "10.0.0.11", "port": 8080, "weight": 100},
    "/services/api/config": {"hosts": ["api.example.com"], "path_prefix": "/api"},
    "/services/api/instances/api-1": {"address": "2001:db8::1", "port": 9000, "state": "drain"},
}


def _syncer(data: dict[str, Any]) -> Syncer:
    mirror = Mirror()
    mirror.load(Snapshot(1, {k: (v if isinstance(v, str) else json.dumps(v)).encode()
                             for k, v in data.items()}))
    return Syncer(Renderer(TEMPLATES), mirror)


def _resource(dest: Path) -> Any:
    return parse_resource(Path("haproxy.toml"), {"template": {
        "src": "haproxy.cfg.tmpl", "dest": str(dest), "keys": ["/services", "/haproxy"],
        "min_keys": 1}}, TEMPLATES)


def test_good_data_renders_a_config_haproxy_accepts(tmp_path: Path, haproxy_binary: str) -> None:
    dest = tmp_path / "haproxy.cfg"
    [outcome] = _syncer(GOOD).apply([_resource(dest)])
    assert outcome.status == UPDATED, outcome.error
    text = dest.read_text()
    assert "    server web-1 10.0.0.11:8080 weight 100 check\n" in text
    assert "    server api-1 [2001:db8::1]:9000 weight 0 check\n" in text  # drain
    assert "    use_backend be_api if host_api path_api\n" in text
    check = subprocess.run([haproxy_binary, "-c", "-f", str(dest)], capture_output=True,
                           text=True, timeout=30)
    assert check.returncode == 0, check.stderr
    # The only warning allowed: the state file does not exist before the first reload.
    warnings = [line for line in check.stderr.splitlines() if "WARNING" in line]
    assert all("server state file" in line for line in warnings), warnings


def test_empty_service_is_a_backend_without_servers(tmp_path: Path) -> None:
    data = {k: v for k, v in GOOD.items() if "/instances/" not in k}
    dest = tmp_path / "haproxy.cfg"
    [outcome] = _syncer(data).apply([_resource(dest)])
    assert outcome.status == UPDATED, outcome.error
    assert "backend be_web\n" in dest.read_text() and "\n    server " not in dest.read_text()


@pytest.mark.parametrize("last_key", ["none", "instance deleted"])
def test_a_default_service_with_no_key_is_a_503_backend_haproxy_accepts(
        tmp_path: Path, haproxy_binary: str, last_key: str) -> None:
    """The README's first steps (a frontend, no instance registered yet) and a pool whose last
    instance left, with no /services/<svc>/config key: `default_backend be_web` must name a
    backend, or every render fails its check and HAProxy keeps the dead servers."""
    data: dict[str, Any] = {"/haproxy/global": GOOD["/haproxy/global"],
                            "/haproxy/frontends/main": GOOD["/haproxy/frontends/main"]}
    syncer, dest = _syncer(data), tmp_path / "haproxy.cfg"
    if last_key == "instance deleted":
        data["/services/web/instances/web-1"] = GOOD["/services/web/instances/web-1"]
        syncer = _syncer(data)
        [first] = syncer.apply([_resource(dest)])
        assert "server web-1 " in dest.read_text(), first.error
        syncer = _syncer({k: v for k, v in data.items() if "/instances/" not in k})
    [outcome] = syncer.apply([_resource(dest)])
    assert outcome.status == UPDATED, outcome.error
    text = dest.read_text()
    assert "    default_backend be_web\n" in text and "backend be_web\n" in text
    assert "\n    server " not in text
    check = subprocess.run([haproxy_binary, "-c", "-f", str(dest)], capture_output=True,
                           text=True, timeout=30)
    assert check.returncode == 0, check.stdout + check.stderr


def test_services_with_keys_render_as_before_beside_a_default_one(tmp_path: Path) -> None:
    data = {**GOOD, "/haproxy/frontends/other": {"bind": ["127.0.0.1:8081"],
                                                 "default_service": "zz-fallback"}}
    dest = tmp_path / "haproxy.cfg"
    [outcome] = _syncer(data).apply([_resource(dest)])
    assert outcome.status == UPDATED, outcome.error
    text = dest.read_text()
    backends = [line for line in text.splitlines() if line.startswith("backend ")]
    assert backends == ["backend be_api", "backend be_web", "backend be_zz-fallback"]


INSTANCE = "/services/web/instances/web-1"
# Instance values: the instance is left out (and reported); every other server stays.
HOSTILE_INSTANCE = [
    ({"address": "10.0.0.11\n    server evil 10.6.6.6:80", "port": 80}, "expected an IP address"),
    ({"address": "10.0.0.11 backup", "port": 80}, "expected an IP address"),
    ({"address": "10.0.0.11", "port": "80 # x"}, "expected a port number"),
    ({"address": "10.0.0.11", "port": 80, "weight": "1 check"}, "whole number"),
    ({"address": "10.0.0.11", "port": 80, "weight": 999}, "whole number from 0 to 256"),
    ({"address": "10.0.0.11", "port": 70000}, "port number 1-65535"),
    ({"address": "10.0.0.11", "port": 80, "state": "ready\n"}, "ready, drain, maint"),
    ({"address": "1" * 1_000_000, "port": 80}, "expected an IP address"),
    ({"address": "10.0.0.11"}, "port number 1-65535, found nothing"),
    ({"address": "10.0.0.11", "port": True}, "port number 1-65535, found True"),
    ("[1, 2]", "a JSON object"),
    ("{not json", "not valid JSON"),
    ('{"address": ' + "[" * 100_000 + "]" * 100_000 + "}", "nested too deeply"),
]
# Structural values: the whole render fails, the file stays.
HOSTILE = [
    ("/services/web/config", {"balance": "roundrobin\n    server x 1.2.3.4:80"}, "one of"),
    ("/services/web/config", {"check_path": "/ok #"}, "URL path"),
    ("/services/web/config", {"check_interval": "2s fall 1"}, "duration"),
    ("/services/api/config", {"hosts": ["a.example.com b.example.com"]}, "host name"),
    ("/services/api/config", {"hosts": "a.example.com\r\nuse_backend x"}, "expected a list"),
    ("/services/api/config", {"hosts": None}, "expected a list"),
    ("/services/api/config", {"path_prefix": "/api\r\nuse_backend x"}, "URL path"),
    ("/services/api/config", "[]", "a JSON object"),
    ("/services/api/config", "[" * 100_000 + "]" * 100_000, "nested too deeply"),
    ("/haproxy/frontends/main", {"bind": ["127.0.0.1:80 ssl crt /x"]}, "port number"),
    ("/haproxy/frontends/main", {"bind": "127.0.0.1:80"}, "expected a list"),
    ("/haproxy/frontends/main", {"bind": ["127.0.0.1:80"], "default_service": "web x"},
     "identifier"),
    ("/haproxy/global", {"admin_socket": "/run/a.sock level admin"}, "file path"),
    ("/haproxy/global", {"maxconn": 0}, "whole number from 1 to 1000000"),
]


def _good_file(tmp_path: Path) -> tuple[Path, bytes]:
    dest = tmp_path / "haproxy.cfg"
    [good] = _syncer(GOOD).apply([_resource(dest)])
    assert good.status == UPDATED
    return dest, dest.read_bytes()


@pytest.mark.parametrize("key, value, reason", HOSTILE,
                         ids=[f"{k.rsplit('/', 1)[-1]}-{i}" for i, (k, _, _) in
                              enumerate(HOSTILE)])
def test_hostile_structural_value_fails_render_names_key_and_keeps_file(
        tmp_path: Path, key: str, value: Any, reason: str) -> None:
    dest, before = _good_file(tmp_path)
    [outcome] = _syncer({**GOOD, key: value}).apply([_resource(dest)])
    assert outcome.status == FAILED
    assert outcome.error is not None and outcome.error.step == "render"
    message = str(outcome.error)
    assert f"key {key}:" in message, message
    assert reason in message, message
    assert dest.read_bytes() == before


@pytest.mark.parametrize("value, reason", HOSTILE_INSTANCE,
                         ids=[str(i) for i in range(len(HOSTILE_INSTANCE))])
def test_hostile_instance_is_left_out_and_reported_others_update(
        tmp_path: Path, value: Any, reason: str) -> None:
    dest, _ = _good_file(tmp_path)
    data = {**GOOD, INSTANCE: value,
            "/services/web/instances/web-2": {"address": "10.0.0.12", "port": 8080},
            "/services/api/instances/api-2": {"address": "10.0.0.13", "port": 9000}}
    [outcome] = _syncer(data).apply([_resource(dest)])
    assert outcome.status == UPDATED, outcome.error
    [warning] = outcome.warnings
    assert warning.key == INSTANCE and reason in warning.reason, warning
    text = dest.read_text()
    assert "server web-1 " not in text and "evil" not in text
    assert "    server web-2 10.0.0.12:8080 weight 100 check\n" in text
    assert "    server api-2 10.0.0.13:9000 weight 100 check\n" in text
    assert "    server api-1 [2001:db8::1]:9000 weight 0 check\n" in text


def test_every_instance_bad_leaves_an_empty_backend(tmp_path: Path) -> None:
    dest, _ = _good_file(tmp_path)
    data = {**GOOD, INSTANCE: {"address": "x", "port": 80},
            "/services/web/instances/web-2": {"address": "10.0.0.12", "port": 0}}
    [outcome] = _syncer(data).apply([_resource(dest)])
    assert outcome.status == UPDATED, outcome.error
    assert [w.key for w in outcome.warnings] == [INSTANCE, "/services/web/instances/web-2"]
    text = dest.read_text()
    assert "backend be_web\n" in text and "server web-" not in text
    assert "server api-1 " in text


def test_an_instance_left_out_comes_back_when_fixed(tmp_path: Path) -> None:
    dest, _ = _good_file(tmp_path)
    syncer = _syncer({**GOOD, INSTANCE: {"address": "10.0.0.11", "port": 0}})
    [outcome] = syncer.apply([_resource(dest)])
    assert [w.key for w in outcome.warnings] == [INSTANCE]
    [again] = syncer.apply([_resource(dest)])  # remembered: still left out, still reported
    assert again.status == "unchanged" and [w.key for w in again.warnings] == [INSTANCE]
    syncer.mirror.load(Snapshot(2, {k: (v if isinstance(v, str) else json.dumps(v)).encode()
                                    for k, v in GOOD.items()}))
    [fixed] = syncer.apply([_resource(dest)])
    assert fixed.status == UPDATED and fixed.warnings == ()
    assert "    server web-1 10.0.0.11:8080 weight 100 check\n" in dest.read_text()


def test_demo_renders_and_passes_haproxy_check(tmp_path: Path, haproxy_binary: str) -> None:
    (tmp_path / "demo-out").mkdir()
    result = subprocess.run(
        [sys.executable, "-m", "confsync", "once", "--confdir", str(REPO / "templates" / "demo"),
         "--backend", "file", "--file", str(REPO / "templates/haproxy/data/services.yaml")],
        cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    check = subprocess.run([haproxy_binary, "-c", "-f", str(tmp_path / "demo-out/haproxy.cfg")],
                           capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stderr
