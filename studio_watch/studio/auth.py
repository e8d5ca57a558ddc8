"""Where the access token comes from: a fixed one (`StaticToken`), or OAuth tokens that refresh themselves
(`OAuthTokens`); `make_tokens` picks the one the config asks for.

`OAuthTokens` is the `TokenSource` for a config with `studio.oauth`. It keeps the access/refresh pair in the token
store (tokenstore.py) and refreshes the access token shortly before it expires, or once when the API answers 401.
Studio rotates the refresh token on every refresh, so the new pair is made durable *before* the new access token
is used: a crash at any moment leaves a store whose refresh token is the live one. Refreshes are serialised by a
thread lock inside a process and by the store's lock between processes (the daemon, `upload`, `auth login`), and
the store is re-read before every refresh, so a pair rotated by another process is adopted instead of being spent
twice.

Residual risk: if the token endpoint rotates the pair but its answer is lost (a reset after the server
committed), the old refresh token is dead and the new one was never received; the next refresh gets
`invalid_grant` and a person must run `studio-watch auth login` again. No client can avoid that.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any, Callable
from urllib.parse import urlencode

from studio_watch import __version__
from studio_watch import config as cfg
from studio_watch import logs
from studio_watch.errors import AuthError, ConfigError, StudioError, TransientError, Unreachable
from studio_watch.logs import get_logger
from studio_watch.studio.connections import http_pool
from studio_watch.studio.tokenstore import (DEFAULT_EXPIRES_IN, SharedTokenStore, SharedValues, StoredTokens,
                                            TokenStore)

if TYPE_CHECKING:
    from studio_watch.studio.client import TokenSource
    from studio_watch.studio.transport import Pool

log = get_logger(__name__)

TOKEN_PATH = "/api/public/oauth/token"
AUTH_NEEDED = "authorization needed: run studio-watch auth login"
PROACTIVE_PAUSE = 30.0  # after a failed early refresh, use the still-valid token this long before trying again


class StaticToken:
    """A fixed token from a file or an environment variable; a 401 re-reads it (a rotated credential)."""

    def __init__(self, read: Callable[[], str]) -> None:
        self._read = read
        self._token = read()

    def token(self) -> str:
        return self._token

    def refresh(self, rejected: str) -> str:
        fresh = self._read()
        if fresh == rejected:
            raise AuthError("the API refused the access token (401); check token_file/token_env", 401)
        self._token = fresh
        return fresh


def tokens_from_response(data: dict[str, Any], client_id: str, previous: StoredTokens | None,
                         now: float) -> StoredTokens:
    """A token endpoint answer as a store entry (a refresh keeps the old refresh token if none came back)."""
    refresh = data.get("refresh_token") or (previous.refresh_token if previous else None)
    if not isinstance(data.get("access_token"), str) or not refresh:
        raise StudioError("token endpoint: the answer has no access_token or refresh_token")
    try:
        expires_in = float(data.get("expires_in") or DEFAULT_EXPIRES_IN)
    except (TypeError, ValueError):
        expires_in = DEFAULT_EXPIRES_IN
    return StoredTokens(access_token=data["access_token"], refresh_token=str(refresh), expires_at=now + expires_in,
                        obtained_at=previous.obtained_at if previous else now,
                        refreshed_at=now if previous else None, client_id=client_id, expires_in=expires_in)


def post_token(http: Pool, url: str, form: dict[str, str], invalid_grant: str) -> dict[str, Any]:
    """POST the token endpoint; map its answers onto errors. The body is never logged or put in a message.
    Sent on the program's raw HTTP pool: no httpx (~40 ms of every command's start) for a form and a JSON answer."""
    headers = [("Accept", "application/json"), ("Content-Type", "application/x-www-form-urlencoded"),
               ("User-Agent", f"studio-watch/{__version__}")]
    try:
        response = http.request("POST", url, headers, urlencode(form).encode())
    except Unreachable as exc:
        raise Unreachable(f"token endpoint: {exc}") from None
    except TransientError as exc:
        raise TransientError(f"token endpoint: {exc}") from None
    status = response.status_code
    if status == 429 or status >= 500:
        raise TransientError(f"token endpoint: HTTP {status}", status)
    try:
        data = response.json()
    except ValueError:
        data = None
    if not isinstance(data, dict):
        raise StudioError(f"token endpoint: HTTP {status} without a JSON object", status)
    if status == 200:
        return data
    error = str(data.get("error") or f"HTTP {status}")
    if error == "invalid_grant":
        raise AuthError(invalid_grant, status)
    if error == "invalid_client":
        raise AuthError("the token endpoint refused the client (invalid_client): check studio.oauth.client_id "
                        "and the client secret", status)
    raise AuthError(f"the token endpoint refused the request ({error[:80]})", status)


class OAuthTokens:
    """A TokenSource over the token store: refreshes early, refreshes once on 401, persists before use."""

    def __init__(self, store: TokenStore, token_url: str, client_id: str, client_secret: str,
                 http: Pool) -> None:
        self.store, self.token_url, self.client_id = store, token_url, client_id
        self._secret, self.http = client_secret, http
        self._lock = threading.RLock()
        self._tokens = store.load()
        self._sig = store.signature()
        self._unsaved: StoredTokens | None = None
        self._early_after = 0.0
        if self._tokens.client_id != client_id:
            raise store.error(f"{store.path} was authorized for client {self._tokens.client_id!r}, but "
                              f"studio.oauth.client_id is {client_id!r}: run studio-watch auth login")

    @classmethod
    def from_config(cls, config: cfg.Config, shared: SharedValues | None = None) -> OAuthTokens:
        """Build from `studio.oauth` (ConfigError without a token store or with a loose secret file). `shared`:
        a cluster's queue, where the nodes keep their one token pair."""
        oauth = config.studio.oauth
        if oauth is None:
            raise ConfigError(f"{config.source}: studio.oauth: not configured")
        secret = cfg.client_secret(config)
        logs.register_secret(secret)
        store = TokenStore(oauth.token_store, config.source) if shared is None else \
            SharedTokenStore(oauth.token_store, config.source, shared)
        return cls(store, config.studio.url + TOKEN_PATH, oauth.client_id, secret, http_pool(config.studio))

    def close(self) -> None:
        self.http.close()

    def token(self) -> str:
        """The access token; refreshed first when it is about to expire."""
        with self._lock:
            self._save_unsaved()
            self._sync()
            current = self._tokens
            if current.due() and time.monotonic() >= self._early_after:
                try:
                    self._refresh(current.access_token)
                except (TransientError, AuthError) as exc:
                    if current.remaining() <= 0:
                        raise
                    self._early_after = time.monotonic() + PROACTIVE_PAUSE
                    log.warning("token_refresh_deferred", error=str(exc), expires_in=round(current.remaining()))
            return self._tokens.access_token

    def refresh(self, rejected: str) -> str:
        """Refresh once: concurrent callers holding the same rejected token cause one refresh between them."""
        with self._lock:
            self._save_unsaved()
            self._sync()
            if self._tokens.access_token == rejected:
                self._refresh(rejected)
            return self._tokens.access_token

    def _sync(self) -> None:
        """Adopt the store when another process (auth login, a second command) replaced it."""
        sig = self.store.signature()
        if sig is None or sig == self._sig:
            return
        try:
            tokens = self.store.load()
        except ConfigError as exc:
            log.warning("token_store_unreadable", error=str(exc))
            return
        self._tokens, self._sig = tokens, sig
        log.info("token_store_reloaded", expires_in=round(tokens.remaining()))

    def _refresh(self, rejected: str) -> None:
        """Under the file lock: re-read the store, and refresh only if nobody did in the meantime."""
        with self.store.locked():
            self._sync()
            if self._tokens.access_token != rejected:
                return
            form = {"grant_type": "refresh_token", "refresh_token": self._tokens.refresh_token,
                    "client_id": self.client_id, "client_secret": self._secret}
            data = post_token(self.http, self.token_url, form, AUTH_NEEDED)
            fresh = tokens_from_response(data, self.client_id, self._tokens, time.time())
            fresh.register()
            self._persist(fresh)
        log.info("token_refreshed", expires_in=round(fresh.expires_in))

    def _persist(self, fresh: StoredTokens) -> None:
        """Make the rotated pair durable, then (and only then) use it."""
        try:
            self.store.save(fresh)
        except OSError as exc:
            self._unsaved = fresh
            log.error("token_store_write_failed", path=str(self.store.path), error=exc.strerror)
            raise AuthError(f"cannot save the refreshed tokens to {self.store.path}: {exc.strerror}; make its "
                            "folder writable (the new pair is kept in memory until it is saved)") from None
        self._tokens, self._sig, self._unsaved = fresh, self.store.signature(), None

    def _save_unsaved(self) -> None:
        if self._unsaved is not None:
            with self.store.locked():
                self._persist(self._unsaved)


def make_tokens(config: cfg.Config, queue: SharedValues | None = None) -> TokenSource:
    """The token source the config asks for (raises ConfigError for a missing or loose secret). With a cluster's
    queue, OAuth tokens are shared through it (one refresh at a time across nodes)."""
    if config.studio.oauth is not None:
        tokens: TokenSource = OAuthTokens.from_config(config, queue if queue is not None and queue.shared else None)
    else:
        def read() -> str:
            token = cfg.static_token(config)
            assert token is not None
            logs.register_secret(token)
            return token

        tokens = StaticToken(read)
    logs.register_secret(tokens.token())
    return tokens
