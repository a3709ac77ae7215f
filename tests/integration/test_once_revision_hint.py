"""`once` sets up its render path while etcd answers when etcd moved on since the renders its
memo kept (the gateway's revision hint), and not when it did not: a guess that only moves
work earlier, never one that decides what is written (the memo's digests do)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from confsync.settings import EtcdSettings
from confsync.stores.etcd_gateway import EtcdGatewayStore
from tests.support.cli import confsync, write_resource
from tests.support.etcd_client import client
from tests.support.etcd_server import EtcdMember, free_port, start_single

EARLY = "setting up the render path while the snapshot is read"
MEMO = "a render with the same inputs wrote it"


@pytest.fixture
def own_etcd(etcd_binary: str, tmp_path: Path) -> Iterator[EtcdMember]:
    """A server of this test's own: nothing else moves its revision between runs."""
    member = start_single(etcd_binary, tmp_path / "etcd")
    yield member
    member.stop()


def test_the_render_path_is_set_up_early_only_when_etcd_moved_on(own_etcd: EtcdMember,
                                                                 tmp_path: Path) -> None:
    c = client(own_etcd.endpoint)
    c.put("/p/svc/a", "1")
    dest = tmp_path / "out.conf"
    confdir = tmp_path / "cd"
    write_resource(confdir, "pool", "{% for kv in gets('/svc/*') %}{{ kv.value }}\n{% endfor %}",
                   f'dest = "{dest}"\nkeys = ["/svc"]\n')
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()

    def once() -> str:
        done = confsync("once", "--confdir", str(confdir), "--endpoints", own_etcd.endpoint,
                        "--prefix", "/p", "--log-level", "debug", env={"TMPDIR": str(tmpdir)})
        assert done.returncode == 0, done.stderr
        return done.stderr

    first = once()  # no memo yet: set up while reading, as always
    assert MEMO not in first and dest.read_text() == "1\n"
    second = once()  # same data, etcd where it was: the memo stands in, nothing set up
    assert MEMO in second and EARLY not in second
    c.put("/p/svc/a", "2")
    third = once()
    assert EARLY in third and MEMO not in third and dest.read_text() == "2\n"
    c.put("/elsewhere", "x")  # another key moves etcd on: set up in vain, the memo decides
    written = dest.stat().st_mtime_ns
    fourth = once()
    assert EARLY in fourth and MEMO in fourth and dest.stat().st_mtime_ns == written
    fifth = once()  # the revision it stood in at was kept: no set-up again
    assert EARLY not in fifth and MEMO in fifth and dest.read_text() == "2\n"


def test_the_hint_is_none_where_it_is_not_cheap_or_fails(own_etcd: EtcdMember) -> None:
    def hint(**kw: object) -> int | None:
        return EtcdGatewayStore(EtcdSettings(**kw)).revision_hint()  # type: ignore[arg-type]

    client(own_etcd.endpoint).put("/k", "v")
    assert (hint(endpoints=(own_etcd.endpoint,)) or 0) >= 2
    assert hint(endpoints=(f"http://127.0.0.1:{free_port()}",)) is None  # nothing listens
    assert hint(endpoints=(own_etcd.endpoint,), user="u") is None  # a token: a round trip more
