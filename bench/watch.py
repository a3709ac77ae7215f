"""`confsync watch` figures in one run, beside a bare etcd watch (the floor).

- put -> event, bare pyetcd watch in-process (the floor)
- put -> file renamed into place, wait_min=0: small template; 5,000-server HAProxy template
- 50 sequential puts with wait_min=100ms -> reloads; 1,000-put burst -> reloads, time to final
- CPU seconds per 1,000 rendered changes; CPU over an idle period (no polling: ~0)
- RSS with 100,000 keys and 200 resources; a one-key change re-renders only its resource
The file is timed with inotify (bench/renames.py), not by polling. Loopback only, bounded loops.
Usage: python bench/watch.py [--samples 200] [--idle 60]
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import psutil

from bench.common import (
    REPO,
    client,
    haproxy_confdir,
    load_instances,
    start_etcd,
    summary,
)
from bench.renames import RenameWatch


def start_confsync(confdir: Path, endpoint: str, prefix: str, log: Path,
                   *extra: str, tree: Path = REPO) -> subprocess.Popen[bytes]:
    """`tree`: the checkout whose code runs (another one than this: first on the path)."""
    env = None if tree == REPO else {**os.environ, "PYTHONPATH": str(tree)}
    return subprocess.Popen(
        [sys.executable, "-m", "confsync", "watch", "--confdir", str(confdir), "--endpoints",
         endpoint, "--prefix", prefix, *extra], stdout=log.open("ab"), stderr=subprocess.STDOUT,
        cwd=tree, env=env)


def wait_until(predicate, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.01)
    raise TimeoutError("bench: condition not reached")


def floor_latency(endpoint: str, samples: int) -> list[float]:
    c = client(endpoint)
    got: queue.Queue[float] = queue.Queue()
    watch_id = c.add_watch_prefix_callback("/floor/", lambda r: got.put(time.perf_counter()))
    out = []
    for i in range(samples):
        start = time.perf_counter()
        c.put("/floor/k", str(i))
        out.append(got.get(timeout=5) - start)
        time.sleep(0.005)
    c.cancel_watch(watch_id)
    return out


def put_to_file(endpoint: str, key: str, make_value, dest: Path, samples: int) -> list[float]:  # type: ignore[no-untyped-def]
    return put_to_files(endpoint, [(key, make_value, dest)], samples)[0]


class KeyWatch:
    """The floor beside the daemons: put -> the event in a bare pyetcd watch of `key` (a client
    of its own) in this process, stamped in its callback."""

    def __init__(self, endpoint: str, key: str) -> None:
        self._client = client(endpoint)
        self.events: queue.SimpleQueue[float] = queue.SimpleQueue()
        self._id = self._client.add_watch_callback(
            key, lambda response: self.events.put(time.perf_counter()))

    def drain(self) -> None:
        while not self.events.empty():
            self.events.get_nowait()

    def stop(self) -> None:
        self._client.cancel_watch(self._id)
        self._client.close()


def put_to_files(endpoint: str, targets: list[tuple[str, Callable[[int], str], Path | None]],
                 samples: int) -> list[list[float]]:
    """put -> rename onto dest for each (key, make_value, dest), `samples` rounds, the targets
    taken in turn within each round (each daemon its own key: watchers compared in the same
    noise), every other round in reverse order (neither always goes first). A dest of None:
    put -> the event in a bare watch of the key (`KeyWatch`, the floor)."""
    c = client(endpoint)
    watches: list[RenameWatch | KeyWatch] = [
        RenameWatch(dest) if dest is not None else KeyWatch(endpoint, key)
        for key, _, dest in targets]
    out: list[list[float]] = [[] for _ in targets]
    try:
        for i in range(samples):
            order = range(len(targets)) if i % 2 == 0 else reversed(range(len(targets)))
            for n in order:
                key, make_value, _ = targets[n]
                watches[n].drain()
                start = time.perf_counter()
                c.put(key, make_value(i))
                out[n].append(watches[n].events.get(timeout=10) - start)
                time.sleep(0.01)
    finally:
        for watch in watches:
            watch.stop()
    return out


def small_resource(confdir: Path, dest: Path, reloads: Path, extra: str = "") -> None:
    (confdir / "conf.d").mkdir(parents=True, exist_ok=True)
    (confdir / "templates").mkdir(parents=True, exist_ok=True)
    (confdir / "templates" / "small.tmpl").write_text("value = {{ getv('/small/v') }}\n")
    (confdir / "conf.d" / "small.toml").write_text(
        f'[template]\nsrc = "small.tmpl"\ndest = "{dest}"\nkeys = ["/small"]\n'
        f'reload_cmd = ["sh", "-c", "echo r >> {reloads}"]\n{extra}\n')


def count(path: Path) -> int:
    return path.read_text().count("r") if path.exists() else 0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--idle", type=float, default=60.0)
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--resources", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="confsync-bench-") as tmp:
        base = Path(tmp)
        etcd = start_etcd(base / "etcd")
        procs: list[subprocess.Popen[bytes]] = []
        try:
            ep = etcd.endpoint
            c = client(ep)
            floor = floor_latency(ep, args.samples)
            print(f"etcd put -> watch event (floor):        {summary(floor)}")

            # small template, wait_min = 0
            small = base / "small"
            dest, reloads = small / "out" / "small.conf", small / "reloads"
            dest.parent.mkdir(parents=True)
            small_resource(small, dest, reloads)
            c.put("/s/small/v", "init")
            p = start_confsync(small, ep, "/s", base / "small.log", "--wait-min", "0")
            procs.append(p)
            wait_until(dest.exists)
            lat = put_to_file(ep, "/s/small/v", lambda i: f"v{i}", dest, args.samples)
            print(f"put -> file, small template:            {summary(lat)}")
            proc = psutil.Process(p.pid)
            cpu0 = sum(proc.cpu_times()[:2])
            put_to_file(ep, "/s/small/v", lambda i: f"w{i}", dest, 1000)
            cpu = sum(proc.cpu_times()[:2]) - cpu0
            print(f"CPU per 1,000 rendered changes (small): {cpu:.2f} s")
            cpu0 = sum(proc.cpu_times()[:2])
            time.sleep(args.idle)
            idle = sum(proc.cpu_times()[:2]) - cpu0
            print(f"CPU over {args.idle:.0f} s idle:                  {idle:.3f} s "
                  f"({idle / args.idle * 100:.3f} % of a core)")
            p.terminate()
            p.wait()

            # 5,000-server HAProxy template, wait_min = 0
            load_instances(ep, "/h", 5000)
            hdest = base / "haproxy.cfg"
            hconf = haproxy_confdir(base / "h", hdest)
            p = start_confsync(hconf, ep, "/h", base / "h.log", "--wait-min", "0")
            procs.append(p)
            wait_until(hdest.exists)
            lat = put_to_file(ep, "/h/services/web/instances/i00042",
                              lambda i: json.dumps({"address": f"10.200.{i // 250}.{i % 250}",
                                                    "port": 8080}), hdest, args.samples)
            print(f"put -> file, 5,000-server HAProxy:      {summary(lat)}")
            p.terminate()
            p.wait()

            # debounce: 50 sequential puts with wait_min=100ms; then a 1,000-put burst
            deb = base / "deb"
            ddest, dreloads = deb / "out" / "small.conf", deb / "reloads"
            ddest.parent.mkdir(parents=True)
            small_resource(deb, ddest, dreloads)
            c.put("/d/small/v", "init")
            p = start_confsync(deb, ep, "/d", base / "deb.log", "--wait-min", "100ms",
                               "--wait-max", "2s")
            procs.append(p)
            wait_until(lambda: count(dreloads) == 1)
            for i in range(50):
                c.put("/d/small/v", f"seq{i}")
            wait_until(lambda: "seq49" in ddest.read_text())
            time.sleep(0.5)
            print(f"50 sequential puts, wait_min=100ms:     {count(dreloads) - 1} reload(s) "
                  f"(confd: 50)")
            before = count(dreloads)
            start = time.perf_counter()
            for i in range(1000):
                c.put("/d/small/v", f"burst{i}")
            put_done = time.perf_counter() - start
            wait_until(lambda: "burst999" in ddest.read_text())
            final = time.perf_counter() - start
            time.sleep(0.5)
            print(f"1,000-put burst ({put_done:.2f} s of puts): {count(dreloads) - before} "
                  f"reload(s), final value on disk {final:.2f} s after the first put")
            p.terminate()
            p.wait()

            # RSS with many keys and resources
            per = args.keys // args.resources
            many = base / "many"
            (many / "conf.d").mkdir(parents=True)
            (many / "templates").mkdir()
            (many / "out").mkdir()
            (many / "templates" / "r.tmpl").write_text(
                "{% for kv in gets('/*') %}{{ kv.key }} {{ kv.value }}\n{% endfor %}")
            mc = client(ep, timeout=30)
            for r in range(args.resources):
                (many / "conf.d" / f"r{r:03d}.toml").write_text(
                    f'[template]\nsrc = "r.tmpl"\nprefix = "/r{r:03d}"\n'
                    f'dest = "{many}/out/r{r:03d}.conf"\nkeys = ["/"]\n')
                ops = [mc.transactions.put(f"/m/r{r:03d}/k{k:04d}", f"value-{r}-{k}")
                       for k in range(per)]
                for i in range(0, len(ops), 128):
                    mc.transaction(compare=[], success=ops[i:i + 128], failure=[])
            start = time.perf_counter()
            p = start_confsync(many, ep, "/m", base / "many.log", "--wait-min", "0")
            procs.append(p)
            outs = [many / "out" / f"r{r:03d}.conf" for r in range(args.resources)]
            wait_until(lambda: all(o.exists() for o in outs), timeout=120)
            startup = time.perf_counter() - start
            time.sleep(1.0)
            rss = psutil.Process(p.pid).memory_info().rss / 2**20
            mtimes = {o: o.stat().st_mtime_ns for o in outs}
            mc.put("/m/r007/k0001", "changed")
            wait_until(lambda: "changed" in outs[7].read_text())
            time.sleep(0.5)
            rewritten = [o.name for o in outs if o.stat().st_mtime_ns != mtimes[o]]
            print(f"{args.keys:,} keys, {args.resources} resources: RSS {rss:.0f} MB, first full "
                  f"render {startup:.1f} s; one-key change rewrote {rewritten}")
        finally:
            for proc_ in procs:
                if proc_.poll() is None:
                    proc_.terminate()
                    proc_.wait()
            etcd.stop()


if __name__ == "__main__":
    main()
