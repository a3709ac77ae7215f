"""Run the real `confsync` CLI in a subprocess, as an operator would."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def confsync(*args: str, env: dict[str, str] | None = None, timeout: float = 60,
             cwd: Path | None = None,
             wrapper: Sequence[str] = ()) -> subprocess.CompletedProcess[str]:
    """`wrapper`: a command prefix, e.g. NameServer.wrapper (another resolv.conf)."""
    import os

    full_env = {k: v for k, v in os.environ.items() if not k.startswith("CONFSYNC_")}
    full_env.update(env or {})
    return subprocess.run([*wrapper, sys.executable, "-m", "confsync", *args], capture_output=True,
                          text=True, timeout=timeout, env=full_env, cwd=cwd or REPO)


def write_resource(confdir: Path, name: str, template: str, body: str) -> None:
    """A conf.d/<name>.toml plus templates/<name>.tmpl."""
    (confdir / "conf.d").mkdir(parents=True, exist_ok=True)
    (confdir / "templates").mkdir(parents=True, exist_ok=True)
    (confdir / "templates" / f"{name}.tmpl").write_text(template)
    (confdir / "conf.d" / f"{name}.toml").write_text(
        f'[template]\nsrc = "{name}.tmpl"\n{body}\n')
