"""Log soak: how many lines a month of faults writes, in a minute. Figures, no assertions.

    python bench/log_soak.py                  # 60 s (the default)
    python bench/log_soak.py --seconds 300    # the fault script again and again for 5 minutes
    python bench/log_soak.py --steps none     # the flapping only: a month of it, per minute

A real `confsync watch` (at --log-level debug, so every line is counted by level) follows a
real etcd through a scripted mix of faults, one cycle after the other until the time is up:

- a value that fails its filter (`port`), fixed a few seconds later;
- a template syntax error, sent with SIGHUP (refused), then fixed with another SIGHUP;
- etcd killed and started again (same data);
- a compaction the watch missed (`watch` stopped with SIGSTOP while etcd was restarted, written
  to and compacted), then etcd killed while the re-read waits its jitter: the re-read fails
  until etcd is back (cut off from etcd);
- and all along a flapping value (good, bad, good ... every second) under a resource whose
  render fails on the bad one, and a change every 3 s under a resource whose check fails
  every other time it runs (each change: a failed check, then a retry that passes).

It prints the lines per minute by level (INFO and above: what a journal gets at the default
level) and the most repeated messages (numbers blanked). Loopback only; etcd, `watch` and the
temp dir are removed at the end.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.support.cli import write_resource  # noqa: E402
from tests.support.daemon import WatchProcess, wait_for  # noqa: E402
from tests.support.etcd_client import client  # noqa: E402
from tests.support.etcd_server import EtcdMember, find_etcd, start_single  # noqa: E402

GOOD_TEMPLATE = "port={{ getv('/s/port') | port }}\n"
BROKEN_TEMPLATE = "port={{ getv('/s/port') | port }\n"  # a syntax error
FLAP_TEMPLATE = ("{% if getv('/f/v') == 'bad' %}{{ getv('/f/missing') }}{% endif %}"
                 "v={{ getv('/f/v') }}\n")
STEPS = ("bad_value", "template_error", "etcd_restart", "compaction_cut_off")
_LINE = re.compile(r"^\S+ \S+ (DEBUG|INFO|WARNING|ERROR|CRITICAL) (.*)$")
_NUMBER = re.compile(r"\d+(\.\d+)?")


def put(etcd: EtcdMember, key: str, value: str) -> bool:
    """One put; False when etcd does not take it (down: the script goes on)."""
    try:
        client(etcd.endpoint, timeout=2).put(key, value)
        return True
    except Exception:
        return False


class Soak:
    def __init__(self, base: Path, binary: str, seconds: float) -> None:
        self.base, self.end = base, time.monotonic() + seconds
        self.etcd = start_single(binary, base / "etcd")
        self.confdir = base / "confdir"
        write_resource(self.confdir, "svc", GOOD_TEMPLATE,
                       f'dest = "{base / "svc.conf"}"\nkeys = ["/s"]\nwait_min = "0s"\n')
        write_resource(self.confdir, "flap", FLAP_TEMPLATE,
                       f'dest = "{base / "flap.conf"}"\nkeys = ["/f"]\nwait_min = "0s"\n')
        runs = base / "check-runs"  # (the check fails every other time it runs)
        write_resource(self.confdir, "chk", "n={{ getv('/c/n') }}\n",
                       f'dest = "{base / "chk.conf"}"\nkeys = ["/c"]\nwait_min = "0s"\n'
                       f'check_cmd = ["sh", "-c", "echo >> {runs}; '
                       f'test $(($(wc -l < {runs}) % 2)) -eq 0"]\n')
        put(self.etcd, "/s/port", "8080")
        put(self.etcd, "/f/v", "good")
        put(self.etcd, "/c/n", "0")
        self.watch = WatchProcess("--confdir", str(self.confdir), "--endpoints",
                                  self.etcd.endpoint, "--log-level", "debug",
                                  log=base / "watch.log")
        wait_for(lambda: (base / "flap.conf").exists(), 60, what="the first render")
        self.started = time.monotonic()
        self._flapping = threading.Event()

    def left(self) -> float:
        return self.end - time.monotonic()

    def pause(self, seconds: float) -> bool:
        """Wait `seconds` (less if the time is up); False once it is."""
        time.sleep(max(0.0, min(seconds, self.left())))
        return self.left() > 0

    def flapper(self) -> None:
        value, n = "good", 0
        while not self._flapping.is_set() and self.left() > 0:
            value, n = "bad" if value == "good" else "good", n + 1
            put(self.etcd, "/f/v", value)
            if n % 3 == 0:  # a change for the check that fails every other time
                put(self.etcd, "/c/n", str(n))
            self._flapping.wait(1.0)

    def bad_value(self) -> None:
        put(self.etcd, "/s/port", "0")  # fails `port`
        if self.pause(5):
            put(self.etcd, "/s/port", "8081")

    def template_error(self) -> None:
        tmpl = self.confdir / "templates" / "svc.tmpl"
        tmpl.write_text(BROKEN_TEMPLATE)
        self.watch.signal(signal.SIGHUP)
        self.pause(4)
        tmpl.write_text(GOOD_TEMPLATE)
        self.watch.signal(signal.SIGHUP)

    def etcd_restart(self) -> None:
        self.etcd.kill()
        self.pause(10)
        self.etcd.start()

    def compaction_cut_off(self) -> None:
        """A compaction `watch` missed, then etcd gone while the re-read waits its jitter."""
        said = self.watch.output().count("compacted (up to")
        self.watch.signal(signal.SIGSTOP)
        try:
            self.etcd.kill()  # (the stream `watch` holds is gone once it runs again)
            self.etcd.start()
            for n in range(3):
                put(self.etcd, "/s/other", str(n))
            with contextlib.suppress(Exception):
                c = client(self.etcd.endpoint, timeout=2)
                c.compact(c.get("/s/other")[1].mod_revision)
        finally:
            self.watch.signal(signal.SIGCONT)
        with contextlib.suppress(AssertionError):
            wait_for(lambda: self.watch.output().count("compacted (up to") > said,
                     max(1.0, min(30.0, self.left())), interval=0.01, what="the compaction")
        self.etcd.kill()  # the re-read (0-4 s of jitter) finds etcd gone, and retries
        self.pause(25)
        self.etcd.start()

    def run(self, names: list[str]) -> None:
        flapper = threading.Thread(target=self.flapper, daemon=True)
        flapper.start()
        try:
            steps = [getattr(self, name) for name in names]
            while self.left() > 0:
                if not steps:
                    self.pause(self.left())
                for step in steps:
                    if not self.pause(3):
                        break
                    step()
        finally:
            self._flapping.set()
            flapper.join()

    def close(self) -> None:
        self.watch.stop()
        self.etcd.stop()


def tally(text: str, seconds: float, top: int) -> None:
    levels: collections.Counter[str] = collections.Counter()
    messages: collections.Counter[tuple[str, str]] = collections.Counter()
    for line in text.splitlines():
        m = _LINE.match(line)
        if m is None:
            continue  # a traceback's lines
        levels[m.group(1)] += 1
        messages[(m.group(1), _NUMBER.sub("#", m.group(2))[:150])] += 1
    minutes = seconds / 60
    print(f"{sum(levels.values())} lines in {seconds:.0f}s", flush=True)
    for level in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        print(f"  {level:<8} {levels[level]:>6}  {levels[level] / minutes:>8.1f}/min")
    journal = sum(n for level, n in levels.items() if level != "DEBUG")
    print(f"  INFO and above: {journal / minutes:.1f}/min")
    print(f"top {top} repeated messages at INFO and above (numbers as #):")
    for (level, message), n in [item for item in messages.most_common()
                                if item[0][0] != "DEBUG"][:top]:
        print(f"  {n:>5}  {level:<7} {message}")
    print(f"top {top} at DEBUG:")
    for (level, message), n in [item for item in messages.most_common()
                                if item[0][0] == "DEBUG"][:top]:
        print(f"  {n:>5}  {level:<7} {message}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="how long the faults run")
    parser.add_argument("--top", type=int, default=12, help="repeated messages to print")
    parser.add_argument("--keep-log", type=Path, help="copy watch's log here")
    parser.add_argument("--steps", default=",".join(STEPS),
                        help="the faults, in order, comma-separated; `none`: the flapping only "
                             "(the steady state of a resource that flaps for months)")
    args = parser.parse_args()
    binary = find_etcd()
    if binary is None:
        sys.exit("no etcd binary")
    base = Path(tempfile.mkdtemp(prefix="confsync-log-soak-"))
    soak = None
    try:
        soak = Soak(base, binary, args.seconds)
        soak.run([] if args.steps == "none" else args.steps.split(","))
        seconds = time.monotonic() - soak.started
        soak.close()
        text = soak.watch.output()
        if args.keep_log:
            args.keep_log.write_text(text)
        tally(text, seconds, args.top)
    finally:
        if soak is not None:
            soak.close()
        with contextlib.suppress(OSError):
            shutil.rmtree(base)


if __name__ == "__main__":
    main()
