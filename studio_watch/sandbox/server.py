"""A local Canvas Studio emulator over real HTTP, with fault injection (stdlib only).

It speaks the endpoints and status codes of shared/studio-api.md on a loopback port, streams upload
bodies without buffering them, and records what clients did (`media()`, `events()`, `violations()`), so the
client, the pipeline and end-to-end tests can be exercised against outages, resets, expired URLs, lost
responses, rate limits and expiring tokens. The state model lives in `sandbox_state.py`.

    with Sandbox(faults=Faults(reset_rate=0.5, seed=1)) as sb:
        ...  # talk to sb.api_url with "Authorization: Bearer sandbox-token"
        assert sb.wait_for(lambda: len(sb.completed()) == 1, timeout=5)
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import socketserver
import struct
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Sequence, TextIO
from urllib.parse import parse_qs, urlsplit

from studio_watch.sandbox import routes
from studio_watch.sandbox.routes import API_ROOT, APIDOCS_PATH, Request
from studio_watch.sandbox.state import (
    DEFAULT_COLLECTIONS,
    DEFAULT_OAUTH_CLIENTS,
    DEFAULT_USERS,
    FIXED_AUTH_CODE,
    KNOWN_ENDPOINTS,
    ApiError,
    Faults,
    SandboxState,
)

if TYPE_CHECKING:
    import ssl

    from studio_watch.sandbox.tls import TlsFiles

__all__ = ["Sandbox", "Faults", "add_sandbox_arguments", "sandbox_from_args", "serve_forever_until", "main"]

STATE_PATH = "/_sandbox/state"
UPLOAD_RE = re.compile(r"^/_upload/(?P<id>[^/]+)/(?P<token>[^/]+)$")
THUMB_RE = re.compile(r"^/_thumb/(?P<id>\d+)\.png$")
CHUNK = 1024 * 1024
MAX_API_BODY = 1024 * 1024


class _Dropped(Exception):
    """The connection is to be closed: on purpose, after a closing response, or because the client went away."""


@dataclass
class _Outcome:
    """What the event log records about one request; logged once, just before the response goes out."""

    path: str
    endpoint: str | None = None
    media_id: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    logged: bool = False


class _Server(ThreadingHTTPServer):
    """Threaded HTTP/1.1 server that knows the sandbox state, can play dead and can cut connections."""

    daemon_threads = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], state: SandboxState, tls: ssl.SSLContext | None = None) -> None:
        """Bind (IPv6 when the host has a colon) and remember the state; with `tls`, serve https."""
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.state = state
        self.tls = tls
        self.down = False
        self.stopping = threading.Event()
        self._conns: set[socket.socket] = set()
        self._conns_lock = threading.Lock()
        self.accepted = 0  # connections served since start: tests check that a client reuses one
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        """Bind without the reverse DNS lookup HTTPServer does."""
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = str(self.server_address[0]), int(self.server_address[1])

    def get_request(self) -> tuple[socket.socket, Any]:
        """Accept; with TLS, wrap the connection so the handshake happens on the handler's thread."""
        conn, address = super().get_request()
        if self.tls is not None:
            conn = self.tls.wrap_socket(conn, server_side=True, do_handshake_on_connect=False)
        return conn, address

    def verify_request(self, request: Any, client_address: Any) -> bool:
        """While down, accept and close at once."""
        return not self.down

    def process_request(self, request: Any, client_address: Any) -> None:
        """Track open connections so they can be cut."""
        with self._conns_lock:
            self._conns.add(request)
            self.accepted += 1
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        """Forget a finished connection."""
        with self._conns_lock:
            self._conns.discard(request)
        super().shutdown_request(request)

    def cut_connections(self) -> None:
        """Shut every open connection down (outage or stop)."""
        with self._conns_lock:
            conns = list(self._conns)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Stay quiet; real errors are recorded by the handler."""


class _Handler(BaseHTTPRequestHandler):
    """Routes one request: the unauthenticated upload PUT, the state page, or the API."""

    protocol_version = "HTTP/1.1"
    server_version = "StudioSandbox/1"
    timeout = 120
    disable_nagle_algorithm = True
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        """Stay quiet."""

    def handle_expect_100(self) -> bool:
        """Defer `100 Continue` until the request has been checked (`_continue`): a refused request is
        answered at once, and the client never sends a body that would only be drained."""
        self._expects_continue = True
        return True

    def _continue(self) -> None:
        """Tell a client waiting on `Expect: 100-continue` to send its body (once per request)."""
        if getattr(self, "_expects_continue", False):
            self._expects_continue = False
            self.send_response_only(100)
            self.end_headers()

    @property
    def state(self) -> SandboxState:
        """The sandbox state."""
        return self.server.state

    def _dispatch(self) -> None:
        """Handle one request and log it as an event."""
        split = urlsplit(self.path)
        path = re.sub("/{2,}", "/", split.path).rstrip("/") or "/"  # Swagger-built clients join base + "/path"
        query = {k: v[0] for k, v in parse_qs(split.query, keep_blank_values=True).items()}
        self._out = _Outcome(path, logged=path == STATE_PATH)  # the state page is not an event
        self._expects_continue = "100-continue" in self.headers.get("Expect", "").lower()
        try:
            if self.server.down:
                self._drop()
            elif path == STATE_PATH:
                self._read_small_body()
                self._send(200, self.state.state_json(), "application/json")
            elif path == APIDOCS_PATH and self.command == "GET":
                self._read_small_body()
                self._json(200, routes.swagger(self.state.base_url))
            elif THUMB_RE.match(path) and self.command == "GET":
                self._read_small_body()
                self._thumbnail(int(THUMB_RE.match(path)["id"]))  # type: ignore[index]
            elif self.command == "PUT" and UPLOAD_RE.match(path):
                self._put(path, query)
            else:
                self._api(path, query)
        except _Dropped:
            self.close_connection = True
        except OSError:  # the client went away (reset, timeout)
            self.close_connection = True
        except Exception:  # a sandbox bug: record it, answer 500 and close
            self.state.add_error(traceback.format_exc())
            with contextlib.suppress(OSError):
                self._json(500, {"error": "sandbox internal error"}, close=True)
        self._log(None)

    def _log(self, status: int | None) -> None:
        """Record this request as an event (once); status None means no response was sent."""
        out = self._out
        if not out.logged:
            out.logged = True
            self.state.record_event({"t": time.monotonic(), "method": self.command, "path": out.path,
                                     "status": status, "media_id": out.media_id, "endpoint": out.endpoint,
                                     **out.extra})

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _dispatch

    # ----- responses --------------------------------------------------------------------------

    def _send(self, status: int, body: bytes, ctype: str, headers: Mapping[str, str] | None = None,
              close: bool = False) -> None:
        """Log the event, then write a whole response, always with Content-Length."""
        self._log(status)
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, doc: Any, headers: Mapping[str, str] | None = None, close: bool = False) -> None:
        """Write a JSON response."""
        self._send(status, json.dumps(doc).encode(), "application/json", headers, close)

    def _reply(self, status: int, payload: Any, headers: Mapping[str, str] | None = None) -> None:
        """Write a route result: text, a redirect, or JSON."""
        if status == 302:
            self._send(302, b"", "text/plain", {"Location": str(payload), **(headers or {})})
        elif isinstance(payload, str):
            self._send(status, payload.encode(), "text/plain; charset=utf-8", headers)
        else:
            self._json(status, payload, headers)

    def _drop(self) -> None:
        """Close the connection abruptly (RST), without a response."""
        self._log(None)
        self.close_connection = True
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        raise _Dropped()

    # ----- bodies -----------------------------------------------------------------------------

    def _content_length(self) -> int | None:
        """The declared body length; None when chunked or absent. Invalid values raise _Dropped after a 400."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return None
        raw = self.headers.get("Content-Length")
        if raw is None:
            return None
        if not raw.strip().isdigit():
            self._json(400, {"error": "invalid Content-Length"}, close=True)
            raise _Dropped()
        return int(raw)

    def _read_small_body(self) -> bytes:
        """Read an API request body (at most 1 MiB; chunked bodies are refused and the connection closed)."""
        chunked = "chunked" in self.headers.get("Transfer-Encoding", "").lower()
        length = None if chunked else self._content_length()
        if chunked or (length or 0) > MAX_API_BODY:
            status = 411 if chunked else 413
            self._json(status, {"error": "body must have a Content-Length of at most 1 MiB"}, close=True)
            raise _Dropped()
        if not length:
            return b""
        self._continue()
        return self.rfile.read(length)

    def _drain(self, length: int) -> None:
        """Read and discard `length` bytes."""
        self._receive(length, throttle=False)

    def _receive(self, length: int, throttle: bool) -> tuple[int, str]:
        """Stream `length` bytes through a 1 MiB buffer into sha256; raise _Dropped if the client goes away."""
        buf = bytearray(CHUNK)
        view = memoryview(buf)
        digest = hashlib.sha256()
        pacer = _Pacer(lambda: self.state.faults.put_bytes_per_second if throttle else 0, self.server.stopping)
        got = 0
        while got < length:
            want = min(length - got, CHUNK, pacer.chunk())
            n = self.rfile.readinto(view[:want])
            if not n:
                self.close_connection = True
                raise _Dropped()
            digest.update(view[:n])
            got += n
            pacer.pace(n)
        return got, digest.hexdigest()

    # ----- the upload PUT ---------------------------------------------------------------------

    def _put(self, path: str, query: Mapping[str, str]) -> None:
        """PUT /_upload/<id>/<token>?signature=: no auth, Content-Length required, single use."""
        self._out.endpoint = "put"
        match = UPLOAD_RE.match(path)
        assert match is not None
        media_id = match["id"]
        self._out.media_id = int(media_id) if media_id.isdigit() else None
        length = self._content_length()
        if length is None:
            self.state.add_violation(f"put without content-length: media {media_id}")
            self._json(411, {"error": "Content-Length required"}, close=True)
            return
        if self.headers.get("Authorization") is not None:
            self.state.add_violation(f"put with authorization header: media {media_id}")
            self._refuse(length, 400, "Authorization header not allowed on upload URL")
            return
        if length > self.state.faults.max_upload_bytes:
            self._json(413, {"error": "file too large"}, close=True)
            return
        if self._echoed("put", length):
            return
        fault = self.state.fault_for("put")
        if fault is not None:
            self._out.extra["fault"] = "injected"
            self._refuse(length, fault[0], "injected fault", fault[1])
            return
        try:
            url = self.state.begin_put(media_id, match["token"], query.get("signature", ""))
        except ApiError as err:
            self._refuse(length, err.status, err.error, err.headers)
            return
        self._continue()
        if self.state.roll(self.state.faults.reset_rate):
            self._out.extra["fault"] = "reset"
            self._receive(max(1, length // 2) if length else 0, throttle=True)
            self._drop()
        size, sha = self._receive(length, throttle=True)
        try:
            self.state.finish_put(url, size, sha)
        except ApiError as err:
            self._json(err.status, {"error": err.error})
            return
        self._send(200, b"", "text/plain", {"ETag": f'"{sha[:32]}"'})

    def _echoed(self, endpoint: str, length: int) -> bool:
        """Faults.echo_status: answer with an error document that repeats the request (signed query, headers)."""
        faults = self.state.faults
        if not faults.echo_status or endpoint not in faults.error_endpoints:
            return False
        self._out.extra["fault"] = "echo"
        self._drain(length)
        body = (f"<Error><Code>InvalidRequest</Code><RequestURI>{self.path}</RequestURI>"
                f"<Authorization>{self.headers.get('Authorization', '')}</Authorization></Error>")
        self._send(faults.echo_status, body.encode(), "application/xml")
        return True

    def _refuse(self, length: int, status: int, error: str,
                headers: Mapping[str, str] | None = None) -> None:
        """Answer an error to an upload: drain the body first (keeps HTTP/1.1 framing valid), unless the
        client is still waiting for `100 Continue`: then it sends no body, and the connection closes."""
        if self._expects_continue:
            self._expects_continue = False
            self._json(status, {"error": error}, headers, close=True)
            return
        self._drain(length)
        self._json(status, {"error": error}, headers)

    # ----- the API ----------------------------------------------------------------------------

    def _api(self, path: str, query: dict[str, str]) -> None:
        """Route, authenticate, inject faults, do the work, answer."""
        body = self._read_small_body()
        found = routes.match(self.command, path)
        if found is None:
            self._json(404, {"error": f"no route for {self.command} {path}"})
            return
        route, groups = found
        endpoint = route.endpoint
        self._out.endpoint = endpoint
        self._out.media_id = _media_id(groups.get("media_id"))
        latency = self.state.faults.latency_seconds
        if latency > 0:
            self.server.stopping.wait(latency)
        if self._echoed(endpoint, 0):
            return
        if endpoint != "oauth" and not self.state.authorize_bearer(self._bearer()):
            self._json(401, {"error": "authorization missing or invalid"}, {"WWW-Authenticate": "Bearer"})
            return
        fault = self.state.fault_for(endpoint)
        if fault is not None:
            self._out.extra["fault"] = "injected"
            self._json(fault[0], {"error": "injected fault"}, fault[1])
            return
        try:
            status, payload = route.handler(self.state, Request(groups, query, body, self._basic()))
        except ApiError as err:
            self._json(err.status, {"error": err.error}, err.headers)
            return
        self._out.media_id = _media_id_of(payload) or self._out.media_id
        if endpoint == "complete" and self.state.roll(self.state.faults.lose_complete_rate):
            self._out.extra["fault"] = "lost_response"
            self._drop()
        self._reply(status, payload)

    def _thumbnail(self, media_id: int) -> None:
        """GET /_thumb/<id>.png: the thumbnail a transcoded media's thumbnail_url points at (no auth, as a CDN)."""
        image = self.state.thumbnail(media_id)
        if image is None:
            self._json(404, {"error": f"no thumbnail for media {media_id}"})
        else:
            self._send(200, image, "image/png")

    def _bearer(self) -> str | None:
        """The bearer token of the Authorization header, if any."""
        scheme, _, token = self.headers.get("Authorization", "").partition(" ")
        return token.strip() if scheme.lower() == "bearer" and token.strip() else None

    def _basic(self) -> tuple[str, str] | None:
        """HTTP Basic client credentials, if sent (OAuth clients may use them instead of form fields)."""
        scheme, _, value = self.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            user, _, password = base64.b64decode(value.strip()).decode().partition(":")
        except ValueError:
            return None
        return user, password


def _media_id(text: str | None) -> int | None:
    """An integer path segment, or None."""
    return int(text) if text and text.isdigit() else None


def _media_id_of(payload: Any) -> int | None:
    """The media id carried by a generate/import/complete payload."""
    if isinstance(payload, dict):
        for key in ("upload", "media"):
            inner = payload.get(key)
            media_id = inner.get("id") if isinstance(inner, dict) else None
            if isinstance(media_id, int):
                return media_id
    return None


class _Pacer:
    """Token bucket for PUT reads: after each chunk, wait until the bytes so far fit the rate."""

    def __init__(self, rate: Callable[[], int], stop: threading.Event) -> None:
        """Read the (live) rate through `rate`; waits end early when `stop` is set."""
        self._rate = rate
        self._stop = stop
        self._due = time.monotonic()

    def chunk(self) -> int:
        """How much to read next: about 1/20 s worth when throttled."""
        rate = self._rate()
        return max(1024, rate // 20) if rate > 0 else CHUNK

    def pace(self, n: int) -> None:
        """Account for n bytes and wait if ahead of schedule."""
        rate = self._rate()
        now = time.monotonic()
        if rate <= 0:
            self._due = now
            return
        self._due = max(self._due, now - 0.05) + n / rate
        if self._due > now:
            self._stop.wait(self._due - now)


class Sandbox:
    """The emulator: bind in the constructor, serve in a background thread between start() and stop()."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        faults: Faults | None = None,
        tokens: Iterable[str] = ("sandbox-token",),
        collections: Mapping[int, str] | None = None,
        users: Mapping[int, str] | None = None,
        oauth_clients: Mapping[str, str] | None = None,
        tls: bool = False,
        tls_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        """Collections and users given here are added to the defaults; OAuth clients replace them.

        With `tls`, serve https with a certificate signed by a private CA written to `tls_dir` (default: a
        new temporary folder, removed by stop()); `ca_path` is the file clients verify against."""
        self._state = SandboxState(
            faults or Faults(),
            tokens,
            {**DEFAULT_COLLECTIONS, **(collections or {})},
            {**DEFAULT_USERS, **(users or {})},
            dict(oauth_clients) if oauth_clients is not None else dict(DEFAULT_OAUTH_CLIENTS),
        )
        self.host = host
        self.tls_files: TlsFiles | None = None
        self._own_tls_dir: str | None = None
        if tls:
            from studio_watch.sandbox.tls import make_certificates  # only --tls needs cryptography (an extra)

            if tls_dir is None:
                tls_dir = self._own_tls_dir = tempfile.mkdtemp(prefix="studio-sandbox-tls-")
            self.tls_files = make_certificates(Path(tls_dir), [host])
        context = self.tls_files.server_context() if self.tls_files else None
        self._server = _Server((host, port), self._state, context)
        self._state.base_url = self.url
        self._thread: threading.Thread | None = None
        self._stopped = False

    @property
    def port(self) -> int:
        """The bound port."""
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        """The Studio host URL, e.g. http://127.0.0.1:8765 (https:// with TLS)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.tls_files else 'http'}://{host}:{self.port}"

    def describe(self) -> list[str]:
        """Lines saying what a client needs: API root, tokens, the OAuth client, users and collections."""
        return built_in(self.url, self.tokens, self._state.users, self._state.collections)

    @property
    def ca_path(self) -> Path | None:
        """The CA certificate that signs the sandbox's https certificate (None without TLS)."""
        return self.tls_files.ca if self.tls_files else None

    @property
    def connections_accepted(self) -> int:
        """How many TCP connections clients have opened to the emulator so far."""
        return self._server.accepted

    @property
    def api_url(self) -> str:
        """The API root: url + /api/public/v1."""
        return self.url + API_ROOT

    @property
    def tokens(self) -> tuple[str, ...]:
        """The static bearer tokens accepted on the API."""
        return tuple(sorted(self._state.static_tokens))

    @property
    def faults(self) -> Faults:
        """The live Faults object (mutate its fields, or assign a new one)."""
        return self._state.faults

    @faults.setter
    def faults(self, faults: Faults) -> None:
        """Replace the faults (reseeds the generator)."""
        self._state.faults = faults

    def start(self) -> Sandbox:
        """Serve in a daemon thread; returns self."""
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                name=f"studio-sandbox-{self.port}", daemon=True,
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, cut open connections and close the socket (idempotent)."""
        if self._stopped:
            return
        self._stopped = True
        self._server.stopping.set()
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join()
        self._server.cut_connections()
        self._server.server_close()
        if self._own_tls_dir:
            shutil.rmtree(self._own_tls_dir, ignore_errors=True)

    def __enter__(self) -> Sandbox:
        """Start and return self."""
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        """Stop."""
        self.stop()

    def set_down(self, down: bool) -> None:
        """Simulate an outage: connections are accepted and closed without a response; open ones are cut."""
        self._server.down = down
        if down:
            self._server.cut_connections()

    def media(self) -> list[dict[str, Any]]:
        """Snapshot of all media (public object plus internal fields)."""
        return self._state.media()

    def completed(self) -> list[dict[str, Any]]:
        """Media whose state is completed."""
        return [m for m in self.media() if m["state"] == "completed"]

    def events(self) -> list[dict[str, Any]]:
        """One dict per request: t, method, path, status (None: no response), media_id, endpoint, [fault]."""
        return self._state.events()

    def violations(self) -> list[str]:
        """Protocol violations seen so far."""
        return self._state.violations()

    def errors(self) -> list[str]:
        """Tracebacks of sandbox bugs (answered 500); empty in a healthy run."""
        return self._state.errors()

    def wait_for(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Wait until predicate() holds (re-checked on every state change); False on timeout."""
        return self._state.wait_for(predicate, timeout)

    def issue_auth_code(self) -> str:
        """A new single-use OAuth authorization code."""
        return self._state.issue_auth_code()

    def expire_access_tokens(self) -> None:
        """Expire every issued OAuth access token now."""
        self._state.expire_access_tokens()


# ----- command line hooks ---------------------------------------------------------------------


def _id_name(text: str) -> tuple[int, str]:
    """argparse type for ID=NAME."""
    key, sep, name = text.partition("=")
    if not sep or not key.strip().isdigit() or not name.strip():
        raise argparse.ArgumentTypeError(f"expected ID=NAME, got {text!r}")
    return int(key), name.strip()


def _endpoints(text: str) -> frozenset[str]:
    """argparse type for a comma list of endpoint names."""
    names = frozenset(n.strip() for n in text.split(",") if n.strip())
    unknown = names - KNOWN_ENDPOINTS
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown endpoints {sorted(unknown)}; known: {sorted(KNOWN_ENDPOINTS)}")
    return names


FAULT_FLAGS: list[tuple[str, str, Callable[[str], Any] | None, str]] = [
    # (flag, Faults field, type (None: a switch), help)
    ("--error-rate", "error_rate", float, "fraction of requests answered 500/502/503/504"),
    ("--error-endpoints", "error_endpoints", _endpoints,
     "comma list of endpoints errors and 429s apply to ('oauth' may be added)"),
    ("--rate-limit-rate", "rate_limit_rate", float, "fraction of requests answered 429"),
    ("--retry-after", "retry_after", str, "Retry-After value sent with 429 (seconds or an HTTP date)"),
    ("--reset-rate", "reset_rate", float, "fraction of PUTs cut off mid-body (connection reset, no response)"),
    ("--expire-first-put", "expire_first_put", None,
     "answer the first PUT to an upload URL 410 and kill the URL (the next URL issued is spared)"),
    ("--url-ttl", "url_ttl_seconds", float, "upload URL lifetime in seconds"),
    ("--lose-complete-rate", "lose_complete_rate", float,
     "fraction of completes processed but answered by closing the connection"),
    ("--captions-disabled", "captions_disabled", None, "answer 501 when auto_caption is requested"),
    ("--put-bytes-per-second", "put_bytes_per_second", int, "throttle PUT bodies (0 = unlimited)"),
    ("--latency", "latency_seconds", float, "seconds added before every API response"),
    ("--token-ttl", "token_ttl_seconds", float, "OAuth access token lifetime in seconds"),
    ("--token-ttl-calls", "token_ttl_calls", int, "issued access tokens answer 401 after N calls (0 = no limit)"),
    ("--transcode-seconds", "transcode_seconds", float, "seconds a completed media stays 'processing'"),
    ("--transcode-fail", "transcode_fail", None, "transcoding ends 'failed' instead of 'completed'"),
    ("--max-upload-bytes", "max_upload_bytes", int, "PUTs with a larger Content-Length get 413"),
    ("--seed", "seed", int, "seed of the fault generator"),
]


def built_in(base_url: str = "http://127.0.0.1:8765", tokens: Sequence[str] = ("sandbox-token",),
             users: Mapping[int, str] = DEFAULT_USERS, collections: Mapping[int, str] = DEFAULT_COLLECTIONS) -> list[str]:
    """What a client needs to talk to a sandbox at `base_url`: token, OAuth client, users, collections."""
    client, secret = next(iter(DEFAULT_OAUTH_CLIENTS.items()))
    return [
        f"API root:      {base_url}{API_ROOT}  (Swagger 2.0 document: {base_url}{APIDOCS_PATH})",
        f"bearer token:  {', '.join(tokens)}  (more with --token)",
        f"OAuth client:  client_id {client}, client_secret {secret}; authorization code {FIXED_AUTH_CODE} "
        "(always accepted)",
        f"               {base_url}{routes.OAUTH_ROOT}/authorize and /token; refresh tokens rotate",
        "users:         " + ", ".join(f"{uid} {name}" for uid, name in users.items()) + "  (more with --user)",
        "collections:   " + ", ".join(f"{cid} {name}" for cid, name in collections.items())
        + "  (more with --collection)",
    ]


SANDBOX_EPILOG = """Built in (the same every time, so scripts can rely on them):
  {lines}

Media are kept in memory only, until the sandbox stops. With --tls it serves https with a certificate signed
by a private CA made at start; the CA's path is printed (give it to clients: studio.ca_bundle, curl --cacert).

Example, in one terminal:   studio-watch sandbox --port 8765 --latency 0.05
and in another:             curl -H 'Authorization: Bearer sandbox-token' http://127.0.0.1:8765/api/public/v1/ping
"""


def add_sandbox_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the sandbox's options (address, tokens, data, TLS, one flag per fault) and its help text to a parser."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = SANDBOX_EPILOG.format(lines="\n  ".join(built_in()))
    a = parser.add_argument
    a("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    a("--port", type=int, default=8765, help="port to listen on; 0 picks a free one (default 8765)")
    a("--token", action="append", metavar="TOKEN", help="accepted bearer token, repeatable (default sandbox-token)")
    a("--collection", action="append", type=_id_name, metavar="ID=NAME", help="add a collection, repeatable")
    a("--user", action="append", type=_id_name, metavar="ID=NAME", help="add a user, repeatable")
    a("--forbidden-collection", action="append", type=int, metavar="ID", help="collection answering 403, repeatable")
    a("--tls", action="store_true", help="serve https, with a certificate from a private CA made at start")
    a("--tls-dir", metavar="DIR", help="with --tls: write ca.pem, server.pem and server.key here and keep them "
                                       "(default: a temporary folder, removed at exit)")
    defaults = Faults()
    for flag, name, kind, text in FAULT_FLAGS:
        if kind is None:
            a(flag, dest=name, action="store_true", help=text)
        else:
            default = getattr(defaults, name)
            shown = ",".join(sorted(default)) if isinstance(default, frozenset) else default
            metavar = {float: "X", int: "N", str: "VALUE"}.get(kind, "LIST")  # type: ignore[call-overload]
            a(flag, dest=name, type=kind, default=default, metavar=metavar, help=f"{text} (default {shown})")


def faults_from_args(args: argparse.Namespace) -> Faults:
    """The Faults described by parsed sandbox arguments."""
    values = {name: getattr(args, name) for _, name, _, _ in FAULT_FLAGS}
    return Faults(**values, forbidden_collections=frozenset(args.forbidden_collection or ()))


def sandbox_from_args(args: argparse.Namespace) -> Sandbox:
    """Build (and bind, not start) a Sandbox from parsed sandbox arguments."""
    return Sandbox(
        host=args.host, port=args.port, faults=faults_from_args(args),
        tokens=tuple(args.token or ("sandbox-token",)),
        collections=dict(args.collection or ()), users=dict(args.user or ()),
        tls=args.tls or bool(args.tls_dir), tls_dir=args.tls_dir,
    )


def serve_forever_until(sandbox: Sandbox, stop: threading.Event, out: TextIO) -> None:
    """Start the sandbox, print where it listens, block until `stop` is set, then stop it."""
    sandbox.start()
    try:
        lines = [f"sandbox listening on {sandbox.url} (token: {sandbox.tokens[0]})", *sandbox.describe()]
        if sandbox.ca_path:
            lines.append(f"CA certificate: {sandbox.ca_path}  (studio.ca_bundle, curl --cacert)")
        print("\n  ".join(lines), file=out, flush=True)
        stop.wait()
    finally:
        sandbox.stop()


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m studio_watch.sandbox [flags]`: serve until SIGINT/SIGTERM."""
    parser = argparse.ArgumentParser(prog="studio_watch.sandbox", description="Local Canvas Studio emulator")
    add_sandbox_arguments(parser)
    args = parser.parse_args(argv)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    serve_forever_until(sandbox_from_args(args), stop, sys.stdout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
