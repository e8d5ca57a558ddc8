"""transport.Pool against small real servers on loopback, each test scripting exactly what its server does:
keep-alive, streamed bodies, stale and closed connections, early answers, the error mapping (no connection →
Unreachable, anything after it → TransientError), threads, close() and TLS."""

from __future__ import annotations

import os
import select
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import pytest

from studio_watch.errors import Stopping, TransientError, Unreachable
from studio_watch.sandbox.tls import make_certificates
from studio_watch.studio.transport import Pool, Reply

from ..conftest import wait_until
from ..netstubs import Listener

WAIT = 5.0  # bound on every wait for the other side; a passing run never comes near it
MIB = 1 << 20


# -- a scriptable HTTP/1.1 server --------------------------------------------------------------------------------


@dataclass
class Request:
    method: str
    target: str
    headers: list[tuple[str, str]]  # as received, names in lower case
    body: bytes = b""

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k == name), None)


class Peer:
    """One accepted connection, as a handler sees it. `eof` is set once a read finds the client gone."""

    def __init__(self, server: Server, sock: socket.socket) -> None:
        self.server, self.sock = server, sock
        self.rfile = sock.makefile("rb")
        self.eof = threading.Event()

    def read_head(self) -> Request | None:
        """The request line and headers, or None at the end of the stream."""
        line = self._readline()
        if not line:
            return None
        method, target, _ = line.decode("latin-1").split(" ", 2)
        headers = []
        while (line := self._readline()) not in (b"\r\n", b""):
            name, value = line.decode("latin-1").split(":", 1)
            headers.append((name.strip().lower(), value.strip()))
        request = Request(method, target, headers)
        with self.server.lock:
            self.server.requests.append(request)
        return request

    def read_request(self) -> Request | None:
        """A whole request (the body by its Content-Length), or None if the client went away before its end."""
        request = self.read_head()
        if request is None:
            return None
        size = int(request.header("content-length") or 0)
        try:
            request.body = self.rfile.read(size)
        except OSError:
            request.body = b""
        if len(request.body) < size:
            self.eof.set()
            return None
        return request

    def send(self, status: int, body: bytes = b"", *headers: tuple[str, str]) -> None:
        lines = [f"HTTP/1.1 {status} Whatever", *(f"{k}: {v}" for k, v in headers), f"Content-Length: {len(body)}"]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + body)

    def _readline(self) -> bytes:
        try:
            line = self.rfile.readline()
        except OSError:  # a reset is the client going away too
            line = b""
        if not line:
            self.eof.set()
        return line


Handler = Callable[[Peer], None]


class Server(Listener):
    """Accepts on 127.0.0.1:<free port> and runs `handler` for each connection in its own thread; the connection
    is closed when the handler returns. Handlers that must hang wait on `release`, which close() sets."""

    def __init__(self, handler: Handler, tls: ssl.SSLContext | None = None) -> None:
        self.handler, self.tls = handler, tls
        self.peers: list[Peer] = []  # in accept order
        self.requests: list[Request] = []  # heads as they were read, across connections
        self.errors: list[BaseException] = []  # anything but a socket error in a handler: a broken test
        self.release = threading.Event()
        super().__init__()
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"

    def connections(self) -> int:
        with self.lock:
            return len(self.peers)

    def close(self) -> None:
        """Stop accepting, end every connection's handler, and wait for their threads."""
        self.release.set()
        super().close()
        with self.lock:
            peers, threads = list(self.peers), list(self.threads)
        for peer in peers:
            try:
                peer.sock.shutdown(socket.SHUT_RDWR)  # wakes a handler blocked reading
            except OSError:
                pass
        for thread in threads:
            thread.join(WAIT)

    def serve(self, sock: socket.socket) -> None:
        # No Nagle: a handler that answers and then closes with request bytes unread makes the kernel reset the
        # connection, which throws away whatever is still queued. With Nagle, a small answer written just after
        # other small writes (TLS 1.3 session tickets) can still be queued then, and would never reach the client.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        peer = None
        try:
            if self.tls is not None:
                sock = self.tls.wrap_socket(sock, server_side=True)  # the handshake, in this connection's thread
            peer = Peer(self, sock)
            with self.lock:
                self.peers.append(peer)
            self.handler(peer)
        except OSError:
            pass  # the client went away (or refused our certificate): what some tests are about
        except BaseException as exc:
            self.errors.append(exc)
        finally:
            if peer is not None:
                peer.rfile.close()  # else the socket's close below is deferred until the file is collected
            sock.close()


def each_request(answer: Callable[[Peer, Request], None]) -> Handler:
    """A keep-alive handler: `answer` every request on the connection until the client closes it."""

    def handler(peer: Peer) -> None:
        while (request := peer.read_request()) is not None:
            answer(peer, request)

    return handler


def echo(peer: Peer, request: Request) -> None:
    peer.send(200, f"{request.method} {request.target} {request.header('x-id')} ".encode() + request.body,
              ("X-Server", "test"))


def refuse_puts(peer: Peer) -> None:
    """An upload host that has expired the URL: a PUT gets 403 from its head alone; anything else is echoed."""
    request = peer.read_head()
    if request is not None and request.method == "PUT":
        # Answer and close without reading the body. The body bytes left unread make Linux reset the connection,
        # so the client's next send fails (EPIPE/ECONNRESET). The 403 left before the reset, a reset cannot
        # overtake data on the same connection, and a reset does not purge what the client has received: the
        # answer is always there to be read (given no Nagle delay on the server: see Server.serve).
        peer.send(403, b"upload URL expired")
        return
    while request is not None:
        echo(peer, request)
        request = peer.read_request()


@pytest.fixture
def serve() -> Iterator[Callable[..., Server]]:
    """Start servers; all are stopped at the end of the test, which fails if a handler broke."""
    started: list[Server] = []

    def start(handler: Handler, tls: ssl.SSLContext | None = None) -> Server:
        started.append(Server(handler, tls))
        return started[-1]

    yield start
    for server in started:
        server.close()
    assert [e for s in started for e in s.errors] == []


@pytest.fixture
def pool() -> Iterator[Pool]:
    p = Pool(ssl.create_default_context(), timeout=WAIT)
    yield p
    p.close()


@pytest.fixture
def tls(tmp_path: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(server context, client context trusting it) for a fresh private CA's certificate for 127.0.0.1."""
    files = make_certificates(tmp_path / "tls", ["127.0.0.1"])
    return files.server_context(), ssl.create_default_context(cafile=str(files.ca))


def reused_buffer(data: bytes, size: int) -> Iterator[memoryview]:
    """`data` in views of ONE bytearray, overwritten after each yield, as studio.py's _body does: a pool that kept
    a view instead of sending it before asking for the next would send the wrong bytes."""
    view = memoryview(bytearray(size))
    for start in range(0, len(data), size):
        n = len(data[start:start + size])
        view[:n] = data[start:start + n]
        yield view[:n]


def readable(sock: socket.socket | None) -> bool:
    return sock is not None and bool(select.select([sock], [], [], 0)[0])


def get(pool: Pool, server: Server, path: str = "/", *headers: tuple[str, str]) -> Reply:
    return pool.request("GET", server.url + path, list(headers))


# -- keep-alive and what goes over the wire ----------------------------------------------------------------------


def test_requests_share_one_kept_alive_connection_with_exact_heads_and_replies(serve: Callable[..., Server],
                                                                            pool: Pool) -> None:
    server = serve(each_request(echo))
    first = get(pool, server, "/a?x=1", ("X-Id", "one"), ("X-Custom", "v 1"))
    posted = pool.request("POST", server.url + "/b", [("X-Id", "two"), ("Content-Type", "text/plain"),
                                                       ("Content-Length", "5")], b"hello")
    last = get(pool, server, "/c", ("X-Id", "three"))

    assert server.connections() == 1
    assert (first.status_code, first.body) == (200, b"GET /a?x=1 one ")
    assert first.headers == {"x-server": "test", "content-length": "15"}  # names lower-cased
    assert (posted.status_code, posted.text) == (200, "POST /b two hello")
    assert last.body == b"GET /c three "
    get_a, post_b, _ = server.requests
    assert get_a.header("host") == f"127.0.0.1:{server.port}"
    assert get_a.header("x-custom") == "v 1"
    assert post_b.header("content-type") == "text/plain" and post_b.body == b"hello"
    assert all(r.header("accept-encoding") is None for r in server.requests)


def test_streamed_body_of_one_reused_buffer_arrives_byte_exact_with_content_length(serve: Callable[..., Server],
                                                                                   pool: Pool) -> None:
    server = serve(each_request(lambda peer, req: peer.send(200, str(len(req.body)).encode())))
    data = os.urandom(5 * 65536 + 123)  # several whole chunks and a short last one

    reply = pool.request("PUT", server.url + "/up", [("Content-Length", str(len(data)))],
                         reused_buffer(data, 65536))

    assert reply.body == str(len(data)).encode()
    [put] = server.requests
    assert put.body == data
    assert put.header("content-length") == str(len(data)) and put.header("transfer-encoding") is None
    assert get(pool, server).status_code == 200 and server.connections() == 1  # the framing was exact


def test_chunked_reply_is_decoded_and_its_connection_kept(serve: Callable[..., Server], pool: Pool) -> None:
    def chunked(peer: Peer, request: Request) -> None:
        peer.sock.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                          b"5\r\nhello\r\n7\r\n, world\r\n0\r\n\r\n")

    server = serve(each_request(chunked))
    assert get(pool, server).body == b"hello, world"
    assert get(pool, server).body == b"hello, world"
    assert server.connections() == 1


# -- connections the server ends ---------------------------------------------------------------------------------


def test_connection_closed_by_server_while_idle_is_replaced_transparently(serve: Callable[..., Server],
                                                                        pool: Pool) -> None:
    def answer_once(peer: Peer) -> None:  # a keep-alive answer (no "Connection: close"), then close anyway
        request = peer.read_request()
        assert request is not None
        peer.send(200, b"ok")

    server = serve(answer_once)
    assert get(pool, server).body == b"ok"
    # Wait for the server's close: a request sent before its FIN arrives races the close, which no client can
    # avoid; this test is about a close that happened while the connection sat idle.
    assert wait_until(lambda: not any(t.is_alive() for t in server.threads[1:]), WAIT, 0.01)

    assert get(pool, server).body == b"ok"
    assert server.connections() == 2


def test_connection_close_in_reply_is_honoured(serve: Callable[..., Server], pool: Pool) -> None:
    # The server keeps serving after saying "Connection: close", so a pool that reused the connection anyway
    # would succeed on it and the count would stay at one.
    server = serve(each_request(lambda peer, req: peer.send(200, b"bye", ("Connection", "close"))))
    assert get(pool, server).body == b"bye"
    assert get(pool, server).body == b"bye"
    assert server.connections() == 2
    assert server.peers[0].eof.wait(WAIT)  # and the first one was closed, not leaked
    assert pool.idle() == 0


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_early_answer_to_a_large_put_is_the_reply(serve: Callable[..., Server], request: pytest.FixtureRequest,
                                                  scheme: str) -> None:
    server_side, client_side = request.getfixturevalue("tls") if scheme == "https" else (None, None)
    server = serve(refuse_puts, server_side)
    pool = Pool(client_side or ssl.create_default_context(), timeout=WAIT)
    taken = []

    def body() -> Iterator[bytes]:
        for i in range(8):
            taken.append(i)
            yield bytes([i]) * MIB

    reply = pool.request("PUT", server.url + "/up?sig=x", [("Content-Length", str(8 * MIB))], body())

    assert (reply.status_code, reply.body) == (403, b"upload URL expired")
    # The send really failed part-way (the socket buffers on loopback hold a few MiB at most), so the early-answer
    # path ran, not a whole send followed by a read.
    assert len(taken) < 8
    assert get(pool, server, "/next").body == b"GET /next None "  # the broken connection was not reused
    assert server.connections() == 2
    pool.close()


# -- errors: Unreachable before a connection, TransientError after ----------------------------------------------


def test_refused_connection_is_unreachable_naming_only_the_origin(pool: Pool) -> None:
    with socket.socket() as s:  # a port that was free a moment ago and has no listener now
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    with pytest.raises(Unreachable) as exc:
        pool.request("PUT", f"http://127.0.0.1:{port}/upload/7?X-Amz-Signature=secret", [], b"data")

    message = str(exc.value)
    assert f"http://127.0.0.1:{port}" in message and "refused" in message.lower()
    assert "secret" not in message and "/upload" not in message


def test_read_timeout_is_transient_and_bounded(serve: Callable[..., Server]) -> None:
    def never_answer(peer: Peer) -> None:
        peer.read_request()
        peer.server.release.wait()

    server = serve(never_answer)
    pool = Pool(ssl.create_default_context(), timeout=0.3)
    started = time.monotonic()
    with pytest.raises(TransientError) as exc:
        pool.request("GET", server.url + "/media?X-Amz-Signature=secret", [])
    elapsed = time.monotonic() - started

    assert elapsed < WAIT
    assert not isinstance(exc.value, Unreachable)  # it was reached: this is the answer being late
    assert "timed out" in str(exc.value) and "secret" not in str(exc.value)
    assert pool.idle() == 0
    pool.close()


@pytest.mark.parametrize("when", ["after the request", "on accept"])
def test_disconnect_without_a_reply_is_transient(serve: Callable[..., Server], pool: Pool, when: str) -> None:
    def hang_up(peer: Peer) -> None:
        if when == "after the request":
            peer.read_request()

    server = serve(hang_up)
    with pytest.raises(TransientError) as exc:
        get(pool, server, "/x?X-Amz-Signature=secret")
    assert type(exc.value) is TransientError  # not Unreachable, and not a raw OSError or http.client error
    assert "secret" not in str(exc.value)


@pytest.mark.parametrize("url", ["ftp://127.0.0.1:{port}/file?sig=secret", "http:///no-host?sig=secret",
                                 "http://127.0.0.1:99999/bad-port?sig=secret",
                                 "http://bot:secret@127.0.0.1:99999/bad-port"])
def test_url_the_pool_cannot_use_is_unreachable_without_connecting(serve: Callable[..., Server], pool: Pool,
                                                                   url: str) -> None:
    server = serve(each_request(echo))  # would answer, were the pool to try
    with pytest.raises(Unreachable) as exc:
        pool.request("GET", url.format(port=server.port), [])
    assert "secret" not in str(exc.value)
    assert server.connections() == 0


def test_the_tls_context_is_made_once_when_the_first_https_connection_needs_it(
        serve: Callable[..., Server], tls: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    server_side, client_side = tls
    plain, secure = serve(each_request(echo)), serve(each_request(echo), server_side)
    made: list[ssl.SSLContext] = []
    pool = Pool(lambda: made.append(client_side) or client_side, timeout=WAIT)
    try:
        assert get(pool, plain, "/a").status_code == 200 and made == []  # plain http never loads a CA bundle
        for path in ("/b", "/c"):
            assert get(pool, secure, path).body == f"GET {path} None ".encode()
        assert made == [client_side]
    finally:
        pool.close()


def test_informational_answers_before_the_final_one_are_skipped(serve: Callable[..., Server], pool: Pool) -> None:
    """http.client itself skips only 100 Continue; a 103 Early Hints must not be taken for the answer."""

    def hints_first(peer: Peer, request: Request) -> None:
        peer.sock.sendall(b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n"
                          b"HTTP/1.1 102 Processing\r\n\r\n")
        echo(peer, request)

    server = serve(each_request(hints_first))
    reply = pool.request("PUT", server.url + "/up", [("Content-Length", "3")], b"abc")
    assert (reply.status_code, reply.body) == (200, b"PUT /up None abc")
    assert get(pool, server, "/again").body == b"GET /again None "  # the stream stayed in step


def test_a_success_before_the_whole_body_was_sent_is_not_a_success(serve: Callable[..., Server],
                                                                  pool: Pool) -> None:
    """A 2xx that came while most of the body was still unsent cannot mean the upload arrived."""

    def ok_at_once(peer: Peer) -> None:
        if peer.read_head() is not None:
            peer.send(200, b"", ("Connection", "close"))

    server = serve(ok_at_once)
    with pytest.raises(TransientError, match="before the whole body"):
        pool.request("PUT", server.url + "/up?sig=x", [("Content-Length", str(8 * MIB))],
                     (bytes([i]) * MIB for i in range(8)))


def test_body_iterable_error_propagates_and_the_half_used_connection_is_dropped(serve: Callable[..., Server],
                                                                               pool: Pool) -> None:
    server = serve(each_request(echo))
    assert get(pool, server).status_code == 200  # the connection the PUT will then take from the pool
    boom = ValueError("the file said no")

    def body() -> Iterator[bytes]:
        yield b"x" * 1000
        raise boom

    with pytest.raises(ValueError) as exc:
        pool.request("PUT", server.url + "/up", [("Content-Length", "10000")], body())

    assert exc.value is boom
    assert server.peers[0].eof.wait(WAIT)  # closed at once, with 9000 bytes of its body never sent
    assert get(pool, server, "/after").body == b"GET /after None "
    assert server.connections() == 2


# -- threads and close() -----------------------------------------------------------------------------------------


def test_threads_get_their_own_answers_and_idle_connections_stay_bounded(serve: Callable[..., Server]) -> None:
    server = serve(each_request(echo))
    pool = Pool(ssl.create_default_context(), timeout=WAIT, max_idle=2)
    start = threading.Barrier(8)
    wrong: list[str] = []

    def worker(t: int) -> None:
        start.wait(WAIT)
        for i in range(20):
            try:
                reply = get(pool, server, f"/t{t}", ("X-Id", f"{t}-{i}"))
                if reply.body != f"GET /t{t} {t}-{i} ".encode():
                    wrong.append(f"{t}-{i}: {reply.body!r}")
            except Exception as exc:  # reported below, with the others
                wrong.append(f"{t}-{i}: {exc!r}")

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT * 2)

    assert wrong == [] and len(server.requests) == 160
    assert pool.idle() <= 2
    # the surplus was closed, not just forgotten: the server sees at most max_idle connections still open
    assert wait_until(lambda: sum(not p.eof.is_set() for p in server.peers) <= 2, WAIT, 0.01)
    pool.close()


def test_close_closes_idle_connections_and_the_one_in_flight(serve: Callable[..., Server], pool: Pool) -> None:
    idle = serve(each_request(echo))
    arrived, go = threading.Event(), threading.Event()

    def slow(peer: Peer, request: Request) -> None:
        arrived.set()
        go.wait(WAIT)
        echo(peer, request)

    busy = serve(each_request(slow))
    assert get(pool, idle).status_code == 200
    failures: list[BaseException] = []

    def slow_get() -> None:
        try:
            get(pool, busy, "/slow")
        except Stopping as exc:
            failures.append(exc)

    in_flight = threading.Thread(target=slow_get)
    in_flight.start()
    assert arrived.wait(WAIT)

    assert pool.idle() == 1
    pool.close()  # the daemon closes its pool after its workers stopped: one still in flight ends at once
    assert idle.peers[0].eof.wait(WAIT)
    in_flight.join(WAIT)
    assert not in_flight.is_alive()
    go.set()
    assert len(failures) == 1
    assert busy.peers[0].eof.wait(WAIT)
    assert pool.idle() == 0


# -- TLS ---------------------------------------------------------------------------------------------------------


def test_tls_with_the_right_ca_keeps_alive_and_streams(serve: Callable[..., Server],
                                                       tls: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    server_side, client_side = tls
    server = serve(each_request(echo), server_side)
    pool = Pool(client_side, timeout=WAIT)
    data = os.urandom(3 * 65536 + 7)

    assert get(pool, server, "/a", ("X-Id", "1")).body == b"GET /a 1 "
    reply = pool.request("PUT", server.url + "/up", [("Content-Length", str(len(data)))],
                         reused_buffer(data, 65536))
    assert get(pool, server, "/b", ("X-Id", "2")).body == b"GET /b 2 "

    assert reply.status_code == 200 and server.requests[1].body == data
    assert server.connections() == 1
    pool.close()


def test_tls_with_an_unknown_ca_is_unreachable(serve: Callable[..., Server], pool: Pool,
                                               tls: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    server = serve(each_request(echo), tls[0])

    with pytest.raises(Unreachable) as exc:  # `pool` verifies against the system's CAs only
        get(pool, server, "/a?X-Amz-Signature=secret")

    message = str(exc.value)
    assert "certificate verify failed" in message.lower() and server.url in message
    assert "secret" not in message


# -- found by review: a half-sent body, odd characters in a URL --------------------------------------------------


def test_connection_with_a_half_sent_body_is_not_reused(serve: Callable[..., Server]) -> None:
    put_answered = threading.Event()

    def early_answer_then_busy(peer: Peer) -> None:
        request = peer.read_head()
        if request is not None and request.method == "PUT":
            peer.send(403, b"no")  # early, keep-alive, and not reading the body until the client gave up on it
            put_answered.wait(WAIT)
            size = int(request.header("content-length") or 0)
            request = peer.read_head() if len(peer.rfile.read(size)) == size else None
        while request is not None:
            echo(peer, request)
            request = peer.read_request()

    server = serve(early_answer_then_busy)
    pool = Pool(ssl.create_default_context(), timeout=0.3)
    reply = pool.request("PUT", server.url + "/up", [("Content-Length", str(32 * MIB))],
                         (b"x" * MIB for _ in range(32)))  # the send times out: the server is not reading
    put_answered.set()
    assert reply.status_code == 403
    try:
        # The PUT's connection is mid-body: this request's bytes would be taken as the rest of that body.
        assert get(pool, server, "/next").body == b"GET /next None "
    finally:
        pool.close()


def test_spaces_and_non_ascii_in_a_url_are_percent_encoded(serve: Callable[..., Server], pool: Pool) -> None:
    """http.client refuses such a target (its message would quote the query, a signature): they are encoded."""
    server = serve(each_request(echo))
    reply = pool.request("PUT", server.url + "/up load/café?X-Amz-Signature=a b", [("Content-Length", "1")], b"x")
    assert reply.status_code == 200
    assert reply.body == b"PUT /up%20load/caf%C3%A9?X-Amz-Signature=a%20b None x"


def test_max_idle_zero_keeps_no_connection(serve: Callable[..., Server]) -> None:
    server = serve(each_request(echo))
    pool = Pool(ssl.create_default_context(), timeout=WAIT, max_idle=0)
    try:
        for _ in range(3):
            assert get(pool, server, "/a").status_code == 200
        assert pool.idle() == 0
    finally:
        pool.close()


# -- stop -------------------------------------------------------------------------------------------------------


def test_stop_ends_a_connect_that_hangs_and_refuses_new_ones() -> None:
    """A host that never answers the SYN (here: a listener whose backlog is full) would hold a connect for the
    whole timeout; setting `stop` ends it at once, and the pool makes no connection after that."""
    listener = socket.create_server(("127.0.0.1", 0), backlog=0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(8):  # fill the accept queue: from here on, SYNs are dropped
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex(("127.0.0.1", port))
        fillers.append(s)
    stop = threading.Event()
    pool = Pool(ssl.create_default_context(), timeout=30, stop=stop)
    timer = threading.Timer(0.3, stop.set)
    timer.start()
    started = time.monotonic()
    try:
        with pytest.raises(Stopping):
            pool.request("GET", f"http://127.0.0.1:{port}/", [])
        assert time.monotonic() - started < 5  # not the 30 s connect timeout
        with pytest.raises(Stopping):
            pool.request("GET", f"http://127.0.0.1:{port}/", [])
    finally:
        timer.cancel()
        pool.close()
        for s in fillers:
            s.close()
        listener.close()
