"""Chaos for the flagship use: the real `confsync watch` driving a real HAProxy (the shipped
template, runtime API and reloads) from a real etcd, while a seeded random driver changes the
pool and injects faults: instances joining, leaving and going to maintenance, a structural
change (a reload), HAProxy reloaded by someone else (`systemctl reload`), restarted or
SIGKILLed and started again by its own unit, stopped for a while as changes arrive, and etcd
killed or frozen.

All along, HAProxy's file passes `haproxy -c`, `watch` lives, /health is 200 and /ready names
HAProxy as not running while it is stopped. Once the faults stop, HAProxy serves exactly the
instances etcd says are ready, with no manual action, and /ready is 200.

`CONFSYNC_HAPROXY_CHAOS_SECONDS` (default 15) sets how long faults go on;
`CONFSYNC_HAPROXY_CHAOS_SEED` replays a run.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import signal
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support.chaos import inject_faults
from tests.support.daemon import WatchProcess
from tests.support.etcd_server import EtcdMember, free_port
from tests.support.haproxy import HAProxyStack, spread, wait_for
from tests.support.haproxy_listeners import describe, report, strays
from tests.support.http_backends import HTTPBackend
from tests.support.http_probe import probe

pytestmark = [pytest.mark.etcd, pytest.mark.haproxy]

CHAOS_SECONDS = float(os.environ.get("CONFSYNC_HAPROXY_CHAOS_SECONDS", "15"))
NAMES = ("a", "b", "c", "d", "e")
# HAProxy stopped this long and /ready must say so: `watch` asks its target every heartbeat.
STOPPED_GRACE = 3.0


@dataclass
class Chaos:
    stack: HAProxyStack
    etcd: EtcdMember
    backends: dict[str, HTTPBackend]
    rng: random.Random
    actions: list[str] = field(default_factory=list)
    # instance id -> (backend name, state) as last put; absent: deleted
    pool: dict[str, tuple[str, str]] = field(default_factory=dict)
    stopped: list[tuple[float, float]] = field(default_factory=list)  # HAProxy not running
    bad_files: list[str] = field(default_factory=list)
    # Listeners on the frontend's port not of the running master, when first seen, by fault.
    strays: dict[int, str] = field(default_factory=dict)

    def etcd_call(self, fn: Callable[[], object]) -> None:
        with contextlib.suppress(Exception):  # etcd is down or frozen: that is the point
            fn()

    # ---- the pool

    def join(self) -> None:
        """An instance registers (or moves, or changes state): ready most of the time."""
        instance = self.rng.choice(NAMES)
        backend = self.rng.choice(NAMES)
        state = self.rng.choice(["ready", "ready", "ready", "maint", "drain"])

        def put() -> None:
            self.stack.put_instance("web", instance, self.backends[backend].port, state=state)
            self.pool[instance] = (backend, state)
        self.etcd_call(put)

    def leave(self) -> None:
        instance = self.rng.choice(NAMES)

        def delete() -> None:
            self.stack.delete(f"/services/web/instances/{instance}")
            self.pool.pop(instance, None)
        self.etcd_call(delete)

    def structural(self) -> None:
        """A change HAProxy needs a reload for (the health check's interval)."""
        interval = self.rng.choice(["1s", "2s", "3s"])
        self.etcd_call(lambda: self.stack.put("/services/web/config",
                                              {"check_path": "/healthz",
                                               "check_interval": interval}))

    # ---- HAProxy, by its own unit

    def outside_reload(self) -> None:
        with contextlib.suppress(AssertionError, OSError):  # (a reload of ours meanwhile)
            self.stack.reload_by_signal()

    def restart(self) -> None:
        """`systemctl restart haproxy`, or an OOM kill of the master and its restart."""
        proc = self.stack.proc
        if proc is not None and proc.poll() is None and self.rng.random() < 0.5:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        began = time.monotonic()
        self.stack.restart()
        self.stopped.append((began, time.monotonic()))

    def stop_for_a_while(self) -> None:
        """HAProxy stopped while changes arrive, then started from the file on disk."""
        self.stack.halt()
        began = time.monotonic()
        for _ in range(self.rng.randrange(1, 4)):
            self.join()
            time.sleep(self.rng.uniform(0.2, 1.5))
        time.sleep(self.rng.uniform(0.0, 4.0))
        self.stopped.append((began, time.monotonic()))
        self.stack.start()

    # ---- etcd

    def kill_etcd(self) -> None:
        self.etcd.kill()
        time.sleep(self.rng.uniform(0.2, 3.0))
        self.etcd.start()

    def freeze_etcd(self) -> None:
        self.etcd.freeze()
        try:
            time.sleep(self.rng.uniform(0.5, 3.0))
        finally:
            self.etcd.thaw()

    # ---- checks

    def file_checks(self) -> None:
        """HAProxy's file, as it is now, passes `haproxy -c` (never a broken file)."""
        done = subprocess.run([self.stack.haproxy, "-c", "-q", "-f", str(self.stack.cfg)],
                              capture_output=True, text=True, timeout=30)
        if done.returncode != 0:
            self.bad_files.append(f"after {self.actions[-5:]}: {done.stderr[-500:]}")

    def expected(self) -> set[str]:
        """Who must answer: the backends of the instances etcd holds as ready, read from etcd
        (`pool` is what the driver knows was taken: a put or delete that timed out while etcd
        was frozen can still be applied once it runs again, as a CI run saw)."""
        by_port = {backend.port: name for name, backend in self.backends.items()}
        ready = set()
        for raw, _ in self.stack.client.get_prefix(self.stack.prefix + "/services/web/instances/"):
            instance = json.loads(raw)
            if instance.get("state", "ready") == "ready":
                ready.add(by_port[instance["port"]])
        return ready

    def served(self) -> set[str]:
        return set(spread(self.stack.port, 4 * len(NAMES)))


def _verdict(chaos: Chaos, served: set[str], expected: set[str]) -> str:
    """The cause of a failed convergence in one line, from what answered and what HAProxy
    says it balances over: a backend no serving server of HAProxy points at answered over a
    connection kept to a server's earlier address, or through another process listening on
    the port; one missing is a server HAProxy does not pick."""
    by_port = {backend.port: name for name, backend in chaos.backends.items()}
    try:
        state = chaos.stack.admin_command("show servers state be_web").splitlines()
    except OSError as exc:
        return f"VERDICT: HAProxy's admin socket does not answer ({exc})"
    balanced = set()
    for line in state:
        fields = line.split()
        if len(fields) > 18 and fields[1] == "be_web" and fields[5] == "2" \
                and not int(fields[6]) & 0x23 and int(fields[7]) > 0:
            balanced.add(by_port.get(int(fields[18]), fields[18]))
    if chaos.strays:
        return f"VERDICT: another process listens on the frontend's port: {chaos.strays}"
    errors = sorted(s for s in served if s.startswith("status:"))
    if errors and not balanced:
        return f"VERDICT: HAProxy balances over no server ({errors}): see its state below"
    extra = served - balanced - set(errors)
    if extra:
        return (f"VERDICT: {sorted(extra)} answered though no server HAProxy balances over "
                f"({sorted(balanced)}) points there: connections HAProxy kept to a server's "
                "earlier address (`show servers conn` below), or a listener not HAProxy's")
    if balanced != expected:
        return (f"VERDICT: HAProxy balances over {sorted(balanced)}, etcd says "
                f"{sorted(expected)}: confsync did not apply the last change (revisions below)")
    return (f"VERDICT: HAProxy balances over {sorted(balanced)} as etcd says, yet "
            f"{sorted(expected - served)} never answered: its load balancer skips them")


def _lb_view(stack: HAProxyStack) -> str:
    """`show stat` of the backend's servers: what the load balancer does with each (status,
    weight it balances by, times it picked the server), next to what `show servers state`
    says of them (a server picked whose requests all went elsewhere shows as retries and
    redispatches), and its connections (`show servers conn`: idle ones of an address the
    server no longer has)."""
    try:
        rows = stack.admin_command("show stat").splitlines()
    except OSError as exc:
        return f"({exc})"
    head = rows[0].lstrip("# ").split(",") if rows else []
    wanted = ("svname", "addr", "status", "weight", "lbtot", "stot", "wretr", "wredis", "econ",
              "eresp", "check_status")
    out = []
    for row in rows[1:]:
        cells = dict(zip(head, row.split(","), strict=False))
        if cells.get("pxname") == "be_web":
            out.append(" ".join(f"{k}={cells.get(k, '?')}" for k in wanted))
    try:
        out.append(stack.admin_command("show servers conn be_web").strip())
    except OSError as exc:
        out.append(f"({exc})")
    return "\n".join(out)


def _serving_state(stack: HAProxyStack, keep: Path) -> str:
    """What answers on the frontend's port, for a failed convergence: the file's servers,
    HAProxy's runtime view of them and its load balancer's, and every process listening
    there (a CI run once found a backend served that neither the file nor HAProxy's runtime
    state named). HAProxy's whole log is kept in `keep`."""
    try:
        runtime = stack.admin_command("show servers state")
    except OSError as exc:
        runtime = f"({exc})"
    servers = [line for line in stack.cfg.read_text().splitlines() if "server " in line]
    keep.write_text(stack.log())
    return (f"file: {servers}\nruntime: {runtime}\nload balancer:\n{_lb_view(stack)}\n"
            f"listening on :{stack.port} (masters started: {stack.masters}):\n"
            f"{report(stack.port, stack.masters)}\nHAProxy's log (whole: {keep}):\n"
            f"{stack.log()[-3000:]}")


def applied_revision(base: str) -> int:
    """`confsync_applied_revision` on /metrics: the store revision of the last batch applied."""
    with urllib.request.urlopen(base + "/metrics", timeout=5) as response:
        found = re.search(r"^confsync_applied_revision (\S+)$", response.read().decode(), re.M)
    return int(float(found.group(1))) if found else 0


@pytest.fixture
def stack(haproxy_binary: str, etcd_private: EtcdMember) -> Iterator[HAProxyStack]:
    s = HAProxyStack(haproxy_binary, etcd_private.endpoint, strategy="runtime")
    yield s
    s.stop()


# The faults, then up to a minute to converge and the checks: a longer run gets a longer limit.
@pytest.mark.timeout(CHAOS_SECONDS + 120)
def test_haproxy_chaos(stack: HAProxyStack, etcd_private: EtcdMember, tmp_path: Path) -> None:
    seed = int(os.environ.get("CONFSYNC_HAPROXY_CHAOS_SEED", str(random.randrange(1 << 30))))
    print(f"haproxy chaos seed {seed} (CONFSYNC_HAPROXY_CHAOS_SEED={seed} replays it)")
    backends = {name: HTTPBackend(name).start() for name in NAMES}
    chaos = Chaos(stack, etcd_private, backends, random.Random(seed))
    stack.put_basics(check_interval="1s")
    for name in NAMES[:2]:
        stack.put_instance("web", name, backends[name].port)
        chaos.pool[name] = (name, "ready")
    metrics = free_port()
    base = f"http://127.0.0.1:{metrics}"
    watch = WatchProcess(*stack.cli_args(), "--wait-min", "20ms", "--wait-max", "500ms",
                         "--metrics-address", f"127.0.0.1:{metrics}", log=tmp_path / "watch.log",
                         env={"CONFSYNC_ETCD_TIMEOUT": "2s"})
    samples: list[tuple[float, int, int, bool]] = []  # at, /health, /ready, "not running"
    stop_sampling = threading.Event()

    def sampler() -> None:
        while not stop_sampling.is_set():
            now = time.monotonic()
            health = probe(base, "/health", 3)[0]
            status, body = probe(base, "/ready", 3)
            samples.append((now, health, status, any(
                str(why).startswith("not running: haproxy") for why in body.get("reasons", []))))
            stop_sampling.wait(0.3)

    sampling = threading.Thread(target=sampler, daemon=True)
    try:
        wait_for(lambda: stack.cfg.exists() and "server b " in stack.cfg.read_text(),
                 timeout=30)
        stack.start()
        wait_for(lambda: probe(base, "/ready")[0] == 200, timeout=30)
        sampling.start()
        faults: dict[str, Callable[[], None]] = {
            "join": chaos.join, "leave": chaos.leave, "structural": chaos.structural,
            "reload": chaos.outside_reload, "restart": chaos.restart,
            "stop": chaos.stop_for_a_while, "kill": chaos.kill_etcd,
            "freeze": chaos.freeze_etcd,
        }
        weights = {"join": 6, "leave": 3, "structural": 1, "reload": 1, "restart": 1,
                   "stop": 1, "kill": 1, "freeze": 1}

        def after_each() -> None:
            time.sleep(chaos.rng.uniform(0.05, 0.5))
            chaos.file_checks()
            for pid in strays(stack.port, stack.masters):
                chaos.strays.setdefault(pid, f"after {chaos.actions[-4:]}: "
                                        f"{describe(pid, stack.masters)}")
            assert watch.proc.poll() is None, \
                f"confsync exited after {chaos.actions[-10:]}:\n{watch.output()[-4000:]}"

        inject_faults(chaos.rng, faults, weights, CHAOS_SECONDS, chaos.actions, after_each)
        # Faults stop: etcd up, HAProxy running; one instance ready at least, so that the
        # traffic tells.
        etcd_private.thaw()
        if etcd_private.proc is None or etcd_private.proc.poll() is not None:
            etcd_private.start()
        if stack.proc is None or stack.proc.poll() is not None:
            stack.start()
        healed = time.monotonic()
        deadline = time.monotonic() + 30
        while True:
            try:
                stack.put_instance("web", "a", backends["a"].port)
                chaos.pool["a"] = ("a", "ready")
                break
            except Exception:
                assert time.monotonic() < deadline, "etcd does not take a put after the faults"
                time.sleep(0.5)
        # Health checks (1-3 s apart, rise 2 by default) and a retry's backoff.
        try:
            wait_for(lambda: chaos.served() == chaos.expected(), timeout=60, interval=0.5)
        except AssertionError:
            served, expected = chaos.served(), chaos.expected()
            raise AssertionError(
                f"HAProxy serves {served}, etcd says {expected} ({chaos.pool})\n"
                f"{_verdict(chaos, served, expected)}\nafter {chaos.actions}:\n"
                f"{watch.output()[-4000:]}\n{_serving_state(stack, tmp_path / 'haproxy.log')}\n"
                f"applied revision {applied_revision(base)}, etcd's "
                f"{stack.client.get_response(stack.prefix + '/').header.revision}") from None
        # Traffic alone can agree early (two instances on one backend): the change etcd
        # made last must be applied too before the file is expected to stay as it is.
        latest = stack.client.get_response(stack.prefix + "/").header.revision
        try:
            wait_for(lambda: applied_revision(base) >= latest, timeout=30)
        except AssertionError:
            raise AssertionError(
                f"applied revision {applied_revision(base)}, etcd's {latest} after "
                f"{chaos.actions}; /ready {probe(base, '/ready')}:\n"
                f"{watch.output()[-4000:]}") from None
        convergence = time.monotonic() - healed
        wait_for(lambda: probe(base, "/ready")[0] == 200, timeout=30)
        chaos.file_checks()
        # And it stays so: no late retry or repair rewrites the file or reloads HAProxy.
        stat, reloads = stack.cfg.stat(), stack.status().reloads
        time.sleep(3.0)
        assert (stack.cfg.stat().st_ino, stack.cfg.stat().st_mtime_ns) == (
            stat.st_ino, stat.st_mtime_ns), f"rewritten after convergence:\n{watch.output()[-3000:]}"
        assert stack.status().reloads == reloads, watch.output()[-3000:]
        assert chaos.served() == chaos.expected()
    finally:
        stop_sampling.set()
        if sampling.is_alive():
            sampling.join(timeout=10)
        alive = watch.proc.poll() is None
        code = watch.stop()
        for backend in backends.values():
            backend.stop()
    output = watch.output()
    assert alive and code == 0, output[-4000:]
    assert "Traceback" not in output, output[output.index("Traceback") - 2000:][:6000]
    assert not chaos.bad_files, chaos.bad_files
    assert not chaos.strays, f"processes listening on HAProxy's port {stack.port} that are not " \
        f"the running master's: {chaos.strays}"
    assert samples and all(s[1] == 200 for s in samples), [s for s in samples if s[1] != 200]
    for start, end in chaos.stopped:
        lying = [s for s in samples if start + STOPPED_GRACE < s[0] < end and not s[3]]
        assert not lying, f"/ready not saying HAProxy is stopped: {lying}"
    print(f"haproxy chaos: {len(chaos.actions)} actions "
          f"({', '.join(f'{n} {chaos.actions.count(n)}' for n in sorted(set(chaos.actions)))}),"
          f" {len(samples)} samples, converged {convergence:.1f} s after the faults stopped")
