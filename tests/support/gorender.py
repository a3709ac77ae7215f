"""Render a Go template two ways: converted to Jinja under confsync's real Renderer, and (when
`go` is installed) with Go's text/template through tests/support/gotmpl, our reference."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from pathlib import Path

from confsync.convert.jinja import convert_template
from confsync.mirror import Mirror
from confsync.renderer import Renderer
from confsync.resources import Resource
from confsync.stores import Snapshot

GOTMPL = Path(__file__).parent / "gotmpl"


def render_jinja(jinja_text: str, data: dict[str, str]) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        tdir = Path(tmp) / "templates"
        tdir.mkdir()
        (tdir / "t.tmpl").write_text(jinja_text)
        res = Resource(name="t", source=Path(tmp) / "t.toml", src=tdir / "t.tmpl",
                       dest=Path(tmp) / "out", keys=("/",), prefix="")
        mirror = Mirror()
        mirror.load(Snapshot(1, {k: v.encode() for k, v in data.items()}))
        return Renderer(tdir).render(res, mirror)


def convert_and_render(go_text: str, data: dict[str, str], name: str = "t.tmpl") -> str:
    return render_jinja(convert_template(name, go_text), data)


def go_available() -> bool:
    return shutil.which("go") is not None


def build_gotmpl(out_dir: Path) -> Path:
    """Compile the Go reference renderer (needs `go`, no network: it uses only the stdlib)."""
    import os

    binary = out_dir / "gotmpl"
    subprocess.run(["go", "build", "-o", str(binary), "."], cwd=GOTMPL, check=True,
                   capture_output=True, env={**os.environ, "GOFLAGS": "-mod=mod",
                                             "GOCACHE": str(out_dir / "gocache")})
    return binary


def render_go(binary: Path, go_text: str, data: dict[str, str],
              env: dict[str, str] | None = None) -> str:
    """Go's own output for the template; raises on a Go error."""
    import os

    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "t.tmpl").write_text(go_text)
        (Path(tmp) / "data.json").write_text(json.dumps(data))
        done = subprocess.run([str(binary), str(Path(tmp) / "t.tmpl"),
                               str(Path(tmp) / "data.json")], capture_output=True,
                              env={**os.environ, **(env or {})})
        if done.returncode:
            raise RuntimeError(done.stderr.decode())
        return done.stdout.decode()
