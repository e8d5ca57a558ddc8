"""Real network pieces for tests (plain classes, not fixtures): a private CA (the sandbox's), a loopback listener, a
CONNECT proxy, and a TLS front that puts a loopback server behind a name only the proxy can resolve.

A campus network seen from the lecture-capture PC: the Studio host's name does not resolve there, only the proxy
knows it (`names` maps it to 127.0.0.1); the host speaks TLS with a certificate from a CA the system does not
trust (`studio.ca_bundle` names it). Everything listens on 127.0.0.1 only.
"""

from __future__ import annotations

import base64
import select
import socket
import ssl
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from studio_watch.sandbox.tls import TlsFiles, make_certificates

STUDIO_NAME = "studio.campus.test"  # .test never resolves (RFC 6761): only the proxy knows it
WAIT = 10.0


def make_ca(folder: Path) -> TlsFiles:
    """A fresh private CA in `folder` (its certificate: `.ca`, what studio.ca_bundle names) and a server certificate
    it signed for STUDIO_NAME and loopback (`.server_context()`): the sandbox's own, made with cryptography."""
    return make_certificates(folder, [STUDIO_NAME])


def pump(a: socket.socket, b: socket.socket) -> None:
    """Copy bytes both ways until either side ends. One thread: an SSLSocket must not read and write at once
    from two threads."""
    try:
        while True:
            ready = [s for s in (a, b) if isinstance(s, ssl.SSLSocket) and s.pending()]
            ready = ready or select.select([a, b], [], [], WAIT * 3)[0]
            if not ready:
                return
            for sock in ready:
                data = sock.recv(1 << 16)
                if not data:
                    return
                (b if sock is a else a).sendall(data)
    except OSError:
        return
    finally:
        for sock in (a, b):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()


class Listener:
    """Accepts on 127.0.0.1:<free port> and runs `serve(sock)` for each connection in a thread of its own (all kept
    in `threads`, the accepting one first) until close(). Also the benchmarks' (bench/delay.py)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.threads = [threading.Thread(target=self._accept, daemon=True)]
        self.threads[0].start()

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        """Stop accepting; connections being served are their handlers' to end."""
        try:
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes accept()
        except OSError:
            pass
        self.listener.close()

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            thread = threading.Thread(target=self.serve, args=(sock,), daemon=True)
            with self.lock:
                self.threads.append(thread)
            thread.start()

    def serve(self, sock: socket.socket) -> None:
        raise NotImplementedError


class _Stub(Listener):
    """A listener that speaks TLS with `tls` (if given) and hands the connection to `handle`; anything but a socket
    error in it is kept in `errors`, for the test to check."""

    def __init__(self, tls: ssl.SSLContext | None) -> None:
        self.tls = tls
        self.errors: list[BaseException] = []
        super().__init__()

    def serve(self, sock: socket.socket) -> None:
        try:
            if self.tls is not None:
                sock = self.tls.wrap_socket(sock, server_side=True)
            self.handle(sock)
        except (OSError, ssl.SSLError):
            sock.close()
        except BaseException as exc:  # a broken stub: the test checks `errors`
            self.errors.append(exc)
            sock.close()

    def handle(self, sock: socket.socket) -> None:
        raise NotImplementedError


class TlsFront(_Stub):
    """TLS on 127.0.0.1:<port> in front of a plain loopback server (the sandbox) on `backend_port`."""

    def __init__(self, tls: ssl.SSLContext, backend_port: int) -> None:
        self.backend_port = backend_port
        super().__init__(tls)

    def handle(self, sock: socket.socket) -> None:
        pump(sock, socket.create_connection(("127.0.0.1", self.backend_port), timeout=WAIT))


@dataclass
class Seen:
    method: str
    target: str
    headers: dict[str, str] = field(default_factory=dict)


class ConnectProxy(_Stub):
    """An HTTP proxy that speaks CONNECT only (as campus proxies do for https), resolving names through `names`
    alone; with `auth` ("user:password") it answers 407 to a request without those credentials; with `tls`
    it is an https:// proxy."""

    def __init__(self, names: dict[str, str], auth: str | None = None, tls: ssl.SSLContext | None = None) -> None:
        self.names, self.auth = names, auth
        self.seen: list[Seen] = []
        super().__init__(tls)

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def tunnels(self) -> list[str]:
        with self.lock:
            return [s.target for s in self.seen if s.method == "CONNECT"]

    def handle(self, sock: socket.socket) -> None:
        head = b""
        while b"\r\n\r\n" not in head:  # byte by byte: nothing after the head may be read here
            byte = sock.recv(1)
            if not byte:
                sock.close()
                return
            head += byte
        line, *lines = head.decode("latin-1").split("\r\n")
        method, target, _ = line.split(" ", 2)
        headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in lines if h)}
        with self.lock:
            self.seen.append(Seen(method, target, headers))
        if self.auth is not None and headers.get("proxy-authorization") != \
                "Basic " + base64.b64encode(self.auth.encode()).decode():
            sock.sendall(b"HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm=\"campus\"\r\n"
                         b"Content-Length: 0\r\nConnection: close\r\n\r\n")
            sock.close()
            return
        host, _, port = target.rpartition(":")
        address = self.names.get(host)
        if method != "CONNECT" or address is None:
            sock.sendall(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            sock.close()
            return
        upstream = socket.create_connection((address, int(port)), timeout=WAIT)
        sock.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
        pump(sock, upstream)
