"""Dynamic HAProxy pools end to end: etcd -> confsync -> a real master-worker HAProxy -> backends.

Each test owns an HAProxy on a free loopback port, a key prefix in the session's etcd and small
HTTP backends that answer with their own name. Updates are driven by `stack.sync()` (today one
`confsync once` per change). Every load loop is bounded in count; every wait in time.
"""

from __future__ import annotations

import itertools
import os
import random
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from confsync.haproxy.runtime import AdminSocket, live_servers
from tests.support.etcd_server import EtcdMember, free_port
from tests.support.haproxy import REPO, HAProxyStack, http_get, readonly_wrapper, spread, wait_for
from tests.support.http_backends import HTTPBackend

pytestmark = [pytest.mark.etcd, pytest.mark.haproxy]


def _stack(haproxy: str, etcd: EtcdMember, strategy: str) -> HAProxyStack:
    return HAProxyStack(haproxy, etcd.endpoint, strategy=strategy)


@pytest.fixture
def stack(haproxy_binary: str, etcd: EtcdMember) -> Iterator[HAProxyStack]:
    s = _stack(haproxy_binary, etcd, "runtime")
    yield s
    s.stop()


@pytest.fixture
def reload_stack(haproxy_binary: str, etcd: EtcdMember) -> Iterator[HAProxyStack]:
    s = _stack(haproxy_binary, etcd, "reload")
    yield s
    s.stop()


def _running(stack: HAProxyStack, backends: dict[str, HTTPBackend], *names: str,
             **config: Any) -> None:
    stack.put_basics(**config)
    for name in names:
        stack.put_instance("web", name, backends[name].port)
    stack.sync_ok()
    stack.start()


def test_put_instance_takes_traffic_delete_stops_it_without_reload(
        stack: HAProxyStack, backends: dict[str, HTTPBackend]) -> None:
    _running(stack, backends, "a")
    assert spread(stack.port, 6) == {"a": 6}
    reloads = stack.status().reloads

    stack.put_instance("web", "b", backends["b"].port)
    assert "runtime API" in stack.sync_ok()
    assert spread(stack.port, 10) == {"a": 5, "b": 5}

    stack.delete("/services/web/instances/a")
    assert "runtime API" in stack.sync_ok()
    assert spread(stack.port, 6) == {"b": 6}
    assert "server a " not in stack.cfg.read_text()  # the file says the same as the runtime
    assert stack.status().reloads == reloads  # pool changes never reloaded

    stack.delete("/services/web/instances/b")
    stack.sync_ok()
    assert spread(stack.port, 3) == {"status:503": 3}  # an empty pool answers 503


def test_first_instance_of_an_empty_pool_joins_without_reload(
        stack: HAProxyStack, backends: dict[str, HTTPBackend]) -> None:
    """A backend without servers is missing from `show servers state`: taken for a backend
    HAProxy lacks, the first instance of a pool (a new service, or one scaled to zero and
    back) was a reload, where the README promises the runtime API."""
    _running(stack, backends)  # the default service's backend, no instance yet
    assert spread(stack.port, 2) == {"status:503": 2}
    reloads = stack.status().reloads
    for _ in range(2):  # from a pool that never had an instance, then from one emptied
        stack.put_instance("web", "a", backends["a"].port)
        assert "runtime API" in stack.sync_ok()
        assert spread(stack.port, 3) == {"a": 3}
        stack.delete("/services/web/instances/a")
        assert "runtime API" in stack.sync_ok()
        assert spread(stack.port, 2) == {"status:503": 2}
    assert stack.status().reloads == reloads


@contextmanager
def steady_traffic(port: int, clients: int = 3, limit: float = 60.0,
                   statuses: list[int] | None = None) -> Iterator[None]:
    """`clients` threads sending requests to `port`, each on a new connection, one after the
    other, until the block ends (or `limit` seconds): HAProxy's connections to the servers are
    busy and reused the while, as in production. `statuses`: gets each answer's status."""
    stop = threading.Event()
    deadline = time.monotonic() + limit

    def send() -> None:
        while not stop.is_set() and time.monotonic() < deadline:
            status, _ = http_get(port)
            if statuses is not None:
                statuses.append(status)

    threads = [threading.Thread(target=send, daemon=True) for _ in range(clients)]
    for thread in threads:
        thread.start()
    try:
        yield
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=10)


def test_address_change_moves_all_traffic_under_load(
        stack: HAProxyStack, backends: dict[str, HTTPBackend]) -> None:
    """An instance that moves (same id, new address or port) is served at its new address
    only, also while requests flow, and without a reload. A bare `set server addr` left
    HAProxy 2.6 reusing its connections to the old address: under steady traffic the old one
    went on answering a share of the server's requests (measured: 3-15 of 20 still 5 s later,
    in 7 moves of 10; the HAProxy chaos test saw it for a whole minute). A moved server is
    served once its health check passes at the new address (`move_server`)."""
    _running(stack, backends, "a", "b", check_interval="100ms")
    reloads = stack.status().reloads
    moves = list(itertools.pairwise("acacaca"))  # instance a, between a's and c's ports
    served: list[Counter[str]] = []
    outputs, statuses = [], []
    with steady_traffic(stack.port, statuses=statuses):
        for _, new in moves:
            stack.put_instance("web", "a", backends[new].port)  # same instance id, new port
            outputs.append(stack.sync_ok())
            seen: Counter[str] = Counter()

            def new_serves(new: str = new, seen: Counter[str] = seen) -> bool:
                seen.update(spread(stack.port, 2))
                return new in seen

            wait_for(new_serves, timeout=10)
            seen.update(spread(stack.port, 20))
            served.append(seen)
    assert [set(s) - {"b"} for s in served] == [{new} for _, new in moves], (served, outputs)
    assert all("runtime API" in out for out in outputs), outputs
    assert stack.status().reloads == reloads
    assert statuses and set(statuses) == {200}, Counter(statuses)


def test_the_only_server_of_a_pool_moves_by_a_reload_without_failing_requests(
        stack: HAProxyStack, backends: dict[str, HTTPBackend]) -> None:
    """The runtime steps of a move take the server out of the pool for a moment: with no
    other server that is a 503 for each request meanwhile (measured), so it is a reload."""
    _running(stack, backends, "a")
    reloads = stack.status().reloads
    statuses: list[int] = []
    with steady_traffic(stack.port, statuses=statuses):
        stack.put_instance("web", "a", backends["b"].port)
        assert "reloaded HAProxy" in stack.sync_ok()
        assert spread(stack.port, 20) == {"b": 20}
    assert stack.status().reloads == reloads + 1
    assert statuses and set(statuses) == {200}, Counter(statuses)


def test_weights_drain_and_maint(stack: HAProxyStack, backends: dict[str, HTTPBackend]) -> None:
    _running(stack, backends, "a", "b")
    stack.put_instance("web", "b", backends["b"].port, weight=30)
    stack.put_instance("web", "a", backends["a"].port, weight=10)
    stack.sync_ok()
    seen = spread(stack.port, 80)
    assert 15 <= seen["a"] <= 25 and seen["a"] + seen["b"] == 80, seen  # 1:3

    stack.put_instance("web", "b", backends["b"].port, weight=30, state="drain")
    assert "runtime API" in stack.sync_ok()
    assert spread(stack.port, 8) == {"a": 8}

    stack.put_instance("web", "b", backends["b"].port, state="ready")
    stack.put_instance("web", "a", backends["a"].port, state="maint")
    assert "runtime API" in stack.sync_ok()
    assert spread(stack.port, 8) == {"b": 8}
    assert "disabled" in stack.cfg.read_text()


# End to end for some shapes; tests/unit/test_haproxy_template.py covers every field.
@pytest.mark.parametrize("hostile", [
    {"address": "127.0.0.1\n    server evil 127.0.0.1:1", "port": 80},
    {"address": "127.0.0.1", "port": "80 # comment"},
    {"address": "1" * 200_000, "port": 80},
    {"address": "127.0.0.\u0661", "port": 80},  # an Arabic-Indic digit one
], ids=["newline", "hash", "huge", "unicode-digit"])
def test_hostile_instance_is_left_out_reported_and_the_pool_goes_on(
        stack: HAProxyStack, backends: dict[str, HTTPBackend], hostile: dict[str, object]) -> None:
    _running(stack, backends, "a", "b")
    reloads = stack.status().reloads

    stack.put("/services/web/instances/b", hostile)
    stack.put_instance("web", "c", backends["c"].port)  # joins in the same pass
    result = stack.sync()
    assert result.returncode == 0, result.stderr
    assert f"key {stack.prefix}/services/web/instances/b: expected" in result.stderr
    assert "; left out" in result.stderr
    text = stack.cfg.read_text()
    assert "server b " not in text and "evil" not in text and "server c " in text
    assert spread(stack.port, 10) == {"a": 5, "c": 5}
    assert stack.status().reloads == reloads  # runtime API: b out, c in


def test_an_ipv4_mapped_address_joins_and_stays_by_the_runtime_api(
        stack: HAProxyStack, backends: dict[str, HTTPBackend]) -> None:
    """The file says `[::ffff:7f00:1]:P` (Python's spelling), `show servers state` says
    `::ffff:127.0.0.1`: compared as text, every pass moved the server in steps, found it
    still elsewhere and reloaded (0 reloads promised), and dropped its saved health state."""
    _running(stack, backends, "a")
    reloads = stack.status().reloads

    stack.put("/services/web/instances/b", {"address": "::ffff:127.0.0.1",
                                            "port": backends["b"].port})
    assert "runtime API" in stack.sync_ok()
    assert spread(stack.port, 6) == {"a": 3, "b": 3}
    stack.put_instance("web", "c", backends["c"].port)  # a later pass leaves b where it is
    stderr = stack.sync_ok()
    assert "runtime API" in stderr and "move" not in stderr, stderr
    assert spread(stack.port, 6) == {"a": 2, "b": 2, "c": 2}
    assert stack.status().reloads == reloads
    assert " b ::ffff:127.0.0.1 " in stack.state.read_text()  # its health state is kept


def test_hostile_structural_value_changes_nothing_and_is_reported(
        stack: HAProxyStack, backends: dict[str, HTTPBackend]) -> None:
    _running(stack, backends, "a", "b")
    before = stack.cfg.read_bytes()
    reloads = stack.status().reloads

    stack.put("/services/web/config", {"check_path": "/ok\n    server evil 127.0.0.1:1"})
    result = stack.sync()
    assert result.returncode == 1
    assert f"key {stack.prefix}/services/web/config: expected a URL path" in result.stderr
    assert stack.cfg.read_bytes() == before
    assert spread(stack.port, 10) == {"a": 5, "b": 5}
    assert stack.status().reloads == reloads


def test_structural_change_reloads_once_confirmed_and_keeps_health_state(
        stack: HAProxyStack, backends: dict[str, HTTPBackend]) -> None:
    dead = free_port()
    _running(stack, backends, "a", check_interval="100ms")
    stack.put("/services/web/instances/dead", {"address": "127.0.0.1", "port": dead})
    assert "runtime API" in stack.sync_ok()
    down = "be_web 2 dead 127.0.0.1 0 "  # be_name srv_id srv_name srv_addr srv_op_state=STOPPED
    wait_for(lambda: down in stack.admin_command("show servers state be_web"), timeout=5)
    before = stack.status()

    # A new routed service is structural: one reload, confirmed by the master.
    stack.put("/services/api/config", {"path_prefix": "/api", "check_path": "/"})
    stack.put_instance("api", "c", backends["c"].port)
    out = stack.sync_ok()
    assert "reloaded HAProxy" in out and "confirmed" in out
    after = stack.status()
    assert (after.reloads, after.failed) == (before.reloads + 1, before.failed)
    assert spread(stack.port, 3, path="/api/x") == {"c": 3}
    # The dead server is still known DOWN right after the reload: its state was carried over.
    assert down in stack.admin_command("show servers state be_web")
    assert spread(stack.port, 6) == {"a": 6}


def test_reload_strategy_reloads_for_pool_changes(
        reload_stack: HAProxyStack, backends: dict[str, HTTPBackend]) -> None:
    _running(reload_stack, backends, "a")
    before = reload_stack.status()
    reload_stack.put_instance("web", "b", backends["b"].port)
    assert "reloaded HAProxy" in reload_stack.sync_ok()
    assert reload_stack.status().reloads == before.reloads + 1
    assert spread(reload_stack.port, 10) == {"a": 5, "b": 5}


def test_static_balance_adds_servers_by_reload(
        stack: HAProxyStack, backends: dict[str, HTTPBackend]) -> None:
    _running(stack, backends, "a", balance="static-rr")
    reloads = stack.status().reloads
    stack.put_instance("web", "b", backends["b"].port)
    assert "reloaded HAProxy" in stack.sync_ok()  # static-rr has no add server
    assert stack.status().reloads == reloads + 1
    assert spread(stack.port, 10) == {"a": 5, "b": 5}
    stack.put_instance("web", "b", backends["b"].port, weight=0)  # weight works in static-rr
    assert "runtime API" in stack.sync_ok()
    assert spread(stack.port, 4) == {"a": 4}


def test_runtime_failure_falls_back_to_a_reload(
        stack: HAProxyStack, backends: dict[str, HTTPBackend]) -> None:
    _running(stack, backends, "a", "b", balance="static-rr")
    reloads = stack.status().reloads
    # static-rr takes only 0% or 100% as a runtime weight: the command fails, a reload applies it.
    stack.put_instance("web", "b", backends["b"].port, weight=50)
    out = stack.sync_ok()
    assert "runtime API failed" in out and "reloaded HAProxy" in out
    assert stack.status().reloads == reloads + 1
    assert spread(stack.port, 9) == {"a": 6, "b": 3}


def test_bind_on_a_held_port_is_refused_and_the_file_restored(
        stack: HAProxyStack, backends: dict[str, HTTPBackend]) -> None:
    _running(stack, backends, "a")
    before = stack.cfg.read_bytes()
    status = stack.status()
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        stack.put("/haproxy/frontends/main", {"bind": [f"127.0.0.1:{stack.port}",
                                                       f"127.0.0.1:{taken}"],
                                              "default_service": "web"})
        result = stack.sync()
    assert result.returncode == 1
    assert f"port {taken} is held by" in result.stderr and "previous file restored" in \
        result.stderr
    assert stack.cfg.read_bytes() == before
    assert (stack.status().reloads, stack.status().failed) == (status.reloads, status.failed)
    assert http_get(stack.port) == (200, "a")


def _unit_capabilities() -> list[str] | None:
    """A command prefix that runs confsync with the capability bounding set of the shipped
    `systemd/confsync.service` (root, but without CAP_NET_BIND_SERVICE); None where this
    process cannot (not root, no setpriv)."""
    setpriv = shutil.which("setpriv")
    if os.geteuid() != 0 or setpriv is None:
        return None
    unit = (REPO / "systemd" / "confsync.service").read_text()
    line = next(x for x in unit.splitlines() if x.startswith("CapabilityBoundingSet="))
    caps = [c.lower().removeprefix("cap_") for c in line.split("=", 1)[1].split()]
    return [setpriv, "--bounding-set", ",".join(["-all", *(f"+{c}" for c in caps)])]


def _free_low_port() -> int:
    """A port below 1024 free on 127.0.0.1 (binding it needs root)."""
    for port in random.sample(range(600, 1000), 400):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    pytest.skip("no free port below 1024 on 127.0.0.1")


def test_a_new_bind_below_1024_reloads_under_the_units_capabilities(
        stack: HAProxyStack, backends: dict[str, HTTPBackend]) -> None:
    """The README's frontend binds port 80; confsync.service gives confsync no
    CAP_NET_BIND_SERVICE (HAProxy, its own service, has it). The check for a held port tried
    to bind the new port itself, was refused (EACCES) and failed every such reload ("bind ...:
    Permission denied"). A port nobody holds goes live; one someone holds is still refused."""
    wrapper = _unit_capabilities()
    if wrapper is None:
        pytest.skip("needs root and setpriv (util-linux) to drop CAP_NET_BIND_SERVICE")
    _running(stack, backends, "a")
    low = _free_low_port()
    front = {"bind": [f"127.0.0.1:{stack.port}"], "default_service": "web"}
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", low))
        squatter.listen()
        stack.put("/haproxy/frontends/main", {**front, "bind": [*front["bind"],
                                                                 f"127.0.0.1:{low}"]})
        held = stack.sync(wrapper)
    assert held.returncode == 1, held.stderr
    assert f"port {low} is held by" in held.stderr, held.stderr
    reloads = stack.status().reloads
    result = stack.sync(wrapper)
    assert result.returncode == 0, result.stderr
    assert stack.status().reloads == reloads + 1
    assert wait_for(lambda: http_get(low) == (200, "a"), timeout=10)


# Counts the socket table's reads of one held-port check of a config binding a port range.
TABLE_READS = """\
import sys
import psutil
from confsync.haproxy.config_model import parse
from confsync.haproxy.control import check_binds_free
reads = 0
read = psutil.net_connections
def counted(*args, **kwargs):
    global reads
    reads += 1
    return read(*args, **kwargs)
psutil.net_connections = counted
check_binds_free(None, parse(sys.argv[1]), master_pid=None)
print(reads)
"""


def test_a_port_range_below_1024_reads_the_socket_table_once_under_the_units_capabilities(
        ) -> None:
    """Each port of the new binds that confsync may not bind itself (a range below 1024) was
    looked up in the socket table, which psutil reads by mapping every process's descriptors
    (30 ms on a quiet test host, far more on a busy one): 50 ports held the reload, and the
    watch loop, for 50 reads. One check reads it once."""
    wrapper = _unit_capabilities()
    if wrapper is None:
        pytest.skip("needs root and setpriv (util-linux) to drop CAP_NET_BIND_SERVICE")
    free = [port for port in range(900, 1000) if _bindable(port)]
    config = ("global\n    maxconn 100\nfrontend main\n"
              + "".join(f"    bind 127.0.0.1:{port}\n" for port in free[:50]))
    result = subprocess.run([*wrapper, sys.executable, "-c", TABLE_READS, config],
                            capture_output=True, text=True, timeout=120, cwd=REPO,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 0, result.stderr
    assert len(free) >= 10 and int(result.stdout) == 1, (len(free), result.stdout)


def _bindable(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


# A bind spelled from a key as it is: `ipv4@127.0.0.1:P` is the port HAProxy holds already
# as `127.0.0.1:P`, under another spelling (the shipped template's `0.0.0.0:80` joined by
# `[::]:80` is the same case on a dual-stack port).
RESPELLED = """\
global
    stats socket @ADMIN@ mode 600 level admin
defaults
    mode http
    timeout connect 2s
    timeout client 10s
    timeout server 10s
frontend main
    bind {{ getv("/haproxy/bind") }}
    default_backend be_web
backend be_web
    server a 127.0.0.1:{{ getv("/haproxy/backend") | port }}
"""


def test_a_port_haproxy_holds_under_a_new_spelling_reloads_under_the_units_capabilities(
        haproxy_binary: str, etcd: EtcdMember, backends: dict[str, HTTPBackend],
        tmp_path: Path) -> None:
    """Under the shipped unit confsync may not look into HAProxy's file descriptors, so the
    socket table names no process for HAProxy's own port: a new bind token on it ("[::]:80"
    beside "0.0.0.0:80") was refused as "held by unknown process", at every retry. HAProxy's
    `show fd` says which ports it listens on."""
    wrapper = _unit_capabilities()
    if wrapper is None:
        pytest.skip("needs root and setpriv (util-linux) to drop CAP_SYS_PTRACE")
    template = tmp_path / "respelled.tmpl"
    stack = HAProxyStack(haproxy_binary, etcd.endpoint, strategy="reload", template=template)
    template.write_text(RESPELLED.replace("@ADMIN@", str(stack.admin)))
    try:
        stack.put("/haproxy/backend", str(backends["a"].port))
        stack.put("/haproxy/bind", f"127.0.0.1:{stack.port}")
        stack.sync_ok()
        stack.start()
        reloads = stack.status().reloads
        stack.put("/haproxy/bind", f"ipv4@127.0.0.1:{stack.port}")
        result = stack.sync(wrapper)
        assert result.returncode == 0, result.stderr
        assert stack.status().reloads == reloads + 1
        assert http_get(stack.port) == (200, "a")
    finally:
        stack.stop()


# (Under the shipped unit a listener; as root a socket bound and not listening, which the
# socket table does not list: a stranger's listener is found as root, or not, by the table's
# order, so only this one failed every time before.)
@pytest.mark.parametrize("unit", [True, False], ids=["shipped-unit-listening", "root-bound"])
def test_a_strangers_socket_on_haproxys_port_at_another_address_is_refused(
        stack: HAProxyStack, backends: dict[str, HTTPBackend], unit: bool) -> None:
    """A new bind on 127.0.0.2:P, held by a stranger while HAProxy holds 127.0.0.1:P: the
    held-port check looked the port's holder up by port alone, found HAProxy's listener (by
    its pid as root; under the shipped unit, which hides both pids, by `show fd`, which gives
    no address) and let the reload go ahead, which could not bind it and failed."""
    wrapper = _unit_capabilities() if unit else []
    if wrapper is None:
        pytest.skip("needs root and setpriv (util-linux) to drop CAP_SYS_PTRACE")
    _running(stack, backends, "a")
    before = stack.cfg.read_bytes()
    status = stack.status()
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.2", stack.port))
        if unit:
            squatter.listen()
        stack.put("/haproxy/frontends/main", {"bind": [f"127.0.0.1:{stack.port}",
                                                       f"127.0.0.2:{stack.port}"],
                                              "default_service": "web"})
        result = stack.sync(wrapper)
    assert result.returncode == 1, result.stderr
    assert f"port {stack.port} is held by" in result.stderr, result.stderr
    assert stack.cfg.read_bytes() == before
    assert (stack.status().reloads, stack.status().failed) == (status.reloads, status.failed)
    assert http_get(stack.port) == (200, "a")


def test_removed_instance_coming_back_is_served_again_without_reload(
        stack: HAProxyStack, backends: dict[str, HTTPBackend]) -> None:
    _running(stack, backends, "a", "b")
    assert spread(stack.port, 6) == {"a": 3, "b": 3}  # leaves idle connections to b in the pool
    reloads = stack.status().reloads
    stack.delete("/services/web/instances/b")
    stack.sync_ok()  # b is deleted, or parked in maintenance while its idle connections last
    assert spread(stack.port, 4) == {"a": 4}
    stack.put_instance("web", "b", backends["b"].port, weight=100)
    assert "runtime API" in stack.sync_ok()
    assert spread(stack.port, 6) == {"a": 3, "b": 3}
    assert stack.status().reloads == reloads


def test_reload_never_restores_a_stale_runtime_address(
        stack: HAProxyStack, backends: dict[str, HTTPBackend]) -> None:
    _running(stack, backends, "a")
    # A runtime change nobody wrote into etcd: the saved state must not carry it over a reload
    # (HAProxy 2.6 would let the state file override the address in the config).
    stack.admin_command(f"set server be_web/a addr 127.0.0.1 port {backends['c'].port}")
    # 3.x applies an address after answering (a task: the next request could still reach a,
    # measured on 3.2.0), so HAProxy is asked until it has; 2.6 has at once.
    moved = f" {backends['c'].port} "
    wait_for(lambda: any(" a 127.0.0.1 " in line and moved in line for line in
                         stack.admin_command("show servers state be_web").splitlines()),
             timeout=5)
    assert spread(stack.port, 2) == {"c": 2}
    stack.put("/services/api/config", {"path_prefix": "/api"})
    assert "reloaded HAProxy" in stack.sync_ok()
    assert spread(stack.port, 4) == {"a": 4}


def test_sigusr2_reload_is_confirmed_too(
        haproxy_binary: str, etcd: EtcdMember, backends: dict[str, HTTPBackend]) -> None:
    stack = HAProxyStack(haproxy_binary, etcd.endpoint, strategy="reload", signal=True)
    try:
        _running(stack, backends, "a")
        before = stack.status()
        stack.put_instance("web", "b", backends["b"].port)
        out = stack.sync_ok()
        assert f"by SIGUSR2 to pid {before.pid}, confirmed" in out
        assert stack.status().reloads == before.reloads + 1
        assert spread(stack.port, 4) == {"a": 2, "b": 2}
    finally:
        stack.stop()


def test_a_reload_haproxy_rejects_is_reported_not_confirmed(
        stack: HAProxyStack, backends: dict[str, HTTPBackend]) -> None:
    from confsync.haproxy.master_cli import ReloadNotConfirmed, reload_confirmed

    _running(stack, backends, "a")
    before = stack.status()
    good = stack.cfg.read_text()
    with socket.socket() as squatter:  # written by hand: confsync's bind check would refuse it
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        stack.cfg.write_text(good.replace(f"bind 127.0.0.1:{stack.port}",
                                          f"bind 127.0.0.1:{stack.port}\n"
                                          f"    bind 127.0.0.1:{squatter.getsockname()[1]}"))
        with pytest.raises(ReloadNotConfirmed, match="rejected"):
            reload_confirmed(stack.master, timeout=10)
    assert stack.status().failed == before.failed + 1
    assert http_get(stack.port) == (200, "a")  # the old workers kept serving
    stack.cfg.write_text(good)
    status, _ = reload_confirmed(stack.master, timeout=10)
    assert status.reloads == before.reloads + 2
    assert http_get(stack.port) == (200, "a")


def test_instance_registered_in_maint_goes_ready_without_reload(
        stack: HAProxyStack, backends: dict[str, HTTPBackend]) -> None:
    stack.put_instance("web", "b", backends["b"].port, state="maint")
    _running(stack, backends, "a")  # b starts `disabled` in the config
    assert spread(stack.port, 4) == {"a": 4}
    reloads = stack.status().reloads
    stack.put_instance("web", "b", backends["b"].port, state="ready")
    assert "runtime API" in stack.sync_ok()
    assert spread(stack.port, 4) == {"a": 2, "b": 2}
    assert stack.status().reloads == reloads


def test_an_instance_that_started_in_maint_goes_back_to_maint_and_stops_serving(
        stack: HAProxyStack, backends: dict[str, HTTPBackend]) -> None:
    """A server HAProxy loaded `disabled` and that `set server ... state ready` took out of
    maintenance keeps the config's flag alone (admin state 4, CMAINT, which HAProxy does not
    count as maintenance: it serves). It was read as "in maintenance": the instance going back
    to maint sent nothing and went on serving, and every pass sent it `state ready` again."""
    stack.put_instance("web", "b", backends["b"].port, state="maint")
    _running(stack, backends, "a")  # b starts `disabled` in the config
    reloads = stack.status().reloads
    stack.put_instance("web", "b", backends["b"].port, state="ready")
    assert "runtime API" in stack.sync_ok()
    assert spread(stack.port, 4) == {"a": 2, "b": 2}
    stack.put_instance("web", "a", backends["a"].port, weight=50)  # b as it is
    assert "runtime API: 1 command(s)" in stack.sync_ok()  # a's weight, nothing for b
    stack.put_instance("web", "b", backends["b"].port, state="maint")
    stack.sync_ok()
    assert spread(stack.port, 4) == {"a": 4}
    assert stack.status().reloads == reloads


def test_a_state_file_confsync_may_not_write_fails_no_runtime_change(
        stack: HAProxyStack, backends: dict[str, HTTPBackend]) -> None:
    """The shipped unit (ProtectSystem=strict) left the template's state file directory,
    /var/lib/haproxy, read-only to confsync. Saving the server state after a runtime pass
    failed, and so did removing the file (EROFS, even for a file that is not there): the
    pass counted as a failed reload, the file was rolled back and HAProxy's servers with it,
    and every retry did the same. Now the change stands and a warning names the file."""
    readonly = stack.base / "readonly"
    readonly.mkdir()
    wrapper = readonly_wrapper(readonly)
    if wrapper is None:
        pytest.skip("needs root and unshare for a read-only bind mount")
    stack.put_basics()
    stack.put("/haproxy/global", {"admin_socket": str(stack.admin), "maxconn": 2000,
                                  "state_file": str(readonly / "server-state")})
    stack.put_instance("web", "a", backends["a"].port)
    stack.sync_ok()
    stack.start()
    reloads = stack.status().reloads

    stack.put_instance("web", "b", backends["b"].port)
    result = stack.sync(wrapper)
    assert result.returncode == 0, result.stderr
    assert "runtime API" in result.stderr
    assert f"server state to {readonly / 'server-state'}" in result.stderr
    assert "server b " in stack.cfg.read_text()
    assert spread(stack.port, 6) == {"a": 3, "b": 3}
    assert stack.status().reloads == reloads


def test_drift_behind_confsyncs_back_is_healed_at_the_next_change(
        stack: HAProxyStack, backends: dict[str, HTTPBackend]) -> None:
    _running(stack, backends, "a", "b")
    stack.admin_command("set server be_web/b state maint")
    assert "Server deleted" in stack.admin_command("del server be_web/b")
    stack.admin_command("set server be_web/a weight 1")
    reloads = stack.status().reloads
    stack.put_instance("web", "c", backends["c"].port)
    said = stack.sync_ok()
    assert "runtime API" in said
    assert spread(stack.port, 9) == {"a": 3, "b": 3, "c": 3}  # b re-added, a's weight reset
    assert stack.status().reloads == reloads
    # and it says so (b's removal by hand; a weight is no drift, nor c, etcd's change)
    assert "had servers other than the file it runs" in said and "be_web/b is not" in said
    assert "be_web/a" not in said and "be_web/c" not in said


def _in_maint(stack: HAProxyStack) -> dict[str, bool]:
    """be_web's servers as HAProxy runs them: name -> in maintenance."""
    live = live_servers(AdminSocket(stack.admin)).get("be_web", {})
    return {name: server.maint for name, server in live.items()}


def test_an_operators_maintenance_survives_confsyncs_runtime_passes_and_reloads(
        stack: HAProxyStack, backends: dict[str, HTTPBackend]) -> None:
    """`disable server` for work on a box stays through pool changes elsewhere, runtime or
    reload (both used to bring it back into rotation), also on a server HAProxy loaded
    `disabled` and etcd set ready since; a change etcd makes to that server wins."""
    stack.put_basics()
    stack.put_instance("web", "a", backends["a"].port)
    stack.put_instance("web", "b", backends["b"].port, state="maint")  # loaded `disabled`
    stack.sync_ok()
    stack.start()
    stack.put_instance("web", "b", backends["b"].port)
    assert "runtime API" in stack.sync_ok()
    assert spread(stack.port, 4) == {"a": 2, "b": 2}
    for name in ("a", "b"):
        assert stack.admin_command(f"disable server be_web/{name}").strip() == ""
    stack.put_instance("web", "c", backends["c"].port)
    assert "runtime API" in stack.sync_ok()
    assert _in_maint(stack) == {"a": True, "b": True, "c": False}
    reloads = stack.status().reloads
    stack.put_instance("api", "d", backends["c"].port)  # a backend added: a reload
    assert "reloaded HAProxy" in stack.sync_ok()
    assert stack.status().reloads == reloads + 1
    assert _in_maint(stack) == {"a": True, "b": True, "c": False}
    assert spread(stack.port, 4) == {"c": 4}
    stack.put_instance("web", "a", backends["a"].port, weight=50)  # etcd changes a
    assert "runtime API" in stack.sync_ok()
    assert _in_maint(stack) == {"a": False, "b": True, "c": False}
    assert set(spread(stack.port, 6)) == {"a", "c"}
