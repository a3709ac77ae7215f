"""Run the real `confsync register` as a subprocess; read what it published in etcd."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tests.support.cli import REPO
from tests.support.daemon import read


def write_registration(confdir: Path, name: str, body: str) -> Path:
    directory = confdir / "register.d"
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.toml"
    path.write_text(body)
    return path


def published(client: Any, key: str) -> dict[str, Any] | None:
    raw, _ = client.get(key)
    return None if raw is None else dict(json.loads(raw))


class RegisterProcess:
    """`confsync register` in its own process group (an --exec child dies with it in cleanup)."""

    def __init__(self, confdir: Path, endpoint: str | None, *args: str, log: Path,
                 env: dict[str, str] | None = None, wrapper: Sequence[str] = ()) -> None:
        """`endpoint` None: none on the command line (`srv_domain` in `env` instead)."""
        self.log = log
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("CONFSYNC_")}
        full_env.update(env or {})
        self._log_fh = log.open("ab")
        self.proc = subprocess.Popen(
            [*wrapper, sys.executable, "-m", "confsync", "register", "--confdir", str(confdir),
             *(("--endpoints", endpoint) if endpoint is not None else ()),
             "--log-level", "debug", *args],
            stdout=self._log_fh, stderr=subprocess.STDOUT, env=full_env, cwd=REPO,
            start_new_session=True)

    def output(self) -> str:
        return read(self.log)

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def wait(self, timeout: float = 20.0) -> int:
        return self.proc.wait(timeout=timeout)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=15)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # anything left in its group: an exec child
        self.proc.wait(timeout=10)
        self._log_fh.close()
        return self.proc.returncode
