"""HAProxy outages under `confsync watch`: what /ready says, and what each outage costs.

    python bench/haproxy_outages.py [--outages 10] [--strategy reload|runtime]

Starts its own etcd, small HTTP backends and a master-worker HAProxy, and `confsync watch`
with /ready on a free port. Then, `--outages` times: HAProxy is stopped (as `systemctl stop`
would), the pool changes in etcd (one put and one delete in a transaction) for every other
outage (the rest change nothing), and HAProxy is started again from the file on disk. Prints, per
run: the time from the stop to /ready 503 (`not running`), from HAProxy serving again to /ready
200, whether it served the new pool, and the reloads confsync made (its
`confsync_reloads_total`; each new master's own `show proc` counter as a cross-check). Last, a
start of `confsync watch` on a current file with HAProxy down, then HAProxy's start.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.support.daemon import WatchProcess  # noqa: E402
from tests.support.etcd_server import find_etcd, free_port, start_single  # noqa: E402
from tests.support.haproxy import HAProxyStack, spread, wait_for  # noqa: E402
from tests.support.http_backends import HTTPBackend  # noqa: E402


def ready(port: int) -> tuple[int, list[str]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=2) as answer:
            return answer.status, json.loads(answer.read())["reasons"]
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())["reasons"]
    except urllib.error.URLError:
        return 0, []


def not_running(port: int) -> bool:
    status, reasons = ready(port)
    return status == 503 and any(r.startswith("not running") for r in reasons)


def reloads(port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as answer:
        for line in answer.read().decode().splitlines():
            if line.startswith("confsync_reloads_total{") and 'outcome="ok"' in line:
                return int(float(line.rpartition(" ")[2]))
    return 0


def timed(predicate: object, timeout: float) -> float:
    """Seconds until `predicate` holds; inf when it did not within `timeout`."""
    start = time.monotonic()
    try:
        wait_for(predicate, timeout=timeout, interval=0.005)
    except AssertionError:
        return float("inf")
    return time.monotonic() - start


def ms(seconds: float) -> str:
    return "never" if seconds == float("inf") else f"{seconds * 1000:.0f} ms"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--outages", type=int, default=10)
    parser.add_argument("--strategy", choices=("reload", "runtime"), default="reload")
    args = parser.parse_args()
    haproxy = shutil.which("haproxy") or "/usr/sbin/haproxy"
    etcd_binary = find_etcd()
    if etcd_binary is None:
        print("no etcd binary", file=sys.stderr)
        return 2
    base = Path(tempfile.mkdtemp(prefix="confsync-outages-"))
    member = start_single(etcd_binary, base / "etcd")
    backends = {name: HTTPBackend(name).start() for name in ("a", "b")}
    stack = HAProxyStack(haproxy, member.endpoint, strategy=args.strategy)
    metrics = free_port()
    watch = None
    try:
        stack.put_basics()
        stack.put_instance("web", "a", backends["a"].port)
        stack.sync_ok()  # the file is current before `watch` starts; HAProxy not running
        watch = WatchProcess(*stack.cli_args(), "--wait-min", "20ms", "--wait-max", "500ms",
                             "--metrics-address", f"127.0.0.1:{metrics}",
                             log=base / "watch.log")
        said = timed(lambda: not_running(metrics), 10)
        stack.start()
        first = timed(lambda: ready(metrics)[0] == 200, 40)
        print(f"start of watch on a current file, HAProxy down: /ready 503 (not running) "
              f"{'yes' if said < 10 else 'never'}; HAProxy serving -> /ready 200 in "
              f"{ms(first)}; reloads {reloads(metrics)}")
        down_times, up_times, masters = [], [], []
        current = "a"
        for i in range(args.outages):
            before = reloads(metrics)
            stack.halt()
            down_times.append(timed(lambda: not_running(metrics), 4))
            change = i % 2 == 0
            if change:
                unserved = f"wrote {stack.cfg} (no HAProxy master"
                writes = watch.output().count(unserved)
                new = "b" if current == "a" else "a"
                txn = stack.client.transactions
                stack.client.transaction(compare=[], failure=[], success=[
                    txn.put(f"{stack.prefix}/services/web/instances/{new}", json.dumps(
                        {"address": "127.0.0.1", "port": backends[new].port})),
                    txn.delete(f"{stack.prefix}/services/web/instances/{current}")])
                # confsync's reload step is over (it found nothing running) before the start:
                # an HAProxy started within a clock tick (10 ms) of the file cannot be told
                # from one that read the previous file, and is reloaded.
                wait_for(lambda w=writes, u=unserved: watch.output().count(u) > w, timeout=10)
                current = new
            stack.start()
            up_times.append(timed(lambda: ready(metrics)[0] == 200, 40))
            served = spread(stack.port, 4) == {current: 4}
            masters.append(stack.status().reloads)
            print(f"outage {i + 1:2d} ({'pool changed' if change else 'no change'}): "
                  f"stop -> 503 {ms(down_times[-1])}, serving -> 200 {ms(up_times[-1])}, new "
                  f"pool served: {served}, reloads by confsync {reloads(metrics) - before}")
        print(f"{args.outages} outages, {args.strategy} strategy: confsync reloads "
              f"{reloads(metrics)} (HAProxy masters' own counters {sum(masters)}); "
              f"stop -> /ready 503 p50 {ms(statistics.median(down_times))}, max "
              f"{ms(max(down_times))}; serving -> /ready 200 p50 "
              f"{ms(statistics.median(up_times))}, max {ms(max(up_times))}")
    finally:
        if watch is not None:
            watch.stop()
        stack.stop()
        for backend in backends.values():
            backend.stop()
        member.stop()
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
