"""One confd confdir run end to end by both: the real `confd -onetime -backend file` and
`confsync convert` + `confsync once --backend file` on the same data file. Every dest must
have the same bytes and mode, a failing resource must leave its dest untouched on both sides,
and both must exit 1. Covers what the template corpus (test_confd_differential.py) does not:
conf.d spelling (prefixes, keys, mode forms, uid -1, any case of a field, commands only sh
runs), template files
read as bytes (CRLF), the data file as confd's yaml.v2 reads it, and failures. Needs a confd binary (CONFD_BIN, /tmp/confd-bin/confd).
"""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from tests.support.cli import confsync
from tests.support.confd_diff import CONFD

pytestmark = pytest.mark.skipif(not CONFD.exists(), reason=f"no confd binary at {CONFD}")

DATA = """\
app:
  name: "svc ☃"
  port: 8080
  empty: ""
  yes_word: y
  no_word: N
  octal_o: 0o17
  dec_08: 08
  sexagesimal: 1:20
  stamp: 2001-12-14t21:59:43.10-05:00
  uint64: 18446744073709551615
  beyond: 18446744073709551616
svc:
  web:
    a: "10.0.0.1"
    bb: "10.0.0.2"
---
ignored: "a second document, as yaml.v2 reads it"
"""

BASE = '[template]\nsrc = "{name}.tmpl"\ndest = "{out}/{name}"\n'
RESOURCES = {
    "values": ('keys = ["/app"]\n',
               '{{range gets "/app/*"}}{{.Key}}=[{{.Value}}]\n{{end}}'),
    "prefixed": ('prefix = "app"\nkeys = ["/name", "port"]\n',
                 '{{getv "/name"}}:{{getv "/port"}} {{getv "/empty" "none"}}\n'),
    "prefix_slash": ('prefix = "/svc/"\nkeys = ["web"]\n',
                     '{{range gets "/web/*"}}{{base .Key}} {{.Value}}\n{{end}}'),
    "restricted": ('keys = ["/app/name"]\n', '{{getv "/app/name"}} {{getv "/app/port" "hidden"}}\n'),
    "no_keys": ("", "static\n"),
    "mode_0o": ('keys = ["/app"]\nmode = "0o640"\n', "m\n"),
    "mode_setuid": ('keys = ["/app"]\nmode = "04755"\n', "m\n"),
    "mode_empty": ('keys = ["/app"]\nmode = ""\nuid = -1\ngid = -1\n', "m\n"),
    "caps": ('Keys = ["/svc"]\nMode = "0600"\nCheck_Cmd = "test -s {{.src}}"\n',
             '{{len (ls "/svc/web")}}\n'),
    "crlf": ('keys = ["/app"]\n', 'a\r\n{{getv "/app/name"}}\r\n{{- if true}}\r\nz\r\n{{end}}\r'),
    "needs_sh": ('keys = ["/app"]\ncheck_cmd = "LC_ALL=C test -s {{.src}} # staged"\n', "sh\n"),
    "two_lines": ('keys = ["/app"]\ncheck_cmd = "true\\nfalse"\n', "new\n"),
    "missing_key": ('keys = ["/app"]\n', 'never {{getv "/app/nope"}}\n'),
    "check_fails": ('keys = ["/app"]\ncheck_cmd = "false {{.src}}"\n', "new\n"),
}


def _confd_confdir(root: Path, out: Path) -> Path:
    (root / "conf.d").mkdir(parents=True)
    (root / "templates").mkdir()
    for name, (fields, template) in RESOURCES.items():
        head = BASE.format(name=name, out=out)
        if name == "caps":
            head = head.replace("[template]", "[Template]").replace("src =", "Src =")
        (root / "conf.d" / f"{name}.toml").write_text(head + fields)
        (root / "templates" / f"{name}.tmpl").write_bytes(template.encode())
    return root


def _dests(out: Path) -> dict[str, tuple[bytes, str]]:
    return {p.name: (p.read_bytes(), oct(stat.S_IMODE(p.stat().st_mode)))
            for p in sorted(out.iterdir())}


def _outdir(tmp_path: Path, side: str) -> Path:
    out = tmp_path / f"out-{side}"
    out.mkdir()
    for name in ("missing_key", "check_fails", "two_lines"):  # failing: left alone
        (out / name).write_text("old\n")
        os.chmod(out / name, 0o644)
    return out


def test_confd_and_confsync_write_the_same_files_and_fail_the_same(tmp_path: Path) -> None:
    data = tmp_path / "data.yaml"
    data.write_text(DATA)
    confd_out = _outdir(tmp_path, "confd")
    confd_run = subprocess.run(
        [str(CONFD), "-onetime", "-backend", "file", "-file", str(data), "-confdir",
         str(_confd_confdir(tmp_path / "confd-a", confd_out)), "-config-file",
         str(tmp_path / "none.toml"), "-log-level", "error"],
        capture_output=True, text=True, timeout=60, check=False)
    ours_out = _outdir(tmp_path, "confsync")
    converted = confsync("convert", str(_confd_confdir(tmp_path / "confd-b", ours_out)),
                         str(tmp_path / "new"))
    assert converted.returncode == 0, converted.stderr
    once = confsync("once", "--confdir", str(tmp_path / "new"), "--backend", "file",
                    "--file", str(data))
    theirs, ours = _dests(confd_out), _dests(ours_out)
    assert ours == theirs, f"confd: {confd_run.stderr}\nconfsync: {once.stderr}"
    assert theirs["missing_key"] == theirs["check_fails"] == theirs["two_lines"] \
        == (b"old\n", "0o644")
    assert theirs["needs_sh"] == (b"sh\n", "0o644")
    assert b"/app/yes_word=[true]" in theirs["values"][0]
    assert b"/app/uint64" not in theirs["values"][0]  # yaml.v2 gives a uint64: no key
    assert (confd_run.returncode, once.returncode) == (1, 1)  # a resource failed: both say so
