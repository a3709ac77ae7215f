"""Differential testing against the real confd: the same Go templates and the same data file,
rendered by `confd -onetime -backend file` and by `confsync convert` + confsync's renderer.

A case set is one data file (YAML, read by both sides exactly as `convert --check --data` reads
it) and many small templates; confd renders a whole set in one run (a resource per case), so a
set costs one confd start. confd's answers are recorded as golden files under
tests/fixtures/confd_diff/ (CI has no confd); re-record them with

    PYTHONPATH=. python -m tests.support.confd_diff --record [--confd /tmp/confd-bin/confd]

and compare without recording (a report of every difference) with `python -m ...confd_diff`.
An outcome is the rendered text, or None when confd rendered nothing (its template failed).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from confsync.convert.gotemplate import GoTemplateError
from confsync.convert.jinja import convert_template
from confsync.errors import ResourceError
from confsync.mirror import Mirror
from confsync.renderer import Renderer
from confsync.resources import Resource
from confsync.stores import Snapshot
from confsync.stores.file import read_data_file
from tests.support.confd_corpus import CASE_SETS

CONFD = Path(os.environ.get("CONFD_BIN", "/tmp/confd-bin/confd"))
GOLDEN = Path(__file__).parents[1] / "fixtures" / "confd_diff"


@dataclass
class Ours:
    """confsync's outcome: text, or why not (`refused` at conversion, `error` at render)."""

    text: str | None
    refused: str | None = None
    error: str | None = None


def run_confd(binary: Path, data_yaml: str, cases: dict[str, str]) -> dict[str, str | None]:
    """Render every case with confd in one -onetime run; None where confd wrote no file."""
    with tempfile.TemporaryDirectory(prefix="confd-diff-") as tmp:
        root = Path(tmp)
        (root / "conf.d").mkdir()
        (root / "templates").mkdir()
        out = root / "out"
        out.mkdir()
        (root / "data.yaml").write_text(data_yaml)
        for name, template in cases.items():
            (root / "templates" / f"{name}.tmpl").write_text(template)
            (root / "conf.d" / f"{name}.toml").write_text(
                f'[template]\nsrc = "{name}.tmpl"\ndest = "{out / name}"\nkeys = ["/"]\n')
        subprocess.run([str(binary), "-onetime", "-backend", "file", "-file",
                        str(root / "data.yaml"), "-confdir", str(root), "-log-level", "panic"],
                       capture_output=True, timeout=60, check=False)
        # bytes that are not UTF-8 (base64Decode of binary) shown as \xff: never equal to ours
        return {name: (out / name).read_bytes().decode(errors="backslashreplace")
                if (out / name).exists() else None for name in cases}


def render_ours(template: str, mirror: Mirror, name: str) -> Ours:
    """Convert and render one case as `confsync convert --check` does."""
    try:
        jinja = convert_template(f"{name}.tmpl", template)
    except GoTemplateError as exc:
        return Ours(None, refused=str(exc))
    with tempfile.TemporaryDirectory(prefix="confsync-diff-") as tmp:
        tdir = Path(tmp) / "templates"
        tdir.mkdir()
        (tdir / "t.tmpl").write_text(jinja)
        resource = Resource(name=name, source=Path(tmp) / "t.toml", src=tdir / "t.tmpl",
                            dest=Path(tmp) / "out", keys=("/",), prefix="")
        try:
            return Ours(Renderer(tdir).render(resource, mirror))
        except ResourceError as exc:
            return Ours(None, error=exc.reason)


def load_mirror(data_yaml: str) -> Mirror:
    with tempfile.TemporaryDirectory(prefix="confsync-diff-") as tmp:
        path = Path(tmp) / "data.yaml"
        path.write_text(data_yaml)
        mirror = Mirror()
        mirror.load(Snapshot(1, read_data_file(path)))
        return mirror


def verdict(confd: str | None, ours: Ours) -> str | None:
    """None when confsync matches confd; else what differs. A template confd refuses may fail
    in confsync too (at conversion or at render), never render."""
    if confd is None:
        if ours.text is None:
            return None
        return f"confd failed, confsync rendered {ours.text!r}"
    if ours.text is None:
        return f"confd rendered {confd!r}, confsync {'refused' if ours.refused else 'failed'}: " \
               f"{ours.refused or ours.error}"
    if ours.text != confd:
        return f"confd {confd!r} != confsync {ours.text!r}"
    return None


def golden_path(set_name: str) -> Path:
    return GOLDEN / f"{set_name}.json"


def load_golden(set_name: str) -> dict[str, str | None]:
    """confd's recorded outcomes; ValueError when the corpus changed since they were recorded."""
    recorded = json.loads(golden_path(set_name).read_text())
    data_yaml, cases = CASE_SETS[set_name]
    if recorded["data"] != data_yaml or recorded["templates"] != cases:
        raise ValueError(f"{golden_path(set_name)}: recorded from another corpus; re-record it "
                         "(python -m tests.support.confd_diff --record)")
    outcomes: dict[str, str | None] = recorded["confd"]
    return outcomes


def record(binary: Path) -> None:
    GOLDEN.mkdir(parents=True, exist_ok=True)
    for set_name, (data_yaml, cases) in CASE_SETS.items():
        confd = run_confd(binary, data_yaml, cases)
        # the inputs too: a corpus changed without re-recording is told apart from a regression
        golden_path(set_name).write_text(json.dumps(
            {"confd_version": "0.17.0-dev (go1.19.8)", "data": data_yaml, "templates": cases,
             "confd": confd}, indent=1, sort_keys=True, ensure_ascii=False) + "\n")


def compare(binary: Path | None) -> dict[str, dict[str, str]]:
    """{set: {case: difference}}; confd's answers are fresh when binary, else the goldens."""
    report: dict[str, dict[str, str]] = {}
    for set_name, (data_yaml, cases) in CASE_SETS.items():
        confd = run_confd(binary, data_yaml, cases) if binary else load_golden(set_name)
        mirror = load_mirror(data_yaml)
        diffs = {}
        for name, template in cases.items():
            problem = verdict(confd[name], render_ours(template, mirror, name))
            if problem:
                diffs[name] = problem
        report[set_name] = diffs
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--record", action="store_true", help="re-record the golden files")
    parser.add_argument("--confd", type=Path, default=CONFD)
    parser.add_argument("--golden", action="store_true",
                        help="compare with the golden files instead of running confd")
    args = parser.parse_args()
    if args.record:
        record(args.confd)
    report = compare(None if args.golden else args.confd)
    total = sum(len(cases) for _, cases in CASE_SETS.values())
    bad = 0
    for set_name, diffs in report.items():
        for case, problem in diffs.items():
            bad += 1
            print(f"{set_name}/{case}: {problem}")
            print(f"    template: {CASE_SETS[set_name][1][case]!r}")
    print(f"{total - bad}/{total} cases match confd")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
