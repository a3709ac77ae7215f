"""A user lookup that hangs (LDAP or sssd down) under a running `watch`. Figures, no assertions.

    python bench/owner_hang.py                 # hang for 20 s (the default)
    python bench/owner_hang.py --hang 60

A real `confsync watch` (root, in a mount namespace of its own) follows a real etcd with one
resource `other`. A FIFO is then bound over its /etc/passwd (NSS's `files` blocks in its open,
as on a dead directory server), a resource `app` with `owner = "daemon"` is added with SIGHUP,
and for --hang seconds: /health is sampled every 0.1 s (its heartbeat age), and a value under
`other` is put every second, timed from the put to the file. Then the lookup is answered and
the time to `app`'s file is taken. Loopback only; everything is removed at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.common import start_etcd, summary  # noqa: E402
from tests.support.cli import write_resource  # noqa: E402
from tests.support.daemon import WatchProcess, read, reads, wait_for  # noqa: E402
from tests.support.etcd_client import client  # noqa: E402
from tests.support.etcd_server import free_port  # noqa: E402
from tests.support.http_probe import probe  # noqa: E402

TEMPLATE = "value={{ getv('/k/v') }}\n"


def _answer(fifo: Path) -> None:
    with contextlib.suppress(OSError):  # (ENXIO: nobody waits; EPIPE: it read its line)
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        with open(fd, "wb") as lookup:
            lookup.write(Path("/etc/passwd").read_bytes())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hang", type=float, default=20.0, help="seconds the lookup hangs")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("needs root (a mount namespace with a FIFO over /etc/passwd)")
    base = Path(tempfile.mkdtemp(prefix="confsync-owner-hang-"))
    etcd = start_etcd(base / "etcd")
    watch = None
    fifo = base / "passwd"
    try:
        etcd_client = client(etcd.endpoint)
        etcd_client.put("/b/k/v", "0")
        confdir, other, app = base / "cd", base / "other.conf", base / "app.conf"
        write_resource(confdir, "other", TEMPLATE, f'dest = "{other}"\nkeys = ["/k"]\n')
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        watch = WatchProcess("--confdir", str(confdir), "--endpoints", etcd.endpoint,
                             "--prefix", "/b", "--wait-min", "0", "--metrics-address",
                             f"127.0.0.1:{port}", log=base / "watch.log",
                             wrapper=("unshare", "--mount", "--propagation", "private"))
        wait_for(lambda: read(other) == "value=0\n" and probe(url, "/health")[0] == 200, 30,
                 what="first render")
        os.mkfifo(fifo)
        subprocess.run(["nsenter", "--target", str(watch.proc.pid), "--mount", "mount",
                        "--bind", str(fifo), "/etc/passwd"], check=True)
        write_resource(confdir, "app", TEMPLATE,
                       f'dest = "{app}"\nkeys = ["/k"]\nowner = "daemon"\n')
        watch.signal(signal.SIGHUP)
        started = time.monotonic()
        ages: list[float] = []
        unhealthy: list[float] = []
        sampling = threading.Event()

        def sample() -> None:
            while not sampling.wait(0.1):
                status, body = probe(url, "/health")
                ages.append(float(body.get("heartbeat_age_seconds", -1.0)))
                if status != 200:
                    unhealthy.append(time.monotonic() - started)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        latencies: list[float] = []
        missed = 0
        n = 0
        while time.monotonic() - started < args.hang:
            n += 1
            put_at = time.monotonic()
            etcd_client.put("/b/k/v", str(n))
            try:
                wait_for(functools.partial(reads, other, f"value={n}\n"), 5)
                latencies.append(time.monotonic() - put_at)
            except AssertionError:
                missed += 1
            time.sleep(max(0.0, 1.0 - (time.monotonic() - put_at)))
        subprocess.run(["nsenter", "--target", str(watch.proc.pid), "--mount", "umount",
                        "--lazy", "/etc/passwd"], capture_output=True)  # (gone: replaced)
        released = time.monotonic()
        _answer(fifo)
        try:
            wait_for(lambda: read(app) == f"value={n}\n", 120)
            written = f"{time.monotonic() - released:.2f} s"
        except AssertionError:
            written = "not within 120 s"
        sampling.set()
        sampler.join(timeout=5)
        print(f"lookup hung {args.hang:.0f} s after a SIGHUP adding a resource owned by it")
        print(f"  /health samples: {len(ages)}, not 200: {len(unhealthy)}"
              + (f" (first {unhealthy[0]:.1f} s after the SIGHUP)" if unhealthy else ""))
        print(f"  heartbeat age: {summary(ages)}, max {max(ages, default=0.0):.1f} s")
        print(f"  other resource, put -> file: {len(latencies)} of {n} within 5 s; "
              f"{summary(latencies) if latencies else '-'}")
        print(f"  the lookup answered -> app's file: {written}")
        failures = watch.output().count("resource app: owner failed")
        print(f"  'owner failed' lines: {failures}")
    finally:
        _answer(fifo)
        if watch is not None:
            watch.stop()
        etcd.stop()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
