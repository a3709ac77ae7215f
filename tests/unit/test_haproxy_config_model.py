"""The config model tells pool-only changes (runtime API) from structural ones (reload)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from confsync.haproxy.config_model import Server, parse, runtime_changes
from confsync.haproxy.control import _bind_endpoints, check_binds_free
from confsync.targets import ReloadFailed

BASE = """\
global
    master-worker
    stats socket /run/a.sock mode 600 level admin
    server-state-file /var/lib/haproxy/state
defaults
    mode http
frontend fe_main
    bind 127.0.0.1:8080
    default_backend be_web
backend be_web
    balance {balance}
    default-server inter 2s fall 3 rise 2
{servers}
"""


def cfg(*servers: str, balance: str = "roundrobin") -> str:
    return BASE.format(balance=balance, servers="\n".join(f"    {s}" for s in servers))


def test_parse_reads_servers_binds_sockets() -> None:
    model = parse(cfg("server a 10.0.0.1:80 weight 10 check",
                      "server b [2001:db8::1]:81 weight 0 check disabled"))
    assert model.binds == ["127.0.0.1:8080"]
    assert model.stats_socket == "/run/a.sock"
    assert model.state_file == "/var/lib/haproxy/state"
    be = model.backends["be_web"]
    assert be.default_server == ("inter", "2s", "fall", "3", "rise", "2")
    assert be.servers["a"] == Server("a", "10.0.0.1", 80, 10, False, ("check",))
    assert be.servers["b"] == Server("b", "2001:db8::1", 81, 0, True, ("check",))
    assert be.servers["b"].addr_port == "[2001:db8::1]:81"


def test_pool_changes_are_runtime_changes() -> None:
    old = parse(cfg("server a 10.0.0.1:80 weight 10 check", "server b 10.0.0.2:80 weight 10 check"))
    new = parse(cfg("server a 10.0.0.9:81 weight 5 check disabled",
                    "server c 10.0.0.3:80 weight 10 check"))
    changes = runtime_changes(old, new)
    assert changes is not None
    assert [(c.action, (c.old or c.new).name) for c in changes] == [  # type: ignore[union-attr]
        ("update", "a"), ("add", "c"), ("delete", "b")]


def test_comment_only_change_needs_nothing() -> None:
    old = parse(cfg("server a 10.0.0.1:80 weight 10 check"))
    new = parse("# a comment\n" + cfg("server a 10.0.0.1:80 weight 10 check"))
    assert runtime_changes(old, new) == []


@pytest.mark.parametrize("old_servers, new_servers, balance", [
    (["server a 10.0.0.1:80 weight 1 check"], ["server a 10.0.0.1:80 weight 1"], "roundrobin"),
    ([], ["server a 10.0.0.1:80 weight 1 check"], "static-rr"),
    (["server a 10.0.0.1:80 weight 1 check"], [], "source"),
    (["server a 10.0.0.1:80 weight 1 check"], ["server a web.example:80 weight 1 check"],
     "roundrobin"),
], ids=["options", "add-static", "delete-source", "hostname"])
def test_structural_changes_need_a_reload(old_servers: list[str], new_servers: list[str],
                                          balance: str) -> None:
    old = parse(cfg(*old_servers, balance=balance))
    new = parse(cfg(*new_servers, balance=balance))
    assert runtime_changes(old, new) is None


def test_any_other_line_is_structural() -> None:
    old = parse(cfg("server a 10.0.0.1:80 weight 1 check"))
    new = parse(cfg("server a 10.0.0.1:80 weight 1 check").replace("8080", "8081"))
    assert runtime_changes(old, new) is None
    new_backend = parse(cfg("server a 10.0.0.1:80 weight 1 check") + "backend be_api\n")
    assert runtime_changes(old, new_backend) is None


def test_bind_tokens() -> None:
    assert _bind_endpoints("127.0.0.1:80") == [(socket.AF_INET, "127.0.0.1", 80)]
    assert _bind_endpoints("[::1]:81") == [(socket.AF_INET6, "::1", 81)]
    assert [p for _, _, p in _bind_endpoints("127.0.0.1:80-82")] == [80, 81, 82]
    assert _bind_endpoints("unix@/run/x.sock") == []
    assert _bind_endpoints("/run/x.sock") == []


def _fake_dns(monkeypatch: pytest.MonkeyPatch, name: str, delay: float,
              answer: bool) -> list[object]:
    """socket.getaddrinfo for `name`: `delay` seconds, then 127.0.0.1 or a temporary failure.
    (Faked: glibc has no per-process way to use a test name server.)"""
    import time

    real, asked = socket.getaddrinfo, []

    def dns(host: object, port: object = None, *args: object, **kwargs: object) -> object:
        numeric = len(args) > 3 and int(args[3]) & socket.AI_NUMERICHOST  # type: ignore[call-overload]
        if host not in (name, name.encode()) or numeric:
            return real(host, port, *args, **kwargs)  # type: ignore[arg-type]
        asked.append(port)
        time.sleep(delay)
        if not answer:
            raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port or 0))]

    monkeypatch.setattr(socket, "getaddrinfo", dns)
    return asked


def test_a_bind_host_name_dns_does_not_answer_is_refused_in_bounded_time(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """getaddrinfo has no timeout: a `bind` host name with a name server that does not answer
    held the watch loop for the resolver's retries (glibc: 5 s x 2 per name server)."""
    import time

    from confsync.haproxy import control

    _fake_dns(monkeypatch, "lb.example", delay=3.0, answer=False)
    monkeypatch.setattr(control, "BIND_LOOKUP", 0.3, raising=False)
    model = parse(cfg().replace("127.0.0.1:8080", "lb.example:8080"))
    started = time.monotonic()
    with pytest.raises(ReloadFailed, match=r"bind lb\.example:8080: cannot resolve"):
        check_binds_free(None, model, master_pid=None)
    assert time.monotonic() - started < 2.0


def test_a_bind_host_name_is_looked_up_once_for_its_port_range(
        monkeypatch: pytest.MonkeyPatch) -> None:
    asked = _fake_dns(monkeypatch, "lb2.example", delay=0.0, answer=True)
    endpoints = _bind_endpoints("lb2.example:8080-8099")
    assert [p for _, _, p in endpoints] == list(range(8080, 8100))
    assert {a for _, a, _ in endpoints} == {"127.0.0.1"}
    assert len(asked) == 1  # was one per port: 20 slow lookups for a range


def test_bind_on_a_port_held_elsewhere_is_refused() -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        model = parse(cfg().replace("127.0.0.1:8080", f"127.0.0.1:{port}"))
        with pytest.raises(ReloadFailed, match=f"port {port} is held by"):
            check_binds_free(None, model, master_pid=None)
    check_binds_free(None, model, master_pid=None)  # free again


def test_server_only_change_allows_skipping_the_check_only_when_safe() -> None:
    from confsync.haproxy.control import server_only_change

    old = cfg("server a 10.0.0.1:80 weight 10 check").encode()
    assert server_only_change(old, cfg("server a 10.0.0.2:81 weight 0 check disabled",
                                       "server b 10.0.0.3:80 weight 5 check").encode())
    assert not server_only_change(None, old)
    assert not server_only_change(old, cfg("server a 10.0.0.1:80 weight 300 check").encode())
    assert not server_only_change(old, cfg("server a 10.0.0.1:80 weight 1 check",
                                           "server b 10.0.0.3:80 weight 5 backup").encode())
    assert not server_only_change(old, old.replace(b"8080", b"8081"))


def test_a_server_at_an_ipv6_zone_is_never_proven() -> None:
    """HAProxy 2.6 cannot load `[fe80::1%lo]:80` (`could not resolve address`), while Python
    parses it: proven, the file skipped `haproxy -c`, went live, and HAProxy's reload failed."""
    from confsync.haproxy.control import server_only_change

    old = cfg("server a 10.0.0.1:80 weight 10 check").encode()
    zoned = cfg("server a 10.0.0.1:80 weight 10 check", "server b [fe80::1%lo]:80 weight 10 check")
    assert not server_only_change(old, zoned.encode())
    assert "server b [fe80::1%lo]:80 weight 10 check" in parse(zoned).opaque


@pytest.mark.parametrize("line", ["server b 10.0.0.2:8\u0660 weight 10 check",
                                  "server b 10.0.0.2:80 weight 1\u0660 check"])
def test_a_port_or_weight_of_unicode_digits_is_never_proven(line: str) -> None:
    """`str.isdigit` takes `8\u0660` for 80: proven, a file HAProxy refuses skipped its check."""
    from confsync.haproxy.control import server_only_change

    old = cfg("server a 10.0.0.1:80 weight 10 check").encode()
    assert not server_only_change(old, cfg("server a 10.0.0.1:80 weight 10 check", line).encode())


@pytest.mark.parametrize("name", ["x;help", "é", "a/b", "a#b"])
def test_a_server_name_haproxy_refuses_is_never_proven_nor_sent(name: str) -> None:
    """A template that renders a key's name unfiltered: `haproxy -c` refuses the name, but
    the proof did not look at names, so the file went live unchecked, HAProxy's reload
    failed, and `add server be_web/x;help ...` ran `help ...` as a second command."""
    from confsync.haproxy.control import server_only_change
    from confsync.haproxy.runtime import AdminSocket, RuntimeApplyFailed

    old = cfg("server a 10.0.0.1:80 weight 10 check").encode()
    new = cfg("server a 10.0.0.1:80 weight 10 check", f"server {name} 10.0.0.2:80 weight 10 check")
    assert not server_only_change(old, new.encode())
    assert name not in parse(new).backends["be_web"].servers
    with pytest.raises(RuntimeApplyFailed, match="another command"):
        AdminSocket(Path("/nonexistent.sock")).command("del server be_web/x;help")


def test_haproxys_spelling_of_an_address_is_the_files() -> None:
    """HAProxy prints the file's `::ffff:7f00:1` as `::ffff:127.0.0.1`: compared as text, that
    server moved, then reloaded, at every pass, and lost its saved health state."""
    from confsync.haproxy import runtime

    new = parse(cfg("server a [::ffff:127.0.0.1]:80 weight 10 check"))
    line = "3 be_web 1 a ::ffff:127.0.0.1 2 0 10 10 0 15 3 4 6 0 0 0 - 80 - 0 0 - - 0"
    fields = line.split()
    assert runtime._address(fields) == new.backends["be_web"].servers["a"].address
    content, kept = runtime._kept(["1", line], new, new, ())
    assert kept == 1 and line.encode() in content
    live = runtime.LiveServer(runtime._address(fields), 80, 10, maint=False, drain=False,
                              checked=True)
    plan = runtime.plan_reconcile(new, {"be_web": {"a": live}}, {"be_web/a"}, old=new)
    assert (plan.moves, plan.differences, plan.reload) == ([], [], None)


@pytest.mark.parametrize("reference", [
    "use-server a if { path_beg /a }",
    "http-request set-var(txn.n) srv_conn(be_web/a)",
], ids=["use-server", "sample-fetch"])
def test_deleting_a_server_still_referenced_is_never_proven(reference: str) -> None:
    from confsync.haproxy.control import server_only_change

    both = cfg(reference, "server a 10.0.0.1:80 weight 10 check",
               "server b 10.0.0.2:80 weight 10 check").encode()
    assert not server_only_change(both, cfg(reference, "server b 10.0.0.2:80 weight 10 check")
                                  .encode())
    tracked = cfg("server a 10.0.0.1:80 weight 10 check",
                  "server b 10.0.0.2:80 weight 10 track be_web/a").encode()
    assert not server_only_change(tracked, cfg("server b 10.0.0.2:80 weight 10 track be_web/a")
                                  .encode())
    # A name that only shares a prefix with a remaining token is no reference.
    ab = cfg("server a 10.0.0.1:80 weight 10 check", "server ab 10.0.0.2:80 weight 10 check")
    assert server_only_change(ab.encode(), cfg("server ab 10.0.0.2:80 weight 10 check").encode())


def test_reconcile_plans_against_the_live_servers() -> None:
    from confsync.haproxy.runtime import LiveServer, Move, plan_reconcile

    new = parse(cfg("server a 10.0.0.1:80 weight 10 check",
                    "server b 10.0.0.2:80 weight 10 check disabled",
                    "server c 10.0.0.3:80 weight 10 check"))
    live = {"be_web": {
        "a": LiveServer("10.0.0.9", 80, 10, maint=False, drain=True,  # moved, drained by hand
                        checked=True),
        "b": LiveServer("10.0.0.2", 80, 10, maint=False, drain=False, checked=True),
        "z": LiveServer("10.0.0.26", 80, 10, maint=True, drain=False),  # left over
        "slot1": LiveServer("10.0.0.30", 80, 1, maint=False, drain=False),  # server-template
    }}
    # A moved server moves in steps (`move_server`), then takes the file's state.
    plan = plan_reconcile(new, live, {"be_web/a", "be_web/b", "be_web/z"})
    assert plan.reload is None
    assert plan.moves == [Move("be_web/a", "10.0.0.1", 80, "ready", checked=True)]
    assert "set server be_web/a state ready" not in plan.commands  # (the move's last step)
    live["be_web"]["a"] = LiveServer("10.0.0.1", 80, 10, maint=False, drain=True,  # drained
                                     checked=True)
    plan = plan_reconcile(new, live, {"be_web/a", "be_web/b", "be_web/z"})
    assert plan.reload is None
    commands, removals = plan.commands, plan.removals
    assert commands == [
        "set server be_web/a state ready",
        "set server be_web/b state maint",
        "add server be_web/c 10.0.0.3:80 inter 2s fall 3 rise 2 weight 10 check",
        "enable health be_web/c",
        "set server be_web/c state ready",
    ]
    assert removals == ["be_web/z"]  # never slot1: not a server line confsync wrote
    # a backend HAProxy does not have: reload
    assert plan_reconcile(new, {}, set()).reload == "backend be_web is not in HAProxy"
    static = parse(cfg("server a 10.0.0.1:80 weight 10 check", balance="static-rr"))
    assert plan_reconcile(static, {"be_web": {}}, set()).reload  # no add server with static-rr


def test_a_move_is_runtime_while_another_server_serves() -> None:
    """The steps of a move take the server out of the pool for tens of milliseconds: fine
    while another server of the backend serves where it is, a 503 for every request
    meanwhile when none does (measured), so then the move is a reload."""
    from confsync.haproxy.runtime import LiveServer, Move, plan_reconcile

    new = parse(cfg("server a 10.0.0.1:80 weight 10 check", "server b 10.0.0.2:80 weight 7",
                    "server c 10.0.0.3:80 weight 10 check disabled"))

    def live(**servers: LiveServer) -> dict[str, dict[str, LiveServer]]:
        return {"be_web": servers}

    at = {"a": LiveServer("10.0.0.1", 80, 10, maint=False, drain=False, checked=True),
          "b": LiveServer("10.0.0.2", 80, 7, maint=False, drain=False),
          "c": LiveServer("10.0.0.3", 80, 10, maint=True, drain=False, checked=True)}
    moved_a = LiveServer("10.0.0.9", 81, 5, maint=False, drain=False, checked=True)
    plan = plan_reconcile(new, live(**{**at, "a": moved_a}), set())
    assert (plan.reload, plan.moves) == (None, [Move("be_web/a", "10.0.0.1", 80, "ready",
                                                     checked=True)])
    assert plan.commands == ["set server be_web/a weight 10"]
    # no other server serving where it is: b drained, moving too, or with weight 0
    for b in (LiveServer("10.0.0.2", 80, 7, maint=False, drain=True),
              LiveServer("10.0.0.8", 80, 7, maint=False, drain=False),
              LiveServer("10.0.0.2", 80, 0, maint=False, drain=False)):
        plan = plan_reconcile(new, live(**{**at, "a": moved_a, "b": b}), set())
        assert plan.reload == ("be_web/a moved from 10.0.0.9:81 to 10.0.0.1:80 with no other "
                               "server to serve meanwhile")
    # a server that serves nothing now moves at runtime all the same, into the file's state
    lone = live(a=LiveServer("10.0.0.1", 80, 10, maint=False, drain=True),
                b=LiveServer("10.0.0.2", 80, 7, maint=True, drain=False),
                c=LiveServer("10.0.0.4", 80, 10, maint=True, drain=False))
    plan = plan_reconcile(new, lone, set(), admin_state=False)
    assert (plan.reload, plan.moves) == (None, [Move("be_web/c", "10.0.0.3", 80, "maint")])
    # HAProxy's own admin state is kept where the file's is not applied (an operator's drain)
    plan = plan_reconcile(new, live(**{**at, "a": LiveServer("10.0.0.9", 81, 5, maint=False,
                                                              drain=True)}),
                          set(), admin_state=False)
    assert (plan.reload, plan.moves) == (None, [Move("be_web/a", "10.0.0.1", 80, "drain")])


def test_the_health_check_of_a_server_etcd_changed_is_the_files() -> None:
    """A dynamic server starts with its check off (`enable health` answers nothing when it
    works, so a lost one shows only here, read back); that of a server etcd left alone is
    HAProxy's (an operator's `disable health`), as its admin state is."""
    from confsync.haproxy.runtime import LiveServer, plan_reconcile

    old = parse(cfg("server a 10.0.0.1:80 weight 10 check", "server b 10.0.0.2:80 weight 10"))
    new = parse(cfg("server a 10.0.0.1:80 weight 10 check", "server b 10.0.0.2:80 weight 10",
                    "server c 10.0.0.3:80 weight 10 check"))
    off = {"a": LiveServer("10.0.0.1", 80, 10, maint=False, drain=False),  # disabled by hand
           "b": LiveServer("10.0.0.2", 80, 10, maint=False, drain=False),
           "c": LiveServer("10.0.0.3", 80, 10, maint=False, drain=False)}  # `enable health` lost
    plan = plan_reconcile(new, {"be_web": off}, {"be_web/a", "be_web/b"}, old=old)
    assert plan.commands == ["enable health be_web/c"]
    # default-server's `check` counts (a dynamic server repeats it), `no-check` after it wins
    both = parse(cfg("default-server check", "server a 10.0.0.1:80 weight 10",
                     "server b 10.0.0.2:80 weight 10 no-check"))
    plan = plan_reconcile(both, {"be_web": {}}, set())
    assert [c for c in plan.commands if "health" in c] == ["enable health be_web/a"]


def test_without_the_previous_file_only_names_addresses_and_ports_count() -> None:
    """What a start compares (a pass killed between installing the file and its runtime
    commands): HAProxy's own servers stand for the file it runs, less server-template slots,
    parked servers and any in maintenance; weight and admin state are no difference."""
    from confsync.haproxy.runtime import LiveServer, plan_reconcile, running_ours

    new = parse(cfg("server a 10.0.0.1:80 weight 10 check",
                    "server b 10.0.0.2:80 weight 10 check",
                    "server c 10.0.0.3:80 weight 10 check",
                    "server-template slot 1-3 10.0.0.9:80 disabled",
                    "server-template spare 2 10.0.0.9:80 disabled"))
    live = {"be_web": {
        "a": LiveServer("10.0.0.1", 80, 1, maint=True, drain=False),  # disabled by hand
        "b": LiveServer("10.0.0.2", 81, 10, maint=False, drain=False),  # moved
        "old": LiveServer("10.0.0.4", 80, 10, maint=False, drain=False),  # removed
        "gone": LiveServer("10.0.0.5", 80, 10, maint=True, drain=False),  # parked earlier
        "parked": LiveServer("10.0.0.6", 80, 10, maint=False, drain=False),
        "slot2": LiveServer("10.0.0.30", 80, 1, maint=False, drain=False),  # filled slot
        "spare1": LiveServer("10.0.0.31", 80, 1, maint=False, drain=False),
        "slot4": LiveServer("10.0.0.32", 80, 1, maint=False, drain=False),  # no slot of ours
    }}
    ours = running_ours(new, live, {"be_web/parked"})
    assert ours == {"be_web/b", "be_web/old", "be_web/slot4"}
    plan = plan_reconcile(new, live, ours, admin_state=False)
    assert plan.reload is not None and plan.reload.startswith("be_web/b moved")  # (a reload)
    assert plan.differences == [
        "HAProxy runs be_web/b at 10.0.0.2:81, the file has 10.0.0.2:80",
        "be_web/c is not in HAProxy",
        "HAProxy runs be_web/old, the file does not",
        "HAProxy runs be_web/slot4, the file does not",
    ]
    assert plan.commands == [
        "add server be_web/c 10.0.0.3:80 inter 2s fall 3 rise 2 weight 10 check",
        "enable health be_web/c",
        "set server be_web/c state ready",
    ]  # a stays in maintenance with its weight
    assert plan.removals == ["be_web/old", "be_web/slot4"]
    in_step = {"be_web": {name: live["be_web"][name] for name in ("a", "gone", "slot2")}
               | {"b": LiveServer("10.0.0.2", 80, 3, maint=False, drain=True),
                  "c": LiveServer("10.0.0.3", 80, 10, maint=False, drain=False)}}
    plan = plan_reconcile(new, in_step, running_ours(new, in_step), admin_state=False)
    assert (plan.differences, plan.commands, plan.removals) == ([], [], [])


def test_only_server_lines_and_parked_servers_are_managed() -> None:
    from confsync.haproxy.runtime import managed

    old = parse(cfg("server a 10.0.0.1:80 weight 10 check",
                    "server-template slot 1-3 10.0.0.9:80 disabled"))
    assert managed(old) == {"be_web/a"}
    assert managed(old, {"be_web/gone"}) == {"be_web/a", "be_web/gone"}


def test_parked_servers_haproxy_no_longer_has_are_forgotten(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A server parked in maintenance (it had connections) and then dropped by a restart or
    reload that was not confsync's stays out of `parked`, which would otherwise grow with
    every such churn for the daemon's life."""
    from pathlib import Path

    from confsync.haproxy import runtime
    from confsync.haproxy.runtime import AdminSocket, LiveServer, reconcile

    live = {"be_web": {"a": LiveServer("10.0.0.1", 80, 10, maint=False, drain=False),
                       "b": LiveServer("10.0.0.2", 80, 10, maint=True, drain=False)}}
    monkeypatch.setattr(runtime, "live_servers", lambda admin: live)
    sent: list[str] = []
    monkeypatch.setattr(AdminSocket, "command", lambda self, command: sent.append(command))
    config = parse(cfg("server a 10.0.0.1:80 weight 10 check"))
    parked = {"be_web/b", "be_web/gone1", "be_web/gone2", "be_other/x"}
    sent_now = reconcile(AdminSocket(Path("/nonexistent")), config, config, parked)
    assert sent_now == ["del server be_web/b"] and parked == set()


def test_state_saved_for_a_reload_into_an_unknown_previous_file_keeps_runtime_maintenance(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Without the file HAProxy ran (a start's repair), a maintenance or drain set at runtime
    on a server the file has ready is kept (an operator's, as the start's comparison keeps
    it); one HAProxy loaded from `disabled`, or a readiness where the file says `disabled`, is
    the file's; a backend of no file of ours (another file's) keeps its lines."""
    from confsync.haproxy import runtime

    def line(backend: str, name: str, port: int, admin: int) -> str:
        return (f"3 {backend} 1 {name} 10.0.0.1 2 {admin} 10 10 0 1 0 2 6 0 0 0 - {port} - 0 0"
                " - - 0")

    state = ["1", "# be_id be_name ...",
             line("be_web", "op", 81, 1), line("be_web", "loaded", 82, 5),
             line("be_web", "lifted", 83, 0), line("be_web", "drained", 84, 8),
             line("be_two", "x", 85, 1)]
    monkeypatch.setattr(runtime, "_servers_state", lambda admin, retry_for: state)
    new = parse(cfg(*(f"server {name} 10.0.0.1:{port} weight 10" for name, port in
                      (("op", 81), ("loaded", 82), ("drained", 84))),
                    "server lifted 10.0.0.1:83 weight 10 disabled"))
    path = tmp_path / "state"
    runtime.save_server_state(runtime.AdminSocket(Path("/nonexistent")), path, None, new)
    saved = {fields[3]: fields[6] for fields in map(str.split, path.read_text().splitlines()[2:])}
    assert saved == {"op": "1", "drained": "8", "x": "1"}


def test_with_haproxy_stopped_the_saved_state_is_kept_but_for_servers_etcd_changed(
        tmp_path: Path) -> None:
    """No HAProxy to ask: the file its next start loads keeps an operator's maintenance and
    health of the servers etcd left alone; a server etcd changed or removed loses its line
    (the config wins); a server of no file of ours keeps it. Nothing is written when nothing
    changes (a read-only directory is no failure then), nor made when there is no file."""
    from confsync.haproxy.runtime import RuntimeApplyFailed, update_saved_state

    def line(name: str, port: int, admin: int, backend: str = "be_web") -> str:
        return (f"3 {backend} 1 {name} 10.0.0.1 0 {admin} 10 10 0 1 0 2 6 0 0 0 - {port} - 0 0"
                " - - 0")

    old = parse(cfg(*(f"server {n} 10.0.0.1:{p} weight 10 check"
                      for n, p in (("kept", 81), ("moved", 82), ("gone", 83)))))
    new = parse(cfg("server kept 10.0.0.1:81 weight 10 check",
                    "server moved 10.0.0.1:92 weight 10 check"))
    path = tmp_path / "state"
    assert update_saved_state(path, old, new) is None and not path.exists()
    path.write_text("\n".join(["1", "# be_id be_name ...", line("kept", 81, 1),
                               line("moved", 82, 1), line("gone", 83, 0),
                               line("x", 85, 1, backend="be_two")]) + "\n")
    assert update_saved_state(path, old, new) == 2
    saved = {fields[3]: fields[6] for fields in map(str.split, path.read_text().splitlines()[2:])}
    assert saved == {"kept": "1", "x": "1"}
    written = path.stat()
    assert update_saved_state(path, new, new) == 2  # nothing to change: nothing written
    assert (path.stat().st_ino, path.stat().st_mtime_ns) == (written.st_ino,
                                                             written.st_mtime_ns)
    path.write_text("garbage\n")
    with pytest.raises(RuntimeApplyFailed):
        update_saved_state(path, old, new)


def _listener(family: socket.AddressFamily, address: str,
              v6only: bool | None = None) -> socket.socket:
    sock = socket.socket(family)
    if v6only is not None:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, int(v6only))
    try:
        sock.bind((address, 0))
    except OSError as exc:
        sock.close()
        pytest.skip(f"cannot bind {address}: {exc}")
    sock.listen()
    return sock


def test_the_socket_table_finds_a_clash_by_address_family() -> None:
    """A port confsync may not bind itself (below 1024 under the shipped unit) is looked up in
    the socket table. A wildcard of either family clashed there with every listener on the
    port: one on [::1]:80 refused a new `*:80` at every retry. Across families only `::` (taken
    to be dual-stack) clashes; an IPv4-mapped listener is on its IPv4 address."""
    from confsync.haproxy.control import _SocketTable

    def _listening(address: str, port: int) -> bool:
        return _SocketTable().listening(address, port)  # (read now: one per listener)

    with _listener(socket.AF_INET6, "::1") as v6:
        port = v6.getsockname()[1]
        assert not _listening("0.0.0.0", port)
        assert not _listening("127.0.0.1", port)
        assert _listening("::", port) and _listening("::1", port)
    with _listener(socket.AF_INET, "127.0.0.1") as v4:
        port = v4.getsockname()[1]
        assert not _listening("::1", port)
        assert _listening("::", port) and _listening("0.0.0.0", port)
        assert not _listening("127.0.0.2", port)
    with _listener(socket.AF_INET6, "::", v6only=False) as dual:
        port = dual.getsockname()[1]
        assert _listening("127.0.0.1", port) and _listening("0.0.0.0", port)
    with _listener(socket.AF_INET6, "::ffff:127.0.0.1", v6only=False) as mapped:
        port = mapped.getsockname()[1]
        assert _listening("127.0.0.1", port) and _listening("0.0.0.0", port)
        assert not _listening("127.0.0.2", port) and not _listening("::1", port)


def test_hard_stop_after_is_read_in_seconds_from_haproxy_times() -> None:
    assert parse("global\n    hard-stop-after 30s\n").hard_stop_after == 30.0
    assert parse("global\n    hard-stop-after 2m\n").hard_stop_after == 120.0
    assert parse("global\n    hard-stop-after 1500\n").hard_stop_after == 1.5  # ms
    assert parse("global\n    hard-stop-after soon\n").hard_stop_after is None
    assert parse("global\n    maxconn 10\n").hard_stop_after is None


def test_a_move_counts_only_servers_that_will_serve_meanwhile() -> None:
    """Servers DOWN by their health check (as one moved a moment ago is until its check at the
    new address passes) serve nothing, nor one the same batch sets to weight 0 (the commands
    run before the moves): counted as serving, the move took the backend's last serving
    server out of the pool, a 503 for every request meanwhile. A server DOWN itself loses
    nothing by moving at runtime."""
    from confsync.haproxy.runtime import LiveServer, plan_reconcile

    new = parse(cfg("server a 10.0.0.1:80 weight 10 check", "server b 10.0.0.2:80 weight 7"))
    a = LiveServer("10.0.0.9", 80, 10, maint=False, drain=False)
    b = LiveServer("10.0.0.2", 80, 7, maint=False, drain=False)
    assert plan_reconcile(new, {"be_web": {"a": a, "b": b}}, set()).reload is None
    zero = parse(cfg("server a 10.0.0.1:80 weight 10 check", "server b 10.0.0.2:80 weight 0"))
    assert plan_reconcile(zero, {"be_web": {"a": a, "b": b}}, set()).reload
    down = LiveServer("10.0.0.2", 80, 7, maint=False, drain=False, up=False)
    assert plan_reconcile(new, {"be_web": {"a": a, "b": down}}, set()).reload
    a_down = LiveServer("10.0.0.9", 80, 10, maint=False, drain=False, up=False)
    assert plan_reconcile(new, {"be_web": {"a": a_down, "b": down}}, set()).reload is None


def test_default_server_options_are_those_haproxy_gives_each_server() -> None:
    """As HAProxy 2.6 was seen to run it (`show servers state`): a `defaults` section's
    `default-server` reaches the backends after it, a new `defaults` section starts afresh,
    `from <name>` takes a named one, and a backend's `default-server` line adds to them for
    the servers below it only."""
    from confsync.haproxy.runtime import health_checked

    text = "\n".join([
        "defaults checked", "    default-server check inter 1s",
        "defaults", "    mode http",
        "backend be_web", "    server a 10.0.0.1:80", "    default-server check",
        "    server b 10.0.0.2:80", "    default-server inter 2s", "    server c 10.0.0.3:80",
        "backend be_api from checked", "    server d 10.0.0.4:80",
        "    server e 10.0.0.5:80 no-check", ""])
    model = parse(text)
    web, api = model.backends["be_web"], model.backends["be_api"]
    assert {n: health_checked(web, s) for n, s in web.servers.items()} == {
        "a": False, "b": True, "c": True}
    assert web.defaults_for("c") == ("check", "inter", "2s")
    assert {n: health_checked(api, s) for n, s in api.servers.items()} == {
        "d": True, "e": False}
    assert api.defaults_for("d") == ("check", "inter", "1s")


def test_an_address_read_again_is_not_parsed_again() -> None:
    """A runtime pass reads each server's address from `show servers state` three times
    (5,000 servers: ~15 ms of `ipaddress` each); the spelling is kept by its text, and the
    same answers come back (a zone, a mapped IPv4, a non-ASCII digit)."""
    from confsync.haproxy.config_model import canonical_address

    texts = ["10.9.8.7", "::ffff:7f00:1", "fe80::1%eth0", "10.0.0.\u0661", "2001:DB8::1"]
    first = [canonical_address(text) for text in texts]
    hits = canonical_address.cache_info().hits
    assert [canonical_address(text) for text in texts] == first == [
        "10.9.8.7", "::ffff:7f00:1", None, None, "2001:db8::1"]
    assert canonical_address.cache_info().hits == hits + len(texts)
