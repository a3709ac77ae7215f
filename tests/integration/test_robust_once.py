"""Issue 13, items 3, 4, 11, 12, 13, 14 and 17: `once` and `check` (and the daemon's start)
against a real etcd, each as an operator would run them."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from tests.support.cli import confsync, write_resource
from tests.support.daemon import WatchProcess
from tests.support.etcd_client import client
from tests.support.etcd_server import EtcdMember, free_port

pytestmark = pytest.mark.etcd


def _args(command: str, confdir: Path, etcd: EtcdMember, prefix: str) -> list[str]:
    return [command, "--confdir", str(confdir), "--endpoints", etcd.endpoint, "--prefix", prefix]


def _port_resource(confdir: Path, name: str, dest: Path, extra: str = "") -> None:
    write_resource(confdir, name, "port {{ getv('/app/port') | port }}\n",
                   f'dest = "{dest}"\nkeys = ["/app"]\n{extra}')


# ---- 3: ids out of range


@pytest.mark.parametrize("line", ["uid = 99999999999", "gid = -1", "owner = 4294967295"])
def test_out_of_range_id_is_a_config_error_not_a_traceback(etcd: EtcdMember, tmp_path: Path,
                                                           prefix: str, line: str) -> None:
    client(etcd.endpoint).put(prefix + "/app/port", "8080")
    _port_resource(tmp_path, "bad", tmp_path / "bad.conf", line)
    _port_resource(tmp_path, "good", tmp_path / "good.conf")
    result = confsync(*_args("once", tmp_path, etcd, prefix))
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    key = "template." + line.split()[0]
    assert f"bad.toml: {key}: expected a numeric id" in result.stderr, result.stderr
    assert (tmp_path / "good.conf").read_text() == "port 8080\n"  # the good one still ran
    assert not (tmp_path / "bad.conf").exists()


# ---- 4 and 13: a dest that is a directory, a missing dest directory, `check`'s exit code


@pytest.mark.parametrize("command", ["once", "check"])
def test_dest_that_is_a_directory_is_a_resource_error(etcd: EtcdMember, tmp_path: Path,
                                                      prefix: str, command: str) -> None:
    client(etcd.endpoint).put(prefix + "/app/port", "8080")
    (tmp_path / "dir.conf").mkdir()
    _port_resource(tmp_path, "dir", tmp_path / "dir.conf", 'check_cmd = "test -s {{src}}"')
    _port_resource(tmp_path, "good", tmp_path / "good.conf")
    result = confsync(*_args(command, tmp_path, etcd, prefix))
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "Traceback" not in output
    assert "resource dir:" in output and "Is a directory" in output, output
    assert (tmp_path / "dir.conf").is_dir() and not any((tmp_path / "dir.conf").iterdir())
    assert (tmp_path / "good.conf").exists() == (command == "once")


def test_check_exit_codes_tell_pending_changes(etcd: EtcdMember, tmp_path: Path,
                                               prefix: str) -> None:
    client(etcd.endpoint).put(prefix + "/app/port", "8080")
    dest = tmp_path / "app.conf"
    _port_resource(tmp_path, "app", dest)
    pending = confsync(*_args("check", tmp_path, etcd, prefix))
    assert pending.returncode == 4, pending.stdout + pending.stderr
    assert "would change" in pending.stdout and not dest.exists()
    assert confsync(*_args("once", tmp_path, etcd, prefix)).returncode == 0
    in_step = confsync(*_args("check", tmp_path, etcd, prefix))
    assert in_step.returncode == 0, in_step.stdout + in_step.stderr
    assert "is up to date" in in_step.stdout


def test_check_fails_on_a_missing_dest_directory_like_once(etcd: EtcdMember, tmp_path: Path,
                                                           prefix: str) -> None:
    client(etcd.endpoint).put(prefix + "/app/port", "8080")
    _port_resource(tmp_path, "app", tmp_path / "missing" / "app.conf")
    checked = confsync(*_args("check", tmp_path, etcd, prefix))
    assert checked.returncode == 1, checked.stdout + checked.stderr
    assert "app: FAILED" in checked.stdout and f"{tmp_path}/missing" in checked.stdout
    once = confsync(*_args("once", tmp_path, etcd, prefix))
    assert once.returncode == 1 and "stage failed" in once.stderr


# ---- 11: endpoint failover in `once`


def test_once_fails_over_to_the_next_endpoint(etcd: EtcdMember, tmp_path: Path,
                                              prefix: str) -> None:
    client(etcd.endpoint).put(prefix + "/app/port", "8080")
    dest = tmp_path / "app.conf"
    _port_resource(tmp_path, "app", dest)
    dead = f"http://127.0.0.1:{free_port()}"
    for endpoints in (f"http://127.0.0.1:1,{etcd.endpoint}", f"{dead},{dead},{etcd.endpoint}"):
        dest.unlink(missing_ok=True)
        result = confsync("once", "--confdir", str(tmp_path), "--endpoints", endpoints,
                          "--prefix", prefix, env={"CONFSYNC_ETCD_TIMEOUT": "2s"})
        assert result.returncode == 0, result.stderr
        assert dest.read_text() == "port 8080\n"
        assert "trying the next endpoint" in result.stderr


def test_once_exits_3_when_every_endpoint_is_down(tmp_path: Path) -> None:
    write_resource(tmp_path, "a", "x\n", f'dest = "{tmp_path}/a"\nkeys = ["/a"]')
    endpoints = ",".join(f"http://127.0.0.1:{free_port()}" for _ in range(3))
    result = confsync("once", "--confdir", str(tmp_path), "--endpoints", endpoints,
                      env={"CONFSYNC_ETCD_TIMEOUT": "1s"})
    assert result.returncode == 3, result.stderr
    assert "store unavailable" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "a").exists()


# ---- 12: an empty store never empties a non-empty file, in `once` and `check` too


def _pool_resource(confdir: Path, dest: Path, extra: str = "") -> None:
    write_resource(confdir, "pool", "{% for kv in gets('/pool/*') %}server {{ kv.value | "
                   "hostport }}\n{% endfor %}", f'dest = "{dest}"\nkeys = ["/pool"]\n{extra}')


def test_once_refuses_to_empty_a_file_from_an_empty_store(etcd: EtcdMember, tmp_path: Path,
                                                          prefix: str) -> None:
    dest = tmp_path / "pool.conf"
    dest.write_text("server 10.0.0.1:80\n")
    _pool_resource(tmp_path, dest)
    for command in ("once", "check"):
        result = confsync(*_args(command, tmp_path, etcd, prefix))
        output = result.stdout + result.stderr
        assert result.returncode == 1, output
        assert "guard failed" in output and f"no keys under {prefix}/pool" in output, output
        assert dest.read_text() == "server 10.0.0.1:80\n"
    # min_keys = 0 says an empty pool is wanted
    _pool_resource(tmp_path, dest, "min_keys = 0")
    assert confsync(*_args("once", tmp_path, etcd, prefix)).returncode == 0
    assert dest.read_text() == ""
    # an empty or missing file has nothing to protect
    _pool_resource(tmp_path, dest)
    dest.unlink()
    assert confsync(*_args("once", tmp_path, etcd, prefix)).returncode == 0
    assert dest.exists()


def test_once_still_renders_an_unchanged_keyless_file(etcd: EtcdMember, tmp_path: Path,
                                                      prefix: str) -> None:
    """A template that renders the same text from no keys is not a blip: nothing to refuse."""
    dest = tmp_path / "static.conf"
    write_resource(tmp_path, "static", "static line\n", f'dest = "{dest}"\nkeys = ["/none"]')
    for _ in range(2):
        result = confsync(*_args("once", tmp_path, etcd, prefix))
        assert result.returncode == 0, result.stderr
    assert dest.read_text() == "static line\n"


# ---- 14: shell syntax in a command string


def test_shell_operator_in_a_command_is_refused_at_load(etcd: EtcdMember, tmp_path: Path,
                                                        prefix: str) -> None:
    client(etcd.endpoint).put(prefix + "/app/port", "8080")
    marker = tmp_path / "reloaded"
    _port_resource(tmp_path, "bad", tmp_path / "bad.conf",
                   f'reload_cmd = "true && touch {marker}"')
    _port_resource(tmp_path, "good", tmp_path / "good.conf",
                   f"reload_cmd = \"sh -c 'true && touch {marker}'\"")
    result = confsync(*_args("once", tmp_path, etcd, prefix))
    assert result.returncode == 2, result.stderr
    assert "bad.toml: template.reload_cmd: '&&' is shell syntax" in result.stderr
    assert "sh -c '...'" in result.stderr
    assert not (tmp_path / "bad.conf").exists()
    assert (tmp_path / "good.conf").exists() and marker.exists()  # quoted: a real shell ran


# ---- 17: staged files left by a killed run


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def _leftovers(directory: Path, live_pid: int) -> tuple[list[str], list[str]]:
    dead = _dead_pid()
    stale = [f".app.conf.{dead}.0.confsync", f".app.conf.{dead}.5.confsync"]
    kept = [f".app.conf.{live_pid}.0.confsync", f".app.conf.{dead}.0.confsync.keep",
            f".notmanaged.conf.{dead}.0.confsync"]
    for name in stale + kept:
        (directory / name).write_text("partial")
    return stale, kept


def _names(directory: Path) -> set[str]:
    return {p.name for p in directory.iterdir()}


@pytest.mark.parametrize("command", ["once", "check"])
def test_stale_staged_files_are_removed_at_start(etcd: EtcdMember, tmp_path: Path, prefix: str,
                                                 command: str) -> None:
    client(etcd.endpoint).put(prefix + "/app/port", "8080")
    out = tmp_path / "out"
    out.mkdir()
    _port_resource(tmp_path, "app", out / "app.conf")
    with subprocess.Popen(["sleep", "60"]) as live:
        try:
            stale, kept = _leftovers(out, live.pid)
            if command == "check":  # (younger, a dead pid may be another pid namespace's)
                then = time.time() - 3700
                for name in stale:
                    os.utime(out / name, (then, then))
            result = confsync(*_args(command, tmp_path, etcd, prefix))
            assert result.returncode in (0, 4), result.stdout + result.stderr
            assert "removed stale staged file" in result.stderr
            assert not _names(out) & set(stale)
            assert set(kept) <= _names(out)
        finally:
            live.kill()


def test_watch_removes_stale_staged_files_at_start(etcd: EtcdMember, tmp_path: Path,
                                                   prefix: str) -> None:
    client(etcd.endpoint).put(prefix + "/app/port", "8080")
    out = tmp_path / "out"
    out.mkdir()
    _port_resource(tmp_path, "app", out / "app.conf")
    with subprocess.Popen(["sleep", "60"]) as live:
        stale, kept = _leftovers(out, live.pid)
        daemon = WatchProcess("--confdir", str(tmp_path), "--endpoints", etcd.endpoint,
                              "--prefix", prefix, log=tmp_path / "watch.log")
        try:
            daemon.wait_log("resource app: wrote", timeout=20)
            assert "removed stale staged file" in daemon.output()
            assert not _names(out) & set(stale)
            assert set(kept) <= _names(out)
        finally:
            assert daemon.stop() == 0
            live.kill()
