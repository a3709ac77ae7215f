"""A small authoritative DNS server on a free loopback UDP port (dnslib), for SRV tests."""

from __future__ import annotations

import socket
from types import TracebackType
from typing import Any

from dnslib import QTYPE, RCODE, RR, SRV, DNSLabel, DNSRecord
from dnslib.server import BaseResolver, DNSLogger, DNSServer


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class _SrvResolver(BaseResolver):  # type: ignore[misc]
    def __init__(self, records: dict[str, list[tuple[int, int, int, str]]]) -> None:
        self.records = records

    def resolve(self, request: DNSRecord, handler: Any) -> DNSRecord:
        reply = request.reply()
        name = str(request.q.qname).rstrip(".")
        found = self.records.get(name)
        if found is None:
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
        self._server.start_thread()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._server.stop()
        self._server.server.server_close()
