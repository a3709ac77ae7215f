"""A real master-worker HAProxy for tests and benchmarks, plus a confsync setup that drives it.

`HAProxyStack` owns a temp dir with a confdir (the shipped template, a resource pointing at the
stack's files), sockets, pidfile and the HAProxy process; `sync()` runs one confsync pass. Today
that is `python -m confsync once`; when the watch daemon lands, a daemon-backed stack only has to
replace `sync()` with "wait until the daemon has applied revision R".
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyetcd

from confsync.haproxy.master_cli import MasterStatus, load_status, show_proc
from confsync.haproxy.sockets import query
from tests.support.etcd_server import free_port

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = REPO / "templates" / "haproxy" / "templates" / "haproxy.cfg.tmpl"


def find_haproxy() -> str | None:
    """The HAProxy the tests run: `CONFSYNC_TEST_HAPROXY` (to verify another version, say a
    3.2 built in /tmp: README "Running the tests"), else `haproxy` on PATH, else Debian's."""
    chosen = os.environ.get("CONFSYNC_TEST_HAPROXY")
    if chosen:
        return chosen if os.access(chosen, os.X_OK) else None
    return shutil.which("haproxy") or (
        "/usr/sbin/haproxy" if Path("/usr/sbin/haproxy").exists() else None)


def http_get(port: int, path: str = "/", host: str | None = None,
             timeout: float = 2.0) -> tuple[int, str]:
    """One request on a new connection: (status, body); (0, reason) when it failed."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Host": host} if host else {})
        response = conn.getresponse()
        return response.status, response.read().decode("utf-8", "replace")
    except OSError as exc:
        return 0, f"{type(exc).__name__}: {exc}"
    finally:
        conn.close()


def spread(port: int, count: int, path: str = "/", host: str | None = None) -> Counter[str]:
    """Who served `count` requests (bodies of 200s; other outcomes as 'status:N')."""
    seen: Counter[str] = Counter()
    for _ in range(count):
        status, body = http_get(port, path, host)
        seen[body if status == 200 else f"status:{status}"] += 1
    return seen


def readonly_wrapper(directory: Path) -> list[str] | None:
    """A command prefix that runs a command with `directory` read-only to it alone (a bind mount
    in a mount namespace of its own), as systemd's ProtectSystem=strict leaves what a unit's
    ReadWritePaths do not name; None where this process may not do that (not root, no
    unshare)."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return None
    probe = subprocess.run(["unshare", "-m", "sh", "-c", 'mount --bind -o ro "$0" "$0"',
                            str(directory)], capture_output=True, timeout=10)
    if probe.returncode != 0:
        return None
    return ["unshare", "-m", "sh", "-c", 'mount --bind -o ro "$0" "$0" && exec "$@"',
            str(directory)]


def wait_for(predicate: Any, timeout: float = 5.0, interval: float = 0.02) -> Any:
    """Poll until `predicate()` is truthy (returned) or `timeout` runs out (AssertionError)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"condition not met within {timeout}s (last value {value!r})")
        time.sleep(interval)


@dataclass
class HAProxyStack:
    """HAProxy + confsync resource + etcd key prefix, all private to one test."""

    haproxy: str
    etcd_endpoint: str
    strategy: str = "runtime"
    check: bool = True  # run `haproxy -c` on each staged file (the shipped resource does)
    check_server_changes: bool = True  # false: proven server-only changes skip the check
    signal: bool = False  # trigger reloads by SIGUSR2 to the master (pidfile), not `reload`
    template: Path = TEMPLATE  # the shipped one; tests of other template shapes pass their own
    others: tuple[Path, ...] = ()  # more files HAProxy loads (`-f`) that confsync does not write
    reload_timeout: float = 10.0  # the resource's, in seconds
    base: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="hx")))
    prefix: str = field(default_factory=lambda: f"/t{uuid.uuid4().hex[:10]}")
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    client: Any = None
    last_sync: subprocess.CompletedProcess[str] | None = None
    # Every master `start` began, oldest first (what a failure names a stray listener by).
    masters: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.confdir = self.base / "confdir"
        (self.confdir / "conf.d").mkdir(parents=True)
        (self.confdir / "templates").mkdir()
        self.cfg = self.base / "haproxy.cfg"
        self.master = self.base / "master.sock"
        self.admin = self.base / "admin.sock"
        self.state = self.base / "server-state"
        self.pidfile = self.base / "haproxy.pid"
        (self.confdir / "conf.d" / "haproxy.toml").write_text(
            "[template]\n"
            f'src = "{self.template}"\n'
            f'dest = "{self.cfg}"\n'
            'keys = ["/services", "/haproxy"]\n'
            'mode = "0644"\n'
            + (f'check_cmd = ["{self.haproxy}", "-c", "-q", "-f", "{{{{src}}}}"]\n'
               if self.check else "")
            + (f'reload_signal = "SIGUSR2"\npidfile = "{self.pidfile}"\n' if self.signal else "")
            + f'reload_timeout = "{self.reload_timeout:.0f}s"\n'
            "min_keys = 1\n"
            "[haproxy]\n"
            + ("check_server_changes = false\n" if not self.check_server_changes else "")
            + f'reload_strategy = "{self.strategy}"\n'
            f'master_socket = "{self.master}"\n')
        host, _, port = self.etcd_endpoint.split("://", 1)[-1].rpartition(":")
        self.client = pyetcd.client(host=host, port=int(port), timeout=5)

    # ---- etcd data (keys relative to the stack's prefix)

    def put(self, key: str, value: Any) -> None:
        text = value if isinstance(value, str) else json.dumps(value)
        self.client.put(self.prefix + key, text)

    def delete(self, key: str) -> None:
        self.client.delete(self.prefix + key)

    def put_instance(self, service: str, name: str, port: int, **extra: Any) -> None:
        self.put(f"/services/{service}/instances/{name}",
                 {"address": "127.0.0.1", "port": port, **extra})

    def put_basics(self, service: str = "web", **config: Any) -> None:
        self.put("/haproxy/global", {"admin_socket": str(self.admin), "maxconn": 2000,
                                     "state_file": str(self.state), "hard_stop_after": "5s"})
        self.put("/haproxy/frontends/main", {"bind": [f"127.0.0.1:{self.port}"],
                                             "default_service": service})
        self.put(f"/services/{service}/config", {"check_path": "/healthz", **config})

    # ---- confsync

    def cli_args(self) -> list[str]:
        """The options `confsync once` and `confsync watch` share for this stack."""
        return ["--confdir", str(self.confdir), "--backend", "etcd", "--endpoints",
                self.etcd_endpoint, "--prefix", self.prefix, "--log-level", "info"]

    def sync(self, wrapper: Sequence[str] = ()) -> subprocess.CompletedProcess[str]:
        """One confsync pass over the stack's prefix; the result (returncode, stderr) is kept.
        `wrapper`: a command confsync runs under (`readonly_wrapper`, say)."""
        self.last_sync = subprocess.run(
            [*wrapper, sys.executable, "-m", "confsync", "once", *self.cli_args()],
            capture_output=True, text=True, timeout=60, cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)})
        return self.last_sync

    def sync_ok(self) -> str:
        result = self.sync()
        assert result.returncode == 0, result.stderr
        return result.stderr

    # ---- HAProxy

    def start(self) -> None:
        """Start HAProxy on the file confsync wrote; wait until its master answers."""
        log = (self.base / "haproxy.log").open("ab")
        self.proc = subprocess.Popen(
            [self.haproxy, "-W", "-S", str(self.master), "-f", str(self.cfg),
             *(arg for other in self.others for arg in ("-f", str(other))),
             "-p", str(self.pidfile)],
            stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True)
        self.masters.append(self.proc.pid)
        log.close()
        try:
            wait_for(lambda: self.proc is not None and self.proc.poll() is None
                     and self.master.exists() and self.admin.exists(), timeout=10)
            wait_for(lambda: http_get(self.port)[0] != 0, timeout=10)
        except AssertionError:
            raise AssertionError(f"HAProxy did not start; its log:\n{self.log()}") from None

    def status(self) -> MasterStatus:
        return show_proc(self.master)

    def admin_command(self, command: str) -> str:
        return query(self.admin, command)

    def log(self) -> str:
        path = self.base / "haproxy.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def halt(self) -> None:
        """Stop HAProxy (as `systemctl stop` or a crash would); its files stay."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=5)

    def restart(self) -> None:
        """A new master on the file on disk, as `systemctl restart haproxy` would start."""
        self.halt()
        self.start()

    def reload_by_signal(self) -> None:
        """SIGUSR2 to the master, as `systemctl reload haproxy` sends; wait until it took: the
        counter went up and (3.1+, which counts it before the new worker has loaded) the new
        worker has loaded."""
        before = self.status()
        os.kill(before.pid, signal.SIGUSR2)
        wait_for(lambda: self.status().reloads > before.reloads, timeout=10)
        assert load_status(self.master, timeout=10) is None, self.log()

    def stop(self) -> None:
        self.halt()
        if self.client is not None:
            self.client.delete_prefix(self.prefix)
            self.client.close()
            self.client = None
        shutil.rmtree(self.base, ignore_errors=True)
