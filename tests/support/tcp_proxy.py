"""A TCP proxy on a free loopback port that can black-hole its connections without closing them.

`stall()` stops forwarding in both directions while every socket stays open and new
connections are still accepted (and stalled too): what a dropped route, a conntrack entry
lost in a NAT or a firewall that starts dropping packets look like to both ends. No FIN, no
RST: only timeouts and keepalives can tell. `flow()` resumes forwarding; what was sent
meanwhile waits in the kernel's buffers and arrives then, as after a healed partition.
`stall(new_connections=False)` stalls only the connections open now: a half-open flow while
the server is fine for anyone who connects again. `delay` holds every chunk that long before
it is passed on: a WAN's round trip on loopback.
"""

from __future__ import annotations

import collections
import contextlib
import select
import socket
import threading
import time

from tests.support.etcd_server import free_port


class _Pair:
    def __init__(self, client: socket.socket, upstream: socket.socket) -> None:
        self.client = client
        self.upstream = upstream
        self.stalled = False


class TcpProxy:
    def __init__(self, upstream_port: int, port: int | None = None, delay: float = 0.0,
                 host: str = "127.0.0.1", latency: float = 0.0) -> None:
        self.upstream_port = upstream_port
        self.host = host
        self.delay = delay
        self.latency = latency
        self.port = port or free_port()
        self._listener = socket.create_server((host, self.port))
        self._listener.settimeout(0.2)
        self._lock = threading.Lock()
        self._pairs: list[_Pair] = []
        self.accepted = 0  # connections accepted since the start (open or closed since)
        self._stall_new = False
        self._closing = threading.Event()
        self._accepter = threading.Thread(target=self._accept, daemon=True, name="tcp-proxy")
        self._accepter.start()

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    def connections(self) -> int:
        with self._lock:
            return len(self._pairs)

    def stall(self, new_connections: bool = True) -> None:
        with self._lock:
            for pair in self._pairs:
                pair.stalled = True
            self._stall_new = new_connections

    def flow(self) -> None:
        with self._lock:
            for pair in self._pairs:
                pair.stalled = False
            self._stall_new = False

    def close(self) -> None:
        self._closing.set()
        self._accepter.join(timeout=5)
        self._listener.close()
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for pair in pairs:
            for sock in (pair.client, pair.upstream):
                with contextlib.suppress(OSError):
                    sock.close()

    def _accept(self) -> None:
        while not self._closing.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self.accepted += 1
                pair = _Pair(client, upstream)
                pair.stalled = self._stall_new
                self._pairs.append(pair)
            if self.latency:
                for src, dst in ((client, upstream), (upstream, client)):
                    threading.Thread(target=self._carry, args=(pair, src, dst), daemon=True,
                                     name="tcp-proxy-carry").start()
            else:
                threading.Thread(target=self._pump, args=(pair,), daemon=True,
                                 name="tcp-proxy-pump").start()

    def _pump(self, pair: _Pair) -> None:
        peers = {pair.client: pair.upstream, pair.upstream: pair.client}
        try:
            while not self._closing.is_set():
                if pair.stalled:
                    time.sleep(0.05)  # nothing read: the senders' buffers fill, as on a wire
                    continue
                readable, _, _ = select.select(list(peers), [], [], 0.1)
                for sock in readable:
                    if pair.stalled:
                        break
                    data = sock.recv(65536)
                    if not data:
                        return
                    if self.delay:
                        time.sleep(self.delay)
                    peers[sock].sendall(data)
        except OSError:
            return
        finally:
            with self._lock:
                if pair in self._pairs:
                    self._pairs.remove(pair)
            for sock in peers:
                with contextlib.suppress(OSError):
                    sock.close()

    def _carry(self, pair: _Pair, src: socket.socket, dst: socket.socket) -> None:
        """One direction with `latency`: each chunk goes on `latency` after it was read."""
        queue: collections.deque[tuple[float, bytes]] = collections.deque()
        try:
            while not self._closing.is_set():
                wait = 0.1 if not queue else max(0.0, queue[0][0] - time.monotonic())
                readable = []
                if not pair.stalled:
                    readable, _, _ = select.select([src], [], [], min(wait, 0.1))
                elif wait:
                    time.sleep(min(wait, 0.05))
                if readable:
                    data = src.recv(65536)
                    if not data:
                        return
                    queue.append((time.monotonic() + self.latency, data))
                while queue and queue[0][0] <= time.monotonic() and not pair.stalled:
                    dst.sendall(queue.popleft()[1])
        except (OSError, ValueError):  # (ValueError: the other direction closed the socket)
            return
        finally:
            with self._lock:
                if pair in self._pairs:
                    self._pairs.remove(pair)
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.close()
