"""`confsync once` for 5,000 service instances in etcd -> a 5,000-server haproxy.cfg.

Prints wall time and peak RSS of the whole process (interpreter start-up included), for a run
that writes the file and for runs that find nothing to change. Goal: <= 0.3 s, <= 60 MB.
Usage: python bench/once.py [--instances 5000] [--runs 7]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

from bench.common import (
    compile_sources,
    haproxy_confdir,
    load_instances,
    run_measured,
    start_etcd,
)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--instances", type=int, default=5000)
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    compile_sources()
    with tempfile.TemporaryDirectory(prefix="confsync-bench-") as tmp:
        base = Path(tmp)
        etcd = start_etcd(base / "etcd")
        try:
            load_instances(etcd.endpoint, "/bench", args.instances)
            dest = base / "haproxy.cfg"
            confdir = haproxy_confdir(base, dest)
            argv = [sys.executable, "-m", "confsync", "once", "--confdir", str(confdir),
                    "--endpoints", etcd.endpoint, "--prefix", "/bench", "--log-level", "error"]
            written, unchanged, rss = [], [], []
            for _ in range(args.runs):
                dest.unlink(missing_ok=True)
                seconds, peak, code = run_measured(argv)
                assert code == 0, f"confsync once exited {code}"
                written.append(seconds)
                rss.append(peak)
                seconds, peak, code = run_measured(argv)
                assert code == 0
                unchanged.append(seconds)
                rss.append(peak)
            servers = dest.read_text().count("\n    server ")
            startup, _, _ = run_measured([sys.executable, "-c", "pass"])
            version, _, _ = run_measured([sys.executable, "-m", "confsync", "--version"])
        finally:
            etcd.stop()
    print(f"confsync once, {args.instances} instances in etcd -> {servers} servers rendered")
    print(f"  writes the file:    median {statistics.median(written):.3f} s "
          f"(min {min(written):.3f}, max {max(written):.3f})")
    print(f"  nothing to change:  median {statistics.median(unchanged):.3f} s "
          f"(min {min(unchanged):.3f}, max {max(unchanged):.3f})")
    print(f"  peak RSS:           max {max(rss) / 1024:.1f} MB")
    print(f"  for scale: python -c pass {startup:.3f} s, confsync --version {version:.3f} s")


if __name__ == "__main__":
    main()
