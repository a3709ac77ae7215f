"""In-process render of the shipped HAProxy template: the happy path, and a refused value.

Prints the median wall time of a re-render after a one-instance change (N servers), the first
render with one bad instance (render + attribution render + render without it), and later
renders while that instance stays bad (remembered: one render).
Usage: python -m bench.render [--instances 5000] [--runs 21]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from confsync.mirror import Mirror
from confsync.renderer import Renderer
from confsync.resources import parse_resource
from confsync.stores import Change, ChangeBatch, Snapshot

TEMPLATES = Path(__file__).resolve().parents[1] / "templates" / "haproxy" / "templates"


def _instance(i: int, port: int = 8080) -> bytes:
    return json.dumps({"address": f"10.{i // 65536}.{i // 256 % 256}.{i % 256}", "port": port,
                       "weight": 100, "state": "ready"}).encode()


def pool_mirror(instances: int) -> Mirror:
    """A mirror at revision 1 of one frontend and `instances` servers of service `web`."""
    data = {"/haproxy/frontends/main": b'{"bind": ["127.0.0.1:8080"], "default_service": "web"}'}
    data.update({f"/services/web/instances/w{i:05d}": _instance(i) for i in range(instances)})
    mirror = Mirror()
    mirror.load(Snapshot(1, data))
    return mirror


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--instances", type=int, default=5000)
    parser.add_argument("--runs", type=int, default=21)
    args = parser.parse_args()
    mirror = pool_mirror(args.instances)
    resource = parse_resource(Path("haproxy.toml"), {"template": {
        "src": "haproxy.cfg.tmpl", "dest": "/tmp/unused", "keys": ["/services", "/haproxy"]}},
        TEMPLATES)
    renderer = Renderer(TEMPLATES)
    renderer.render(resource, mirror)
    revision = 1

    def change(key: str, value: bytes) -> float:
        nonlocal revision
        revision += 1
        mirror.apply(ChangeBatch(revision, (Change(key, value),)))
        start = time.perf_counter()
        renderer.render_result(resource, mirror)
        return time.perf_counter() - start

    good = [change(f"/services/web/instances/w{r % 7:05d}", _instance(r % 7, 8000 + r))
            for r in range(args.runs)]
    first_bad = []
    remembered = []
    for r in range(min(args.runs, 7)):
        key = f"/services/web/instances/w{100 + r:05d}"
        first_bad.append(change(key, _instance(r, 0)))
        remembered.append(change("/services/web/instances/w00001", _instance(1, 9000 + r)))
        change(key, _instance(r))
    print(f"HAProxy template, {args.instances} servers, one-instance change, in-process render:")
    print(f"  all valid:                 median {statistics.median(good) * 1000:.1f} ms")
    print(f"  one bad instance, first:   median {statistics.median(first_bad) * 1000:.1f} ms "
          f"(render, attribution render, render without it)")
    print(f"  one bad instance, later:   median {statistics.median(remembered) * 1000:.1f} ms "
          f"(left out up front while its value stays)")


if __name__ == "__main__":
    main()
