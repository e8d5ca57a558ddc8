"""The HTTP client for the Canvas Studio public API: requests, error classification, short retries.

Each method maps the documented status codes of one endpoint (shared/studio-api.md) onto
the exception tree in `errors.py`. Seconds-scale blips (connect errors, resets, 429, 5xx) are retried here with
tenacity, honouring Retry-After; whatever still fails is raised for the queue, which owns longer backoff.
Where the connections come from is `connections.py`; where the token comes from, `auth.py`.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterator, Protocol
from urllib.parse import urlencode

from studio_watch import __version__, logs
from studio_watch.logs import get_logger

from studio_watch.config import RetryConfig, StudioConfig, Target
from studio_watch.errors import (AuthError, CaptionsDisabled, MediaNotFound, PermanentError, Stopping,
                                 StudioError, TransientError, UploadUrlExpired)
from studio_watch.schedule import RateLimiter
from studio_watch.studio import retry as policy
from studio_watch.studio.connections import http_pool

if TYPE_CHECKING:  # the transport (httpcore, ~16 ms to import) is loaded by the first client, not by `status`
    from studio_watch.studio.transport import Reply

log = get_logger(__name__)

ONE_CHUNK = 1 << 20  # the reads' size (files.reading.CHUNK): a file this small gets no progress report at its end
SMALL_BODY = 64 << 10  # a body this small is read whole and leaves with the request headers in one send
TRANSIENT_STATUS = frozenset({429, 500, 502, 503, 504})
IMPORT_PATH = "/media"  # "create from URL into My Uploads": the docs name no path; the one place it is chosen
USER_AGENT = f"studio-watch/{__version__}"


class UploadBody(Protocol):
    """One open read of the file a PUT sends (files.reading.OpenUpload)."""

    def check(self) -> None: ...

    def whole(self) -> bytes: ...

    def chunks(self) -> Iterator[memoryview]: ...

    def hexdigest(self) -> str: ...

    def __enter__(self) -> UploadBody: ...

    def __exit__(self, *exc: object) -> None: ...


class UploadSource(Protocol):
    """The file a PUT sends, opened afresh for each try (files.reading.UploadFile)."""

    size: int

    def open(self) -> UploadBody: ...


class TokenSource(Protocol):
    """Where the access token comes from (studio.auth: a fixed one or OAuth); `refresh` is called once when the API
    answers 401."""

    def token(self) -> str: ...

    def refresh(self, rejected: str) -> str: ...


@dataclass(frozen=True)
class PutResult:
    bytes: int
    content_hash: str
    seconds: float


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Retry-After as seconds: either a number of seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    import email.utils  # start-up cost (~7 ms): only a Retry-After given as an HTTP date needs it

    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


class StudioClient:
    """One keep-alive connection pool for the API and the upload URLs; thread-safe.

    `pool` may be any object with `transport.Pool`'s `request(method, url, headers, body) -> Reply` that raises
    Unreachable or TransientError for transport failures (tests pass stand-ins).
    """

    def __init__(self, studio: StudioConfig, retry: RetryConfig, tokens: TokenSource,
                 stop: threading.Event | None = None, limiter: RateLimiter | None = None,
                 pool: Any = None) -> None:
        self.studio = studio
        self.limiter = limiter
        self.retry = retry
        self.tokens = tokens
        self.stop = stop or threading.Event()
        self.pool = pool or http_pool(studio, self.stop)
        self._refresh_lock = threading.Lock()

    def close(self) -> None:
        """Close the connections, and the token source's own (an OAuth token endpoint client) if it has any."""
        self.pool.close()
        close_tokens = getattr(self.tokens, "close", None)
        if close_tokens is not None:
            close_tokens()

    def route(self, url: str | None = None) -> str:
        """How requests to `url` (default: the API) go: 'directly' or 'through proxy URL (from SOURCE)'."""
        describe = getattr(self.pool, "describe", None)
        return describe(url or self.studio.api_url) if describe else "directly"

    # -- the retry layer -----------------------------------------------------------------------------------

    def _retrying(self, fn: Callable[[], Any], what: str) -> Any:
        """Run `fn`, retrying TransientError a bounded number of times with jittered backoff and Retry-After.

        The first try runs bare: the retry machinery is built only once a try has failed.
        """
        try:
            return fn()
        except TransientError as exc:
            first = [exc]
        import tenacity  # here, not at the top: most runs never need it, and every run would pay its import


        def replay_then_try() -> Any:  # tenacity's first attempt is the failure that already happened
            if first:
                raise first.pop()
            return fn()

        def wait(state: tenacity.RetryCallState) -> float:  # seconds-scale: from half the queue's first wait
            exc = state.outcome.exception() if state.outcome else None
            return policy.backoff(state.attempt_number, self.retry, getattr(exc, "retry_after", None),
                                  first=self.retry.initial_seconds / 2)

        def retryable(exc: BaseException) -> bool:  # the number of tries is tenacity's stop below
            return policy.client_retries(exc, 0, self.retry) and not self.stop.is_set()

        def sleep(seconds: float) -> None:
            if self.stop.wait(seconds):
                raise Stopping("stopping")

        def before_sleep(state: tenacity.RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            log.info("request_retry", step=what, attempt=state.attempt_number, error=str(exc),
                     wait=round(state.upcoming_sleep, 2))

        retrying = tenacity.Retrying(retry=tenacity.retry_if_exception(retryable), wait=wait, sleep=sleep,
                                     stop=tenacity.stop_after_attempt(self.retry.request_tries),
                                     before_sleep=before_sleep, reraise=True)
        return retrying(replay_then_try)

    def _send(self, method: str, path: str, *, params: dict[str, Any] | None = None,
              json: Any = None, what: str, retry: bool = True) -> Reply:
        """One API request with the bearer token; a 401 refreshes the token once and tries again.

        `retry=False` sends once (no tenacity): for requests that are not idempotent, whose caller reconciles.
        """

        def attempt() -> Reply:
            token = self.tokens.token()
            response = self._request(method, path, params, json, token, what)
            if response.status_code == 401:
                with self._refresh_lock:
                    current = self.tokens.token()
                    token = current if current != token else self.tokens.refresh(token)
                response = self._request(method, path, params, json, token, what)
                if response.status_code == 401:
                    raise AuthError(f"{what}: the API refused the token (401) even after a refresh", 401)
            return response

        return self._retrying(attempt, what) if retry else attempt()

    def _request(self, method: str, path: str, params: dict[str, Any] | None, body: Any, token: str,
                 what: str) -> Reply:
        if self.stop.is_set():
            raise Stopping("stopping")
        url = self.studio.api_url + path + ("?" + urlencode(params) if params else "")
        content = b"" if body is None else json.dumps(body).encode()
        headers = [("User-Agent", USER_AGENT), ("Authorization", f"Bearer {token}"), ("Accept", "application/json"),
                   ("Content-Length", str(len(content)))]
        if body is not None:
            headers.append(("Content-Type", "application/json"))
        try:
            response = self.pool.request(method, url, headers, content)
        except TransientError as exc:  # Unreachable included: say which step
            raise type(exc)(f"{what}: {exc}") from None
        if response.status_code in TRANSIENT_STATUS or response.status_code >= 500 and response.status_code != 501:
            raise TransientError(f"{what}: HTTP {response.status_code}{_detail(response)}", response.status_code,
                                 parse_retry_after(response.headers.get("retry-after")))
        return response

    # -- endpoints --------------------------------------------------------------------------------------------

    def ping(self) -> None:
        """GET /ping must answer 200 pong."""
        response = self._send("GET", "/ping", what="ping")
        if response.status_code != 200 or response.text.strip().strip('"') != "pong":
            raise StudioError(f"ping: expected 200 pong, got HTTP {response.status_code} {response.text[:60]!r}",
                              response.status_code)

    def probe(self) -> None:
        """One /ping without retries (a refused token is refreshed once): is the API up and our token good?"""
        response = self._send("GET", "/ping", what="probe", retry=False)
        if response.status_code != 200:
            raise StudioError(f"probe: HTTP {response.status_code}", response.status_code)

    def generate(self, collection_id: int | None, user_id: int | None) -> tuple[int, str]:
        """Step 1: POST /media/uploads; returns (media id, upload URL)."""
        # Both: on behalf of the user, into the collection (Instructure's own uploader sends them together).
        params = Target(collection_id, user_id).params() or None
        response = self._send("POST", "/media/uploads", params=params, what="generate")
        status = response.status_code
        if status in (200, 201):
            upload = response.json()["upload"]
            logs.register_url(str(upload["url"]))  # its signature, wherever a server echoes it, is redacted
            return int(upload["id"]), str(upload["url"])
        target = Target(collection_id, user_id).describe()
        reasons = {403: f"not permitted to upload into {target} (403)",
                   404: f"{target} not found (404): check collection_id/user_id",
                   422: f"invalid target {target} (422)"}
        raise PermanentError(f"generate: {reasons.get(status, f'HTTP {status}')}{_detail(response)}", status)

    def complete(self, media_id: int, title: str, description: str, auto_caption: bool) -> dict[str, Any] | None:
        """Step 3: returns the media object, or None when Studio says it was already completed (409)."""
        params = {"title": title, "description": description, "auto_caption": str(auto_caption).lower()}
        response = self._send("POST", f"/media/uploads/{media_id}/complete", params=params, what="complete")
        status = response.status_code
        if status in (200, 201):
            return _media(response)
        if status == 409:
            return None
        if status == 404:
            raise MediaNotFound(f"complete: media {media_id} not found (404)", 404)
        if status == 501:
            raise CaptionsDisabled("complete: auto-captioning is not enabled for this account (501)", 501)
        raise PermanentError(f"complete: HTTP {status}{_detail(response)}", status)

    def _get(self, path: str, what: str, params: dict[str, Any] | None = None, missing_ok: bool = False) -> Any:
        """A GET answered 200 with JSON: its body; None for 404 when `missing_ok`; otherwise PermanentError."""
        response = self._send("GET", path, params=params, what=what)
        if response.status_code == 404 and missing_ok:
            return None
        if response.status_code != 200:
            raise PermanentError(f"{what}: HTTP {response.status_code}{_detail(response)}", response.status_code)
        return response.json()

    def get_media(self, media_id: int) -> dict[str, Any] | None:
        """GET /media/{id}: the media object, or None when Studio no longer has it."""
        data = self._get(f"/media/{media_id}", "get_media", missing_ok=True)
        return None if data is None else data.get("media", data)

    def import_url(self, url: str, title: str | None, description: str, auto_caption: bool, is_external: bool,
                   collection_id: int | None = None, user_id: int | None = None) -> dict[str, Any]:
        """Create media from a URL: POST /collections/{id}/media (query) or POST /media (JSON body).

        Sent once, never retried here: a create is not idempotent, so `imports.import_once` owns the retries
        and reconciles an unknown outcome before sending again.
        """
        fields: dict[str, Any] = {"url": url, "description": description, "auto_caption": auto_caption,
                                  "is_external": is_external}
        if title:
            fields["title"] = title
        if user_id is not None:
            fields["user_id"] = user_id
        if collection_id is not None:
            params = {k: str(v).lower() if isinstance(v, bool) else v for k, v in fields.items()}
            response = self._send("POST", f"/collections/{collection_id}/media", params=params, what="import",
                                  retry=False)
        else:
            response = self._send("POST", IMPORT_PATH, json=fields, what="import", retry=False)
        status = response.status_code
        if status in (200, 201):
            return _media(response)
        target = Target(collection_id, user_id).describe()
        if status == 501:
            raise CaptionsDisabled("import: auto-captioning is not enabled for this account (501)", 501)
        reasons = {403: f"not permitted to create media in {target} (403)", 404: f"{target} not found (404)",
                   422: "Studio refused the request as invalid (422)"}
        raise PermanentError(f"import: {reasons.get(status, f'HTTP {status}')}{_detail(response)}", status)

    def search_media(self, query: str) -> list[dict[str, Any]]:
        """GET /media/search?query=: media whose title matches (used to reconcile an import of unknown outcome)."""
        data = self._get("/media/search", "search", params={"query": query})
        items = data.get("media", []) if isinstance(data, dict) else data
        return [m for m in items if isinstance(m, dict)]

    def collections(self) -> list[dict[str, Any]]:
        """Every collection the token can see (all pages of GET /collections)."""
        found: list[dict[str, Any]] = []
        page = 1
        while True:
            data = self._get("/collections", "collections", params={"page": page, "per_page": 50})
            found.extend(data.get("collections", []))
            meta = data.get("meta") or {}
            if page >= int(meta.get("last_page") or page):
                return found
            page += 1

    def user(self, user_id: int) -> dict[str, Any] | None:
        """GET /users/{id}: the user, or None when there is no such user."""
        data = self._get(f"/users/{user_id}", "user", missing_ok=True)
        return None if data is None else data.get("user", data)

    # -- step 2: the PUT --------------------------------------------------------------------------------------

    def put(self, url: str, source: UploadSource, progress: Callable[[int], None] | None = None) -> PutResult:
        """Step 2: stream the file to the upload URL with a Content-Length, hashing it in the same pass.

        `source` (files.reading.UploadFile) is the file as found stable; one that differs before, during or
        after the read raises SourceChanged. Resets and 5xx are retried from byte 0 (the file is reopened).
        """
        logs.register_url(url)  # resumed after a restart: registered again in this process
        return self._retrying(lambda: self._put_once(url, source, progress), "put")

    def _put_once(self, url: str, source: UploadSource, progress: Callable[[int], None] | None) -> PutResult:
        size = source.size
        started = time.monotonic()
        with source.open() as f:
            f.check()
            body = self._small_body(f) if size <= SMALL_BODY else self._body(f.chunks(), size, progress)
            headers = [("User-Agent", USER_AGENT), ("Content-Length", str(size)),
                       ("Content-Type", "application/octet-stream")]
            try:
                response = self.pool.request("PUT", url, headers, body)
            except TransientError as exc:  # the upload host may differ from the API: the queue probes /ping
                raise type(exc)(f"put: {exc}") from None
            finally:
                if not isinstance(body, bytes):
                    body.close()  # now, not when collected: a read-ahead thread ends with it
            f.check()
        status = response.status_code
        if 200 <= status < 300:
            return PutResult(size, f.hexdigest(), time.monotonic() - started)
        if status in (401, 403, 404, 410):
            raise UploadUrlExpired(f"put: upload URL refused (HTTP {status}): it expired or was used", status)
        if status in TRANSIENT_STATUS or status >= 500:
            raise TransientError(f"put: HTTP {status}", status, parse_retry_after(response.headers.get("retry-after")))
        if status == 413:
            raise PermanentError(f"put: file too large for Studio (413, {size} bytes)", 413)
        raise PermanentError(f"put: HTTP {status}{_detail(response)}", status)

    def _small_body(self, f: UploadBody) -> bytes:
        """A small file whole: it then goes out with the request headers in one send."""
        data = f.whole()
        if self.limiter is not None:
            self.limiter.take(len(data))
        return data

    def _body(self, chunks: Iterator[memoryview], size: int,
              progress: Callable[[int], None] | None) -> Iterator[memoryview]:
        """Exactly `size` bytes of the file, hashed as they are read, each chunk handed on to be sent before its
        buffer is used again (no allocation or copy per chunk); stops early on `stop`."""
        sent = 0
        last_report = time.monotonic()  # files of one chunk finish before their first report: no progress write
        try:
            for chunk in chunks:
                if self.stop.is_set():
                    raise Stopping("stopping")
                sent += len(chunk)
                if self.limiter is not None:
                    self.limiter.take(len(chunk))
                yield chunk
                if progress is not None and (time.monotonic() - last_report >= 0.5 or sent == size > ONE_CHUNK):
                    last_report = time.monotonic()
                    progress(sent)
        finally:
            chunks.close()  # type: ignore[attr-defined]  # a read-ahead thread ends with it, however the send ends


def _media(response: Reply) -> dict[str, Any]:
    data = response.json()
    return data.get("media", data) if isinstance(data, dict) else {}


def _detail(response: Reply) -> str:
    """A short, safe excerpt of an error body."""
    text = response.text.strip().replace("\n", " ")
    return f": {text[:200]}" if text else ""
