"""All of the program's HTTP: httpcore (httpx's transport) over `netio`, with proxies chosen per request.

One stack for everything (the API, upload URLs, the OAuth token endpoint, alert webhooks, `check`, `health`,
fetched calendars): `Pool.request` for the Studio client's raw requests, `Pool.httpx()` for callers that want
httpx's conveniences (forms, JSON), both through the same connections, proxies and TLS. httpcore does the
protocol (keep-alive, liveness of idle connections, CONNECT tunnels, an https:// proxy's own TLS, informational
answers, an early answer to a body it could not finish sending); `netio` does the sockets (a stop interrupts them)
and TLS (one `sendall` per encrypted MiB). Why not plain httpx or the former http.client pool:
docs/decisions/http-stack.md.

Failures map onto `errors.py`: no connection → Unreachable, naming the proxy when it was the proxy that could not
be reached; anything after the connection → TransientError; any failure once the pool is interrupted → Stopping.
"""

from __future__ import annotations

import functools
import json
import ssl
import threading
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Sequence
from urllib.parse import quote, urlsplit

import httpcore

from httpcore._sync.interfaces import RequestInterface  # public as the base of ConnectionPool; not re-exported

from studio_watch.logs import get_logger
from studio_watch.errors import Stopping, TransientError, Unreachable
from studio_watch.studio import netio
from studio_watch.studio.proxies import Proxies, Proxy, ProxyUnusable

log = get_logger(__name__)

MAX_IDLE = 16  # kept-alive connections per route (direct, or one proxy); more are closed when handed back
TARGET_SAFE = "/?#[]@!$&'()*+,;=:%~"  # what may stay as it is in a request target; anything else is %-encoded
STOP_POLL = 5.0  # how often the stop watcher notices a closed pool (a stop itself is noticed at once)


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
    """Keep-alive connections for every route (direct, or through a proxy); thread-safe.

    `tls` is the context for https, or what makes it when the first https connection needs it (loading a CA
    bundle takes ~40 ms: a daemon talking plain http to a local stand-in never pays it). When `stop` is set,
    every request in flight fails at once with Stopping, and so does every later one.
    """

    def __init__(self, tls: ssl.SSLContext | Callable[[], ssl.SSLContext], timeout: float,
                 max_idle: int = MAX_IDLE, proxies: Proxies | None = None,
                 stop: threading.Event | None = None) -> None:
        self._tls, self.timeout, self.max_idle = tls, timeout, max_idle
        self.proxies = proxies if proxies is not None else Proxies(None, {})
        self.backend = netio.Backend()
        netio.tune_allocator()
        self._routes: dict[tuple[str | None, bool], httpcore.ConnectionInterface] = {}
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self.router = _Router(self)
        if stop is not None:
            threading.Thread(target=self._watch, args=(stop,), name="http-stop", daemon=True).start()

    # -- requests ---------------------------------------------------------------------------------------------

    def request(self, method: str, url: str, headers: Sequence[tuple[str, str]], body: Any = b"") -> Reply:
        """Send one request and read its whole answer.

        `body` is bytes, or an iterable of buffers sent one by one as they come (a streamed upload: the caller
        sets Content-Length, and may reuse one buffer, since each is sent before the next is asked for).
        Exceptions raised by the iterable propagate, and the half-sent connection is closed.
        """
        parts = urlsplit(url)
        scheme, host = parts.scheme.lower(), parts.hostname
        netloc = parts.netloc.rpartition("@")[2]  # never user:password
        origin = f"{scheme}://{netloc}"
        if scheme not in ("http", "https") or not host:
            raise Unreachable(f"cannot reach {origin}: not an http(s) URL")
        try:
            port = parts.port or (443 if scheme == "https" else 80)
        except ValueError:
            raise Unreachable(f"cannot reach {origin}: bad port") from None
        # Spaces, control characters and non-ASCII would be refused by h11: percent-encoded, as a browser would.
        target = quote((parts.path or "/") + (f"?{parts.query}" if parts.query else ""), safe=TARGET_SAFE)
        content: Any = bytes(body) if isinstance(body, (bytes, bytearray, memoryview)) else _Counted(body)
        try:
            response = self.router.request(
                method.encode(), httpcore.URL(scheme=scheme.encode(), host=host.encode("idna"), port=port,
                                              target=target.encode()),
                headers=[(b"Host", netloc.encode("idna")), *((k.encode(), v.encode()) for k, v in headers)],
                content=content, extensions={"timeout": self._timeouts()})
        except httpcore.TimeoutException as exc:
            self._failed(exc, method, origin)
            if isinstance(exc, httpcore.ConnectTimeout):
                raise Unreachable(self._unreachable(exc, origin)) from None
            raise TransientError("timed out") from None
        except (httpcore.ConnectError, httpcore.ProxyError) as exc:
            self._failed(exc, method, origin)
            raise Unreachable(self._unreachable(exc, origin)) from None
        except (httpcore.NetworkError, httpcore.ProtocolError) as exc:
            self._failed(exc, method, origin)
            raise TransientError(reason(exc)) from None
        except BaseException:
            if self.backend.interrupted:
                raise Stopping("stopping") from None
            raise
        if isinstance(content, _Counted) and not content.done and 200 <= response.status < 300:
            raise TransientError(f"HTTP {response.status} before the whole body was sent")
        log.debug("http_request", method=method, origin=origin, status=response.status)
        return Reply(response.status, {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in response.headers},
                     response.content)

    def httpx(self, timeout: float | None = None, owned: bool = False) -> Any:
        """An httpx.Client over this pool's routes (same proxies, TLS and stop); the caller closes it, and with
        `owned` closing it closes the pool."""
        import httpx  # here: only the token endpoint, webhooks and fetches use it, and most commands do not

        return httpx.Client(transport=_httpx_transport()(self, owned), trust_env=False,
                            timeout=self.timeout if timeout is None else timeout)

    def idle(self) -> int:
        """Kept-alive connections waiting for a request, across routes."""
        with self._lock:
            routes = list(self._routes.values())
        return sum(1 for route in routes for conn in route.connections if conn.is_idle())

    def describe(self, url: str) -> str:
        """How a request to `url` would go: 'directly' or 'through proxy URL (from SOURCE)'."""
        return self.proxies.describe(url)

    def interrupt(self) -> None:
        """Fail every request in flight now, and every later one (the program is stopping)."""
        self.backend.interrupt()

    def close(self) -> None:
        """Close every connection; a request still in flight fails at once with Stopping."""
        self._closed.set()
        self.backend.interrupt()
        with self._lock:
            routes, self._routes = list(self._routes.values()), {}
        for route in routes:
            route.close()

    # -- internals --------------------------------------------------------------------------------------------

    def _timeouts(self) -> dict[str, float]:
        return {"connect": self.timeout, "read": self.timeout, "write": self.timeout, "pool": self.timeout}

    def _failed(self, exc: BaseException, method: str, origin: str) -> None:
        if self.backend.interrupted:
            raise Stopping("stopping") from None
        log.debug("http_failed", method=method, origin=origin, error=reason(exc))

    def _unreachable(self, exc: BaseException, origin: str) -> str:
        """Whom we could not reach: the proxy (by its URL, never its credentials) or the host."""
        proxy: Proxy | None = getattr(exc, "proxy", None)
        if isinstance(exc, httpcore.ProxyError):
            return f"cannot reach {origin}: proxy {proxy} refused the tunnel: {exc}"
        where, tls = getattr(exc, "where", None), getattr(exc, "tls", False)
        why = ("TLS: " if tls else "") + (getattr(exc, "why", None) or reason(exc))
        if proxy is not None and where in (proxy.address, proxy.host):
            return f"cannot reach proxy {proxy}: {why}"
        via = f" through proxy {proxy}" if proxy is not None else ""
        return f"cannot reach {origin}{via}: {why}"

    def _tls_context(self) -> ssl.SSLContext:
        with self._lock:
            if not isinstance(self._tls, ssl.SSLContext):
                self._tls = self._tls()
            return self._tls

    def route(self, proxy: Proxy | None, https: bool) -> httpcore.ConnectionInterface:
        """The connection pool for requests through `proxy` (None: direct), made when first needed."""
        key = (proxy.url if proxy else None, https)
        with self._lock:
            found = self._routes.get(key)
        if found is not None:
            return found
        needs_tls = https or (proxy is not None and proxy.url.startswith("https:"))
        context = self._tls_context() if needs_tls else None
        common: dict[str, Any] = {"ssl_context": context, "max_keepalive_connections": self.max_idle,
                                  "network_backend": self.backend}
        made: httpcore.ConnectionInterface
        if proxy is None:
            made = httpcore.ConnectionPool(**common)
        else:
            proxy_tls = context if proxy.url.startswith("https:") else None  # httpcore refuses one for http://
            made = httpcore.HTTPProxy(proxy_url=proxy.url, proxy_auth=proxy.auth, proxy_ssl_context=proxy_tls,
                                      **common)
        with self._lock:
            if self._closed.is_set():
                made.close()
                raise Unreachable("the HTTP pool is closed")
            return self._routes.setdefault(key, made)

    def _watch(self, stop: threading.Event) -> None:
        while not self._closed.is_set():
            if stop.wait(STOP_POLL):
                self.interrupt()
                return


class _Router(RequestInterface):
    """httpcore's request interface over the pool's routes: each request goes where `Proxies` says."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool

    def handle_request(self, request: httpcore.Request) -> httpcore.Response:
        scheme, host = request.url.scheme.decode(), request.url.host.decode()
        try:
            proxy = self.pool.proxies.for_url(scheme, host)
        except ProxyUnusable as exc:
            raise httpcore.ConnectError(f"cannot use the proxy {exc}") from None
        route = self.pool.route(proxy, scheme == "https")
        try:
            return route.handle_request(request)
        except (httpcore.ConnectError, httpcore.ConnectTimeout, httpcore.ProxyError) as exc:
            exc.proxy = proxy  # type: ignore[attr-defined]
            raise


@functools.cache
def _httpx_transport() -> type:
    """httpx's own transport class (its request/response and error mapping) over a pool's router; made at first
    use, since importing httpx costs every command ~40 ms."""
    import httpx  # start-up cost: only callers that want httpx's face (the token endpoint)

    class HttpxTransport(httpx.HTTPTransport):
        def __init__(self, pool: Pool, owned: bool) -> None:  # not super().__init__: it would make its own pool
            self._pool, self._owner, self._owned = pool.router, pool, owned

        def __enter__(self) -> HttpxTransport:
            return self

        def __exit__(self, *exc_info: Any) -> None:
            self.close()

        def close(self) -> None:
            if self._owned:
                self._owner.close()

    return HttpxTransport


class _Counted:
    """A streamed body that knows whether all of it was taken (httpcore asks for the next buffer only after it
    sent the previous one, so 'exhausted' means 'sent'); a success answered before that is not a success."""

    def __init__(self, body: Iterable[Any]) -> None:
        self.body, self.done = body, False

    def __iter__(self) -> Iterator[Any]:
        yield from self.body
        self.done = True


def post(pool: Pool, url: str, body: bytes, content_type: str) -> Reply:
    """POST `body` to `url` through the pool (a webhook): its answer, whatever the status."""
    return pool.request("POST", url, [("Content-Type", content_type), ("Content-Length", str(len(body)))], body)


def reason(exc: BaseException) -> str:
    """A transport exception's message without any URL in it."""
    if isinstance(exc, (TimeoutError, httpcore.TimeoutException)):
        return "timed out"
    text = str(exc) or type(exc).__name__
    return text.split(" for url ")[0]
