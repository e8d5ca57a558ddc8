"""One HTTP request to the sandbox (stdlib only): `RequestHandler` reads it, routes it (the upload PUT, the
thumbnail, the state page, the Swagger document, the API through `routes.py`), lets the faults strike on the
wire (resets, lost responses, throttled bodies, latency, echoed errors), answers, and logs it as an event.

Upload bodies are streamed through a 1 MiB buffer into sha256, never held whole; `100 Continue` is sent only
once a request has passed its checks.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import re
import socket
import struct
import threading
import time
import traceback
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any, Mapping, Protocol
from urllib.parse import parse_qs, urlsplit

from studio_watch.sandbox import routes
from studio_watch.sandbox.api import ApiError
from studio_watch.sandbox.faults import Faults, Throttle
from studio_watch.sandbox.routes import APIDOCS_PATH, Request
from studio_watch.sandbox.state import SandboxState

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


class Serving(Protocol):
    """What a handler reads of the server it runs under (server.py's SandboxServer, which imports this module)."""

    state: SandboxState
    down: bool  # playing dead: every request is dropped
    stopping: threading.Event  # set by Sandbox.stop(): latency and throttling waits end early


class RequestHandler(BaseHTTPRequestHandler):
    """Routes one request: the unauthenticated upload PUT, the state page, or the API."""

    protocol_version = "HTTP/1.1"
    server_version = "StudioSandbox/1"
    timeout = 120
    disable_nagle_algorithm = True
    server: Serving  # type: ignore[assignment]  # the base class says BaseServer; this is what is read of it

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

    @property
    def faults(self) -> Faults:
        """The live faults."""
        return self.state.injector.faults

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
            self.state.journal.add_error(traceback.format_exc())
            with contextlib.suppress(OSError):
                self._json(500, {"error": "sandbox internal error"}, close=True)
        self._log(None)

    def _log(self, status: int | None) -> None:
        """Record this request as an event (once); status None means no response was sent."""
        out = self._out
        if not out.logged:
            out.logged = True
            self.state.journal.record_event({"t": time.monotonic(), "method": self.command, "path": out.path,
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
        pacer = Throttle(lambda: self.faults.put_bytes_per_second if throttle else 0, self.server.stopping)
        got = 0
        while got < length:
            want = min(length - got, pacer.chunk(CHUNK))
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
            self.state.journal.add_violation(f"put without content-length: media {media_id}")
            self._json(411, {"error": "Content-Length required"}, close=True)
            return
        if self.headers.get("Authorization") is not None:
            self.state.journal.add_violation(f"put with authorization header: media {media_id}")
            self._refuse(length, 400, "Authorization header not allowed on upload URL")
            return
        if length > self.faults.max_upload_bytes:
            self._json(413, {"error": "file too large"}, close=True)
            return
        if self._echoed("put", length):
            return
        fault = self.state.injector.fault_for("put")
        if fault is not None:
            self._out.extra["fault"] = "injected"
            self._refuse(length, fault[0], "injected fault", fault[1])
            return
        try:
            url = self.state.media.begin_put(media_id, match["token"], query.get("signature", ""))
        except ApiError as err:
            self._refuse(length, err.status, err.error, err.headers)
            return
        self._continue()
        if self.state.injector.roll(self.faults.reset_rate):
            self._out.extra["fault"] = "reset"
            self._receive(max(1, length // 2) if length else 0, throttle=True)
            self._drop()
        size, sha = self._receive(length, throttle=True)
        try:
            self.state.media.finish_put(url, size, sha)
        except ApiError as err:
            self._json(err.status, {"error": err.error})
            return
        self._send(200, b"", "text/plain", {"ETag": f'"{sha[:32]}"'})

    def _echoed(self, endpoint: str, length: int) -> bool:
        """Faults.echo_status: answer with an error document that repeats the request (signed query, headers)."""
        faults = self.faults
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
        latency = self.faults.latency_seconds
        if latency > 0:
            self.server.stopping.wait(latency)
        if self._echoed(endpoint, 0):
            return
        if endpoint != "oauth" and not self.state.oauth.authorize_bearer(self._bearer()):
            self._json(401, {"error": "authorization missing or invalid"}, {"WWW-Authenticate": "Bearer"})
            return
        fault = self.state.injector.fault_for(endpoint)
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
        if endpoint == "complete" and self.state.injector.roll(self.faults.lose_complete_rate):
            self._out.extra["fault"] = "lost_response"
            self._drop()
        self._reply(status, payload)

    def _thumbnail(self, media_id: int) -> None:
        """GET /_thumb/<id>.png: the thumbnail a transcoded media's thumbnail_url points at (no auth, as a CDN)."""
        image = self.state.media.thumbnail(media_id)
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
