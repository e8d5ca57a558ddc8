"""A local Canvas Studio emulator over real HTTP, with fault injection (stdlib only): `Sandbox`, its lifecycle
(bind, serve in a thread, play dead, stop) and what it recorded, over the threaded server that can cut
connections.

It speaks the endpoints and status codes of shared/studio-api.md on a loopback port, streams upload
bodies without buffering them, and records what clients did (`media()`, `events()`, `violations()`), so the
client, the pipeline and end-to-end tests can be exercised against outages, resets, expired URLs, lost
responses, rate limits and expiring tokens. One request is answered in `handler.py`, the state lives in
`state.py`, the command line (`studio-watch sandbox`) is `command.py`.

    with Sandbox(faults=Faults(reset_rate=0.5, seed=1)) as sb:
        ...  # talk to sb.api_url with "Authorization: Bearer sandbox-token"
        assert sb.wait_for(lambda: len(sb.completed()) == 1, timeout=5)
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import socketserver
import tempfile
import threading
from http.server import ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Sequence

from studio_watch.sandbox import routes
from studio_watch.sandbox.faults import Faults
from studio_watch.sandbox.handler import RequestHandler
from studio_watch.sandbox.media import DEFAULT_COLLECTIONS, DEFAULT_USERS
from studio_watch.sandbox.oauth import DEFAULT_OAUTH_CLIENTS, FIXED_AUTH_CODE
from studio_watch.sandbox.routes import API_ROOT, APIDOCS_PATH
from studio_watch.sandbox.state import SandboxState

if TYPE_CHECKING:
    import ssl

    from studio_watch.sandbox.tls import TlsFiles

__all__ = ["Sandbox", "Faults", "built_in"]


class SandboxServer(ThreadingHTTPServer):
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
        super().__init__(address, RequestHandler)

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
        self._server = SandboxServer((host, port), self._state, context)
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
        return built_in(self.url, self.tokens, self._state.media.users, self._state.media.collections)

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
        return tuple(sorted(self._state.oauth.static_tokens))

    @property
    def faults(self) -> Faults:
        """The live Faults object (mutate its fields, or assign a new one)."""
        return self._state.injector.faults

    @faults.setter
    def faults(self, faults: Faults) -> None:
        """Replace the faults (reseeds the generator)."""
        self._state.injector.faults = faults

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
        return self._state.media.snapshot()

    def completed(self) -> list[dict[str, Any]]:
        """Media whose state is completed."""
        return [m for m in self.media() if m["state"] == "completed"]

    def events(self) -> list[dict[str, Any]]:
        """One dict per request: t, method, path, status (None: no response), media_id, endpoint, [fault]."""
        return self._state.journal.events()

    def violations(self) -> list[str]:
        """Protocol violations seen so far."""
        return self._state.journal.violations()

    def errors(self) -> list[str]:
        """Tracebacks of sandbox bugs (answered 500); empty in a healthy run."""
        return self._state.journal.errors()

    def wait_for(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Wait until predicate() holds (re-checked on every state change); False on timeout."""
        return self._state.journal.wait_for(predicate, timeout)

    def issue_auth_code(self) -> str:
        """A new single-use OAuth authorization code."""
        return self._state.oauth.issue_auth_code()

    def expire_access_tokens(self) -> None:
        """Expire every issued OAuth access token now."""
        self._state.oauth.expire_access_tokens()


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
