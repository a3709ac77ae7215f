"""TMPDIR missing or full: `once` does not use it (it stages beside dest), and `check`, which
renders into it, says that is where it ran out."""

from __future__ import annotations

from pathlib import Path

from tests.support.cli import confsync, write_resource


def _resource(tmp_path: Path) -> tuple[Path, Path]:
    data = tmp_path / "data.yaml"
    data.write_text("app:\n  port: '8080'\n")
    dest = tmp_path / "big.conf"
    write_resource(tmp_path, "big", "port {{ getv('/app/port') }}\n"
                   "{% for i in range(20000) %}line {{ i }}\n{% endfor %}",  # ~200 KB
                   f'dest = "{dest}"\nkeys = ["/app"]\ncheck_cmd = "test -s {{{{src}}}}"')
    return data, dest


def test_check_with_a_full_tmpdir_names_it_and_once_is_not_affected(tmp_path: Path,
                                                                     disk: Path) -> None:
    data, dest = _resource(tmp_path)
    args = ("--confdir", str(tmp_path), "--backend", "file", "--file", str(data))
    env = {"TMPDIR": str(disk)}  # a 64 KiB tmpfs: the render does not fit

    checked = confsync("check", *args, env=env)
    assert checked.returncode == 1
    # Was "resource big: stage failed: No space left on device": nothing said where.
    assert (f"resource big: stage failed: cannot write the copy to check in {disk} (the "
            "temporary directory: TMPDIR, else /tmp; `once` stages beside dest instead): "
            "No space left on device") in checked.stderr + checked.stdout, checked.stderr
    assert [p.name for p in disk.iterdir() if p.name.startswith("confsync-check-")] == []

    done = confsync("once", *args, env=env)
    assert done.returncode == 0, done.stderr
    assert dest.read_text().startswith("port 8080\nline 0\n")


def test_a_missing_tmpdir_is_no_failure(tmp_path: Path) -> None:
    data, dest = _resource(tmp_path)
    assert not dest.exists()
    args = ("--confdir", str(tmp_path), "--backend", "file", "--file", str(data))
    env = {"TMPDIR": str(tmp_path / "no-such-dir")}
    assert confsync("check", *args, env=env).returncode == 4  # would change
    assert confsync("once", *args, env=env).returncode == 0
    assert confsync("check", *args, env=env).returncode == 0
    assert dest.read_text().startswith("port 8080\n")
