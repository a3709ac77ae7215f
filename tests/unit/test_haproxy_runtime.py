"""Runtime commands HAProxy answers with nothing are read back, never taken on trust.

A fake admin socket (pure protocol logic: HAProxy's answers, as 2.6 gives them) that can lose
one command: read it to the end, then close without a word, as a worker stopping in a reload
does.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from confsync.haproxy import runtime
from confsync.haproxy.config_model import parse
from confsync.haproxy.runtime import AdminSocket, RuntimeApplyFailed, reconcile, update_saved_state
from tests.support.unix_cli import UnixCLI

CONFIG = """global
    stats socket /run/a.sock mode 600 level admin
backend be_web
    balance roundrobin
{servers}
"""


def cfg(*servers: str) -> str:
    return CONFIG.format(servers="\n".join(f"    {s}" for s in servers))


class FakeAdmin:
    """`show servers state`, `show backend`, `add/del server`, `set server ... state|weight`,
    `enable health`, answered as HAProxy 2.6 does; the command starting with `lose` is read
    and dropped with no answer."""

    def __init__(self, path: Path, servers: dict[str, tuple[str, int, int, int]],
                 lose: str) -> None:
        self.servers = dict(servers)  # name -> (address, port, admin state, weight)
        self.lose = lose
        self.lost: list[str] = []
        self.busy = 0.0  # seconds a drained server keeps a request in flight (`move_server`)
        self.drained: dict[str, float] = {}  # name -> time.monotonic() of its drain
        self.cli = UnixCLI(path, self._answers)

    def _answers(self, data: str) -> str | None:
        answers = [self._answer(command.strip()) for command in data.split(";")]
        return None if None in answers else "".join(a or "" for a in answers)

    def _answer(self, command: str) -> str | None:
        words = command.split()
        if command.startswith(self.lose):
            self.lost.append(command)
            return None
        if command == "show servers state":
            return "1\n# be_id be_name srv_id srv_name srv_addr ...\n" + "".join(
                f"3 be_web {i} {n} {a} 2 {admin} {w} {w} 0 1 0 0 0 0 0 0 - {p} - 0 0 - - 0\n"
                for i, (n, (a, p, admin, w)) in enumerate(self.servers.items(), 1)) + "\n"
        if command == "show backend":
            return "# name\nbe_web\n"
        if command == "show servers conn be_web":
            return "# bkname/svname bkid/svid addr port - purge_delay used_cur idle_cur\n" + "".join(
                f"be_web/{n} 3/{i} {a} {p} - 5000 "
                f"{int(time.monotonic() < self.drained.get(n, 0) + self.busy)} 0\n"
                for i, (n, (a, p, _, _)) in enumerate(self.servers.items(), 1))
        name = words[2].partition("/")[2] if len(words) > 2 else ""
        if words[:2] == ["add", "server"]:
            address, _, port = words[3].rpartition(":")
            self.servers[name] = (address, int(port), 1, int(words[words.index("weight") + 1]))
            return "New server registered.\n"
        if words[:2] == ["del", "server"]:
            del self.servers[name]
            return "Server deleted.\n"
        if name not in self.servers and words[:2] == ["set", "server"]:
            return "No such server.\n"
        address, port, admin, weight = self.servers.get(name, ("", 0, 0, 0))
        if words[:2] == ["set", "server"] and words[3] == "addr":
            self.servers[name] = (words[4], int(words[6]), admin, weight)
            return f"IP changed from '{address}' to '{words[4]}', port changed from '{port}'"
        if words[:2] == ["set", "server"] and words[3] == "state" and words[4] == "drain":
            self.drained[name] = time.monotonic()
            self.servers[name] = (address, port, 8, weight)
            return ""
        if words[:2] == ["set", "server"] and words[3] == "state":
            self.servers[name] = (address, port, 1 if words[4] == "maint" else 0, weight)
            return ""
        if words[:2] == ["set", "server"] and words[3] == "weight":
            self.servers[name] = (address, port, admin, int(words[4]))
            return ""
        if words[:2] == ["enable", "health"]:
            return ""
        return "Unknown command.\n"

    def close(self) -> None:
        self.cli.close()


@pytest.fixture
def sockdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="hxr"))  # (tmp_path can exceed a socket path's limit)
    yield path
    shutil.rmtree(path, ignore_errors=True)


OLD = parse(cfg("server a 10.0.0.1:80 weight 10", "server b 10.0.0.2:80 weight 10"))
RUNNING = {"a": ("10.0.0.1", 80, 0, 10), "b": ("10.0.0.2", 80, 0, 10)}


@pytest.mark.parametrize(("new", "lose"), [
    # a new instance's `state ready` lost: it would have stayed in maintenance
    (cfg("server a 10.0.0.1:80 weight 10", "server b 10.0.0.2:80 weight 10",
         "server c 10.0.0.3:80 weight 10"), "set server be_web/c state ready"),
    # `state maint` lost: the instance etcd took out would have gone on serving
    (cfg("server a 10.0.0.1:80 weight 10", "server b 10.0.0.2:80 weight 10 disabled"),
     "set server be_web/b state maint"),
    (cfg("server a 10.0.0.1:80 weight 3", "server b 10.0.0.2:80 weight 10"),
     "set server be_web/a weight"),
])
def test_a_silent_command_the_worker_dropped_is_noticed(sockdir: Path, new: str,
                                                         lose: str) -> None:
    fake = FakeAdmin(sockdir / "admin.sock", RUNNING, lose)
    try:
        with pytest.raises(RuntimeApplyFailed, match="not the file's after the runtime"):
            reconcile(AdminSocket(sockdir / "admin.sock", timeout=2.0), OLD, parse(new), set())
        assert fake.lost and fake.lost[0].startswith(lose)
    finally:
        fake.close()


def test_silent_commands_that_took_pass_the_read_back(sockdir: Path) -> None:
    fake = FakeAdmin(sockdir / "admin.sock", RUNNING, lose="nothing")
    new = parse(cfg("server a 10.0.0.1:80 weight 3", "server b 10.0.0.2:80 weight 10 disabled",
                    "server c 10.0.0.3:80 weight 10"))
    try:
        sent = reconcile(AdminSocket(sockdir / "admin.sock", timeout=2.0), OLD, new, set())
        assert sent == ["set server be_web/a weight 3", "set server be_web/b state maint",
                        "add server be_web/c 10.0.0.3:80 weight 10",
                        "set server be_web/c state ready"]
        assert fake.servers["c"] == ("10.0.0.3", 80, 0, 10)
    finally:
        fake.close()


def test_no_answer_to_a_command_that_always_answers_is_a_failure(sockdir: Path) -> None:
    fake = FakeAdmin(sockdir / "admin.sock", RUNNING, lose="del server")
    try:
        with pytest.raises(RuntimeApplyFailed, match="no answer"):
            AdminSocket(sockdir / "admin.sock", timeout=2.0).command("del server be_web/a")
    finally:
        fake.close()


def test_a_del_server_that_got_no_answer_is_no_busy_server_to_park(sockdir: Path) -> None:
    """`reconcile` parks a server whose `del server` HAProxy refuses for its connections; a
    `del server` nobody answered is a failure (the reload), not a busy server."""
    fake = FakeAdmin(sockdir / "admin.sock", RUNNING, lose="del server be_web/b")
    parked: set[str] = set()
    try:
        with pytest.raises(RuntimeApplyFailed, match="no answer"):
            reconcile(AdminSocket(sockdir / "admin.sock", timeout=2.0), OLD,
                      parse(cfg("server a 10.0.0.1:80 weight 10")), parked)
        assert parked == set()
    finally:
        fake.close()


def test_a_move_cut_short_leaves_no_drain_for_the_reload(tmp_path: Path) -> None:
    """A move whose requests in flight outlast MOVE_WAIT reloads with the server in drain (the
    move's first step) at its new address. Kept in the state file, the drain came back in the
    new worker and, the server's line unchanged since, later passes took it for an operator's:
    the instance never served again (measured on 2.6.12: admin state 8 after the reload). A
    drain on a server etcd changed is not carried; one on a server it left alone still is."""
    old = parse(cfg("server a 10.0.0.1:80 weight 10 check", "server b 10.0.0.2:80 weight 10"))
    new = parse(cfg("server a 10.0.0.9:80 weight 10 check", "server b 10.0.0.2:80 weight 10"))
    state = tmp_path / "state"
    state.write_text("1\n# be_id be_name srv_id srv_name srv_addr ...\n" + "".join(
        f"3 be_web {i} {n} {a} 2 8 10 10 0 1 0 0 0 0 0 0 - 80 - 0 0 - - 0\n"
        for i, (n, a) in enumerate([("a", "10.0.0.9"), ("b", "10.0.0.2")], 1)))
    assert update_saved_state(state, old, new) == 1
    kept = [line.split() for line in state.read_text().splitlines()[2:]]
    assert [(f[3], f[6]) for f in kept] == [("b", "8")]  # b: an operator's drain


def test_a_health_check_left_off_is_kept_only_for_a_server_etcd_left_alone(
        tmp_path: Path) -> None:
    """HAProxy loads a server's check state from the state file: saved off for a server etcd
    added (its `enable health` lost), the reload meant to repair it kept it unchecked. Off on
    a server whose line etcd did not change, it is an operator's `disable health`: kept."""
    old = parse(cfg("server a 10.0.0.1:80 weight 10 check"))
    new = parse(cfg("server a 10.0.0.1:80 weight 10 check", "server c 10.0.0.3:80 weight 10 check"))
    state = tmp_path / "state"
    state.write_text("1\n# be_id be_name srv_id srv_name srv_addr ...\n" + "".join(
        f"3 be_web {i} {n} {a} 2 0 10 10 0 1 0 0 {check} 0 0 0 - 80 - 0 0 - - 0\n"
        for i, (n, a, check) in enumerate([("a", "10.0.0.1", 2), ("c", "10.0.0.3", 2)], 1)))
    assert update_saved_state(state, old, new) == 1
    assert [line.split()[3] for line in state.read_text().splitlines()[2:]] == ["a"]
    state.write_text(state.read_text() + "3 be_web 2 c 10.0.0.3 2 0 10 10 0 1 0 0 6 0 0 0 - 80 "
                     "- 0 0 - - 0\n")  # (checked, as the file says: kept)
    assert update_saved_state(state, old, new) == 2


def test_the_moves_of_a_pass_wait_in_all_no_longer_than_moves_wait(
        sockdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each move waits for its requests in flight (up to MOVE_WAIT), one move after the other,
    and the daemon's loop with them: a pool whose requests each ended just within MOVE_WAIT
    held it for MOVE_WAIT per server. Past MOVES_WAIT in all, the pass reloads instead."""
    monkeypatch.setattr(runtime, "MOVES_WAIT", 1.0, raising=False)
    names = "abcdefgh"
    running = {n: (f"10.0.0.{i}", 80, 0, 10) for i, n in enumerate(names, 1)}
    old = parse(cfg(*(f"server {n} {a}:80 weight 10" for n, (a, *_) in running.items()),
                    "server z 10.0.0.99:80 weight 10"))
    new = parse(cfg(*(f"server {n} 10.0.1.{i}:80 weight 10" for i, n in enumerate(names, 1)),
                    "server z 10.0.0.99:80 weight 10"))
    fake = FakeAdmin(sockdir / "admin.sock", {**running, "z": ("10.0.0.99", 80, 0, 10)},
                     lose="nothing")
    fake.busy = 0.3  # within MOVE_WAIT: each move alone goes through
    try:
        with pytest.raises(RuntimeApplyFailed, match="still in flight"):
            reconcile(AdminSocket(sockdir / "admin.sock", timeout=2.0), old, new, set())
        assert len(fake.drained) < len(names)  # (8 x 0.3 s > 1 s)
    finally:
        fake.close()
