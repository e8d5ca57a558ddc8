"""A fast loopback Studio sink for the benchmarks: `python -m bench.sink [--port N]`.

The project's sandbox hashes every body with sha256 in a ThreadingHTTPServer and drains ~0.6-0.8 GB/s, which
would make it, not the client, the bottleneck of the PUT goodput row. This sink speaks just enough HTTP/1.1
for the three upload calls, drains PUT bodies with `recv_into` a 4 MiB buffer, and runs as its own process so
it never shares a GIL with the client it measures. One thread per connection (keep-alive).

    GET  /api/public/v1/ping                       -> 200 pong
    POST /api/public/v1/media/uploads              -> 201 {"upload": {"id", "url"}} (the URL points here)
    PUT  /_upload/<id>/<token>                     -> drained, 200 (Content-Length required, else 411)
    POST /api/public/v1/media/uploads/<id>/complete -> 200 {"media": {...}}
    GET  /_stats                                   -> counters and timestamps (time.monotonic(), system-wide)
    GET  /_wait?kind=completes&count=N&timeout=S   -> blocks until N events of that kind; their last timestamp
    POST /_reset                                   -> forget everything
"""

from __future__ import annotations

import argparse
import json
import signal
import socket
import ssl
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

API = "/api/public/v1"
DRAIN_BUFFER = 4 << 20
HEAD_LIMIT = 64 << 10
REASONS = {100: "Continue", 200: "OK", 201: "Created", 400: "Bad Request", 404: "Not Found",
           411: "Length Required"}


@dataclass
class Stats:
    """What the sink has seen; `cond` guards it and wakes `/_wait` callers."""

    cond: threading.Condition = field(default_factory=threading.Condition)
    events: dict[str, list[float]] = field(default_factory=lambda: {"generates": [], "puts": [], "completes": []})
    puts: list[tuple[float, float, int]] = field(default_factory=list)  # (headers parsed, last byte, bytes)
    put_bytes: int = 0
    next_id: int = 1
    waiters: list[tuple[str, int]] = field(default_factory=list)  # what blocked /_wait callers need

    def record(self, kind: str, when: float) -> None:
        with self.cond:
            times = self.events[kind]
            times.append(when)
            # Wake a waiter only when what it waits for has happened: waking it on every event would make the
            # sink slower (GIL hand-offs) while a client is measured with a waiter present than without one.
            if any(k == kind and len(times) >= n for k, n in self.waiters):
                self.cond.notify_all()

    def reset(self) -> None:
        with self.cond:
            for times in self.events.values():
                times.clear()
            self.puts.clear()
            self.put_bytes = 0

    def snapshot(self) -> dict[str, Any]:
        with self.cond:
            return {"counts": {k: len(v) for k, v in self.events.items()}, "put_bytes": self.put_bytes,
                    "generates": list(self.events["generates"]), "puts": list(self.puts[-100:])}

    def wait(self, kind: str, count: int, timeout: float) -> dict[str, Any]:
        with self.cond:
            self.waiters.append((kind, count))
            try:
                ok = self.cond.wait_for(lambda: len(self.events[kind]) >= count, timeout)
            finally:
                self.waiters.remove((kind, count))
            times = self.events[kind]
            return {"ok": ok, "count": len(times), "t": times[count - 1] if ok and count else None}


class Connection:
    """One keep-alive client connection: read a request head, route it, answer, repeat."""

    def __init__(self, sock: socket.socket, stats: Stats, port: int, tls: ssl.SSLContext | None = None) -> None:
        self.sock, self.stats, self.port, self.tls = sock, stats, port, tls
        self.scheme = "https" if tls else "http"
        self.pending = b""
        self.buffer = memoryview(bytearray(DRAIN_BUFFER))

    def serve(self) -> None:
        try:
            if self.tls is not None:  # the handshake in this connection's thread, never in the accept loop
                self.sock = self.tls.wrap_socket(self.sock, server_side=True)
            while self._one():
                pass
        except OSError:
            pass
        finally:
            self.sock.close()

    def _read_head(self) -> bytes | None:
        while b"\r\n\r\n" not in self.pending:
            if len(self.pending) > HEAD_LIMIT:
                return None
            chunk = self.sock.recv(65536)
            if not chunk:
                return None
            self.pending += chunk
        head, self.pending = self.pending.split(b"\r\n\r\n", 1)
        return head

    def _one(self) -> bool:
        head = self._read_head()
        if head is None:
            return False
        started = time.monotonic()
        lines = head.decode("latin-1").split("\r\n")
        method, target, _ = lines[0].split(" ", 2)
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        if "chunked" in headers.get("transfer-encoding", "").lower():
            self._respond(411, b'{"error": "Content-Length required"}', close=True)
            return False
        length = int(headers.get("content-length") or 0)
        if headers.get("expect", "").lower() == "100-continue":
            self.sock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
        url = urlsplit(target)
        if method == "PUT" and url.path.startswith("/_upload/"):
            self._drain(length, started)
            self._respond(200, b"")
        else:
            self._read_body(length)
            self.host = headers.get("host") or f"127.0.0.1:{self.port}"  # through bench/delay.py: its port
            status, body = self._route(method, url.path, {k: v[0] for k, v in parse_qs(url.query).items()})
            self._respond(status, body)
        return headers.get("connection", "").lower() != "close"

    def _read_body(self, length: int) -> bytes:
        while len(self.pending) < length:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("client went away")
            self.pending += chunk
        body, self.pending = self.pending[:length], self.pending[length:]
        return body

    def _drain(self, length: int, started: float) -> None:
        got = min(len(self.pending), length)
        self.pending = self.pending[got:]
        while got < length:
            n = self.sock.recv_into(self.buffer, min(length - got, DRAIN_BUFFER))
            if not n:
                raise ConnectionError("client went away mid-body")
            got += n
        done = time.monotonic()
        with self.stats.cond:
            self.stats.puts.append((started, done, got))
            self.stats.put_bytes += got
        self.stats.record("puts", done)

    def _route(self, method: str, path: str, query: dict[str, str]) -> tuple[int, bytes]:
        now = time.monotonic()
        if method == "GET" and path == f"{API}/ping":
            return 200, b"pong"
        if method == "POST" and path == f"{API}/media/uploads":
            with self.stats.cond:
                media_id, self.stats.next_id = self.stats.next_id, self.stats.next_id + 1
            self.stats.record("generates", now)
            url = f"{self.scheme}://{self.host}/_upload/{media_id}/t0k3n?signature=s"
            return 201, json.dumps({"upload": {"id": media_id, "url": url}}).encode()
        if method == "POST" and path.startswith(f"{API}/media/uploads/") and path.endswith("/complete"):
            media_id = int(path.split("/")[-2])
            self.stats.record("completes", now)
            media = {"id": media_id, "title": query.get("title", ""), "transcoding_status": "queued"}
            return 200, json.dumps({"media": media}).encode()
        if path == "/_stats":
            return 200, json.dumps(self.stats.snapshot()).encode()
        if path == "/_wait":
            result = self.stats.wait(query.get("kind", "completes"), int(query.get("count", "1")),
                                     float(query.get("timeout", "60")))
            return 200, json.dumps(result).encode()
        if method == "POST" and path == "/_reset":
            self.stats.reset()
            return 200, b"{}"
        return 404, json.dumps({"error": f"no route for {method} {path}"}).encode()

    def _respond(self, status: int, body: bytes, close: bool = False) -> None:
        ctype = "text/plain" if body == b"pong" else "application/json"
        head = (f"HTTP/1.1 {status} {REASONS.get(status, 'Status')}\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {len(body)}\r\n" + ("Connection: close\r\n" if close else "") + "\r\n")
        self.sock.sendall(head.encode() + body)


def serve(port: int, tls: ssl.SSLContext | None = None, host: str = "127.0.0.1") -> None:
    """Listen on host:port, print the bound port, and serve until SIGTERM/SIGINT (https with `tls`). (The upload
    URLs it issues always name 127.0.0.1: the cluster row's namespaces forward that to the sink's side.)"""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((host, port))
    listener.listen(256)
    bound = listener.getsockname()[1]
    stats = Stats()
    print(f"listening {bound}", flush=True)
    while True:
        sock, _ = listener.accept()
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        threading.Thread(target=Connection(sock, stats, bound, tls).serve, daemon=True).start()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.sink", description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--tls", nargs=2, metavar=("CERT", "KEY"), help="serve https with this certificate")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (the cluster row: 0.0.0.0)")
    args = parser.parse_args(argv)
    tls = None
    if args.tls:
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.load_cert_chain(*args.tls)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        serve(args.port, tls, args.host)
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
