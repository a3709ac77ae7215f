"""Membership changes of a test's etcd cluster through `etcdctl` (member remove, member add):
what an operator does to replace a failed machine."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import psutil

from tests.support.etcd_server import EtcdMember


def find_etcdctl(etcd_binary: str) -> str | None:
    """The etcdctl next to the etcd binary, else the one on PATH."""
    tool = Path(etcd_binary).with_name("etcdctl")
    return str(tool) if tool.is_file() else shutil.which("etcdctl")


def _retried(args: list[str], seconds: float = 15) -> str:
    """Run an etcdctl command, again while etcd refuses a reconfiguration as unsafe
    ("unhealthy cluster": its members have not been connected for 5 s yet)."""
    deadline = time.monotonic() + seconds
    while True:
        done = subprocess.run(args, capture_output=True, text=True, timeout=10)
        if done.returncode == 0:
            return done.stdout
        assert time.monotonic() < deadline, done.stderr
        time.sleep(0.3)


def remove_member(etcdctl: str, victim: EtcdMember, through: EtcdMember) -> None:
    """`etcdctl member remove` of `victim`, asked through another member."""
    listed = subprocess.run([etcdctl, "--endpoints", through.endpoint, "member", "list",
                             "-w", "json"], capture_output=True, text=True, timeout=10, check=True)
    member_id = next(m["ID"] for m in json.loads(listed.stdout)["members"]
                     if m["name"] == victim.name)
    _retried([etcdctl, "--endpoints", through.endpoint, "member", "remove",
              format(member_id, "x")])


def replace_member(etcdctl: str, victim: EtcdMember, members: list[EtcdMember],
                   name: str) -> EtcdMember:
    """`victim` removed and stopped, a new member `name` (new ports, an empty data dir beside
    the victim's) added and started; returns it. The cluster keeps its quorum throughout."""
    through = next(m for m in members if m is not victim)
    remove_member(etcdctl, victim, through)
    victim.stop()  # (it stops by itself once it learns it was removed)
    new = EtcdMember(victim.binary, victim.data_dir.with_name(name), name=name,
                     token=victim.token)
    _retried([etcdctl, "--endpoints", through.endpoint, "member", "add", name,
              "--peer-urls", new.peer_url])
    new.initial_cluster = ",".join(f"{m.name}={m.peer_url}" for m in members
                                   if m is not victim) + f",{name}={new.peer_url}"
    new.extra_args = ["--initial-cluster-state", "existing"]  # (the last one given wins)
    new.start()
    return new


def replace_in_place(members: list[EtcdMember], i: int, name: str) -> bool:
    """`replace_member` of `members[i]`, the new member put in its place in the list; False
    (nothing done) without an etcdctl."""
    etcdctl = find_etcdctl(members[i].binary)
    if etcdctl is None:
        return False
    members[i] = replace_member(etcdctl, members[i], members, name)
    return True


def learned(output: str, url: str) -> bool:
    """Whether a daemon's log says it knows `url` as a member (its last "etcd members not in
    etcd.endpoints" line names it). A daemon that knows no member any more cannot find the
    cluster again (nothing can): a test replaces the next member only once it knows this one,
    as an operator replacing members one by one with the fleet keeping up."""
    lines = [line for line in output.splitlines() if "etcd members not in etcd.endpoints:" in line]
    return bool(lines) and url in lines[-1].split("etcd.endpoints:", 1)[1].split(" (", 1)[0]


def member_in_use(pid: int, members: list[EtcdMember]) -> EtcdMember | None:
    """The member process `pid` has a connection to (the first one found), if any."""
    ports = {m.client_port: m for m in members}
    for conn in psutil.Process(pid).net_connections(kind="tcp"):
        if conn.raddr and conn.raddr.port in ports and conn.status == "ESTABLISHED":
            return ports[conn.raddr.port]
    return None
