"""etcd's gRPC proxy (`etcd grpc-proxy start`) on a free loopback port, for tests and benches.

It coalesces identical watches of many clients onto one upstream watch: the way to run
thousands of sidecars against one cluster (docs/operations.md).
"""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.etcd_server import EtcdMember, _port_open, free_port


@dataclass
class GrpcProxy:
    """`start()` again after `stop()`/`kill()` listens on the same port (a proxy restart)."""

    binary: str
    upstream: list[EtcdMember]
    log: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> GrpcProxy:
        endpoints = ",".join(f"127.0.0.1:{m.client_port}" for m in self.upstream)
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [self.binary, "grpc-proxy", "start", f"--endpoints={endpoints}",
                 f"--listen-addr=127.0.0.1:{self.port}"],
                stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while not _port_open(self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"grpc-proxy did not listen on {self.port}; see {self.log}")
            time.sleep(0.05)
        return self

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
