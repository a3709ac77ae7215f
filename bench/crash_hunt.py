"""Crash hunt: SIGHUP storms and start/stop loops against an etcd killed and restarted.

    python bench/crash_hunt.py watch --seconds 60            # prefixes switched by SIGHUP
    python bench/crash_hunt.py watch --proxy --seconds 60    # through `etcd grpc-proxy`
    python bench/crash_hunt.py watch --endpoints-change      # each SIGHUP a new store too
    python bench/crash_hunt.py register --seconds 60         # start, SIGHUP, stop, again

Every process is a real `confsync` with faulthandler on (a native crash leaves its stacks in
the log). Each run greps its logs for "Fatal Python error" and thread deaths and prints the
exit statuses (negative: killed by a signal); `watch` also checks that the files converge to
etcd once the faults stop. Bounded in time; loopback only; everything started is stopped.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.support.cli import write_resource  # noqa: E402
from tests.support.daemon import WatchProcess, read, wait_for  # noqa: E402
from tests.support.etcd_client import client  # noqa: E402
from tests.support.etcd_server import find_etcd, start_single  # noqa: E402
from tests.support.grpc_proxy import GrpcProxy  # noqa: E402
from tests.support.register import RegisterProcess, write_registration  # noqa: E402

BAD = ("Fatal Python error", " died", "stopped unexpectedly", "Traceback")
ENV = {"PYTHONPATH": str(REPO)}


def _bad(text: str) -> dict[str, int]:
    return {needle: text.count(needle) for needle in BAD if needle in text}


def _put(endpoint: str, key: str, value: str) -> None:
    deadline = time.monotonic() + 20
    while True:
        try:
            client(endpoint).put(key, value)
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _etcd(base: Path, proxy: bool) -> tuple[Any, list[Any]]:
    """(what confsync talks to, what the hunt kills): etcd, or a gRPC proxy in front of it."""
    binary = find_etcd()
    assert binary is not None
    etcd = start_single(binary, base / "etcd")
    faulty: list[Any] = [etcd]
    if not proxy:
        return etcd, faulty
    target = GrpcProxy(binary, [etcd], base / "proxy.log").start()
    faulty.append(target)
    return target, faulty


def hunt_watch(base: Path, seconds: float, rnd: random.Random, proxy: bool,
               endpoints_change: bool) -> None:
    target, faulty = _etcd(base, proxy)
    port = target.endpoint.rsplit(":", 1)[1]
    for p in range(6):
        _put(target.endpoint, f"/p{p}/app/v", f"v{p}")
    cd, config = base / "cd", base / "confsync.toml"

    def configure(n: int) -> None:  # three resources, each on one of six prefixes
        for r in range(3):
            write_resource(cd, f"r{r}", "{{ getv('/app/v') }}\n",
                           f'dest = "{base}/out{r}"\nkeys = ["/app"]\nprefix = "/p{(n + r) % 6}"')
        host = "localhost" if endpoints_change and n % 2 else "127.0.0.1"
        config.write_text(f'[etcd]\nendpoints = ["http://{host}:{port}"]\n')

    configure(0)
    w = WatchProcess("--config", str(config), "--confdir", str(cd), "--wait-min", "0",
                     log=base / "watch.log", env=ENV)
    n = kills = 0
    converged = False
    try:
        wait_for(lambda: read(base / "out0") == "v0\n", 30, what="first render")
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and w.proc.poll() is None:
            n += 1
            configure(n)
            w.signal(signal.SIGHUP)
            time.sleep(rnd.choice([0.0, 0.01, 0.05, 0.2, 0.5]))
            if n % 7 == 0:
                victim = rnd.choice(faulty)
                victim.kill()
                kills += 1
                time.sleep(rnd.choice([0.05, 0.3, 1.0]))
                victim.start()
        if w.proc.poll() is None:
            for p in range(6):
                _put(target.endpoint, f"/p{p}/app/v", f"final{p}")
            try:
                wait_for(lambda: all(read(base / f"out{r}") == f"final{(n + r) % 6}\n"
                                     for r in range(3)), 60, what="convergence")
                converged = True
            except AssertionError:
                pass
    finally:
        status = w.stop()
        for process in reversed(faulty):
            process.stop()
    print(f"watch: {n} SIGHUPs, {kills} kills; exit {status}; converged {converged}; "
          f"bad lines {_bad(w.output())}")


def hunt_register(base: Path, seconds: float, rnd: random.Random, proxy: bool) -> None:
    target, faulty = _etcd(base, proxy)
    for n in range(3):
        write_registration(base / "conf", f"web{n}",
                           f'service = "web"\nport = {20000 + n}\nid = "web-{n}"\nttl = "3s"\n'
                           'address = "127.0.0.1"\n[[check]]\ntype = "exec"\n'
                           'command = ["true"]\ninterval = "100ms"\nrise = 1\n')
    statuses: dict[int, int] = {}
    runs = kills = 0
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            runs += 1
            log = base / f"register-{runs}.log"
            proc = RegisterProcess(base / "conf", target.endpoint, "--prefix", "/hunt",
                                   log=log, env=ENV)
            # (a SIGHUP before the interpreter runs confsync's first line ends any Python)
            wait_for(lambda log=log: log.exists() and log.stat().st_size > 0, 30,  # type: ignore[misc]
                     what="first line")
            life = time.monotonic() + rnd.uniform(0.3, 4)
            while time.monotonic() < life:
                time.sleep(rnd.choice([0.05, 0.2, 0.5]))
                if rnd.random() < 0.3:
                    proc.signal(signal.SIGHUP)
                elif rnd.random() < 0.2:
                    victim = rnd.choice(faulty)
                    victim.kill()
                    kills += 1
                    time.sleep(rnd.choice([0.05, 0.5]))
                    victim.start()
            if rnd.random() < 0.3:  # a second stop signal: not waiting for etcd
                proc.signal(signal.SIGTERM)
                time.sleep(rnd.choice([0.0, 0.05]))
            status = proc.stop()
            statuses[status] = statuses.get(status, 0) + 1
            bad = _bad(proc.output())
            if bad or status < 0:
                print(f"register run {runs}: exit {status}, bad lines {bad}, log {log}")
    finally:
        for process in reversed(faulty):
            process.stop()
    print(f"register: {runs} runs, {kills} kills; exit statuses {statuses}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("watch", "register"))
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--proxy", action="store_true", help="through etcd's gRPC proxy")
    parser.add_argument("--endpoints-change", action="store_true",
                        help="watch: every other SIGHUP spells the endpoint otherwise")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="confsync-crash-hunt-"))
    try:
        rnd = random.Random(args.seed)
        if args.what == "watch":
            hunt_watch(base, args.seconds, rnd, args.proxy, args.endpoints_change)
        else:
            hunt_register(base, args.seconds, rnd, args.proxy)
    finally:
        if os.environ.get("KEEP"):
            print(f"logs kept in {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
