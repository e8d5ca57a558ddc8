"""A delay proxy for the benchmarks: TCP on 127.0.0.1:<port> forwarded to a loopback server, every byte held back
`one_way` seconds in each direction (0.025 s: a 50 ms round trip). `tc netem` is not available on the benchmark
machine; this adds latency without limiting bandwidth, which is what per-file time at a real RTT depends on.
"""

from __future__ import annotations

import queue
import socket
import threading
import time

from tests.netstubs import Listener  # the suite's loopback listener (bench runs from the repo root: `python -m bench`)


class DelayProxy(Listener):
    def __init__(self, upstream_port: int, one_way: float = 0.025) -> None:
        self.upstream_port, self.one_way = upstream_port, one_way
        super().__init__()
        self.url = f"http://127.0.0.1:{self.port}"

    def serve(self, sock: socket.socket) -> None:
        server = socket.create_connection(("127.0.0.1", self.upstream_port))
        for end in (sock, server):
            end.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._direction(sock, server)
        self._direction(server, sock)

    def _direction(self, src: socket.socket, dst: socket.socket) -> None:
        """Two threads: one reads and stamps, one delivers each piece when its time comes."""
        pieces: queue.SimpleQueue[tuple[float, bytes]] = queue.SimpleQueue()

        def read() -> None:
            while True:
                try:
                    data = src.recv(1 << 20)
                except OSError:
                    data = b""
                pieces.put((time.monotonic() + self.one_way, data))
                if not data:
                    return

        def deliver() -> None:
            while True:
                due, data = pieces.get()
                if (wait := due - time.monotonic()) > 0:
                    time.sleep(wait)  # a delay line: the wait is the point
                try:
                    if not data:
                        dst.shutdown(socket.SHUT_WR)
                        return
                    dst.sendall(data)
                except OSError:
                    return

        threading.Thread(target=read, daemon=True).start()
        threading.Thread(target=deliver, daemon=True).start()
