"""The network layer under httpcore: sockets a stop can interrupt, and TLS through ssl.MemoryBIO.

httpcore (httpx's transport) asks a `NetworkBackend` for its streams; this one differs from httpcore's own in two
ways, both measured or required (docs/decisions/http-stack.md):

- Every socket it opens is registered, and `interrupt()` shuts them all down: a PUT blocked in `send` (a slow
  upload host) or a read waiting for an answer returns at once, instead of at the socket timeout. A connect in
  progress waits on a wake-up pipe as well, so it ends too. Once interrupted, no new connection is made.
- TLS runs in an `ssl.SSLObject` over memory BIOs: a 1 MiB write is encrypted whole and leaves in one `sendall`,
  where `SSLSocket.sendall` makes one syscall per 16 KiB record. That is ~30 % less client CPU per GiB at the
  same goodput. The same class layers TLS over any stream, so TLS to an https:// proxy and then TLS to the
  host through its tunnel need nothing else.

Connect failures are raised as `ConnectFailed` / `ConnectTimedOut`, carrying the host:port they were for, so the
caller can say whether the proxy or the host was unreachable.
"""

from __future__ import annotations

import errno
import functools
import os
import select
import socket
import ssl
import threading
import time
import weakref
from typing import Any, Callable, Iterable

import httpcore

RECV_BYTES = 256 << 10  # one read from the socket; TLS records are decrypted from it in memory
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)


class ConnectFailed(httpcore.ConnectError):
    """No connection to `where` (host:port), or its TLS handshake failed (`tls` True)."""

    def __init__(self, where: str, why: str, tls: bool = False) -> None:
        super().__init__(f"{where}: {'TLS: ' if tls else ''}{why}")
        self.where, self.why, self.tls = where, why, tls


class ConnectTimedOut(httpcore.ConnectTimeout):
    def __init__(self, where: str) -> None:
        super().__init__(f"{where}: timed out")
        self.where, self.why, self.tls = where, "timed out", False


class Interrupted(httpcore.ConnectError):
    """The backend was interrupted (the program is stopping): no new connection."""


class Backend(httpcore.NetworkBackend):
    """httpcore's network backend: plain sockets, registered so that `interrupt()` can end all I/O at once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._live: set[socket.socket] = set()
        self._wake_r, self._wake_w = os.pipe()
        self.interrupted = False
        # Closed with the backend, not by close(): a connect in another thread may still be polling it.
        weakref.finalize(self, _close_fds, self._wake_r, self._wake_w)

    def connect_tcp(self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
                    socket_options: Iterable[Any] | None = None) -> httpcore.NetworkStream:
        where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise ConnectFailed(where, exc.strerror or str(exc)) from None
        last: OSError | None = None
        for family, kind, proto, _, address in addresses:
            sock = socket.socket(family, kind, proto)
            if not self._register(sock):
                sock.close()
                raise Interrupted("stopping")
            try:
                if local_address is not None:
                    sock.bind((local_address, 0))
                self._connect(sock, address, deadline)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                for option in socket_options or ():
                    sock.setsockopt(*option)
                return SocketStream(self, sock, where)
            except TimeoutError:
                self._close(sock)
                raise ConnectTimedOut(where) from None
            except OSError as exc:
                self._close(sock)
                if self.interrupted:
                    raise Interrupted("stopping") from None
                last = exc
        raise ConnectFailed(where, (last.strerror or str(last)) if last else "no address")

    def _connect(self, sock: socket.socket, address: Any, deadline: float | None) -> None:
        """A non-blocking connect that ends early when the backend is interrupted."""
        sock.setblocking(False)
        code = sock.connect_ex(address)
        if code in (errno.EINPROGRESS, errno.EAGAIN, errno.EALREADY):
            poller = select.poll()
            poller.register(sock, select.POLLOUT)
            poller.register(self._wake_r, select.POLLIN)
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready = poller.poll(None if left is None else int(left * 1000) + 1)
            if self.interrupted:
                raise OSError(errno.ECANCELED, "stopping")
            if not any(fd == sock.fileno() for fd, _ in ready):
                raise TimeoutError
            code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if code:
            raise OSError(code, os.strerror(code))
        sock.setblocking(True)

    def interrupt(self) -> None:
        """End every connection's I/O now (each blocked call fails at once); refuse new connections."""
        with self._lock:
            self.interrupted = True
            live = list(self._live)
        os.write(self._wake_w, b"x")
        for sock in live:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # not connected yet (the wake-up pipe ends the connect) or already closed

    def _register(self, sock: socket.socket) -> bool:
        with self._lock:
            if self.interrupted:
                return False
            self._live.add(sock)
            return True

    def _close(self, sock: socket.socket) -> None:
        with self._lock:
            self._live.discard(sock)
        sock.close()


class SocketStream(httpcore.NetworkStream):
    """One TCP connection; socket errors become httpcore's Read/Write errors (or timeouts)."""

    def __init__(self, backend: Backend, sock: socket.socket, where: str) -> None:
        self._backend, self._sock, self.where = backend, sock, where

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        try:
            self._sock.settimeout(timeout)
            return self._sock.recv(max_bytes)
        except TimeoutError:
            raise httpcore.ReadTimeout("timed out") from None
        except OSError as exc:
            raise httpcore.ReadError(exc.strerror or str(exc)) from None

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if not buffer:
            return
        try:
            self._sock.settimeout(timeout)
            self._sock.sendall(buffer)
        except TimeoutError:
            if readable(self._sock):  # it stopped reading because it answered: httpcore then reads that answer
                raise httpcore.WriteError("the server answered before it took the whole body") from None
            raise httpcore.WriteTimeout("timed out") from None
        except OSError as exc:
            raise httpcore.WriteError(exc.strerror or str(exc)) from None

    def close(self) -> None:
        self._backend._close(self._sock)

    def start_tls(self, ssl_context: ssl.SSLContext, server_hostname: str | None = None,
                  timeout: float | None = None) -> httpcore.NetworkStream:
        return TLSStream(self, ssl_context, server_hostname, timeout)

    def get_extra_info(self, info: str) -> Any:
        if info == "socket":
            return self._sock
        if info == "is_readable":
            return readable(self._sock)
        if info == "client_addr":
            return self._sock.getsockname()
        if info == "server_addr":
            return self._sock.getpeername()
        return None


class TLSStream(httpcore.NetworkStream):
    """TLS over another stream (a socket, or a TLS stream to a proxy) through an SSLObject and memory BIOs."""

    def __init__(self, raw: httpcore.NetworkStream, context: ssl.SSLContext, server_hostname: str | None,
                 timeout: float | None) -> None:
        self._raw = raw
        self._in, self._out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self._tls = context.wrap_bio(self._in, self._out, server_hostname=server_hostname)
        self.where = getattr(raw, "where", "?")
        where = server_hostname or self.where  # a failed handshake names the host it was with
        try:
            self._io(self._tls.do_handshake, timeout)
        except ssl.SSLCertVerificationError as exc:
            raw.close()
            raise ConnectFailed(where, f"certificate verify failed: {exc.verify_message}", tls=True) from None
        except ssl.SSLError as exc:
            raw.close()
            raise ConnectFailed(where, exc.reason or str(exc), tls=True) from None
        except (httpcore.ReadError, httpcore.WriteError) as exc:
            raw.close()
            raise ConnectFailed(where, f"connection lost during the handshake ({exc})", tls=True) from None
        except (httpcore.ReadTimeout, httpcore.WriteTimeout):
            raw.close()
            raise ConnectTimedOut(where) from None

    def _io(self, step: Callable[[], Any], timeout: float | None) -> Any:
        """Run an SSLObject step, moving bytes between its BIOs and the raw stream until it completes."""
        while True:
            try:
                result = step()
            except ssl.SSLWantReadError:
                self._flush(timeout)
                data = self._raw.read(RECV_BYTES, timeout)
                if data:
                    self._in.write(data)
                else:
                    self._in.write_eof()
                continue
            self._flush(timeout)
            return result

    def _flush(self, timeout: float | None) -> None:
        if self._out.pending:
            self._raw.write(self._out.read(), timeout)

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        try:
            return self._io(lambda: self._tls.read(max_bytes), timeout)
        except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
            return b""  # the end of the stream, with or without close_notify: httpcore decides if it was early
        except ssl.SSLError as exc:
            raise httpcore.ReadError(f"TLS: {exc.reason or exc}") from None

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        view = memoryview(buffer)
        try:
            while view:  # a memory BIO never blocks: one write takes the whole buffer, one flush sends it
                view = view[self._io(lambda: self._tls.write(view), timeout):]
        except ssl.SSLError as exc:
            raise httpcore.WriteError(f"TLS: {exc.reason or exc}") from None

    def close(self) -> None:
        self._raw.close()

    def start_tls(self, ssl_context: ssl.SSLContext, server_hostname: str | None = None,
                  timeout: float | None = None) -> httpcore.NetworkStream:
        return TLSStream(self, ssl_context, server_hostname, timeout)

    def get_extra_info(self, info: str) -> Any:
        if info == "ssl_object":
            return self._tls
        if info == "is_readable":
            return bool(self._in.pending) or bool(self._raw.get_extra_info("is_readable"))
        return self._raw.get_extra_info(info)


@functools.cache
def tune_allocator() -> None:
    """Let glibc reuse freed 1 MiB buffers instead of returning and re-faulting them (once per process).

    Each MiB sent costs two fresh ~1 MiB bytes objects (h11 joins the chunk; the TLS BIO hands back the records).
    In a worker thread glibc serves them from a thread arena that it trims at every free (128 KiB default), so
    every MiB was page-faulted and zeroed twice: measured 1.40 s of CPU per GiB over TLS for `upload`, 0.64-0.73 s
    with these thresholds (plain http: 0.48 s either way). Peak memory is unchanged: only what was freed is kept.
    See docs/decisions/http-stack.md. A no-op where the C library is not glibc.
    """
    try:  # glibc answers this (platform.libc_ver() would read the whole interpreter binary to find out)
        if not os.confstr("CS_GNU_LIBC_VERSION"):
            return
    except (ValueError, OSError):
        return
    try:
        import ctypes  # only to tune glibc's allocator, once

        libc = ctypes.CDLL(None)
        libc.mallopt(M_MMAP_THRESHOLD, 16 << 20)
        libc.mallopt(M_TRIM_THRESHOLD, 64 << 20)
    except (OSError, AttributeError):
        pass


def _close_fds(*fds: int) -> None:
    for fd in fds:
        os.close(fd)


def readable(sock: socket.socket) -> bool:
    """Data (or an end of stream) waiting on the socket, without blocking."""
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(0))
