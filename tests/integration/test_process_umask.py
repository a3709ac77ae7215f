"""confsync under the umask a unit, a container or a cron job gives it (000, 077): every file
it writes has the mode its resource says or the file had, never the umask's accident."""

from __future__ import annotations

import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.cli import confsync, write_resource
from tests.support.etcd_server import EtcdMember
from tests.support.haproxy import HAProxyStack
from tests.support.http_backends import HTTPBackend


def _umask(mask: str) -> list[str]:
    """A wrapper that runs confsync under `umask mask`."""
    return ["sh", "-c", f'umask {mask} && exec "$@"', "sh"]


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("mask", ["000", "077"])
def test_a_dest_has_the_resources_mode_or_its_own_under_any_umask(tmp_path: Path,
                                                                     mask: str) -> None:
    data = tmp_path / "data.yaml"
    data.write_text("app:\n  port: '8080'\n")
    write_resource(tmp_path, "set", "port {{ getv('/app/port') }}\n",
                   f'dest = "{tmp_path / "set.conf"}"\nkeys = ["/app"]\nmode = "0640"')
    write_resource(tmp_path, "new", "port {{ getv('/app/port') }}\n",
                   f'dest = "{tmp_path / "new.conf"}"\nkeys = ["/app"]')
    write_resource(tmp_path, "kept", "port {{ getv('/app/port') }}\n",
                   f'dest = "{tmp_path / "kept.conf"}"\nkeys = ["/app"]')
    (tmp_path / "kept.conf").write_text("old\n")
    (tmp_path / "kept.conf").chmod(0o604)
    done = confsync("once", "--confdir", str(tmp_path), "--backend", "file", "--file", str(data),
                    wrapper=_umask(mask))
    assert done.returncode == 0, done.stderr
    assert (_mode(tmp_path / "set.conf"), _mode(tmp_path / "new.conf"),
            _mode(tmp_path / "kept.conf")) == (0o640, 0o644, 0o604)


@pytest.fixture
def stack(haproxy_binary: str, etcd: EtcdMember) -> Iterator[HAProxyStack]:
    s = HAProxyStack(haproxy_binary, etcd.endpoint, strategy="runtime")
    yield s
    s.stop()


@pytest.mark.etcd
@pytest.mark.haproxy
def test_the_haproxy_server_state_file_mode_is_not_the_umasks(
        stack: HAProxyStack, backends: dict[str, HTTPBackend]) -> None:
    """HAProxy loads server addresses from the state file at every start and reload: under
    `umask 000` confsync left it world-writable (0666)."""
    stack.put_basics()
    stack.put_instance("web", "a", backends["a"].port)
    stack.sync_ok()
    stack.start()
    stack.put_instance("web", "b", backends["b"].port)
    done = stack.sync(wrapper=_umask("000"))
    assert done.returncode == 0 and "runtime API" in done.stderr, done.stderr
    assert _mode(stack.state) == 0o644  # was 0o666

    stack.state.chmod(0o640)  # an operator's mode is kept
    stack.put_instance("web", "c", backends["c"].port)
    done = stack.sync(wrapper=_umask("077"))
    assert done.returncode == 0 and "runtime API" in done.stderr, done.stderr
    assert _mode(stack.state) == 0o640
    assert not list(stack.base.glob(".server-state*"))


def test_convert_under_umask_000_writes_no_world_writable_file(tmp_path: Path) -> None:
    """conf.d names commands a root `watch` runs: a world-writable conf.d is anyone's root."""
    old = tmp_path / "confd"
    (old / "conf.d").mkdir(parents=True)
    (old / "templates" / "sub").mkdir(parents=True)
    (old / "conf.d" / "app.toml").write_text(
        '[template]\nsrc = "sub/app.tmpl"\ndest = "/etc/app.conf"\nkeys = ["/app"]\n'
        'check_cmd = "true {{.src}}"\n')
    (old / "templates" / "sub" / "app.tmpl").write_text('{{getv "/app/x"}}\n')
    (old / "confd.toml").write_text('backend = "etcdv3"\nnodes = ["https://127.0.0.1:2379"]\n'
                                    'username = "u"\npassword = "p"\n')
    new = tmp_path / "etc" / "confsync"  # its parent made too
    done = confsync("convert", str(old), str(new), wrapper=_umask("000"))
    assert done.returncode == 0, done.stderr + done.stdout
    modes = {str(p.relative_to(new)): _mode(p) for p in new.rglob("*")}
    # Were 0777 (directories) and 0666 (files).
    assert modes == {"conf.d": 0o755, "conf.d/app.toml": 0o644, "templates": 0o755,
                     "templates/sub": 0o755, "templates/sub/app.tmpl": 0o644,
                     "confsync.toml": 0o644, "etcd-password": 0o600}
    assert (_mode(new), _mode(new.parent)) == (0o750, 0o755)
