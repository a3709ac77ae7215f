"""Soak: do reconnect and reload cycles give back what they took? Figures, no assertions.

    python bench/soak.py restart --cycles 60      # etcd SIGKILL + restart (same data dir)
    python bench/soak.py freeze --cycles 20       # SIGSTOP longer than the keepalive timeouts
    python bench/soak.py compact --cycles 20      # compaction while frozen: a re-read each time
    python bench/soak.py recreate --cycles 8      # a new data dir (new cluster id) each time
    python bench/soak.py outage --seconds 60      # etcd down this long: log lines per minute
    python bench/soak.py register --cycles 40     # the registrar, its exec check flapping
    python bench/soak.py http --cycles 200        # half-open and partial requests on /health
    python bench/soak.py haproxy --cycles 60      # watch driving HAProxy: joins, reloads, restarts
    python bench/soak.py churn --cycles 500       # conf.d/templates edited, SIGHUP each cycle
    python bench/soak.py churn --confdir-watch    # the same edits seen by [watch] confdir = true

Each scenario starts its own etcd and a real `confsync watch` (or `confsync register`) with
`--metrics-address`, and prints the process's descriptors, threads, RSS and children (psutil)
before the first cycle and after every `--every` cycles, once the process has caught up (a put
made after the cycle is in the file, or the registration is back). Loopback only; every
process and temp dir is removed at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.support.cli import write_resource  # noqa: E402
from tests.support.daemon import WatchProcess, read, wait_for  # noqa: E402
from tests.support.etcd_client import client  # noqa: E402
from tests.support.etcd_server import EtcdMember, find_etcd, free_port, start_single  # noqa: E402
from tests.support.register import RegisterProcess, published, write_registration  # noqa: E402

DEADLINE = 90.0


def figures(pid: int) -> dict[str, float]:
    proc = psutil.Process(pid)
    with proc.oneshot():
        return {"fds": proc.num_fds(), "threads": proc.num_threads(),
                "rss_mb": round(proc.memory_info().rss / 2**20, 1),
                "children": len(proc.children(recursive=True))}


def show(label: str, pid: int, extra: str | Callable[[], str] = "") -> dict[str, float]:
    """Print the figures, then `extra` (a callable: asked after they were taken, so that a
    request to /metrics is not counted as one of the process's threads)."""
    f = figures(pid)
    extra = extra() if callable(extra) else extra
    print(f"{label:>12}: fds {f['fds']:>3}  threads {f['threads']:>3}  rss {f['rss_mb']:>6} MB"
          f"  children {f['children']}  {extra}", flush=True)
    return f


def http_get(port: int, path: str, timeout: float = 2.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:
            return int(r.status), r.read().decode()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read().decode()
    except OSError as exc:  # not listening yet (URLError is an OSError)
        return 0, str(exc)


def metric_lines(port: int) -> int:
    return len([line for line in http_get(port, "/metrics")[1].splitlines()
                if line and not line.startswith("#")])


class Watch:
    """etcd + `confsync watch` of /k/ into one file."""

    def __init__(self, base: Path, binary: str, extra_etcd: list[str] | None = None) -> None:
        self.base, self.binary = base, binary
        self.etcd = start_single(binary, base / "etcd", extra_args=extra_etcd)
        self.dest = base / "out.txt"
        self.port = free_port()
        write_resource(base / "confdir", "k",
                       "{% for kv in gets('/k/*') %}{{ kv.key }}={{ kv.value }}\n{% endfor %}",
                       f'dest = "{self.dest}"\nkeys = ["/k"]\nwait_min = "0s"\n')
        self.n = 0
        self.put()
        self.proc = WatchProcess(
            "--confdir", str(base / "confdir"), "--endpoints", self.etcd.endpoint,
            "--metrics-address", f"127.0.0.1:{self.port}", log=base / "watch.log")
        self.caught_up()

    def put(self) -> None:
        self.n += 1
        deadline = time.monotonic() + DEADLINE
        while True:
            try:
                client(self.etcd.endpoint, timeout=2).put("/k/n", str(self.n))
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def caught_up(self) -> None:
        self.put()
        wait_for(lambda: f"/k/n={self.n}\n" in read(self.dest), DEADLINE,
                 what=f"/k/n={self.n} in the file")
        wait_for(lambda: http_get(self.port, "/ready")[0] == 200, DEADLINE, what="/ready")

    def log_lines(self) -> int:
        return len(self.proc.output().splitlines())

    def close(self) -> None:
        self.proc.stop()
        self.etcd.stop()


def cycles(args: argparse.Namespace, w: Watch, one: Callable[[int], None]) -> None:
    time.sleep(args.settle)
    first = show("start", w.proc.proc.pid,
                 lambda: f"metrics {metric_lines(w.port)} log {w.log_lines()}")
    for i in range(1, args.cycles + 1):
        one(i)
        w.caught_up()
        if i % args.every == 0 or i == args.cycles:
            time.sleep(args.settle)
            show(f"cycle {i}", w.proc.proc.pid,
                 lambda: f"metrics {metric_lines(w.port)} log {w.log_lines()}")
    last = figures(w.proc.proc.pid)
    print("delta:", {k: round(last[k] - first[k], 1) for k in first}, flush=True)


def scenario_watch(args: argparse.Namespace, base: Path, binary: str) -> None:
    w = Watch(base, binary)
    try:
        etcd = w.etcd

        def restart(_: int) -> None:
            etcd.kill()
            time.sleep(args.down)
            etcd.start()

        def freeze(_: int) -> None:
            etcd.freeze()
            time.sleep(args.down)
            etcd.thaw()

        def compact(_: int) -> None:
            etcd.freeze()
            time.sleep(args.down)  # longer than the keepalive timeouts: the watch is lost
            etcd.thaw()
            for _ in range(3):  # then history the watch has not seen, compacted away
                w.put()
            c = client(etcd.endpoint)
            c.compact(c.get("/k/n")[1].mod_revision)

        def recreate(i: int) -> None:
            etcd.kill()
            shutil.rmtree(etcd.data_dir)
            etcd.token = f"soak-{i}-{time.time_ns()}"
            etcd.start()

        {"restart": lambda: cycles(args, w, restart), "freeze": lambda: cycles(args, w, freeze),
         "compact": lambda: cycles(args, w, compact),
         "recreate": lambda: cycles(args, w, recreate)}[args.scenario]()
    finally:
        w.close()


def scenario_outage(args: argparse.Namespace, base: Path, binary: str) -> None:
    w = Watch(base, binary)
    try:
        time.sleep(args.settle)
        before = w.log_lines()
        show("before", w.proc.proc.pid)
        (w.etcd.freeze if args.frozen else w.etcd.kill)()
        time.sleep(args.seconds)
        lines = w.log_lines() - before
        show("outage end", w.proc.proc.pid,
             f"{lines} log lines in {args.seconds:.0f}s = {lines * 60 / args.seconds:.0f}/min")
        (w.etcd.thaw if args.frozen else w.etcd.start)()
        w.caught_up()
        print("\n".join(w.proc.output().splitlines()[before:before + 40]))
    finally:
        w.close()


def scenario_http(args: argparse.Namespace, base: Path, binary: str) -> None:
    w = Watch(base, binary)
    held: list[socket.socket] = []
    try:
        time.sleep(args.settle)
        first = show("start", w.proc.proc.pid)
        for i in range(1, args.cycles + 1):
            s = socket.create_connection(("127.0.0.1", w.port))
            if i % 2:
                s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")  # never finished
            held.append(s)
            if i % args.every == 0:
                started = time.monotonic()
                code = http_get(w.port, "/health", timeout=5)[0]
                show(f"{i} held", w.proc.proc.pid,
                     f"/health {code} in {time.monotonic() - started:.3f}s")
        for s in held:
            s.close()
        held.clear()
        time.sleep(args.settle + 11)  # the handler's read timeout
        last = show("released", w.proc.proc.pid)
        print("delta:", {k: round(last[k] - first[k], 1) for k in first}, flush=True)
    finally:
        for s in held:
            s.close()
        w.close()


def _health_handler(flag: Path) -> type[BaseHTTPRequestHandler]:
    class Health(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200 if flag.exists() else 500)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    return Health


def scenario_register(args: argparse.Namespace, base: Path, binary: str) -> None:
    etcd: EtcdMember = start_single(binary, base / "etcd")
    flag = base / "healthy"
    flag.touch()
    port = free_port()
    http_port = free_port()
    write_registration(base / "confdir", "web", f"""
service = "web"
port = 8080
address = "127.0.0.1"
id = "web-1"
ttl = "3s"
drain = "0s"
[[check]]
type = "exec"
command = ["test", "-e", "{flag}"]
interval = "100ms"
rise = 1
fall = 1
""" + ("" if not args.http_check else f"""
[[check]]
type = "http"
url = "http://127.0.0.1:{http_port}/healthz"
interval = "100ms"
rise = 1
fall = 1
"""))
    server = ThreadingHTTPServer(("127.0.0.1", http_port), _health_handler(flag))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    proc = RegisterProcess(base / "confdir", etcd.endpoint, "--metrics-address",
                           f"127.0.0.1:{port}", "--log-level", "info", log=base / "reg.log")
    clients = [client(etcd.endpoint)]
    key = "/services/web/instances/web-1"

    def registered() -> bool:
        return published(clients[-1], key) is not None

    try:
        wait_for(registered, DEADLINE, what="registered")
        time.sleep(args.settle)
        first = show("start", proc.proc.pid, lambda: f"metrics {metric_lines(port)}")
        for i in range(1, args.cycles + 1):
            flag.unlink()
            wait_for(lambda: not registered(), DEADLINE, what="deregistered")
            flag.touch()
            if args.etcd_too and i % 4 == 0:
                etcd.kill()
                time.sleep(args.down)
                etcd.start()
                clients.append(client(etcd.endpoint))
            wait_for(registered, DEADLINE, what="registered")
            if i % args.every == 0 or i == args.cycles:
                time.sleep(args.settle)
                show(f"cycle {i}", proc.proc.pid,
                     lambda: f"metrics {metric_lines(port)} log {len(proc.output().splitlines())}")
        last = figures(proc.proc.pid)
        print("delta:", {k: round(last[k] - first[k], 1) for k in first}, flush=True)
    finally:
        proc.stop()
        etcd.stop()
        server.shutdown()
        server.server_close()


def scenario_haproxy(args: argparse.Namespace, base: Path, binary: str) -> None:
    """`confsync watch` driving HAProxy (runtime strategy): servers join and leave every
    cycle, a structural change (a reload) every 5th, HAProxy restarted by someone else every
    10th."""
    from tests.support.haproxy import HAProxyStack

    etcd = start_single(binary, base / "etcd")
    stack = HAProxyStack(shutil.which("haproxy") or "/usr/sbin/haproxy", etcd.endpoint,
                         check_server_changes=False)
    port = free_port()
    proc: WatchProcess | None = None
    try:
        stack.put_basics(balance="roundrobin")
        for n in range(4):
            stack.put_instance("web", f"i{n}", 20000 + n)
        stack.sync_ok()
        stack.start()
        proc = WatchProcess(*stack.cli_args(), "--wait-min", "0", "--metrics-address",
                            f"127.0.0.1:{port}", log=base / "watch.log")
        watch = proc

        def served(name: str, present: bool) -> bool:
            text = stack.admin_command("show servers state be_web")
            return (f" {name} " in text) == present and http_get(port, "/ready")[0] == 200

        def swapped(joining: str, leaving: str) -> bool:
            return served(joining, True) and served(leaving, False)

        wait_for(lambda: served("i0", True), DEADLINE, what="first render")
        time.sleep(args.settle)
        first = show("start", proc.proc.pid, lambda: f"metrics {metric_lines(port)}")
        for i in range(1, args.cycles + 1):
            joining, leaving = f"j{i}", f"j{i - 1}" if i > 1 else "i0"
            stack.put_instance("web", joining, 21000 + i % 1000)
            stack.delete(f"/services/web/instances/{leaving}")
            if i % 5 == 0:
                stack.put("/services/web/config", {"check_path": f"/healthz{i % 2}"})
            if i % 10 == 0:
                stack.restart()
            wait_for(functools.partial(swapped, joining, leaving), DEADLINE,
                     what=f"{joining} in, {leaving} out")
            if i % args.every == 0 or i == args.cycles:
                time.sleep(args.settle)
                show(f"cycle {i}", watch.proc.pid, lambda: f"metrics {metric_lines(port)} "
                     f"log {len(watch.output().splitlines())}")
        last = figures(proc.proc.pid)
        print("delta:", {k: round(last[k] - first[k], 1) for k in first}, flush=True)
    finally:
        if proc is not None:
            proc.stop()
        stack.halt()
        etcd.stop()
        shutil.rmtree(stack.base, ignore_errors=True)


def inotify_watches(pid: int) -> int:
    """Watches held by the process's inotify instances (the `inotify wd:` lines of fdinfo)."""
    total = 0
    fd_dir = Path(f"/proc/{pid}/fd")
    for fd in fd_dir.iterdir():
        with contextlib.suppress(OSError):
            if os.readlink(fd) == "anon_inode:inotify":
                text = Path(f"/proc/{pid}/fdinfo/{fd.name}").read_text()
                total += text.count("inotify wd:")
    return total


def etcd_watchers(endpoint: str) -> int:
    """The watchers etcd holds (all clients): its etcd_debugging_mvcc_watcher_total gauge."""
    with urllib.request.urlopen(f"{endpoint}/metrics", timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line.startswith("etcd_debugging_mvcc_watcher_total "):
                return int(float(line.split()[1]))
    return -1


def scenario_churn(args: argparse.Namespace, base: Path, binary: str) -> None:
    """Configuration churn: every cycle edits the template of `k`, moves resource `moving` to
    another of 8 prefixes, adds a resource on a prefix never watched before (its own reload
    command) and removes the one added 4 cycles before,
    then sends SIGHUP (or, with --confdir-watch, lets `[watch] confdir = true` see the edits).
    Caught up means the edited template and a fresh put are in the file."""
    confdir = base / "confdir"
    etcd = start_single(binary, base / "etcd")
    config = base / "confsync.toml"
    config.write_text(f'confdir = "{confdir}"\n[watch]\nwait_min = "0s"\n'
                      f'confdir = {"true" if args.confdir_watch else "false"}\n')
    dest = base / "out.txt"
    port = free_port()
    c = client(etcd.endpoint)
    for p in range(8):
        c.put(f"/p{p}/v", str(p))

    def template(i: int) -> str:
        return (f"cycle={i}\n" + "{% for kv in gets('/k/*') %}{{ kv.key }}={{ kv.value }}\n"
                "{% endfor %}")

    def edit(i: int) -> None:
        write_resource(confdir, "k", template(i), f'dest = "{dest}"\nkeys = ["/k"]\n')
        write_resource(confdir, "moving", "{{ getv('/v') }}\n",
                       f'dest = "{base / "moving.txt"}"\nprefix = "/p{i % 8}"\nkeys = ["/v"]\n')
        c.put(f"/q{i}/v", str(i))  # a prefix never watched before
        write_resource(confdir, f"r{i}", "{{ getv('/v') }}\n",
                       f'dest = "{base / f"r{i}.txt"}"\nprefix = "/q{i}"\n'
                       f'keys = ["/v"]\nreload_cmd = "true r{i}"\n')
        gone = f"r{i - 4}"
        for old in (confdir / "conf.d" / f"{gone}.toml", confdir / "templates" / f"{gone}.tmpl"):
            with contextlib.suppress(FileNotFoundError):
                old.unlink()

    n = [0]

    def caught_up(i: int) -> None:
        n[0] += 1
        client(etcd.endpoint).put("/k/n", str(n[0]))
        wait_for(lambda: read(dest).startswith(f"cycle={i}\n") and f"/k/n={n[0]}\n" in read(dest),
                 DEADLINE, what=f"cycle {i} and /k/n={n[0]} in the file")
        wait_for(lambda: read(base / f"r{i}.txt") == f"{i}\n", DEADLINE,
                 what=f"r{i} rendered")
        wait_for(lambda: http_get(port, "/ready")[0] == 200, DEADLINE, what="/ready")

    edit(0)
    proc = WatchProcess("--config", str(config), "--endpoints", etcd.endpoint,
                        "--metrics-address", f"127.0.0.1:{port}", log=base / "watch.log")
    pid = proc.proc.pid

    def extra() -> str:
        return (f"inotify {inotify_watches(pid)} etcd_watchers {etcd_watchers(etcd.endpoint)} "
                f"metrics {metric_lines(port)} log {len(proc.output().splitlines())}")

    try:
        caught_up(0)
        time.sleep(args.settle)
        first = show("start", pid, extra)
        started = time.monotonic()
        for i in range(1, args.cycles + 1):
            edit(i)
            if not args.confdir_watch:
                proc.signal(signal.SIGHUP)
            caught_up(i)
            if i % args.every == 0 or i == args.cycles:
                time.sleep(args.settle)
                show(f"cycle {i}", pid, extra)
        last = figures(pid)
        print(f"{args.cycles} cycles in {time.monotonic() - started:.0f}s; delta:",
              {k: round(last[k] - first[k], 1) for k in first}, flush=True)
    finally:
        proc.stop()
        etcd.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenario", choices=["restart", "freeze", "compact", "recreate",
                                             "outage", "register", "http", "haproxy",
                                             "churn"])
    parser.add_argument("--cycles", type=int, default=20)
    parser.add_argument("--every", type=int, default=10, help="print figures every N cycles")
    parser.add_argument("--down", type=float, default=1.0,
                        help="seconds etcd stays killed or frozen per cycle")
    parser.add_argument("--settle", type=float, default=2.0)
    parser.add_argument("--seconds", type=float, default=60.0, help="outage length")
    parser.add_argument("--frozen", action="store_true", help="outage: SIGSTOP, not SIGKILL")
    parser.add_argument("--http-check", action="store_true",
                        help="register: also an http check, its server stopped with the flag")
    parser.add_argument("--etcd-too", action="store_true",
                        help="register: restart etcd every 4th cycle as well")
    parser.add_argument("--confdir-watch", action="store_true",
                        help="churn: [watch] confdir = true, no SIGHUP")
    args = parser.parse_args()
    binary = find_etcd()
    if binary is None:
        sys.exit("no etcd binary")
    base = Path(tempfile.mkdtemp(prefix="confsync-soak-"))
    try:
        if args.scenario in ("restart", "freeze", "compact", "recreate"):
            scenario_watch(args, base, binary)
        else:
            {"outage": scenario_outage, "http": scenario_http, "haproxy": scenario_haproxy,
             "register": scenario_register,
             "churn": scenario_churn}[args.scenario](args, base, binary)
    finally:
        with contextlib.suppress(OSError):
            shutil.rmtree(base)


if __name__ == "__main__":
    main()
