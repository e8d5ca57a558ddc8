"""HTTP/1.1 for the Studio client: a thread-safe keep-alive connection pool over the standard library's http.client.

Why not httpx or httpcore here: for a drop folder of thousands of small clips, the client's per-request CPU is
most of what the daemon does. Measured on the benchmark machine against the same loopback server, one small
POST costs ~0.10 ms of CPU through http.client, ~0.29 ms through httpcore and ~0.62 ms through httpx. A streamed
body goes from the caller's buffer to `sendall` untouched (no join, no copy), which is what lets a PUT keep up
with `curl -T`. What this module adds is what http.client lacks: a pool shared by threads, a liveness check
before a kept-alive connection is reused, and transport failures mapped onto the exception tree in `errors.py`
(no connection → Unreachable; anything after it → TransientError).
"""

from __future__ import annotations

import http.client
import json
import select
import ssl
import threading
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence
from urllib.parse import quote, urlsplit

import structlog

from studio_watch.errors import TransientError, Unreachable

log = structlog.get_logger(__name__)

MAX_IDLE = 16  # kept-alive connections across all hosts; more are closed when handed back
TARGET_SAFE = "/?#[]@!$&'()*+,;=:%~"  # what may stay as it is in a request target; anything else is %-encoded


@dataclass(frozen=True)
class Reply:
    """An HTTP answer, read whole (API answers are small; upload answers are empty)."""

    status_code: int
    headers: dict[str, str]  # names in lower case
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def json(self) -> Any:
        return json.loads(self.body)


class Pool:
    """Keep-alive connections by (scheme, host, port); each is used by one thread at a time."""

    def __init__(self, tls: ssl.SSLContext | Callable[[], ssl.SSLContext], timeout: float,
                 max_idle: int = MAX_IDLE) -> None:
        """`tls` is the context for https, or what makes it when the first https connection needs it (loading a
        CA bundle takes ~40 ms: a daemon talking plain http to a local stand-in never pays it)."""
        self._tls, self.timeout, self.max_idle = tls, timeout, max_idle
        self._idle: list[tuple[tuple[str, str, int], http.client.HTTPConnection]] = []
        self._lock = threading.Lock()
        self._closed = False

    def request(self, method: str, url: str, headers: Sequence[tuple[str, str]], body: Any = b"") -> Reply:
        """Send one request and read its whole answer.

        `body` is bytes, or an iterable of buffers sent one by one as they come (a streamed upload: the caller
        sets Content-Length, and may reuse one buffer, since each is sent before the next is asked for).
        Exceptions raised by the iterable propagate, and the half-sent connection is closed.
        """
        parts = urlsplit(url)
        scheme, host = parts.scheme.lower(), parts.hostname
        origin = f"{scheme}://{parts.netloc.rpartition('@')[2]}"  # never user:password, a path or a query
        if scheme not in ("http", "https") or not host:
            raise Unreachable(f"cannot reach {origin}: not an http(s) URL")
        try:
            port = parts.port or (443 if scheme == "https" else 80)
        except ValueError:
            raise Unreachable(f"cannot reach {origin}: bad port") from None
        key = (scheme, host, port)
        # Spaces, control characters and non-ASCII would be refused by http.client (with the query, which may be
        # a signature, in its message): they are percent-encoded, as a browser or httpx would.
        target = quote((parts.path or "/") + (f"?{parts.query}" if parts.query else ""), safe=TARGET_SAFE)
        conn = self._take(key)
        reused = conn is not None
        conn = conn or self._connect(key, origin)
        try:
            reply, reusable = _exchange(conn, method, target, headers, body)
        except BaseException as exc:
            conn.close()
            log.debug("http_failed", method=method, origin=origin, reused=reused, error=reason(exc))
            raise
        log.debug("http_request", method=method, origin=origin, status=reply.status_code, reused=reused,
                  kept=reusable)
        if reusable:
            self._give(key, conn)
        else:
            conn.close()
        return reply

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for _, conn in idle:
            conn.close()

    def _take(self, key: tuple[str, str, int]) -> http.client.HTTPConnection | None:
        """The most recently used idle connection to `key` that the server has not closed meanwhile."""
        while True:
            with self._lock:
                found = next((i for i in range(len(self._idle) - 1, -1, -1) if self._idle[i][0] == key), None)
                if found is None:
                    return None
                conn = self._idle.pop(found)[1]
            if _still_open(conn):
                return conn
            conn.close()

    def _give(self, key: tuple[str, str, int], conn: http.client.HTTPConnection) -> None:
        with self._lock:
            if self._closed:
                surplus = [conn]
            else:
                self._idle.append((key, conn))
                excess = max(0, len(self._idle) - self.max_idle)
                surplus = [old for _, old in self._idle[:excess]]
                del self._idle[:excess]
        for old in surplus:
            old.close()

    def _tls_context(self) -> ssl.SSLContext:
        with self._lock:
            if not isinstance(self._tls, ssl.SSLContext):
                self._tls = self._tls()
            return self._tls

    def _connect(self, key: tuple[str, str, int], origin: str) -> http.client.HTTPConnection:
        scheme, host, port = key
        conn: http.client.HTTPConnection | None = None
        try:
            if scheme == "https":
                conn = http.client.HTTPSConnection(host, port, timeout=self.timeout, context=self._tls_context())
            else:
                conn = http.client.HTTPConnection(host, port, timeout=self.timeout)
            conn.response_class = _Response
            conn.connect()  # TCP (with TCP_NODELAY) and, for https, the verified TLS handshake
        except (OSError, http.client.HTTPException) as exc:  # ssl.SSLError is an OSError
            if conn is not None:
                conn.close()
            raise Unreachable(f"cannot reach {origin}: {reason(exc)}") from None
        log.debug("http_connected", origin=origin)
        return conn


def _exchange(conn: http.client.HTTPConnection, method: str, target: str, headers: Sequence[tuple[str, str]],
              body: Any) -> tuple[Reply, bool]:
    """(the answer, whether the connection may be kept); transport failures become TransientError."""
    try:
        conn.putrequest(method, target, skip_accept_encoding=True)
        for name, value in headers:
            conn.putheader(name, value)
        whole = True
        if isinstance(body, (bytes, bytearray)):
            conn.endheaders(bytes(body) or None)  # headers and a small body leave in one segment
        else:
            conn.endheaders()
            whole = _send_body(conn, body)
        response = conn.getresponse()
        data = response.read()
    except (OSError, http.client.HTTPException) as exc:
        raise TransientError(reason(exc)) from None
    if not whole and 200 <= response.status < 300:  # "done" before it had the whole body: it cannot be
        raise TransientError(f"HTTP {response.status} before the whole body was sent")
    reply = Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, data)
    return reply, whole and not response.will_close  # after a half-sent body the stream is out of step


def _send_body(conn: http.client.HTTPConnection, body: Iterable[Any]) -> bool:
    """Send each buffer as it comes; True if all of them went.

    If the server stops reading (it answered early, e.g. a refused upload URL), the send fails: the answer it
    sent, if any, is what the caller gets, not the send error, and the connection is not used again.
    """
    sock = conn.sock
    assert sock is not None
    for chunk in body:  # what the iterable raises (a read error, a stop) is the caller's, never a send error
        try:
            sock.sendall(chunk)
        except OSError:
            if not _readable(sock):
                raise
            return False  # getresponse() reads the early answer (or raises, mapped by the caller)
    return True


class _Response(http.client.HTTPResponse):
    """http.client skips a `100 Continue` before the final answer, but takes any other informational answer
    (`103 Early Hints`, `102 Processing`) for the final one; HTTP/1.1 says to skip them all (101 aside)."""

    def _read_status(self) -> tuple[str, int, str]:
        while True:
            version, status, why = super()._read_status()  # type: ignore[misc]
            if not 100 < status < 200 or status == 101:  # 100 itself: begin() skips it
                return version, status, why
            while self.fp.readline(65537) not in (b"\r\n", b"\n", b""):  # its headers
                pass


def _readable(sock: Any) -> bool:
    """Data (or an end of stream) waiting on the socket, without blocking."""
    if isinstance(sock, ssl.SSLSocket) and sock.pending():
        return True
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(0))


def _still_open(conn: http.client.HTTPConnection) -> bool:
    """A kept-alive connection between requests must have nothing to read: if it has, the server closed it
    (or broke the protocol), and a request sent on it would fail."""
    return conn.sock is not None and not _readable(conn.sock)


def reason(exc: BaseException) -> str:
    """A transport exception's message without any URL in it."""
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, http.client.RemoteDisconnected):
        return "server disconnected without sending a response"
    if isinstance(exc, http.client.IncompleteRead):
        return "connection closed before the whole answer arrived"
    text = str(exc) or type(exc).__name__
    return text.split(" for url ")[0]
