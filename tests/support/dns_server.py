"""A small authoritative DNS server on a free loopback UDP port (dnslib), for SRV tests."""

from __future__ import annotations

import socket
import threading
from types import TracebackType
from typing import Any

from dnslib import QTYPE, RCODE, RR, SRV, DNSError, DNSLabel, DNSRecord
from dnslib.server import BaseResolver, DNSLogger, DNSServer


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class _SrvResolver(BaseResolver):  # type: ignore[misc]
    def __init__(self, records: dict[str, list[tuple[int, int, int, str]]]) -> None:
        self.records = records
        self.servfail = False  # answer SERVFAIL to everything (a resolver failing for now)
        self.hang = False  # answer nothing at all (a resolver gone silent)
        self.queries = 0

    def resolve(self, request: DNSRecord, handler: Any) -> DNSRecord:
        self.queries += 1
        if self.hang:
            raise DNSError("silent")  # the server's handler sends no reply
        reply = request.reply()
        name = str(request.q.qname).rstrip(".")
        found = self.records.get(name)
        if self.servfail:
            reply.header.rcode = RCODE.SERVFAIL
        elif found is None:
            reply.header.rcode = RCODE.NXDOMAIN
        elif request.q.qtype == QTYPE.SRV:
            for priority, weight, port, target in found:
                reply.add_answer(RR(DNSLabel(name + "."), QTYPE.SRV, ttl=5,
                                    rdata=SRV(priority, weight, port, target)))
        return reply


class SrvServer:
    """Serves `records`: name -> [(priority, weight, port, target)]. Change them at any time."""

    def __init__(self, records: dict[str, list[tuple[int, int, int, str]]]) -> None:
        self.port = free_udp_port()
        self.resolver = _SrvResolver(records)
        self._server = DNSServer(self.resolver, address="127.0.0.1", port=self.port,
                                 logger=DNSLogger("-request,-reply,-truncated,-error,-recv,"
                                                  "-send,-data"))

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def __enter__(self) -> SrvServer:
        # dnslib's start_thread() serves with socketserver's default poll_interval, 0.5 s:
        # each stop (its shutdown()) waited up to that long.
        self._thread = threading.Thread(target=self._server.server.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._server.stop()
        self._thread.join(5)
        self._server.server.server_close()


def resolv_wrapper_works() -> bool:
    """True when a process can be given its own resolv.conf (root, `unshare --mount`)."""
    import os
    import shutil
    import subprocess

    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    try:
        return subprocess.run(["unshare", "--mount", "mount", "--bind", "/etc/resolv.conf",
                               "/etc/resolv.conf"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


class NameServer:
    """Answers A and AAAA queries for `hosts` (name -> [IPv4 or IPv6]) on `ip`:53; never answers while `hang`
    is set (a resolver gone silent), answers SERVFAIL while `servfail` is. Port 53 because glibc's resolv.conf
    takes no port, so a process reaches it only through `resolv_wrapper` (its own mount
    namespace with a resolv.conf naming `ip`; root only). A random 127/8 address keeps
    parallel tests apart."""

    def __init__(self, hosts: dict[str, list[str]]) -> None:
        import random

        self.hosts = hosts
        self.hang = False
        self.servfail = False
        self.queries = 0
        for _ in range(20):
            self.ip = f"127.{random.randint(1, 254)}.{random.randint(1, 254)}." \
                      f"{random.randint(1, 254)}"
            self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                self._sock.bind((self.ip, 53))
                break
            except OSError:
                self._sock.close()
        else:
            raise RuntimeError("no free 127/8 address for a name server")
        self._sock.settimeout(0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True, name="nameserver")

    def _serve(self) -> None:
        from dnslib import AAAA, A

        while not self._stop.is_set():
            try:
                data, peer = self._sock.recvfrom(4096)
            except OSError:
                continue
            self.queries += 1
            if self.hang:
                continue
            try:
                request = DNSRecord.parse(data)
            except Exception:  # garbage in: no answer
                continue
            reply = request.reply()
            name = str(request.q.qname).rstrip(".")
            found = self.hosts.get(name)
            if self.servfail:
                reply.header.rcode = RCODE.SERVFAIL
            elif found is None:
                reply.header.rcode = RCODE.NXDOMAIN
            elif request.q.qtype in (QTYPE.A, QTYPE.AAAA):
                six = request.q.qtype == QTYPE.AAAA
                for ip in found:
                    if (":" in ip) == six:
                        reply.add_answer(RR(DNSLabel(name + "."), request.q.qtype, ttl=0,
                                            rdata=AAAA(ip) if six else A(ip)))
            self._sock.sendto(reply.pack(), peer)

    def resolv_conf(self, directory: Any) -> str:
        """A resolv.conf naming this server; a query is given up after 30 s x 5 (glibc's
        maxima), so a hang is one for as long as a test runs."""
        import pathlib

        path = pathlib.Path(directory) / "resolv.conf"
        path.write_text(f"nameserver {self.ip}\noptions timeout:30 attempts:5\n")
        return str(path)

    def wrapper(self, directory: Any) -> list[str]:
        """The command prefix that runs a program resolving names through this server only."""
        conf = self.resolv_conf(directory)
        return ["unshare", "--mount", "sh", "-c",
                f"mount --bind {conf} /etc/resolv.conf && exec \"$@\"", "resolv"]

    def __enter__(self) -> NameServer:
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sock.close()
