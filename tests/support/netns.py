"""Private network namespaces for tests (root only): the test's addresses, links and etcd live in
them, and nothing outside them changes. A namespace is held by a `sleep` started with
`unshare --net`; commands enter it with `nsenter --net`. It goes away with its last process."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Sequence

HOLD_SECONDS = 300  # a holder left behind by a killed test run still ends by itself


def _namespace(pid: int | str) -> str:
    return os.readlink(f"/proc/{pid}/ns/net")


def netns_work() -> bool:
    """True when this process may create network namespaces and configure them."""
    if os.geteuid() != 0 or not all(shutil.which(t) for t in ("unshare", "nsenter", "ip")):
        return False
    try:
        return subprocess.run(["unshare", "--net", "ip", "link", "add", "t0", "type", "veth",
                               "peer", "name", "t1"],
                              capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


class NetNS:
    def __init__(self) -> None:
        self._holder = subprocess.Popen(["unshare", "--net", "sleep", str(HOLD_SECONDS)],
                                        stdin=subprocess.DEVNULL)
        self.path = f"/proc/{self._holder.pid}/ns/net"
        own = _namespace("self")
        deadline = time.monotonic() + 10
        # Until unshare has called unshare(2), the holder is still in our namespace: never
        # configure anything before it has left.
        while _namespace(self._holder.pid) == own:
            if self._holder.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise RuntimeError("unshare --net did not create a namespace")
            time.sleep(0.01)
        self.name = _namespace(self._holder.pid)

    @property
    def pid(self) -> int:
        return self._holder.pid

    @property
    def enter(self) -> list[str]:
        """The prefix that runs a command inside (nsenter execs it: same pid, same signals)."""
        if self._holder.poll() is not None or _namespace(self._holder.pid) != self.name:
            raise RuntimeError("the namespace's holder is gone")
        return ["nsenter", f"--net={self.path}"]

    def run(self, *commands: Sequence[str]) -> None:
        for command in commands:
            done = subprocess.run([*self.enter, *command], capture_output=True, text=True,
                                  timeout=10)
            if done.returncode != 0:
                raise RuntimeError(f"{' '.join(command)}: {done.stderr.strip()}")

    def close(self) -> None:
        if self._holder.poll() is None:
            self._holder.kill()
        self._holder.wait(timeout=10)
