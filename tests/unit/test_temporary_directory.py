"""private_tmp.temporary_directory() answers as tempfile.gettempdir() does, without importing
tempfile (and the shutil, bz2 and lzma it brings) when nothing has yet."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

import confsync
from confsync.private_tmp import temporary_directory

REPO = Path(confsync.__file__).parent.parent

PROBE = ("import json, sys\n"
         "from confsync.private_tmp import temporary_directory\n"
         "ours = temporary_directory()\n"
         "imported = 'tempfile' in sys.modules\n"
         "import tempfile\n"
         "print(json.dumps([ours, tempfile.gettempdir(), imported]))\n")


def both_answers(env: dict[str, str], cwd: Path) -> tuple[str, str, bool]:
    """(ours, tempfile's, whether ours imported tempfile), in a fresh interpreter."""
    clean = {k: v for k, v in os.environ.items() if k not in ("TMPDIR", "TEMP", "TMP")}
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                          timeout=60, cwd=cwd, check=True,
                          env={**clean, "PYTHONPATH": str(REPO), **env})
    ours, theirs, imported = json.loads(done.stdout)
    return ours, theirs, imported


@pytest.mark.parametrize("case", ["tmpdir", "missing", "a file", "empty", "relative", "unset"])
def test_the_same_directory_as_tempfile(tmp_path: Path, case: str) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "file").write_text("x")
    env = {
        "tmpdir": {"TMPDIR": str(tmp_path / "a")},
        "missing": {"TMPDIR": str(tmp_path / "gone"), "TEMP": str(tmp_path / "b")},
        "a file": {"TMPDIR": str(tmp_path / "file"), "TMP": str(tmp_path / "b")},
        "empty": {"TMPDIR": "", "TMP": str(tmp_path / "a")},
        "relative": {"TMPDIR": "b"},
        "unset": {},
    }[case]
    ours, theirs, imported = both_answers(env, cwd=tmp_path)
    assert ours == theirs
    assert not imported
    assert ours == {"tmpdir": str(tmp_path / "a"), "missing": str(tmp_path / "b"),
                    "a file": str(tmp_path / "b"), "empty": str(tmp_path / "a"),
                    "relative": str(tmp_path / "b"), "unset": theirs}[case]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "file"]  # probe removed


def test_tempfiles_own_answer_once_it_is_imported(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Set by a caller (tests) or kept from its first call: the process has one answer."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    assert temporary_directory() == str(tmp_path)


def test_a_removed_working_directory_still_finds_the_private_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`once` run from a directory removed since (a deploy's old release): getcwd() raised
    FileNotFoundError out of the render memo, and the run ended in a traceback, nothing
    written."""
    from confsync.private_tmp import private_directory

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    gone = tmp_path / "release"
    gone.mkdir()
    monkeypatch.chdir(gone)
    gone.rmdir()
    assert private_directory("cs-private") == tmp_path / "cs-private"


LAST_RESORT = ("import json, sys\n"
               "from confsync import private_tmp\n"
               "private_tmp._FIXED = tuple(sys.argv[1:])  # (/tmp and the like, unusable)\n"
               "found = private_tmp.private_directory('cs-private')\n"
               "print(json.dumps([private_tmp.temporary_directory(), found and str(found)]))\n")


@pytest.mark.parametrize("case", ["last resort", "named"])
def test_only_the_last_resort_is_refused_for_the_private_directory(tmp_path: Path,
                                                                   case: str) -> None:
    """The working directory is taken when nothing named is usable: never a cache there. But
    the working directory may also BE the one named (`cd /tmp && confsync once`, here with
    TEMP naming it); that one is the temporary directory asked for, and was refused too."""
    run = tmp_path / "run"
    run.mkdir()
    named = {"last resort": {}, "named": {"TEMP": str(run)}}[case]
    clean = {k: v for k, v in os.environ.items() if k not in ("TMPDIR", "TEMP", "TMP")}
    done = subprocess.run([sys.executable, "-c", LAST_RESORT, str(tmp_path / "gone")],
                          capture_output=True, text=True, timeout=60, cwd=run, check=True,
                          env={**clean, "PYTHONPATH": str(REPO), **named})
    base, found = json.loads(done.stdout)
    assert base == str(run)
    if case == "last resort":
        assert found is None
        assert list(run.iterdir()) == []
    else:
        assert found == str(run / "cs-private")
