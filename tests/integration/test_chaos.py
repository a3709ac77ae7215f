"""Chaos: the real `confsync watch` against a real etcd while a seeded random driver injects
bounded faults (issue 13). The daemon never exits, /health and /ready tell the truth, and once
the faults stop every dest equals a render of etcd's final state.

Faults: etcd SIGKILL + restart, SIGSTOP/SIGCONT, compaction, non-UTF-8 keys and values, bad
values, a full disk under one dest (a 64 KiB tmpfs; skipped when it cannot be mounted), failing
checks and reloads (flag files), SIGHUPs that edit the resource set (one edit changes the
watched prefixes), a template edited to a syntax error and back (with a SIGHUP or not), a
dest's directory removed and made again, a dest replaced by someone else's file (drift) and an
etcd defragmentation. Half the seeds also run with `[watch] confdir = true`, so those edits are
loaded without a SIGHUP.

Half the seeds run against a 3-member cluster instead of one member (`CONFSYNC_CHAOS_CLUSTER`
= 1 or 0 forces it): the kills and freezes then hit one member (the cluster keeps its quorum),
a further fault stops two members for a while (the one left has no leader: /ready must say
so, nothing may be written from it, and the daemon must resume once quorum is back), and
another replaces a member by a new one on new ports (`etcdctl member remove`, `member add`):
after a few, none of the endpoints `watch` was started with is left.

`CONFSYNC_CHAOS_SECONDS` (default 45) sets how long faults go on; `CONFSYNC_CHAOS_SEED`
replays a run.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import shutil
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.support.chaos import call_any, chaos_etcd, inject_faults
from tests.support.cli import confsync, write_resource
from tests.support.daemon import WatchProcess, read, wait_for
from tests.support.disk import fill
from tests.support.etcd_client import client
from tests.support.etcd_members import learned, replace_in_place
from tests.support.etcd_server import EtcdMember, free_port
from tests.support.http_probe import probe

pytestmark = pytest.mark.etcd

CHAOS_SECONDS = float(os.environ.get("CONFSYNC_CHAOS_SECONDS", "45"))
# etcd gone this long and /ready must say so: a stream that sees its member die at once...
KILL_GRACE = 3.0
# ... and one whose member lost its leader: etcd cancels a require-leader watch only after
# some election timeouts without one, then the reconnect's timeout. (Measured: 0.1-0.3 s when
# the watch was on a member that stopped, 4.5 s on the one left, loaded; the run prints how
# long each outage took to show.)
QUORUM_GRACE = 10.0
# A resource's dest is replaced by someone else at most this often per run: the daemon spaces
# the repairs of a dest that keeps changing by a doubling delay (1 s, 2 s, 4 s, ... 5 min), and
# a longer run must not outgrow the minute and a half it has to converge.
DRIFTS_PER_DEST = 3
PORTS_TEMPLATE = ("{% for kv in gets('/p/*') %}server {{ kv.key | base }} "
                  "127.0.0.1:{{ kv.value | port }}\n{% endfor %}")
BROKEN_TEMPLATE = "{% for kv in gets('/p/*') %}server {{ kv.key | base }\n"  # no endfor, no }}
LIST_VARIANTS = {
    "eq": "{% for kv in gets('/k/*') %}{{ kv.key | base }}={{ kv.value }}\n{% endfor %}",
    "colon": "{% for kv in gets('/k/*') %}{{ kv.key | base }}: {{ kv.value }}\n{% endfor %}",
}


@dataclass
class Chaos:
    tmp: Path
    members: list[EtcdMember]
    prefix: str
    rng: random.Random
    disk: Path | None
    actions: list[str] = field(default_factory=list)
    # etcd unusable (its one member killed, or the cluster without quorum): from, to, grace
    down: list[tuple[float, float, float]] = field(default_factory=list)
    variant: str = "eq"
    drifts: dict[str, int] = field(default_factory=dict)  # dest name -> times replaced
    replaced: int = 0  # members replaced by new ones
    # `watch`'s log, for `replace_member` to see it learn a new member; and whether it did
    # (a replacement after one it has not learned could leave it no member it knows).
    watch_output: Callable[[], str] = str
    may_replace: bool = True
    # Every (key, value) ever put (text ones), recorded before the put is sent: a value in a
    # dest that is not here is one etcd never held.
    written: set[tuple[str, str]] = field(default_factory=set)

    @property
    def cd(self) -> Path:
        return self.tmp / "cd"

    def flag(self, name: str) -> Path:
        return self.tmp / f"{name}.flag"

    @property
    def endpoints(self) -> str:
        return ",".join(m.endpoint for m in self.members)

    def call(self, fn: Callable[[Any], object], timeout: float = 2) -> None:
        call_any(self.members, fn, timeout)

    def put(self, key: str | bytes, value: str | bytes) -> None:
        if isinstance(key, str) and isinstance(value, str):
            self.written.add((key, value))
        full = (self.prefix.encode() + key) if isinstance(key, bytes) else self.prefix + key
        self.call(lambda c: c.put(full, value))

    def write_list(self) -> None:
        write_resource(self.cd, "list", LIST_VARIANTS[self.variant],
                       f'dest = "{self.tmp / "list.out"}"\nkeys = ["/k"]\n'
                       f'check_cmd = ["sh", "-c", "test ! -e {self.flag("check")}"]\n'
                       f'reload_cmd = ["sh", "-c", "test ! -e {self.flag("reload")}"]')

    # ---- the faults; each leaves things as they were or heals later

    def kill_restart(self) -> None:
        """One member SIGKILLed and started again (in a cluster the others keep quorum)."""
        member = self.rng.choice(self.members)
        member.kill()
        down_at = time.monotonic()
        time.sleep(self.rng.uniform(0.2, 4.0))
        member.start()
        if len(self.members) == 1:
            self.down.append((down_at, time.monotonic(), KILL_GRACE))

    def freeze(self) -> None:
        member = self.rng.choice(self.members)
        member.freeze()
        try:
            time.sleep(self.rng.uniform(0.5, 3.0))
        finally:
            member.thaw()

    def lose_quorum(self) -> None:
        """Two of the three members stop: the one left has no leader, then they come back."""
        stopped = self.rng.sample(self.members, 2)
        for m in stopped:
            m.kill()
        down_at = time.monotonic()
        time.sleep(self.rng.uniform(1.0, 14.0))  # (some longer than the grace)
        for m in stopped:
            m.start(wait=False)
        for m in stopped:
            m.wait_ready()
        self.down.append((down_at, time.monotonic(), QUORUM_GRACE))

    def replace_member(self) -> None:
        """A member removed from the cluster and a new one added in its place (new name,
        ports and data dir), as an operator replaces a failed machine."""
        if not self.may_replace:
            self.actions.append("(no replace: the last new member not learned)")
            return
        self.replaced += 1
        i = self.rng.randrange(len(self.members))
        replace_in_place(self.members, i, f"r{self.replaced}")
        url = self.members[i].endpoint
        try:
            wait_for(lambda: learned(self.watch_output(), url), 30, interval=0.5,
                     what=f"watch learning the new member {url}")
        except AssertionError:
            self.may_replace = False

    def compact(self) -> None:
        def compact(c: Any) -> None:
            value = str(time.time())
            self.written.add(("/k/compact", value))
            c.compact(c.put(self.prefix + "/k/compact", value).header.revision)
        self.call(compact)

    def raw_keys(self) -> None:
        n = self.rng.randrange(5)
        if self.rng.random() < 0.5:
            self.put(b"/n/a\xff" + str(n).encode(), "v")  # a non-UTF-8 key, sorted first
        else:
            self.put("/n/ok", b"\xc3\x28")  # a non-UTF-8 value under a plain key

    def bad_value(self) -> None:
        self.put(f"/p/s{self.rng.randrange(4)}", self.rng.choice(["http", "99999", "1\n2", ""]))

    def good_values(self) -> None:
        for _ in range(self.rng.randrange(1, 6)):
            section = self.rng.choice(["k", "k", "d", "e", "p"])
            value = str(self.rng.randrange(1, 65535))
            self.put(f"/{section}/s{self.rng.randrange(6)}", value)

    def full_disk(self) -> None:
        if self.disk is None:
            return
        filler = self.disk / "filler"
        if filler.exists():
            filler.unlink()
            return
        fill(filler)

    def toggle_flag(self) -> None:
        flag = self.flag(self.rng.choice(["check", "reload"]))
        if flag.exists():
            flag.unlink()
        else:
            flag.touch()

    @property
    def dest_dir(self) -> Path:
        """The directory of the `raw` resource's dest, which a fault removes and makes again."""
        return self.tmp / "dd"

    def template(self, w: WatchProcess) -> None:
        """Someone edits the ports template to a syntax error, or back to what it was; and
        sends a SIGHUP, or not (the edit is then loaded only by `[watch] confdir`, or by a
        later SIGHUP). A broken set must be refused, the running one kept."""
        src = self.cd / "templates" / "ports.tmpl"
        src.write_text(PORTS_TEMPLATE if src.read_text() == BROKEN_TEMPLATE
                       else BROKEN_TEMPLATE)
        if self.rng.random() < 0.5:
            w.signal(signal.SIGHUP)

    def remove_dest_dir(self) -> None:
        """The dest's directory goes (confsync never makes it) and comes back, empty."""
        if self.dest_dir.exists():
            shutil.rmtree(self.dest_dir)
        else:
            self.dest_dir.mkdir()

    def drift(self) -> None:
        """Someone else's file in place of a dest: replaced (as dpkg does) or edited in place."""
        dests = [p for p in (self.tmp / "list.out", self.tmp / "ports.out",
                             self.dest_dir / "raw.out", self.tmp / "extra.out")
                 if p.exists() and self.drifts.get(p.name, 0) < DRIFTS_PER_DEST]
        if not dests:
            return
        dest = self.rng.choice(dests)
        self.drifts[dest.name] = self.drifts.get(dest.name, 0) + 1
        with contextlib.suppress(FileNotFoundError):  # its directory went meanwhile
            if self.rng.random() < 0.5:
                staged = dest.with_name(dest.name + ".dpkg-new")
                staged.write_text("# the package's own file\n")
                os.replace(staged, dest)
            else:
                with dest.open("a") as f:
                    f.write("# a hand edit\n")

    def defrag(self) -> None:
        """A member's defragmentation (it stops serving while it runs)."""
        with contextlib.suppress(Exception):
            client(self.rng.choice(self.members).endpoint, timeout=5).defragment()

    def sighup(self, w: WatchProcess) -> None:
        extra = self.cd / "conf.d" / "extra.toml"
        if self.rng.random() < 0.5:
            if extra.exists():
                extra.unlink()  # the watched prefixes change
            else:
                write_resource(self.cd, "extra", "{% for kv in gets('/e/*') %}{{ kv.value }}\n"
                               "{% endfor %}", f'dest = "{self.tmp / "extra.out"}"\n'
                               f'keys = ["/e"]\nmin_keys = 0')
        else:
            self.variant = "colon" if self.variant == "eq" else "eq"
            self.write_list()
        w.signal(signal.SIGHUP)

    def heal(self) -> None:
        """Faults stop: etcd up, flags gone, disk free, the bad and raw keys replaced."""
        for m in self.members:
            m.thaw()
            if m.proc is None or m.proc.poll() is not None:
                m.start()
        for name in ("check", "reload"):
            self.flag(name).unlink(missing_ok=True)
        self.dest_dir.mkdir(exist_ok=True)
        (self.cd / "templates" / "ports.tmpl").write_text(PORTS_TEMPLATE)
        if self.disk is not None:
            (self.disk / "filler").unlink(missing_ok=True)
        deadline = time.monotonic() + 30
        while True:
            try:
                c = client(self.rng.choice(self.members).endpoint, timeout=3)
                c.delete_prefix(self.prefix + "/n/")
                self.written.update({*((f"/p/s{i}", str(8000 + i)) for i in range(4)),
                                     ("/n/ok", "fine"), ("/k/final", "1")})
                for i in range(4):
                    c.put(f"{self.prefix}/p/s{i}", str(8000 + i))
                c.put(self.prefix + "/n/ok", "fine")
                c.put(self.prefix + "/k/final", "1")
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)


def make_confdir(chaos: Chaos) -> None:
    chaos.write_list()
    disk_dir = chaos.disk if chaos.disk is not None else chaos.tmp
    write_resource(chaos.cd, "ports", PORTS_TEMPLATE,
                   f'dest = "{chaos.tmp / "ports.out"}"\nkeys = ["/p"]\nmin_keys = 0')
    write_resource(chaos.cd, "disk", "{% for kv in gets('/d/*') %}{{ kv.key | base }} "
                   "{{ kv.value }} {{ 'x' * 2000 }}\n{% endfor %}",
                   f'dest = "{disk_dir / "disk.out"}"\nkeys = ["/d"]\nmin_keys = 0')
    write_resource(chaos.cd, "raw", "{% for kv in gets('/n/*') %}{{ kv.key | base }}="
                   "{{ kv.value }}\n{% endfor %}",
                   f'dest = "{chaos.dest_dir / "raw.out"}"\nkeys = ["/n"]\nmin_keys = 0')


# What a dest may hold at any moment: lines of a render of some state etcd held (through
# each template: the key and value of a line are one that was put), or lines someone else's
# file brought (`drift`, all comments). Never a line of a broken template, or a value from
# another key.
DEST_LINE = {
    "list.out": (re.compile(r"(?P<key>s\d|compact|final)(=|: )(?P<value>[0-9.]+)|# .*"), "/k/"),
    "ports.out": (re.compile(r"server (?P<key>s\d) 127\.0\.0\.1:(?P<value>\d{1,5})|# .*"),
                  "/p/"),
}


def strays(chaos: Chaos) -> list[str]:
    """The lines of the watched dests that no render of etcd's states could have written."""
    found = []
    for name, (line_re, section) in DEST_LINE.items():
        try:
            text = (chaos.tmp / name).read_text()
        except FileNotFoundError:  # (gone only while `drift` replaces it)
            continue
        if text and not text.endswith("\n"):
            found.append(f"{name}: no final newline: {text[-80:]!r}")
        for line in text.splitlines():
            match = line_re.fullmatch(line)
            if match is None or (match["key"] is not None and (
                    section + match["key"], match["value"]) not in chaos.written):
                found.append(f"{name}: {line!r}")
    return found


def expected_list(chaos: Chaos) -> str:
    c = client(chaos.members[0].endpoint)
    items = sorted((m.key.decode().rpartition("/")[2], v.decode())
                   for v, m in c.get_prefix(chaos.prefix + "/k/"))
    sep = "=" if chaos.variant == "eq" else ": "
    return "".join(f"{k}{sep}{v}\n" for k, v in items)


def converged(chaos: Chaos) -> tuple[bool, str]:
    """`confsync check` renders etcd's state with the same conf.d: nothing would change."""
    done = confsync("check", "--no-diff", "--confdir", str(chaos.cd), "--endpoints",
                    chaos.endpoints, "--prefix", chaos.prefix, timeout=60)
    lines = [line for line in done.stdout.splitlines() if line.startswith("# ")]
    resources = len(list((chaos.cd / "conf.d").glob("*.toml")))
    ok = (len(lines) == resources and all(line.endswith("is up to date") for line in lines)
          and read(chaos.tmp / "list.out") == expected_list(chaos))
    return ok, done.stdout + done.stderr


# The faults, then up to a minute to converge and the checks: a longer run gets a longer limit.
@pytest.mark.timeout(CHAOS_SECONDS + 120)
def test_chaos(etcd_binary: str, tmp_path: Path) -> None:
    seed = int(os.environ.get("CONFSYNC_CHAOS_SEED", str(random.randrange(1 << 30))))
    print(f"chaos seed {seed} (CONFSYNC_CHAOS_SEED={seed} replays it)")
    rng = random.Random(seed)
    with chaos_etcd(etcd_binary, tmp_path, rng, "CONFSYNC_CHAOS_CLUSTER") as members:
        run_chaos(members, rng, tmp_path)

def run_chaos(members: list[EtcdMember], rng: random.Random, tmp_path: Path) -> None:
    disk: Path | None = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(disk)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        print(f"full-disk faults skipped: cannot mount a tmpfs ({mounted.stderr.strip()})")
        disk = None
    chaos = Chaos(tmp_path, members, f"/chaos-{uuid.uuid4().hex[:6]}", rng, disk)
    confdir_watch = chaos.rng.random() < 0.5
    print(f"[watch] confdir = {str(confdir_watch).lower()}")
    chaos.dest_dir.mkdir()
    for section in ("k", "d", "e", "p"):
        for i in range(3):
            chaos.put(f"/{section}/s{i}", str(8000 + i))
    chaos.put("/n/ok", "fine")
    make_confdir(chaos)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    w = WatchProcess("--confdir", str(chaos.cd), "--endpoints", chaos.endpoints,
                     "--prefix", chaos.prefix, "--wait-min", "50ms", "--wait-max", "1s",
                     "--metrics-address", f"127.0.0.1:{port}", log=tmp_path / "watch.log",
                     env={"CONFSYNC_ETCD_TIMEOUT": "2s", "CONFSYNC_WATCH_INTERVAL": "10s",
                          "CONFSYNC_WATCH_CONFDIR": str(confdir_watch).lower()})
    chaos.watch_output = w.output
    samples: list[tuple[float, int, int, bool]] = []  # at, /health, /ready, "not connected"
    stray: list[str] = []  # lines in a dest no state of etcd renders to
    stop_sampling = threading.Event()

    def sampler() -> None:
        while not stop_sampling.is_set():
            now = time.monotonic()
            health = probe(base, "/health", 3)[0]
            status, body = probe(base, "/ready", 3)
            samples.append((now, health, status,
                            "watch not connected" in body.get("reasons", [])))
            stray.extend(strays(chaos))
            stop_sampling.wait(0.3)

    sampling = threading.Thread(target=sampler, daemon=True)
    try:
        wait_for(lambda: probe(base, "/ready")[0] == 200, 30, what="first render, /ready 200")
        sampling.start()
        faults = {
            "kill": chaos.kill_restart, "freeze": chaos.freeze, "compact": chaos.compact,
            "raw": chaos.raw_keys, "bad": chaos.bad_value, "good": chaos.good_values,
            "disk": chaos.full_disk, "flag": chaos.toggle_flag,
            "sighup": lambda: chaos.sighup(w), "template": lambda: chaos.template(w),
            "rmdir": chaos.remove_dest_dir, "drift": chaos.drift, "defrag": chaos.defrag,
            "quorum": chaos.lose_quorum, "replace": chaos.replace_member,
        }
        weights = {"kill": 1, "freeze": 1, "compact": 1, "raw": 1, "bad": 2, "good": 6,
                   "disk": 1, "flag": 2, "sighup": 2, "template": 1, "rmdir": 1, "drift": 1,
                   "defrag": 1, "quorum": 1 if len(members) > 1 else 0,
                   "replace": 1 if len(members) > 1 else 0}

        def alive() -> None:
            chaos.good_values()
            time.sleep(chaos.rng.uniform(0.05, 0.6))
            assert w.proc.poll() is None, f"confsync exited after {chaos.actions[-10:]}:\n" \
                                          f"{w.output()[-4000:]}"

        inject_faults(chaos.rng, faults, weights, CHAOS_SECONDS, chaos.actions, alive)
        chaos.heal()
        healed = time.monotonic()
        time.sleep(1.0)  # the last SIGHUP is handled
        out = w.output()
        refused = out.rfind("configuration reload refused")
        if refused > out.rfind("configuration reloaded") and \
                "tried again" not in out[refused:].split("\n", 1)[0]:
            # The last edit was refused for good (a broken set: the template's syntax error):
            # the operator fixed it (heal) and sends a SIGHUP. One refused for now (etcd was
            # away) is tried again by the daemon itself, and failed applies heal by their own
            # retries: no SIGHUP for those.
            w.signal(signal.SIGHUP)
        # Retries back off up to 30 s; give convergence a little more than that.
        wait_for(lambda: converged(chaos)[0], 90, interval=2.0,
                 what=f"convergence after {chaos.actions}\n{converged(chaos)[1]}\n"
                      f"{w.output()[-4000:]}")
        convergence = time.monotonic() - healed
        wait_for(lambda: probe(base, "/ready")[0] == 200, 30,
                 what=f"/ready 200 after convergence: {probe(base, '/ready')}")
        assert probe(base, "/health")[0] == 200
        # And it stays so: no late retry, repair or reload rewrites a converged dest.
        dests = sorted({*chaos.tmp.glob("*.out"), *chaos.dest_dir.glob("*.out"),
                        *(chaos.disk.glob("*.out") if chaos.disk is not None else ())})
        before = {d: (d.stat().st_ino, d.stat().st_mtime_ns) for d in dests}
        time.sleep(3.0)
        rewritten = [d.name for d in dests if (d.stat().st_ino, d.stat().st_mtime_ns)
                     != before[d]]
        assert not rewritten, f"rewritten after convergence: {rewritten}\n{w.output()[-3000:]}"
        assert converged(chaos)[0] and probe(base, "/ready")[0] == 200
    finally:
        stop_sampling.set()
        if sampling.is_alive():
            sampling.join(timeout=10)
        alive = w.proc.poll() is None
        code = w.stop()
        if disk is not None:
            subprocess.run(["umount", "-l", str(disk)], capture_output=True)
    assert alive, w.output()[-4000:]
    assert code == 0, w.output()[-4000:]
    output = w.output()
    # /health: the loop and its threads lived through it all.
    assert not stray, f"dests held what no state of etcd renders to: {stray[:10]}"
    assert samples and all(s[1] == 200 for s in samples), \
        [s for s in samples if s[1] != 200][:10]
    # /ready: never 200 while etcd was down (after a grace for the stream to notice).
    for start, end, grace in chaos.down:
        # (/ready may be 503 for a failing resource too: it must say the watch is lost)
        lying = [s for s in samples if start + grace < s[0] < end and not s[3]]
        assert not lying, f"/ready not saying the watch is lost while etcd was down: {lying}"
    noticed = [min((s[0] - start for s in samples if start < s[0] < end and s[3]),
                   default=float("nan")) for start, end, _ in chaos.down]
    assert "Traceback" not in output or "UnicodeEncodeError" in output, output[-4000:]
    print(f"chaos: {len(chaos.actions)} actions "
          f"({', '.join(f'{n} {chaos.actions.count(n)}' for n in sorted(set(chaos.actions)))}),"
          f" {len(samples)} health/ready samples, /ready 'watch not connected' after "
          f"{', '.join(f'{n:.1f}' for n in noticed) or '-'} s of an outage, converged "
          f"{convergence:.1f} s after the "
          f"faults stopped")
