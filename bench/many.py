"""One `confsync watch` with many resources against ~50,000 keys: does the loop scale?

Drives the daemon's own loop (`Daemon._iterate`) in this process against a real etcd, so each
figure is time spent on the loop's thread: start-up to ready, a SIGHUP that changes nothing,
one that edits one resource (the whole set is judged against live data), put -> file for one
key (must not grow with the resources), and one DeleteRange of every key. For each it prints
the longest gap between two heartbeats (what /health and systemd's watchdog see) and the time
in `_touch_covering` (resources x changed keys before it had an index).
Usage: python -m bench.many [--resources 200 1000] [--keys 50000] [--shared 0 10]
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from pathlib import Path

import psutil

from bench.common import put_many, start_etcd
from confsync.daemon import Daemon
from confsync.ops.events import Observer
from confsync.settings import load_settings
from tests.support.etcd_client import client


class Beats(Observer):
    """The longest gap between two heartbeats since `reset`."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.last = time.perf_counter()
        self.gap = 0.0

    def heartbeat(self) -> None:
        now = time.perf_counter()
        self.gap = max(self.gap, now - self.last)
        self.last = now


def timed(daemon: Daemon, name: str, spent: dict[str, float]) -> None:
    """Wrap a method of `daemon` to add its time to spent[name]."""
    inner = getattr(daemon, name)

    def wrapper(*args, **kwargs):  # type: ignore[no-untyped-def]
        start = time.perf_counter()
        try:
            return inner(*args, **kwargs)
        finally:
            spent[name] = spent.get(name, 0.0) + time.perf_counter() - start
    setattr(daemon, name, wrapper)


def run_until(daemon: Daemon, done, timeout: float = 300.0) -> float:  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    while not done():
        if time.perf_counter() - start > timeout:
            raise TimeoutError("bench: condition not reached")
        daemon._iterate()
    return time.perf_counter() - start


def setup(base: Path, resources: int, keys: int, shared: int) -> Path:
    """conf.d with `resources` resources; each reads its own prefix, or one of `shared`."""
    confdir = base / "confdir"
    (confdir / "conf.d").mkdir(parents=True)
    (confdir / "templates").mkdir()
    (base / "out").mkdir()
    (confdir / "templates" / "r.tmpl").write_text(
        "{% for kv in gets('/*') %}{{ kv.key }} {{ kv.value }}\n{% endfor %}")
    groups = shared or resources
    for r in range(resources):
        (confdir / "conf.d" / f"r{r:04d}.toml").write_text(
            f'[template]\nsrc = "r.tmpl"\nprefix = "/g{r % groups:04d}"\n'
            f'dest = "{base}/out/r{r:04d}.conf"\nkeys = ["/"]\n')
    return confdir


def measure(endpoint: str, base: Path, resources: int, keys: int, shared: int) -> None:
    c = client(endpoint, timeout=60)
    c.delete_prefix("/m/")
    groups = shared or resources
    per = keys // groups
    put_many(endpoint, ((f"/m/g{g:04d}/k{k:05d}", f"v{g}-{k}")
                        for g in range(groups) for k in range(per)))
    confdir = setup(base, resources, keys, shared)
    settings = load_settings({"confdir": str(confdir), "etcd.endpoints": [endpoint],
                              "prefix": "/m", "watch.wait_min": 0.0})
    beats = Beats()
    spent: dict[str, float] = {}
    label = f"{resources} resources, {'own prefixes' if not shared else f'{shared} shared'}"
    start = time.perf_counter()
    daemon = Daemon(settings, {"confdir": str(confdir), "etcd.endpoints": [endpoint],
                               "prefix": "/m", "watch.wait_min": 0.0}, [beats])
    for name in ("_touch_covering", "apply", "reload_config", "_judge"):
        timed(daemon, name, spent)
    daemon.follower.start()
    try:
        beats.reset()
        run_until(daemon, lambda: daemon.ready)
        rss = psutil.Process().memory_info().rss / 2**20
        print(f"{label}: start -> ready {time.perf_counter() - start:.2f} s, longest heartbeat "
              f"gap {beats.gap:.2f} s, RSS of this process {rss:.0f} MB")

        for what, name, old, new in (
                ("SIGHUP, nothing changed", "", "", ""),
                ("SIGHUP, one resource edited", "r0001", "[template]", "[template]\nmode = 0o640"),
                ("SIGHUP, a new prefix (a snapshot read first)", "r0002", 'prefix = "/g0002"',
                 'prefix = "/new"')):
            if name:
                edit = confdir / "conf.d" / f"{name}.toml"
                edit.write_text(edit.read_text().replace(old, new))
            spent.clear()
            beats.reset()
            daemon.reload_config_at = time.monotonic()
            took = run_until(daemon, lambda: daemon.reload_config_at is None
                             and daemon.pending is None and not daemon.planner.due(1e18))
            print(f"{label}: {what}: {took:.2f} s on the loop (judge {spent.get('_judge', 0):.2f}"
                  f" s, apply {spent.get('apply', 0):.2f} s), longest heartbeat gap "
                  f"{beats.gap:.2f} s")

        cpu = time.thread_time()
        idle_end = time.perf_counter() + 5.0
        run_until(daemon, lambda: time.perf_counter() > idle_end)
        print(f"{label}: idle loop CPU {(time.thread_time() - cpu) / 5.0 * 100:.2f} % of a core "
              f"(heartbeat checks of every dest)")

        dest = base / "out" / "r0007.conf"
        lat = []
        for i in range(20):
            spent.clear()
            start = time.perf_counter()
            c.put(f"/m/g{7 % groups:04d}/k00001", f"changed{i}")
            text = f"changed{i}\n"
            run_until(daemon, lambda text=text: text in dest.read_text())  # type: ignore[misc]
            lat.append(time.perf_counter() - start)
        lat.sort()
        print(f"{label}: put -> file p50 {lat[10] * 1000:.1f} ms, max {lat[-1] * 1000:.1f} ms "
              f"(_touch_covering {spent.get('_touch_covering', 0) * 1000:.2f} ms last)")

        spent.clear()
        beats.reset()
        start = time.perf_counter()
        c.delete_prefix("/m/")
        run_until(daemon, lambda: "_touch_covering" in spent and not daemon.planner.due(1e18)
                  and daemon.planner.next_deadline() is None)
        print(f"{label}: DeleteRange of {groups * per:,} keys: {time.perf_counter() - start:.2f}"
              f" s to handled, _touch_covering {spent['_touch_covering']:.2f} s, apply "
              f"{spent.get('apply', 0):.2f} s, longest heartbeat gap {beats.gap:.2f} s")
    finally:
        daemon.follower.stop()
        daemon.follower.join(timeout=5)
        daemon.store.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--resources", type=int, nargs="+", default=[200, 1000])
    parser.add_argument("--keys", type=int, default=50_000)
    parser.add_argument("--shared", type=int, nargs="+", default=[0, 10])
    args = parser.parse_args()
    logging.disable(logging.CRITICAL)  # one line per resource would dwarf the figures
    root = Path(os.environ.get("BENCH_TMP", tempfile.gettempdir()))
    with tempfile.TemporaryDirectory(prefix="bench-many-", dir=root) as tmp:
        etcd = start_etcd(Path(tmp) / "etcd")
        try:
            for resources in args.resources:
                for shared in args.shared:
                    base = Path(tmp) / f"r{resources}-s{shared}"
                    measure(etcd.endpoint, base, resources, args.keys, shared)
        finally:
            etcd.stop()


if __name__ == "__main__":
    main()
