"""confsync.instances.validate_instance agrees with the shipped template, value by value.

Each value is rendered through the real template (Renderer + Syncer, what `confsync once` runs):
the template must emit a server line for it exactly when validate_instance accepts it. This is
what makes "a registrar can never publish what the template would refuse" hold.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from confsync.filters import InvalidValue
from confsync.instances import validate_instance
from confsync.mirror import Mirror
from confsync.renderer import Renderer
from confsync.resources import parse_resource
from confsync.stores import Snapshot
from confsync.sync import Syncer

TEMPLATES = Path(__file__).resolve().parents[2] / "templates" / "haproxy" / "templates"
BASE = {"/haproxy/frontends/main": {"bind": ["127.0.0.1:8080"], "default_service": "web"},
        "/services/web/instances/ok-1": {"address": "10.0.0.1", "port": 80}}

VALUES: list[tuple[str, dict[str, Any]]] = [
    ("web-2", {"address": "10.0.0.2", "port": 8080, "weight": 10, "state": "ready"}),
    ("web-2", {"address": "2001:db8::2", "port": "8080", "weight": 0, "state": "maint"}),
    ("web-2", {"address": "10.0.0.2", "port": 8080, "state": "drain", "host": "n1"}),
    ("web-2", {"address": "10.0.0.2\n    server evil 1.2.3.4:80", "port": 80}),
    ("web-2", {"address": "app.example.com", "port": 80}),
    ("web-2", {"address": "10.0.0.2", "port": 0}),
    ("web-2", {"address": "10.0.0.2", "port": "80 check"}),
    ("web-2", {"address": "10.0.0.2", "port": 80, "weight": 257}),
    ("web-2", {"address": "10.0.0.2", "port": 80, "weight": "1 backup"}),
    ("web-2", {"address": "10.0.0.2", "port": 80, "state": "up"}),
    ("web-2", {"port": 80}),
    ("web 2", {"address": "10.0.0.2", "port": 80}),
    ("-web", {"address": "10.0.0.2", "port": 80}),
]


def _server_rendered(instance_id: str, value: dict[str, Any], tmp_path: Path) -> bool:
    data = {**BASE, f"/services/web/instances/{instance_id}": value}
    mirror = Mirror()
    mirror.load(Snapshot(1, {k: json.dumps(v).encode() for k, v in data.items()}))
    dest = tmp_path / "haproxy.cfg"
    resource = parse_resource(Path("haproxy.toml"), {"template": {
        "src": "haproxy.cfg.tmpl", "dest": str(dest), "keys": ["/services", "/haproxy"]}},
        TEMPLATES)
    Syncer(Renderer(TEMPLATES), mirror).apply([resource])
    # A refused instance fails the render (or, where the template skips invalid instances,
    # is left out): either way no server line for it.
    return dest.exists() and f"    server {instance_id} " in dest.read_text()


@pytest.mark.parametrize(("instance_id", "value"), VALUES)
def test_validator_accepts_exactly_what_the_template_renders(
        instance_id: str, value: dict[str, Any], tmp_path: Path) -> None:
    try:
        validate_instance(f"/services/web/instances/{instance_id}", value)
        accepted = True
    except InvalidValue:
        accepted = False
    assert accepted == _server_rendered(instance_id, value, tmp_path)
